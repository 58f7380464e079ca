"""Typed configuration.

One :class:`CapaSettings` object, read from (lowest to highest precedence) field
defaults, an optional YAML file (``capa.yaml`` or ``$CAPA_CONFIG``) and environment
variables named ``CAPA__<SECTION>__<KEY>`` (e.g. ``CAPA__KAFKA__PORT=29092``).
Secrets are :class:`pydantic.SecretStr` and never logged.

``CAPA__*`` is capa's only settings convention. ``CAPA_CONFIG`` is not a setting but names
the file settings come from. Code that runs outside these settings (Airflow DAG files) reads
its ``CAPA__...`` variables with :func:`env_setting`, which still accepts an older name.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from capa.errors import ConfigError

logger = logging.getLogger(__name__)


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
    max_message_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024 * 1024,
        description="Largest change event capa puts on Kafka: its encoded value + key, in bytes. "
        "Every client and topic capa configures is sized from it (broker message.max.bytes and "
        "topic max.message.bytes when capa creates them, producer message.max.bytes, consumer "
        "fetch.max.bytes / max.partition.fetch.bytes, plus framing headroom); an event above it "
        "becomes a dead letter (table, key, position, size) and capture moves past it. See "
        "'Large records' in docs/architecture.md.",
    )
    dlq_max_value_bytes: int = Field(
        900_000,
        ge=0,
        description="Dead-letter values are cut to this size (header truncated=true, size = the "
        "original length). Under 1 MB so a dead letter fits even a topic left at Kafka's default "
        "limit; must stay below max_message_bytes.",
    )
    dlq_retry_attempts: int = Field(
        5,
        ge=1,
        description="A flush carrying dead letters is tried at most this many times, then a "
        "transient error is raised (the caller does not commit) instead of retrying forever.",
    )
    dlq_retry_timeout_s: float = Field(
        120.0,
        gt=0,
        description="... or for at most this many seconds (checked between attempts).",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Client security.protocol of every producer, consumer and admin."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism (required with SASL_PLAINTEXT / SASL_SSL)."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(
        None, description="SASL password (env CAPA__KAFKA__SASL_PASSWORD or a secret store)."
    )
    ssl_ca_location: Path | None = Field(
        None, description="CA bundle (PEM) that signed the brokers' certificates (SSL, SASL_SSL)."
    )
    ssl_certificate_location: Path | None = Field(
        None, description="Client certificate (PEM) for mutual TLS."
    )
    ssl_key_location: Path | None = Field(None, description="Client private key (PEM).")
    ssl_key_password: SecretStr | None = Field(
        None, description="Password of the client private key, if it is encrypted."
    )
    sasl_port: int | None = Field(
        None,
        description="Local broker only: also listen with SASL_PLAINTEXT (PLAIN) on this port, "
        "its one user being sasl_username/sasl_password; SASL clients bootstrap from it.",
    )

    @model_validator(mode="after")
    def _dead_letters_fit(self) -> KafkaConfig:
        if self.dlq_max_value_bytes >= self.max_message_bytes:
            raise ValueError(
                f"kafka.dlq_max_value_bytes={self.dlq_max_value_bytes} must be below "
                f"kafka.max_message_bytes={self.max_message_bytes}, or dead letters of large "
                "records would be refused too; lower it (default 900000)"
            )
        return self

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaConfig:
        if self.security_protocol.startswith("SASL_"):
            missing = [
                name
                for name in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(
                    f"kafka.security_protocol={self.security_protocol!r} needs "
                    f"{', '.join('kafka.' + m for m in missing)} "
                    f"(e.g. CAPA__KAFKA__{missing[0].upper()})"
                )
        return self

    @property
    def bootstrap(self) -> str:
        if self.bootstrap_servers:
            return self.bootstrap_servers
        sasl = self.security_protocol == "SASL_PLAINTEXT" and self.sasl_port is not None
        return f"{self.host}:{self.sasl_port if sasl else self.port}"


class PostgresConfig(_Section):
    host: str = Field("127.0.0.1", description="Address of the F2 PostgreSQL server.")
    port: int = Field(15432, description="Port of the F2 PostgreSQL server (local cluster port).")
    database: str = Field("shop", description="Database captured as source F2.")
    user: str = Field("postgres", description="Login role used by Debezium and the workload.")
    password: SecretStr = Field(
        SecretStr(""),
        description="Password of `user` (env CAPA__POSTGRES__PASSWORD). Unset with a managed "
        "cluster: generated once into <state_dir>/secrets/postgres.password (mode 0600) and "
        "read from there by every client.",
    )
    bin_dir: Path = Field(
        Path("/usr/lib/postgresql/15/bin"), description="Directory holding initdb/pg_ctl."
    )
    managed: bool = Field(
        True,
        description="capa up starts a throwaway local cluster (true) or checks an existing server "
        "at host:port for logical WAL (false).",
    )
    data_root: Path = Field(
        Path("/var/lib/capa"),
        description="Managed cluster, capa run as root: when the postgres OS user cannot enter "
        "the state dir (e.g. a clone under /root), the cluster lives in "
        "<data_root>/<hash of the state dir>/postgres instead, recorded in the state dir.",
    )

    def dsn(self, dbname: str | None = None) -> str:
        """libpq conninfo of ``dbname`` (default the configured database), quoted by psycopg."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            host=self.host,
            port=self.port,
            dbname=dbname or self.database,
            user=self.user,
            password=self.password.get_secret_value() or None,
        )


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
    jvm_opts: str = Field(
        "-Xmx384m",
        description="PYDBZ_JVM_OPTS for the embedded engine. The heap holds a captured row "
        "several times over (value, JSON, the string for Python): 384m carries rows of 20 MB; "
        "raise it for larger rows (see 'Large records' in docs/architecture.md).",
    )
    snapshot_mode: str = Field(
        "initial", description="Debezium snapshot.mode (initial, no_data, when_needed ...)."
    )
    table_include_list: str | None = Field(
        None, description="Debezium table.include.list regex list (unset: every table)."
    )
    initial_load: Literal["fast", "debezium"] = Field(
        "fast",
        description="How a new PostgreSQL source is first copied. 'fast': parallel CTID-range "
        "readers inside the replication slot's exported snapshot, bulk-written to the local "
        "warehouse, then Debezium streams from the slot with snapshot.mode=no_data. "
        "'debezium': Debezium's own snapshot (snapshot_mode). Other warehouses use Debezium.",
    )
    initial_load_workers: int = Field(
        0, ge=0, description="Parallel readers of the fast initial sync (0: the core count)."
    )
    initial_load_range_pages: int = Field(
        8192,
        ge=1,
        description="Largest CTID range of the fast initial sync, in 8 kB heap pages; bounds "
        "each reader's memory (a range is held as Arrow while written).",
    )
    initial_load_log_interval_s: float = Field(
        5.0, gt=0, description="How often the fast initial sync logs per-table progress."
    )
    offset_flush_interval_ms: int = Field(
        1_000, description="How often committed source offsets are written to the offset file."
    )
    json_schemas: bool = Field(
        True, description="JsonConverter schemas.enable: typed values (dates, decimals) need it."
    )
    signal_table: str = Field(
        "public.capa_signal",
        description="schema.table of Debezium's source signalling table: 'capa resync' inserts "
        "an execute-snapshot row there, and Debezium writes its incremental-snapshot "
        "watermarks there (created by 'capa resync' on first use).",
    )
    incremental_snapshot_chunk_size: int = Field(
        1024, ge=1, description="Rows per chunk (one watermark window) of a 'capa resync'."
    )

    @property
    def notification_topic(self) -> str:
        """Kafka topic of Debezium's notifications (incremental snapshot progress)."""
        return f"capa.{self.source_name}.notifications"


class ConnectConfig(_Section):
    """The on-prem Kafka Connect worker (distributed mode) and its Debezium plugins."""

    host: str = Field("127.0.0.1", description="Address the Connect REST listener binds to.")
    port: int = Field(18083, description="Port of the Connect REST API (listeners=http://...).")
    group_id: str = Field("capa-connect", description="Connect cluster id (worker group.id).")
    config_topic: str = Field("capa.connect.configs", description="Connector config topic.")
    offset_topic: str = Field("capa.connect.offsets", description="Source offsets topic.")
    status_topic: str = Field("capa.connect.status", description="Connector status topic.")
    heap: str = Field("-Xmx512m", description="JVM heap option of the Connect worker.")
    jars_dir: Path | None = Field(
        None, description="Connect runtime jars (default .cache/jars/connect)."
    )
    plugin_dirs: list[Path] | None = Field(
        None,
        description="plugin.path folders (default .cache/jars/debezium-postgres and "
        ".cache/jars/debezium-sqlserver).",
    )
    connectors_dir: Path | None = Field(
        None, description="Connector configs registered at start (default deploy/onprem/connect)."
    )
    connectors: list[str] = Field(
        default_factory=lambda: ["postgres-f2"],
        description="Connector config files (names without .json) registered once healthy.",
    )
    offset_flush_interval_ms: int = Field(
        1_000, description="Worker offset.flush.interval.ms (source offsets, status)."
    )
    exactly_once_source: bool = Field(
        True,
        description="exactly.once.source.support: source records and their offsets are "
        "written in one Kafka transaction, so a killed worker re-sends nothing.",
    )


class NormalizerConfig(_Section):
    """The normaliser service: Connect's Debezium topics -> canonical events, exactly once."""

    topic_pattern: str = Field(
        r"^(f2|f3)\..+",
        description="Regex of the Debezium topics consumed (Connect writes <prefix>.<schema>."
        "<table>; SQL Server <prefix>.<db>.<schema>.<table>).",
    )
    group_id: str = Field("capa-normalizer", description="Consumer group of the service.")
    transactional_id: str = Field(
        "capa-normalizer",
        description="Producer transactional.id: a restarted service fences its killed "
        "predecessor's open transaction.",
    )
    max_batch: int = Field(2_000, gt=0, description="Most records per Kafka transaction.")
    poll_timeout_s: float = Field(0.5, gt=0, description="Longest wait for a batch.")
    session_timeout_ms: int = Field(
        10_000, description="Consumer session.timeout.ms (a killed member leaves after it)."
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
    max_file_bytes: int = Field(
        1 << 30,
        ge=1024 * 1024,
        description="Largest Datastream file the reader holds in memory, after gunzip. A file "
        "(or a gzip stream that inflates) past it is dead-lettered whole, naming the file, and "
        "marked done; it is never truncated. Datastream rotates files at 50 MB by default.",
    )
    late_file_grace_minutes: int = Field(
        120,
        description="Processed names older than this (by their yyyy/mm/dd/hh/mm path) before the "
        "newest one are folded into a per-table high-watermark. Polls list from the watermark, so "
        "a file arriving late within this window is read by the next poll; one below the "
        "watermark is found by the late-file audit (late_file_audit_polls).",
    )
    late_file_audit_polls: int = Field(
        720,
        ge=0,
        description="Every this many polls (and on the first), the reader lists the names below "
        "each table's watermark and reads files that arrived there after it was sealed, with a "
        "warning and the capa_datastream_late_files metric. The listing covers the table's whole "
        "history in the bucket; 0 turns the audit off (late files below the watermark are then "
        "never read).",
    )
    backfill_writer: Literal["auto", "bulk", "kafka"] = Field(
        "auto",
        description="Where a file of backfill reads of one keyed table goes: 'bulk' writes it "
        "straight into the local lakehouse with the bulk writer (changelog append + one guarded "
        "merge per file, once per object version), 'kafka' produces its events like every other "
        "file. 'auto': bulk when the warehouse is local, else kafka. CDC, mixed and keyless "
        "files always go to Kafka.",
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
    accept_offset_gap: bool = Field(
        False,
        description="Resume past events that retention deleted before they were applied (the "
        "group's committed offset is below the partition's low watermark): logged and counted. "
        "Off: the apply job stops and names the topic, partition and number of lost events.",
    )
    soft_deletes: bool = Field(
        False,
        description="Keep deleted rows visible with _capa_deleted=true instead of hiding them.",
    )


class ObserveConfig(_Section):
    host: str = Field(
        "127.0.0.1", description="Address the metrics endpoints and the status page bind to."
    )
    bridge_metrics_port: int | None = Field(
        19410, description="Prometheus endpoint of the Debezium bridge (unset: none; 0: any)."
    )
    datastream_metrics_port: int | None = Field(
        19411, description="Prometheus endpoint of the Datastream reader (unset: none; 0: any)."
    )
    apply_metrics_port: int | None = Field(
        19412, description="Prometheus endpoint of the streaming apply job (unset: none; 0: any)."
    )
    normalizer_metrics_port: int | None = Field(
        19413, description="Prometheus endpoint of the normaliser service (unset: none; 0: any)."
    )
    serve_port: int = Field(
        19480,
        description="capa serve: status page, /api/status and /metrics (slots, builds).",
    )
    freshness_slo_s: float = Field(
        300.0, gt=0, description="Default freshness objective: max age of a table's last apply."
    )
    table_freshness_slo_s: dict[str, float] = Field(
        default_factory=dict,
        description="Per-table freshness objectives, by table label (f2.public.orders).",
    )
    slot_wal_alert_bytes: int = Field(
        1_073_741_824, description="Slot WAL retained above this shows red on the page."
    )


class SparkConfig(_Section):
    master: str = Field("local[2]", description="Master of local Spark sessions (builds, tests).")
    jars_dir: Path | None = Field(
        None,
        description="Delta Lake jars for local sessions (default <repo>/.cache/jars/spark from "
        "`bash scripts/fetch_jars.sh spark`).",
    )
    bigquery_jars_dir: Path | None = Field(
        None,
        description="spark-bigquery-connector jars for a local session's BigQuery mode "
        "(default <repo>/.cache/jars/spark-bigquery).",
    )


class SparkClusterConfig(_Section):
    """The on-prem profile's Spark standalone cluster (one master, one worker; loopback).

    Sized for a 2-core / 24 GB machine shared with Kafka, PostgreSQL and Airflow: the worker
    offers both cores and 8 GB to executors; each application takes one core by default, so
    two DAG tasks can build at once; the master and worker daemons get 512 MB heaps each.
    """

    host: str = Field("127.0.0.1", description="Address master and worker bind to (loopback).")
    master_port: int = Field(17077, description="Spark master RPC port (spark://host:port).")
    master_webui_port: int = Field(18090, description="Spark master web UI (and /json health).")
    worker_port: int = Field(17078, description="Spark worker RPC port.")
    worker_webui_port: int = Field(18091, description="Spark worker web UI.")
    worker_cores: int = Field(2, ge=1, description="Cores the worker offers to executors.")
    worker_memory: str = Field("8g", description="Memory the worker offers to executors.")
    daemon_memory: str = Field("512m", description="Heap of the master and worker daemons.")
    default_cores: int = Field(
        1, ge=1, description="Cores an application gets unless it sets spark.cores.max."
    )
    executor_memory: str = Field("2g", description="Executor heap of capa's builds on the cluster.")

    @property
    def master_url(self) -> str:
        return f"spark://{self.host}:{self.master_port}"


class AirflowConfig(_Section):
    """The on-prem profile's Airflow (scheduler, API server, DAG processor; SQLite metadata)."""

    host: str = Field("127.0.0.1", description="Address the API server listens on (loopback).")
    port: int = Field(18088, description="Port of the Airflow API server (REST API and UI).")
    parallelism: int = Field(2, ge=1, description="Task slots of the LocalExecutor (2 cores).")
    username: str = Field(
        "capa", description="Admin user of the simple auth manager (password generated once)."
    )
    dags_folder: Path | None = Field(None, description="DAGs folder (default <repo>/dags).")
    dags_profile: str = Field(
        "onprem", description="CAPA__DAGS__PROFILE handed to the DAGs (their operators' profile)."
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
    log_level: str = Field(
        "INFO", description="Log level of capa's long-running processes (the Debezium bridge)."
    )
    kafka: KafkaConfig = Field(default_factory=KafkaConfig, description="Kafka broker and topics.")
    postgres: PostgresConfig = Field(default_factory=PostgresConfig, description="Source F2.")
    debezium: DebeziumConfig = Field(default_factory=DebeziumConfig, description="CDC engine.")
    datastream: DatastreamConfig = Field(
        default_factory=DatastreamConfig, description="Datastream bucket reader (source F3)."
    )
    apply: ApplyConfig = Field(default_factory=ApplyConfig, description="Streaming apply job.")
    connect: ConnectConfig = Field(
        default_factory=ConnectConfig, description="On-prem Kafka Connect worker."
    )
    normalizer: NormalizerConfig = Field(
        default_factory=NormalizerConfig, description="On-prem normaliser service."
    )
    gcs: GcsEmulatorConfig = Field(
        default_factory=GcsEmulatorConfig, description="GCS emulator of the embedded default."
    )
    crm: CrmConfig = Field(default_factory=CrmConfig, description="CRM batch ingestion.")
    observe: ObserveConfig = Field(
        default_factory=ObserveConfig, description="Metrics endpoints and the status page."
    )
    spark: SparkConfig = Field(
        default_factory=SparkConfig, description="Local Spark sessions (consumption builds)."
    )
    spark_cluster: SparkClusterConfig = Field(
        default_factory=SparkClusterConfig,
        description="Spark standalone cluster of the onprem profile.",
    )
    airflow: AirflowConfig = Field(
        default_factory=AirflowConfig, description="Airflow of the onprem profile."
    )
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
    """Load settings (overrides > env > YAML > defaults); :class:`ConfigError` if invalid.

    A managed PostgreSQL without a configured password gets the one ``capa up`` generated
    in the state directory (:func:`postgres_password_file`), if it exists yet.
    """
    try:
        settings = CapaSettings(**overrides)
    except ValidationError as exc:
        raise ConfigError(
            f"invalid capa configuration: {describe_validation(exc)}; fix capa.yaml "
            "($CAPA_CONFIG) or the CAPA__<SECTION>__<KEY> variable"
        ) from exc
    return with_postgres_password(settings, read_postgres_password(settings))


def describe_validation(exc: ValidationError) -> str:
    """A pydantic error as one line: ``field: problem (got 'value')`` per error."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ())) or exc.title
        got = f" (got {error['input']!r:.80})" if "input" in error else ""
        parts.append(f"{where}: {error.get('msg', 'invalid')}{got}")
    return "; ".join(parts)


def postgres_password_file(state_dir: Path) -> Path:
    """Where the generated password of the managed PostgreSQL lives (mode 0600)."""
    return state_dir / "secrets" / "postgres.password"


def read_postgres_password(settings: CapaSettings) -> str | None:
    """The state dir's generated password, if the cluster is managed, unset in config, and
    the file exists."""
    if not settings.postgres.managed or settings.postgres.password.get_secret_value():
        return None
    try:
        return postgres_password_file(settings.state_dir).read_text().rstrip("\n")
    except FileNotFoundError:
        return None


def with_postgres_password(settings: CapaSettings, password: str | None) -> CapaSettings:
    """``settings`` whose ``postgres.password`` is ``password`` (unchanged if None)."""
    if password is None:
        return settings
    postgres = settings.postgres.model_copy(update={"password": SecretStr(password)})
    return settings.model_copy(update={"postgres": postgres})


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml  # PyYAML: pulled in by pydantic-settings' yaml extra / every env

    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())  # one line: the parser's message spans several
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {detail}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return loaded


def env_setting(name: str, default: str, *, deprecated: str | None = None) -> str:
    """Env ``name`` (a ``CAPA__...`` variable), else the ``deprecated`` older name (with a
    warning), else ``default``: for code that runs outside :class:`CapaSettings` (DAG files)."""
    if name in os.environ:
        return os.environ[name]
    if deprecated is not None and deprecated in os.environ:
        logger.warning("env %s is deprecated; set %s instead", deprecated, name)
        return os.environ[deprecated]
    return default
