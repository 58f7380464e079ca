"""Publish consumption tables to BigQuery: one Parquet load job per table (WRITE_TRUNCATE).

No Spark needed: the Delta table is read with delta-rs, written to a temporary Parquet file and
loaded with google-cloud-bigquery, so this runs in the beam or the spark environment::

    python -m spark_jobs.publish --lakehouse .state/lakehouse --project my-proj \
        --dataset consumption
    python -m spark_jobs.publish ... --endpoint http://127.0.0.1:9050   # bqemulator, anonymous

The target table is created from the Arrow schema when missing; the load replaces its
contents atomically (readers see the old or the new table, never a mix).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from capa import console
from capa.errors import CapaError, ConfigError
from spark_jobs.project import BigQueryLayout
from spark_jobs.state import STATE_DIR

logger = logging.getLogger(__name__)


def _decimal_type(t: pa.DataType) -> str:
    fits_numeric = t.scale <= 9 and t.precision - t.scale <= 29
    return "NUMERIC" if fits_numeric else "BIGNUMERIC"


# Arrow type predicate -> BigQuery type (first match wins).
ARROW_TO_BIGQUERY: list[tuple[Callable[[pa.DataType], bool], Callable[[pa.DataType], str]]] = [
    (pa.types.is_boolean, lambda t: "BOOL"),
    (pa.types.is_integer, lambda t: "INT64"),
    (pa.types.is_floating, lambda t: "FLOAT64"),
    (pa.types.is_decimal, _decimal_type),
    (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), lambda t: "STRING"),
    (lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t), lambda t: "BYTES"),
    (lambda t: pa.types.is_timestamp(t) and t.tz is not None, lambda t: "TIMESTAMP"),
    (pa.types.is_timestamp, lambda t: "DATETIME"),
    (pa.types.is_date, lambda t: "DATE"),
]


def bigquery_type(field: pa.Field) -> str:
    for matches, name in ARROW_TO_BIGQUERY:
        if matches(field.type):
            return name(field.type)
    raise ConfigError(
        f"column {field.name!r} has Arrow type {field.type} with no BigQuery mapping; "
        "cast it to a scalar type in the model SQL"
    )


def bigquery_schema(schema: pa.Schema) -> list[Any]:
    from google.cloud import bigquery

    return [bigquery.SchemaField(f.name, bigquery_type(f), mode="NULLABLE") for f in schema]


@dataclass(frozen=True, slots=True)
class PublishReport:
    table: str
    rows: int
    seconds: float


def consumption_tables(consumption: Path) -> list[str]:
    return sorted(
        p.name for p in consumption.iterdir() if p.name != STATE_DIR and (p / "_delta_log").is_dir()
    )


def read_delta(path: Path) -> pa.Table:
    from deltalake import DeltaTable

    return DeltaTable(str(path)).to_pyarrow_table()


def ensure_table(
    client: Any,
    table_id: str,
    schema: pa.Schema,
    retry: Any = None,
    layout: BigQueryLayout | None = None,
) -> None:
    from google.api_core.exceptions import NotFound
    from google.cloud import bigquery

    kwargs = {"retry": retry} if retry is not None else {}
    try:
        client.get_table(table_id, **kwargs)
    except NotFound:
        table = bigquery.Table(table_id, schema=bigquery_schema(schema))
        client.create_table(apply_layout(table, layout), **kwargs)


def apply_layout(resource: Any, layout: BigQueryLayout | None) -> Any:
    """Set a model header's partitioning and clustering on a ``Table`` or ``LoadJobConfig``."""
    from google.cloud import bigquery

    if layout is not None and layout.partition_by:
        resource.time_partitioning = bigquery.TimePartitioning(
            type_=layout.granularity, field=layout.partition_by
        )
    if layout is not None and layout.cluster_by:
        resource.clustering_fields = list(layout.cluster_by)
    return resource


def publish_table(
    client: Any,
    data: pa.Table,
    table_id: str,
    retry: Any = None,
    layout: BigQueryLayout | None = None,
) -> int:
    import pyarrow.parquet as pq
    from google.cloud import bigquery

    ensure_table(client, table_id, data.schema, retry, layout)
    # the load states the layout too: a WRITE_TRUNCATE load must match the table's
    config = apply_layout(
        bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.PARQUET,
            write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
            parquet_options=_parquet_options(),
        ),
        layout,
    )
    with tempfile.NamedTemporaryFile(suffix=".parquet") as tmp:
        pq.write_table(data, tmp.name)
        with open(tmp.name, "rb") as handle:
            job = client.load_table_from_file(handle, table_id, job_config=config)
        job.result(**({"retry": retry} if retry is not None else {}))
    return data.num_rows


def _parquet_options() -> Any:
    from google.cloud.bigquery.format_options import ParquetOptions

    options = ParquetOptions()
    options.enable_list_inference = True
    return options


def model_layouts() -> dict[str, BigQueryLayout]:
    """Model name -> its header's BigQuery layout (tables without a model get none)."""
    from spark_jobs.project import load_project

    return {name: model.header.bigquery for name, model in load_project().models.items()}


def publish(
    client: Any,
    consumption: Path,
    dataset: str,
    *,
    select: Sequence[str] | None = None,
    location: str | None = None,
    retry: Any = None,
) -> list[PublishReport]:
    """Load every (or each selected) consumption table into ``<client.project>.<dataset>``."""
    from google.cloud import bigquery

    names = consumption_tables(consumption)
    unknown = set(select or ()) - set(names)
    if unknown:
        raise ConfigError(
            f"no consumption table(s) {sorted(unknown)} in {consumption}; build them first"
        )
    ds = bigquery.Dataset(f"{client.project}.{dataset}")
    if location:
        ds.location = location
    client.create_dataset(ds, exists_ok=True, **({"retry": retry} if retry is not None else {}))
    layouts = model_layouts()
    reports = []
    for name in names:
        if select and name not in select:
            continue
        started = time.monotonic()
        rows = publish_table(
            client,
            read_delta(consumption / name),
            f"{client.project}.{dataset}.{name}",
            retry,
            layouts.get(name),
        )
        reports.append(PublishReport(name, rows, round(time.monotonic() - started, 2)))
        logger.info("published %s: %d rows", name, rows)
    return reports


def make_client(project: str, endpoint: str | None = None, location: str | None = None) -> Any:
    """A BigQuery client; with ``endpoint`` (an emulator) it is anonymous."""
    from google.cloud import bigquery

    if not endpoint:
        return bigquery.Client(project=project, location=location)
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials

    return bigquery.Client(
        project=project,
        location=location,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=endpoint),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spark_jobs.publish", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--lakehouse", type=Path, default=Path(".state/lakehouse"))
    parser.add_argument(
        "--consumption", type=Path, default=None, help="default <lakehouse>/consumption"
    )
    parser.add_argument("--project", required=True, help="GCP project id")
    parser.add_argument("--dataset", default="consumption", help="target dataset")
    parser.add_argument("--location", default=None, help="dataset location, e.g. EU")
    parser.add_argument("--endpoint", default=None, help="API endpoint override (emulator)")
    parser.add_argument("--select", default="", help="comma-separated tables (default all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    consumption = args.consumption or args.lakehouse / "consumption"
    try:
        client = make_client(args.project, args.endpoint, args.location)
        reports = publish(
            client,
            consumption,
            args.dataset,
            select=[s for s in args.select.split(",") if s] or None,
            location=args.location,
        )
    except CapaError as exc:
        console.error(str(exc))
        return 1
    console.table(["table", "rows", "seconds"], [(r.table, r.rows, r.seconds) for r in reports])
    return 0


if __name__ == "__main__":
    sys.exit(main())
