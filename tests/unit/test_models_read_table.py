"""capa.consumption.read_table on the local Delta store, and its input validation."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from capa.config import CapaSettings, LocalWarehouseConfig
from capa.consumption import bigquery_param_type, bigquery_query, read_table
from capa.errors import ConfigError


@pytest.fixture
def settings(tmp_path: Path) -> CapaSettings:
    write_deltalake(
        str(tmp_path / "consumption" / "customer_features"),
        pa.table(
            {
                "customer_id": pa.array([1, 2, 3, 4], pa.int64()),
                "value_band": ["low", "mid", None, "high"],
                "lifetime_value": pa.array(
                    [Decimal("1.00"), Decimal("20.00"), None, Decimal("300.00")],
                    pa.decimal128(28, 2),
                ),
            }
        ),
    )
    return CapaSettings(warehouse=LocalWarehouseConfig(path=tmp_path))


def test_reads_columns_with_filters(settings: CapaSettings) -> None:
    frame = read_table(
        "customer_features",
        columns=["customer_id"],
        settings=settings,
        where=[("value_band", "in", ["mid", "high"]), ("lifetime_value", "<", Decimal("100"))],
    )
    assert list(frame.columns) == ["customer_id"] and frame["customer_id"].tolist() == [2]
    table = read_table(
        "customer_features",
        output="arrow",
        settings=settings,
        where=[("value_band", "not in", ["low"])],
    )
    assert sorted(table.column("customer_id").to_pylist()) == [
        2,
        4,
    ]  # NULL matches neither in nor not in


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "nope"}, "no consumption table 'nope'"),
        ({"name": "x; drop"}, "bad table name"),
        ({"name": "customer_features", "columns": ["a b"]}, "bad column name"),
        (
            {"name": "customer_features", "where": [("value_band", "like", "x")]},
            "bad filter operator 'like'",
        ),
        ({"name": "customer_features", "where": [("value_band", "in", "low")]}, "takes a list"),
        ({"name": "customer_features", "where": [("value_band",)]}, "use \\(column, op, value\\)"),
    ],
)
def test_bad_requests_say_how_to_fix(settings: CapaSettings, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read_table(settings=settings, **kwargs)


def test_bigquery_query_binds_every_value() -> None:
    sql, params = bigquery_query(
        "p.d.t", ["a"], [("a", "=", "x'; --"), ("b", "in", [1, 2]), ("c", "!=", True)]
    )
    assert sql == "SELECT `a` FROM `p.d.t` WHERE `a` = @p0 AND `b` IN UNNEST(@p1) AND `c` <> @p2"
    assert [(p.name, getattr(p, "type_", None) or p.array_type) for p in params] == [
        ("p0", "STRING"),
        ("p1", "INT64"),
        ("p2", "BOOL"),
    ]
    assert params[0].value == "x'; --"
    with pytest.raises(ConfigError, match="no BigQuery type"):
        bigquery_param_type(object())
