"""BigQuery mode of the model builder: raw replicas in, consumption tables out, on Spark.

``python -m spark_jobs.build run --warehouse bigquery:PROJECT`` (the Dataproc Serverless batch,
deploy/dataproc/) builds the same SQL models as the lakehouse mode, with BigQuery on both ends:

* **input** (:class:`BigQueryRawSource`): ``PROJECT.<raw_dataset>.<table>`` read with the
  spark-bigquery-connector (``spark.read.format("bigquery")``, Storage Read API). The BigQuery
  warehouse adapter (capa/warehouse/bigquery/) keeps each replica MERGEd, one row per key with
  deletes as ``_capa_deleted`` tombstones, so ``raw('t')`` hides tombstones exactly as the
  lakehouse mode does and ``raw_history('t')`` shows them;
* **output** (:class:`BigQueryConsumptionSink`): write-audit-publish. A model's rows are
  computed once (persisted), its data-quality checks run on them in Spark, and only when
  every check passes they are written with the connector's *direct* method (Storage Write API,
  pending streams, committed at once) into a fresh staging table, which then atomically
  replaces ``PROJECT.<consumption_dataset>.<model>`` (``CREATE OR REPLACE TABLE ... AS SELECT``)
  and is dropped. A failing check leaves the published table as it was.

Every build in this mode is a full rebuild (mode ``full``): incremental MERGEs need the Delta
versions and change feeds of the lakehouse mode. ``--bigquery-endpoint`` and
``--bigquery-grpc-endpoint`` point the connector at an emulator (with a fixed placeholder token,
like the anonymous credentials of the Python client); without them it uses BigQuery with the
application default credentials (the batch's service account on Dataproc).
"""

from __future__ import annotations

import argparse
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from capa import lineage
from capa.errors import ConfigError, WarehouseTerminalError, WarehouseTransientError
from capa.warehouse.base import CHANGELOG_SUFFIX, META_DELETED, META_EVENT_ID
from spark_jobs.build_lineage import model_run
from spark_jobs.project import BigQueryLayout, Model, Project, quote

logger = logging.getLogger(__name__)

WAREHOUSE_PREFIX = "bigquery:"
EMULATOR_TOKEN = "capa-emulator"  # not a secret: emulators accept any bearer token
READ_FORMATS = ("ARROW", "AVRO")
STAGE_MARK = "__capa_stage_"


@dataclass(frozen=True, slots=True)
class BigQueryTarget:
    """Where the BigQuery mode reads and writes, and how the connector reaches BigQuery."""

    project: str
    raw_dataset: str = "raw"
    consumption_dataset: str = "consumption"
    parent_project: str | None = None  # billed for reads and jobs (default: project)
    location: str | None = None
    http_endpoint: str | None = None  # BigQuery REST API (emulator)
    grpc_endpoint: str | None = None  # Storage Read/Write API, host:port, TLS (emulator)
    read_format: str = "ARROW"

    def table(self, dataset: str, name: str) -> str:
        return f"{self.project}.{dataset}.{name}"

    def connector_options(self) -> dict[str, str]:
        """spark-bigquery-connector options shared by every read and write."""
        options = {
            "project": self.project,
            "parentProject": self.parent_project or self.project,
            "readDataFormat": self.read_format,
            "writeMethod": "direct",
        }
        if self.http_endpoint:
            options["bigQueryHttpEndpoint"] = self.http_endpoint
        if self.grpc_endpoint:
            options["bigQueryStorageGrpcEndpoint"] = self.grpc_endpoint
        if self.http_endpoint or self.grpc_endpoint:
            options["gcpAccessToken"] = EMULATOR_TOKEN
        return options


def parse_warehouse(value: str) -> str | None:
    """``local`` -> None; ``bigquery:PROJECT`` -> PROJECT."""
    if value == "local":
        return None
    if value.startswith(WAREHOUSE_PREFIX) and value[len(WAREHOUSE_PREFIX) :].strip():
        return value[len(WAREHOUSE_PREFIX) :].strip()
    raise ConfigError(f"--warehouse must be 'local' or 'bigquery:PROJECT', got {value!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The builder flags of the BigQuery mode (ignored in the lakehouse mode)."""
    group = parser.add_argument_group("BigQuery mode (--warehouse bigquery:PROJECT)")
    group.add_argument(
        "--warehouse",
        default="local",
        help="'local' (the Delta lakehouse, default) or 'bigquery:PROJECT'",
    )
    group.add_argument("--raw-dataset", default="raw", help="dataset of the raw replicas")
    group.add_argument(
        "--consumption-dataset", default="consumption", help="dataset the models are written to"
    )
    group.add_argument("--parent-project", default=None, help="project billed (default PROJECT)")
    group.add_argument("--location", default=None, help="BigQuery location for jobs (e.g. EU)")
    group.add_argument(
        "--bigquery-endpoint", default=None, help="REST endpoint override (emulator), http://..."
    )
    group.add_argument(
        "--bigquery-grpc-endpoint",
        default=None,
        help="Storage Read/Write API endpoint override host:port (TLS; emulator behind a proxy)",
    )
    group.add_argument(
        "--read-format",
        default="ARROW",
        choices=READ_FORMATS,
        help="Storage Read API data format (default ARROW)",
    )


def target_from_args(args: argparse.Namespace) -> BigQueryTarget | None:
    project = parse_warehouse(getattr(args, "warehouse", "local") or "local")
    if project is None:
        return None
    return BigQueryTarget(
        project=project,
        raw_dataset=args.raw_dataset,
        consumption_dataset=args.consumption_dataset,
        parent_project=args.parent_project,
        location=args.location,
        http_endpoint=args.bigquery_endpoint,
        grpc_endpoint=args.bigquery_grpc_endpoint,
        read_format=args.read_format,
    )


class BigQueryRawSource:
    """Input port adapter: raw replicas and already published models, read by the connector."""

    def __init__(self, spark: Any, target: BigQueryTarget) -> None:
        self.spark, self.target = spark, target

    def _read(self, dataset: str, name: str) -> Any:
        reader = self.spark.read.format("bigquery").options(**self.target.connector_options())
        return reader.load(self.target.table(dataset, name))

    def raw(self, name: str, *, history: bool = False) -> Any:
        """The replica; tombstones hidden unless ``history``. A changelog is appended
        at-least-once, so it is read deduplicated by event id."""
        df = self._read(self.target.raw_dataset, name)
        if name.endswith(CHANGELOG_SUFFIX):
            return df.dropDuplicates([META_EVENT_ID])
        return df if history else df.where(f"NOT coalesce({quote(META_DELETED)}, false)")

    def model(self, name: str) -> Any:
        return self._read(self.target.consumption_dataset, name)


class BigQueryConsumptionSink:
    """Output port adapter: stage with the connector's direct write, then swap atomically."""

    def __init__(self, target: BigQueryTarget, client: Any = None) -> None:
        self.target = target
        self._client = client
        self._retry: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client, self._retry = make_client(self.target)
        return self._client

    def publish(self, df: Any, model: str, layout: BigQueryLayout | None = None) -> None:
        """Replace ``model``'s table by ``df``, partitioned/clustered as ``layout`` says."""
        table = self.target.table(self.target.consumption_dataset, model)
        stage = f"{table}{STAGE_MARK}{uuid.uuid4().hex[:12]}"
        writer = df.write.format("bigquery").options(**self.target.connector_options())
        writer.mode("errorifexists").save(stage)  # a new table: pending streams + batch commit
        try:
            self._run(replace_table_sql(table, stage, layout))
        finally:
            self.client.delete_table(stage, not_found_ok=True, retry=self._retry)

    def _run(self, statement: str) -> None:
        from google.api_core import exceptions as gexc

        kwargs: dict[str, Any] = {"location": self.target.location} if self.target.location else {}
        try:
            job = self.client.query(statement, retry=self._retry, job_retry=None, **kwargs)
            job.result(retry=self._retry)
        except gexc.ClientError as exc:
            raise WarehouseTerminalError(f"BigQuery rejected {statement[:120]!r}: {exc}") from exc
        except gexc.GoogleAPIError as exc:
            raise WarehouseTransientError(f"BigQuery failed on {statement[:120]!r}: {exc}") from exc


def make_client(target: BigQueryTarget) -> tuple[Any, Any]:
    """google-cloud-bigquery client (anonymous against an emulator) and its retry policy."""
    from google.cloud import bigquery
    from google.cloud.bigquery.retry import DEFAULT_RETRY

    project = target.parent_project or target.project
    if not target.http_endpoint:
        return bigquery.Client(project=project, location=target.location), DEFAULT_RETRY
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials

    client = bigquery.Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=target.http_endpoint),
    )
    return client, DEFAULT_RETRY.with_timeout(15)  # emulator errors are 500s: fail fast


def replace_table_sql(table: str, stage: str, layout: BigQueryLayout | None = None) -> str:
    """Swap a published table for its staged copy, with the model's partitioning/clustering."""
    clauses = layout.ddl() if layout is not None else ""
    return " ".join(
        part
        for part in (
            "CREATE OR REPLACE TABLE",
            _bq(table),
            clauses,
            f"AS SELECT * FROM {_bq(stage)}",
        )
        if part
    )


def _bq(table: str) -> str:
    return "`" + table.replace("\\", "\\\\").replace("`", "\\`") + "`"


class BigQueryModelBuilder:
    """Builds every model fully from BigQuery raw replicas into the consumption dataset."""

    def __init__(
        self,
        spark: Any,
        target: BigQueryTarget,
        source: BigQueryRawSource | None = None,
        sink: BigQueryConsumptionSink | None = None,
    ) -> None:
        self.spark, self.target = spark, target
        self.source = source or BigQueryRawSource(spark, target)
        self.sink = sink or BigQueryConsumptionSink(target)
        self.lineage = lineage.emitter()
        self._views: set[str] = set()
        self._built: dict[str, Any] = {}

    def resolve(self, kind: str, name: str) -> str:
        """Template resolver: ``raw``/``raw_history``/``ref`` -> a registered temp view."""
        view = f"capa_bq_{kind}__{name}"
        if view not in self._views:
            if kind == "ref":
                df = self._built.get(name)
                df = df if df is not None else self.source.model(name)
            else:
                df = self.source.raw(name, history=kind == "raw_history")
            df.createOrReplaceTempView(view)
            self._views.add(view)
        return quote(view)

    def resolve_table(self, name: str, project: Project) -> str:
        return self.resolve("ref" if name in project.models else "raw", name)

    def build(
        self, project: Project, *, full: bool = False, select: Sequence[str] | None = None
    ) -> list[Any]:
        if not full:
            logger.info("BigQuery mode: incremental builds are lakehouse-only; building fully")
        self._views.clear()
        self._built.clear()
        try:
            return [self._traced(project, model) for model in project.order(select)]
        finally:
            for df in self._built.values():
                df.unpersist()

    def _traced(self, project: Project, model: Model) -> Any:
        t = self.target

        def table(layer: str, name: str) -> lineage.Dataset:
            dataset = t.raw_dataset if layer == "raw" else t.consumption_dataset
            return lineage.bigquery_table(t.project, dataset, name)

        with model_run(self.lineage, model, table):
            return self.build_model(project, model)

    def build_model(self, project: Project, model: Model) -> Any:
        from spark_jobs.build import ChecksFailed, ModelReport
        from spark_jobs.checks import model_checks, run_checks

        started = time.monotonic()
        # persisted, not checkpointed: executors of a Dataproc batch come and go (dynamic
        # allocation), and lost blocks must be recomputable from their lineage.
        df = self.spark.sql(model.render(self.resolve)).persist()
        rows = int(df.count())
        view = f"capa_bq_check__{model.name}"
        df.createOrReplaceTempView(view)
        results = run_checks(
            self.spark, model_checks(model, quote(view), lambda n: self.resolve_table(n, project))
        )
        if not all(r.ok for r in results):
            df.unpersist()
            raise ChecksFailed(model.name, results)
        self.sink.publish(df, model.name, model.header.bigquery)
        self._built[model.name] = df
        seconds = round(time.monotonic() - started, 2)
        report = ModelReport(
            model=model.name, mode="full", keys=None, rows=rows, version=0, seconds=seconds
        )
        logger.info("built %s", report)
        return report
