"""Typed configuration.

One :class:`CapaSettings` object, read from (lowest to highest precedence) field
defaults, an optional YAML file (``capa.yaml`` or ``$CAPA_CONFIG``) and environment
variables named ``CAPA__<SECTION>__<KEY>`` (e.g. ``CAPA__KAFKA__PORT=29092``).
Secrets are :class:`pydantic.SecretStr` and never logged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from capa.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaConfig(_Section):
    host: str = Field("127.0.0.1", description="Address the local broker listens on (loopback).")
    port: int = Field(19092, description="Broker client port of the local KRaft node.")
    controller_port: int = Field(19093, description="KRaft controller port of the local node.")
    version: str = Field("4.1.1", description="Apache Kafka version fetched from Maven Central.")
    topic: str = Field("capa.changes", description="The shared canonical change-event topic.")
    dlq_topic: str = Field(
        "capa.changes.dlq", description="Dead-letter topic: original bytes + reason."
    )
    partitions: int = Field(
        3, description="Partitions of the canonical topic (key = source+table+pk)."
    )
    schema_registry_url: str | None = Field(
        None, description="Confluent schema registry URL; unset = Avro single-object encoding."
    )
    bootstrap_servers: str | None = Field(
        None, description="Override bootstrap servers (default host:port of the local broker)."
    )
    heap: str = Field("-Xmx512m", description="JVM heap option for the local broker.")
    jars_dir: Path | None = Field(
        None, description="Kafka broker jars (default <repo>/.cache/jars/kafka from fetch_jars.sh)."
    )
    delivery_timeout_ms: int = Field(
        30_000, description="Producer delivery.timeout.ms: how long one record may stay unacked."
    )
    dlq_max_value_bytes: int = Field(
        900_000, description="Dead-letter values are cut to this size (header truncated=true)."
    )

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_servers or f"{self.host}:{self.port}"


class PostgresConfig(_Section):
    host: str = Field("127.0.0.1", description="Address of the F2 PostgreSQL server.")
    port: int = Field(15432, description="Port of the F2 PostgreSQL server (local cluster port).")
    database: str = Field("shop", description="Database captured as source F2.")
    user: str = Field("postgres", description="Login role used by Debezium and the workload.")
    password: SecretStr = Field(
        SecretStr(""), description="Password (from env CAPA__POSTGRES__PASSWORD; empty for trust)."
    )
    bin_dir: Path = Field(
        Path("/usr/lib/postgresql/15/bin"), description="Directory holding initdb/pg_ctl."
    )
    managed: bool = Field(
        True,
        description="capa up starts a throwaway local cluster (true) or checks an existing server "
        "at host:port for logical WAL (false).",
    )

    def dsn(self) -> str:
        secret = self.password.get_secret_value()
        auth = f" password={secret}" if secret else ""
        return f"host={self.host} port={self.port} dbname={self.database} user={self.user}{auth}"


class DebeziumConfig(_Section):
    source_name: str = Field(
        "f2", description="Source name stamped on canonical events (topic prefix)."
    )
    engine_name: str = Field(
        "capa-f2", description="Engine name; part of the offset key - renaming it re-snapshots."
    )
    slot_name: str = Field("capa_f2", description="PostgreSQL logical replication slot.")
    publication: str = Field("capa_f2", description="PostgreSQL publication for pgoutput.")
    poll_interval_ms: int = Field(50, description="Engine poll interval (latency vs idle CPU).")
    heartbeat_interval_ms: int = Field(
        10_000, description="Heartbeat so an idle slot advances and does not pin WAL."
    )
    decimal_handling_mode: Literal["precise", "string", "double"] = Field(
        "precise",
        description="Debezium decimal.handling.mode. 'precise' + json_schemas gives exact typed "
        "decimals (scale from the schema); 'string' keeps the digits but arrives as text, "
        "because Debezium's string schema drops the decimal type; 'double' loses digits.",
    )
    jvm_opts: str = Field("-Xmx384m", description="PYDBZ_JVM_OPTS for the embedded engine.")
    snapshot_mode: str = Field(
        "initial", description="Debezium snapshot.mode (initial, no_data, when_needed ...)."
    )
    table_include_list: str | None = Field(
        None, description="Debezium table.include.list regex list (unset: every table)."
    )
    offset_flush_interval_ms: int = Field(
        1_000, description="How often committed source offsets are written to the offset file."
    )
    json_schemas: bool = Field(
        True, description="JsonConverter schemas.enable: typed values (dates, decimals) need it."
    )


class DatastreamConfig(_Section):
    source_name: str = Field(
        "f3", description="Source name stamped on events read from the bucket."
    )
    bucket: str | None = Field(
        None, description="GCS bucket Datastream writes to (required to read)."
    )
    prefix: str = Field(
        "",
        description="Stream path prefix; objects are <prefix>/<schema>_<table>/yyyy/mm/dd/hh/mm/<file>.",
    )
    project: str | None = Field(
        None, description="GCP project of the bucket (default: from the env)."
    )
    poll_interval_s: float = Field(
        10.0, description="Seconds between bucket listings in poll mode."
    )
    checkpoint_path: Path | None = Field(
        None,
        description="Checkpoint JSON (default <state_dir>/datastream/<source_name>.checkpoint.json).",
    )
    late_file_grace_minutes: int = Field(
        120,
        description="Processed names older than this (by their yyyy/mm/dd/hh/mm path) before the "
        "newest one are folded into a per-table high-watermark; later files under it are ignored.",
    )


class GcsEmulatorConfig(_Section):
    port: int = Field(
        14443, description="Port of the local fake-gcs-server (embedded default only)."
    )
    bucket: str = Field(
        "capa-datastream", description="Bucket the demo's Datastream files land in."
    )
    prefix: str = Field("f2", description="Datastream stream path prefix inside the bucket.")


class ApplyConfig(_Section):
    commit_interval_s: float = Field(1.0, description="Max seconds between raw-layer commits.")
    max_batch_events: int = Field(50_000, description="Max events per commit.")
    pipelined: bool | None = Field(
        None,
        description="Apply and commit a batch in the background while the next one is read and "
        "decoded (one batch in flight; offsets are still committed only after the warehouse). "
        "Default (unset): on for the in-process runner only, whose restarts resume from the "
        "group's committed offsets; runners that checkpoint bundles durably (Flink, Dataflow) "
        "would not replay a batch still in flight when a worker dies.",
    )
    consumer_group: str = Field("capa-apply", description="Kafka consumer group of the apply job.")
    soft_deletes: bool = Field(
        False,
        description="Keep deleted rows visible with _capa_deleted=true instead of hiding them.",
    )


class CrmConfig(_Section):
    contract: Path | None = Field(
        None, description="CRM contract YAML (default: the bundled connectors/crm/contract.yaml)."
    )
    max_reject_share: float = Field(
        0.05, ge=0, le=1, description="A CRM load rejecting more than this share of rows fails."
    )


class LocalWarehouseConfig(_Section):
    type: Literal["local"] = "local"
    path: Path = Field(Path(".state/lakehouse"), description="Root directory of the Delta tables.")
    merge_on_read: bool = Field(
        False,
        description="Append applied batches to a pending log served as base + pending (fast "
        "commits); compact into the base table on the schedule below or via compact().",
    )
    compact_interval_s: float = Field(
        300.0, description="Merge-on-read: compact a table's pending log at least this often."
    )
    compact_pending_rows: int = Field(
        1_000_000,
        description="Merge-on-read: compact once a table's pending log holds this many rows.",
    )
    change_data_feed: bool = Field(
        True,
        description="Replicas record a Delta change data feed (pre/post images of merged rows), "
        "which incremental Spark builds read instead of diffing data files; ~15-20% more "
        "MERGE time. Off: new replicas get none (an existing feed stays on).",
    )


class BigQueryWarehouseConfig(_Section):
    type: Literal["bigquery"] = "bigquery"
    project: str = Field(description="GCP project id holding the datasets.")
    raw_dataset: str = Field("raw", description="Dataset of replicas and changelogs.")
    consumption_dataset: str = Field("consumption", description="Dataset of final tables.")
    location: str = Field("EU", description="BigQuery location.")
    api_endpoint: str | None = Field(
        None, description="Override API endpoint (bqemulator: http://127.0.0.1:PORT)."
    )
    write_api_endpoint: str | None = Field(
        None,
        description="Plaintext gRPC host:port of the Storage Write API (bqemulator only); unset "
        "= Google's endpoint with TLS and application default credentials.",
    )
    apply_mode: Literal["cdc", "merge"] = Field(
        "cdc",
        description="How replicas are written. 'cdc': every batch is streamed through the Storage "
        "Write API with _CHANGE_TYPE/_CHANGE_SEQUENCE_NUMBER and BigQuery applies it (no DML; "
        "readers see changes within max_staleness_minutes; background apply is billed). "
        "'merge': batches are staged and one MERGE per table runs every merge_interval_s "
        "(readers lag by up to that interval; each MERGE is billed for the bytes it scans). "
        "Batch sources (CRM) always use 'merge'. See docs/bigquery.md.",
    )
    max_staleness_minutes: int = Field(
        15,
        ge=0,
        description="cdc mode: the replicas' max_staleness. Queries may read data this old "
        "without paying for a query-time merge of pending changes; 0 = always fresh (every "
        "query merges pending changes, the costliest reads).",
    )
    merge_interval_s: float = Field(
        300.0,
        ge=0,
        description="merge mode: at most one staging -> replica MERGE per table this often "
        "(0 = a MERGE per batch, for tests only: BigQuery queues at most 20 DML per table).",
    )
    watermark_refresh_s: float = Field(
        300.0,
        ge=0,
        description="How long a table's truncate watermark is cached before it is read again "
        "(another writer's truncate becomes visible within this time).",
    )


WarehouseConfig = Annotated[
    LocalWarehouseConfig | BigQueryWarehouseConfig, Field(discriminator="type")
]


class CapaSettings(BaseSettings):
    """Root configuration. See the module docstring for precedence."""

    model_config = SettingsConfigDict(
        env_prefix="CAPA__", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    state_dir: Path = Field(Path(".state"), description="Logs, data and PIDs of the local stack.")
    kafka: KafkaConfig = Field(default_factory=KafkaConfig, description="Kafka broker and topics.")
    postgres: PostgresConfig = Field(default_factory=PostgresConfig, description="Source F2.")
    debezium: DebeziumConfig = Field(default_factory=DebeziumConfig, description="CDC engine.")
    datastream: DatastreamConfig = Field(
        default_factory=DatastreamConfig, description="Datastream bucket reader (source F3)."
    )
    apply: ApplyConfig = Field(default_factory=ApplyConfig, description="Streaming apply job.")
    gcs: GcsEmulatorConfig = Field(
        default_factory=GcsEmulatorConfig, description="GCS emulator of the embedded default."
    )
    crm: CrmConfig = Field(default_factory=CrmConfig, description="CRM batch ingestion.")
    warehouse: WarehouseConfig = Field(
        default_factory=LocalWarehouseConfig, description="Where the raw layer lives."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence, highest first: explicit overrides, environment, YAML file.
        return (init_settings, env_settings, _YamlSource(settings_cls))


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the YAML file named by ``$CAPA_CONFIG`` (default ``./capa.yaml``) if present."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns the whole mapping

    def __call__(self) -> dict[str, Any]:
        candidate = Path(os.environ.get("CAPA_CONFIG", "capa.yaml"))
        if not candidate.is_file():
            if "CAPA_CONFIG" in os.environ:
                raise ConfigError(
                    f"CAPA_CONFIG={str(candidate)!r} does not exist; point it at a YAML file"
                )
            return {}
        return _read_yaml(candidate)


def load_settings(**overrides: Any) -> CapaSettings:
    """Load settings (overrides > env > YAML > defaults); :class:`ConfigError` if invalid."""
    try:
        return CapaSettings(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"invalid capa configuration: {exc}") from exc


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml  # PyYAML: pulled in by pydantic-settings' yaml extra / every env

    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return loaded
