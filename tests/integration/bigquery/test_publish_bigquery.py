"""Publish consumption tables to BigQuery (Parquet load jobs) and read them back through
capa.consumption.read_table, against bqemulator.

The consumption tables here are written with delta-rs in the shape Spark writes them (the Spark
build itself is covered by tests/integration/test_spark_build.py), so this test needs no JVM.
What the emulator cannot check is listed in docs/emulated.md, "Consumption".
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake
from google.api_core.retry import Retry

from capa.config import BigQueryWarehouseConfig, CapaSettings, LocalWarehouseConfig
from capa.consumption import read_table
from capa.errors import ConfigError
from spark_jobs.publish import make_client, publish

RETRY = Retry(timeout=15)
LEGACY = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}  # real BigQuery answers these

FEATURES = pa.table(
    {
        "customer_id": pa.array([1, 2, 3], pa.int64()),
        "lifetime_value": pa.array(
            [Decimal("10.50"), Decimal("2500.00"), Decimal("0.00")], pa.decimal128(28, 2)
        ),
        "value_band": ["low", "mid", "none"],
        "cancel_rate": [0.0, 0.25, 0.0],
        "last_order_at": pa.array(
            [datetime(2026, 9, 1, 12, tzinfo=UTC), None, None], pa.timestamp("us", tz="UTC")
        ),
    }
)
DAILY = pa.table(
    {
        "sales_date": pa.array([date(2026, 9, 1), date(2026, 9, 2)], pa.date32()),
        "orders": pa.array([3, 4], pa.int64()),
    }
)


@pytest.fixture
def consumption(tmp_path: Path) -> Path:
    root = tmp_path / "lake" / "consumption"
    write_deltalake(str(root / "customer_features"), FEATURES)
    write_deltalake(str(root / "sales_daily"), DAILY)
    (root / "_capa_state").mkdir()
    return root


def test_publish_loads_every_table_and_replaces_contents(
    bqemulator: BigQueryWarehouseConfig, consumption: Path
) -> None:
    client = make_client(bqemulator.project, bqemulator.api_endpoint)
    reports = publish(client, consumption, "consumption_pub", retry=RETRY)
    assert [(r.table, r.rows) for r in reports] == [("customer_features", 3), ("sales_daily", 2)]
    table = client.get_table(f"{bqemulator.project}.consumption_pub.customer_features", retry=RETRY)
    types = {f.name: LEGACY.get(f.field_type, f.field_type) for f in table.schema}
    assert types == {
        "customer_id": "INT64",
        "lifetime_value": "NUMERIC",
        "value_band": "STRING",
        "cancel_rate": "FLOAT64",
        "last_order_at": "TIMESTAMP",
    }
    # laid out as the model headers say (spark_jobs/models/*.sql, ``bigquery:``)
    assert table.clustering_fields == ["customer_id"]
    daily = client.get_table(f"{bqemulator.project}.consumption_pub.sales_daily", retry=RETRY)
    assert (daily.time_partitioning.field, daily.time_partitioning.type_) == ("sales_date", "YEAR")
    assert daily.clustering_fields == ["sales_date"]
    write_deltalake(str(consumption / "sales_daily"), DAILY.slice(0, 1), mode="overwrite")
    publish(
        client, consumption, "consumption_pub", select=["sales_daily"], retry=RETRY
    )  # WRITE_TRUNCATE
    rows = list(
        client.query(
            "SELECT sales_date, orders FROM consumption_pub.sales_daily",
            job_retry=None,
            retry=RETRY,
        ).result()
    )
    assert [(r.sales_date, r.orders) for r in rows] == [(date(2026, 9, 1), 3)]


def test_publish_rejects_unknown_tables(
    bqemulator: BigQueryWarehouseConfig, consumption: Path
) -> None:
    client = make_client(bqemulator.project, bqemulator.api_endpoint)
    with pytest.raises(ConfigError, match="no consumption table"):
        publish(client, consumption, "consumption_pub", select=["nope"], retry=RETRY)


def test_read_table_same_answer_from_delta_and_bigquery(
    bqemulator: BigQueryWarehouseConfig, consumption: Path
) -> None:
    client = make_client(bqemulator.project, bqemulator.api_endpoint)
    publish(client, consumption, "consumption_read", retry=RETRY)
    local = CapaSettings(warehouse=LocalWarehouseConfig(path=consumption.parent))
    remote = CapaSettings(
        warehouse=bqemulator.model_copy(update={"consumption_dataset": "consumption_read"})
    )
    where = [("value_band", "in", ["low", "mid"]), ("lifetime_value", ">", Decimal("1"))]
    frames = [
        read_table(
            "customer_features", columns=["customer_id", "lifetime_value"], where=where, settings=s
        )
        .sort_values("customer_id")
        .reset_index(drop=True)
        for s in (local, remote)
    ]
    assert frames[0]["customer_id"].tolist() == frames[1]["customer_id"].tolist() == [1, 2]
    assert [Decimal(str(v)) for v in frames[1]["lifetime_value"]] == [
        Decimal("10.50"),
        Decimal("2500.00"),
    ]
    arrow = read_table("sales_daily", output="arrow", settings=remote, where=[("orders", "!=", 3)])
    assert arrow.column("orders").to_pylist() == [4]
