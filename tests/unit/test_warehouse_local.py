"""The local lakehouse (Delta via delta-rs, read with DuckDB): semantics, types, schema."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time
from decimal import Decimal

import pyarrow as pa
import pytest
from deltalake import write_deltalake
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_apply_cases import (
    event,
    full_row,
    histories,
    normalise,
    sequential_replica,
    shuffled_batches,
)

from capa.errors import ConfigError, SchemaDriftError
from capa.events import Json, Op
from capa.warehouse import open_warehouse
from capa.warehouse.local import LocalWarehouse

REPLICA = "raw.f2_public_orders"


@pytest.fixture
def warehouse(tmp_path) -> LocalWarehouse:
    return open_warehouse(f"local:{tmp_path / 'lake'}")  # type: ignore[return-value]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(histories(max_steps=14), st.integers(0, 2**32))
def test_delta_replica_equals_sequential_reference_for_any_delivery(
    tmp_path_factory, history, seed
) -> None:
    warehouse = LocalWarehouse(tmp_path_factory.mktemp("lake"))
    for batch in shuffled_batches(history, seed):
        warehouse.apply(batch)
    got = normalise(warehouse.rows(REPLICA, include_deleted=True))
    assert got == sequential_replica(history)


def test_changelog_is_append_only_and_redelivery_appends_nothing(warehouse) -> None:
    history = [
        event(Op.INSERT, 1, 10, after=full_row(1, 1)),
        event(Op.UPDATE, 1, 11, after=full_row(1, 2)),
    ]
    first = warehouse.apply(history)
    again = warehouse.apply(history + history)
    assert first.tables[0].changelog_rows == 2 and again.tables[0].changelog_rows == 0
    log = warehouse.rows(REPLICA + "_changelog")
    assert sorted(r["_capa_op"] for r in log) == ["c", "u"]
    assert again.tables[0].applied == 0 and again.tables[0].stale == 1


def test_truncate_watermark_survives_reopening(warehouse, tmp_path) -> None:
    warehouse.apply([event(Op.INSERT, 1, 10, after=full_row(1, 1)), event(Op.TRUNCATE, None, 20)])
    reopened = LocalWarehouse(tmp_path / "lake")
    reopened.apply(
        [
            event(Op.INSERT, 2, 15, after=full_row(2, 1)),
            event(Op.INSERT, 3, 25, after=full_row(3, 1)),
        ]
    )
    assert [r["id"] for r in reopened.rows(REPLICA)] == [3]
    assert reopened.watermark(REPLICA) == event(Op.TRUNCATE, None, 20).position


def test_new_columns_are_added(warehouse) -> None:
    warehouse.apply([event(Op.INSERT, 1, 10, after=full_row(1, 1))])
    warehouse.apply([event(Op.INSERT, 2, 11, after={**full_row(2, 2), "note": "hi"})])
    rows = {r["id"]: r for r in warehouse.rows(REPLICA)}
    assert rows[1]["note"] is None and rows[2]["note"] == "hi"


@pytest.mark.parametrize(
    ("first", "later", "expected_type"),
    [
        (5, Decimal("1.25"), pa.decimal128(38, 9)),  # int -> unconstrained decimal(38,9)
        (5, 2.5, pa.float64()),  # int -> double
        ("short", "a much longer varchar value", pa.string()),  # varchar growth
    ],
)
def test_widening_is_applied(warehouse, first, later, expected_type) -> None:
    warehouse.apply([event(Op.INSERT, 1, 10, after={"id": 1, "v": first})])
    warehouse.apply([event(Op.INSERT, 2, 11, after={"id": 2, "v": later})])
    from deltalake import DeltaTable

    schema = DeltaTable(str(warehouse.table_path("raw", "f2_public_orders"))).schema().to_arrow()
    assert pa.field(schema.field("v")).type == expected_type
    values = {r["id"]: r["v"] for r in warehouse.rows(REPLICA)}
    assert values[1] == first and values[2] == later


def test_declared_decimal_widens_precision(warehouse) -> None:
    warehouse.apply(
        [event(Op.INSERT, 1, 10, after={"id": 1, "amount": Decimal("1.50")})]
    )  # numeric(10,2)
    wide = event(Op.INSERT, 2, 11, after={"id": 2, "amount": Decimal("123456789012.25")})
    wide = type(wide)(
        **{
            **{f: getattr(wide, f) for f in wide.__dataclass_fields__},
            "columns": (type(wide.columns[0])("amount", "numeric(14,2)"),),
        }
    )
    warehouse.apply([wide])
    assert {r["id"]: r["amount"] for r in warehouse.rows(REPLICA)} == {
        1: Decimal("1.50"),
        2: Decimal("123456789012.25"),
    }


def test_incompatible_type_change_is_schema_drift(warehouse) -> None:
    warehouse.apply([event(Op.INSERT, 1, 10, after={"id": 1, "v": "text"})])
    with pytest.raises(SchemaDriftError, match="'v' changed type from string to int"):
        warehouse.apply([event(Op.INSERT, 2, 11, after={"id": 2, "v": 7})])


def test_decimal_that_does_not_fit_is_schema_drift(warehouse) -> None:
    with pytest.raises(SchemaDriftError, match="does not fit decimal"):
        warehouse.apply(
            [event(Op.INSERT, 1, 10, after={"id": 1, "amount": Decimal("1.234")})]
        )  # numeric(10,2)


def test_every_canonical_kind_maps_to_its_arrow_type(warehouse) -> None:
    row = {
        "id": 1,
        "flag": True,
        "f": 1.5,
        "s": "x",
        "j": Json('{"a": 1}'),
        "u": uuid.UUID(int=7),
        "b": b"\x00\x01",
        "tstz": datetime(2024, 5, 1, 12, 0, 0, 5, tzinfo=UTC),
        "ts": datetime(2024, 5, 1, 12, 0, 0, 5),
        "d": date(2024, 5, 1),
        "t": time(12, 30, 1, 5),
        "arr": (1, 2, None),
    }
    warehouse.apply([event(Op.INSERT, 1, 10, after=row)])
    from deltalake import DeltaTable

    schema = DeltaTable(str(warehouse.table_path("raw", "f2_public_orders"))).schema().to_arrow()
    types = {f.name: pa.field(f).type for f in schema}
    assert types["tstz"] == pa.timestamp("us", tz="UTC") and types["ts"] == pa.timestamp("us")
    assert types["d"] == pa.date32() and types["t"] == pa.string() and types["b"] == pa.binary()
    assert types["arr"] == pa.list_(pa.int64()) and types["u"] == pa.string()
    (got,) = warehouse.rows(REPLICA)
    assert (
        got["u"] == str(uuid.UUID(int=7))
        and got["t"] == "12:30:01.000005"
        and got["arr"] == [1, 2, None]
    )
    assert got["tstz"] == row["tstz"] and got["j"] == '{"a": 1}'


def test_sql_views_hide_tombstones_and_register_every_namespace(warehouse, tmp_path) -> None:
    warehouse.apply(
        [
            event(Op.INSERT, 1, 10, after=full_row(1, 1)),
            event(Op.INSERT, 2, 11, after=full_row(2, 1)),
        ]
    )
    warehouse.apply([event(Op.DELETE, 2, 12, before={"id": 2})])
    write_deltalake(str(tmp_path / "lake" / "consumption" / "orders_daily"), pa.table({"n": [1]}))
    assert sorted(warehouse.tables()) == [
        "consumption.orders_daily",
        REPLICA,
        REPLICA + "_changelog",
    ]
    assert [r["id"] for r in warehouse.query("SELECT id FROM raw.f2_public_orders")] == [1]
    assert len(list(warehouse.query("SELECT * FROM raw.f2_public_orders_all"))) == 2
    assert list(warehouse.query("SELECT n FROM consumption.orders_daily WHERE n = ?", [1])) == [
        {"n": 1}
    ]
    soft = LocalWarehouse(tmp_path / "lake", soft_deletes=True)
    assert soft.row_count(REPLICA) == 2 and warehouse.row_count(REPLICA) == 1


def test_multiple_tables_in_one_batch(warehouse) -> None:
    report = warehouse.apply(
        [
            event(Op.INSERT, 1, 10, after=full_row(1, 1)),
            event(Op.INSERT, 1, 11, after={"id": 1, "sku": "x"}, table="items"),
        ]
    )
    assert {t.table for t in report.tables} == {"f2_public_orders", "f2_public_items"}


def test_unknown_warehouse_spec_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown warehouse type 'ftp'"):
        open_warehouse("ftp:somewhere")
