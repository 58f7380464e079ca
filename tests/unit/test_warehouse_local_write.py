"""The local lakehouse write path: append-only changelog dedupe, commit conflicts, and the
column-wise Arrow conversion (must equal the per-value conversion it replaces)."""

from __future__ import annotations

import dataclasses
import logging
import random
from decimal import Decimal

import pyarrow as pa
import pytest
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

from capa.errors import SchemaDriftError, WarehouseTransientError
from capa.events import Op
from capa.warehouse.base import CHANGE_FEED_PROPERTY
from capa.warehouse.local import LocalWarehouse, delta_io, pending
from capa.warehouse.local import warehouse as warehouse_module
from capa.warehouse.local.arrow_types import _converter, arrow_type, to_arrow
from capa.warehouse.local.changelog import high_watermark
from capa.warehouse.types import ColumnType, check_decimal_fits

REPLICA = "raw.f2_public_orders"
CHANGELOG = REPLICA + "_changelog"


@pytest.fixture
def warehouse(tmp_path) -> LocalWarehouse:
    return LocalWarehouse(tmp_path / "lake")


def _changelog_ids(warehouse: LocalWarehouse) -> list[str]:
    return [r["_capa_event_id"] for r in warehouse.rows(CHANGELOG)]


def test_partly_redelivered_batch_appends_only_the_new_events(warehouse) -> None:
    old = [event(Op.INSERT, k, 10 + k, after=full_row(k, 1)) for k in (1, 2, 3)]
    new = [event(Op.UPDATE, k, 20 + k, after=full_row(k, 2)) for k in (1, 2)]
    warehouse.apply(old)
    report = warehouse.apply(list(reversed(old[1:])) + new)  # redelivery overlaps the mark
    ids = _changelog_ids(warehouse)
    assert report.tables[0].changelog_rows == 2
    assert sorted(ids) == sorted(e.event_id for e in old + new) and len(set(ids)) == len(ids)


def test_changelog_high_watermark_is_the_largest_position(warehouse) -> None:
    warehouse.apply([event(Op.INSERT, 1, 30, after=full_row(1, 1))])
    warehouse.apply([event(Op.INSERT, 2, 12, after=full_row(2, 1))])  # a late, lower position
    table = delta_io.open_table(warehouse.table_path("raw", "f2_public_orders_changelog"))
    assert high_watermark(table) == event(Op.INSERT, 1, 30).position


def test_redelivery_after_a_failed_replica_commit_appends_nothing(warehouse, monkeypatch) -> None:
    batch = [event(Op.INSERT, 1, 10, after=full_row(1, 1))]

    def crash(*args, **kwargs):
        raise OSError("disk went away")

    with monkeypatch.context() as patched:
        patched.setattr(LocalWarehouse, "_merge_replica", crash)
        with pytest.raises(WarehouseTransientError, match="disk went away"):
            warehouse.apply(batch)
    assert len(_changelog_ids(warehouse)) == 1 and warehouse.row_count(REPLICA) == 0
    warehouse.apply(batch)
    assert len(_changelog_ids(warehouse)) == 1 and warehouse.row_count(REPLICA) == 1


def _racing_ensure_table(warehouse: LocalWarehouse, races: int, monkeypatch) -> list[int]:
    """After the replica snapshot is taken, another writer commits (up to ``races`` times)."""
    real = delta_io.ensure_table
    raced: list[int] = []
    racing: list[bool] = []

    def ensure_then_race(path, fixed, wanted, properties=None):
        table = real(path, fixed, wanted, properties)
        if path.name == "f2_public_orders" and len(raced) < races and not racing:
            raced.append(len(raced) + 100)
            racing.append(True)
            other = LocalWarehouse(warehouse.root)
            other.apply([event(Op.INSERT, raced[-1], 1000 + len(raced), after=full_row(9, 9))])
            racing.pop()
        return table

    monkeypatch.setattr(delta_io, "ensure_table", ensure_then_race)
    no_wait = dataclasses.replace(warehouse_module.COMMIT_RETRY, first_wait_s=0.0)
    monkeypatch.setattr(warehouse_module, "COMMIT_RETRY", no_wait)
    return raced


def test_commit_conflict_is_retried(warehouse, monkeypatch, caplog) -> None:
    warehouse.apply([event(Op.INSERT, 1, 10, after=full_row(1, 1))])
    raced = _racing_ensure_table(warehouse, 1, monkeypatch)
    with caplog.at_level(logging.WARNING):
        warehouse.apply([event(Op.UPDATE, 1, 11, after=full_row(1, 2))])
    assert raced and "commit conflict" in caplog.text
    rows = {r["id"]: r["name"] for r in warehouse.rows(REPLICA)}
    assert rows == {1: "n2", 100: "n9"}


def test_persistent_commit_conflict_is_transient(warehouse, monkeypatch) -> None:
    warehouse.apply([event(Op.INSERT, 1, 10, after=full_row(1, 1))])
    _racing_ensure_table(warehouse, 99, monkeypatch)
    with pytest.raises(WarehouseTransientError, match="commit conflict on 'f2_public_orders'"):
        warehouse.apply([event(Op.UPDATE, 1, 11, after=full_row(1, 2))])


def _per_value(values: list, target: ColumnType, column: str) -> pa.Array:
    convert = _converter(target, column)
    return pa.array([None if v is None else convert(v) for v in values], type=arrow_type(target))


_DECIMALS = st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
    lambda d: abs(d) < Decimal(10) ** 30 and abs(d.as_tuple().exponent) < 30  # type: ignore[arg-type]
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.none(), _DECIMALS, st.integers(-(10**20), 10**20)), max_size=6),
    st.integers(1, 38),
    st.integers(0, 12),
)
def test_column_wise_decimals_equal_the_per_value_conversion(values, precision, scale) -> None:
    target = ColumnType("decimal", precision, max(0, min(scale, precision)))
    try:
        for value in values:
            if value is not None:
                check_decimal_fits(Decimal(value), target, column="amount")
    except SchemaDriftError:
        with pytest.raises(SchemaDriftError, match="does not fit"):
            to_arrow(values, target, "amount")
        return
    got = to_arrow(values, target, "amount")
    assert got.equals(_per_value(values, target, "amount"))
    assert got.to_pylist() == [None if v is None else Decimal(v) for v in values]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(st.none(), st.floats(allow_nan=False), st.integers(-(2**60), 2**60)),
        max_size=6,
    )
)
def test_column_wise_floats_equal_the_per_value_conversion(values) -> None:
    target = ColumnType("float")
    assert to_arrow(values, target, "f").equals(_per_value(values, target, "f"))


# --- merge-on-read ----------------------------------------------------------------------------


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(histories(max_steps=14), st.integers(0, 2**32), st.booleans())
def test_merge_on_read_equals_sequential_reference(tmp_path_factory, history, seed, toast) -> None:
    root = tmp_path_factory.mktemp("lake")
    warehouse = LocalWarehouse(root, merge_on_read=True)
    rng = random.Random(seed)
    for batch in shuffled_batches(history, seed):
        warehouse.apply(batch)
        if rng.random() < 0.3:
            warehouse.compact()
    expected = sequential_replica(history)
    assert normalise(warehouse.rows(REPLICA, include_deleted=True)) == expected
    via_sql = list(warehouse.query("SELECT * FROM raw.f2_public_orders_all"))
    assert normalise(via_sql) == expected
    warehouse.compact()
    assert normalise(LocalWarehouse(root).rows(REPLICA, include_deleted=True)) == expected


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(histories(toast=True, max_steps=12), st.integers(0, 2**32))
def test_merge_on_read_keeps_toast_columns_across_batches(tmp_path_factory, history, seed) -> None:
    reference = LocalWarehouse(tmp_path_factory.mktemp("lake"))
    deferred = LocalWarehouse(tmp_path_factory.mktemp("lake"), merge_on_read=True)
    for batch in shuffled_batches(history, seed, shuffle=False):
        reference.apply(batch)
        deferred.apply(batch)
    expected = normalise(reference.rows(REPLICA, include_deleted=True))
    assert normalise(deferred.rows(REPLICA, include_deleted=True)) == expected
    deferred.compact()
    assert normalise(deferred.rows(REPLICA, include_deleted=True)) == expected


def test_merge_on_read_defers_the_merge_until_compaction(warehouse, tmp_path) -> None:
    deferred = LocalWarehouse(tmp_path / "lake", merge_on_read=True)
    deferred.apply([event(Op.INSERT, k, 10 + k, after=full_row(k, 1)) for k in (1, 2)])
    deferred.apply([event(Op.DELETE, 2, 20, before={"id": 2})])
    base = delta_io.open_table(deferred.table_path("raw", "f2_public_orders"))
    assert base is not None and base.to_pyarrow_table().num_rows == 0
    assert (
        deferred.row_count(REPLICA) == 1 and deferred.row_count(REPLICA, include_deleted=True) == 2
    )
    assert [r["id"] for r in deferred.query("SELECT id FROM raw.f2_public_orders")] == [1]
    assert "_pending" not in {t.split(".")[0] for t in deferred.tables()}
    assert deferred.compact() == 2
    assert (
        delta_io.open_table(deferred.table_path("raw", "f2_public_orders"))
        .to_pyarrow_table()
        .num_rows
        == 2
    )
    assert deferred.compact() == 0 and deferred.row_count(REPLICA) == 1


def test_merge_on_read_compacts_when_the_pending_log_is_big(tmp_path) -> None:
    deferred = LocalWarehouse(tmp_path / "lake", merge_on_read=True, compact_pending_rows=3)
    deferred.apply([event(Op.INSERT, k, 10 + k, after=full_row(k, 1)) for k in (1, 2)])
    assert pending.open_pending(deferred.root, "f2_public_orders") is not None
    deferred.apply([event(Op.INSERT, 3, 20, after=full_row(3, 1))])
    assert pending.open_pending(deferred.root, "f2_public_orders") is None
    assert deferred.row_count(REPLICA) == 3


def test_replica_records_a_change_feed_of_pre_and_post_images(warehouse) -> None:
    """What incremental Spark builds read (spark_jobs.diff.feed_rows): the apply's MERGE
    records the replaced row version (-1) and the new one (+1), and nothing else."""
    from spark_jobs.diff import feed_rows

    warehouse.apply([event(Op.INSERT, k, 10 + k, after=full_row(k, 1)) for k in (1, 2, 3)])
    path = warehouse.table_path("raw", "f2_public_orders")
    before = delta_io.open_table(path)
    assert before is not None
    assert before.metadata().configuration[CHANGE_FEED_PROPERTY] == "true"
    warehouse.apply([event(Op.UPDATE, 2, 20, after=full_row(2, 2))])
    after = delta_io.open_table(path)
    assert after is not None
    rows = feed_rows(str(path), before.version(), after.version(), "_capa_event_id")
    assert rows is not None
    assert sorted(zip(rows["id"].to_pylist(), rows["_capa_sign"].to_pylist(), strict=True)) == [
        (2, -1),
        (2, 1),
    ]
    assert set(rows["name"].to_pylist()) == {full_row(2, 1)["name"], full_row(2, 2)["name"]}


def test_change_data_feed_is_a_setting(tmp_path) -> None:
    from capa.config import LocalWarehouseConfig
    from capa.warehouse import open_warehouse

    plain = open_warehouse(LocalWarehouseConfig(path=tmp_path / "lake", change_data_feed=False))
    plain.apply([event(Op.INSERT, 1, 10, after=full_row(1, 1))])
    table = delta_io.open_table(tmp_path / "lake" / "raw" / "f2_public_orders")
    assert table is not None and CHANGE_FEED_PROPERTY not in table.metadata().configuration


def test_a_batch_of_only_empty_arrays_fits_the_tables_array_type(warehouse) -> None:
    # The poison soak found it: after a restart, a small batch whose integer[] values were all
    # empty was refused as "changed type from array<int> to array<string>".
    warehouse.apply([event(Op.INSERT, 1, 10, after={"id": 1, "tags": [1, 2]})])
    warehouse.apply([event(Op.INSERT, 2, 20, after={"id": 2, "tags": []})])
    warehouse.apply([event(Op.INSERT, 3, 30, after={"id": 3, "tags": [None]})])
    rows = {r["id"]: r["tags"] for r in warehouse.rows(REPLICA)}
    assert rows == {1: [1, 2], 2: [], 3: [None]}


def test_the_item_type_of_empty_arrays_is_unknown_and_fits_any_array() -> None:
    from capa.warehouse.types import type_of_values, widen

    empty = type_of_values([[], [None]])
    assert empty == ColumnType("array", item=None)
    ints = ColumnType("array", item=ColumnType("int"))
    assert widen(ints, empty, column="c") == ints
    assert widen(empty, ints, column="c") == ints
    assert type_of_values([[], [3]]) == ints
    with pytest.raises(SchemaDriftError):
        widen(ints, ColumnType("array", item=ColumnType("bool")), column="c")
