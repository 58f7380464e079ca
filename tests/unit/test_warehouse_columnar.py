"""The column-wise apply path (capa.columnar + LocalWarehouse.apply_columns) against the
event path: same replica, same changelog, same pending log, for any delivery."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

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

from capa.columnar import is_plain, split_plain
from capa.errors import SchemaDriftError
from capa.events import ChangeEvent, Op
from capa.warehouse.local import LocalWarehouse
from capa.warehouse.local.plan import plan_columns

REPLICA = "raw.f2_public_orders"
CHANGELOG = REPLICA + "_changelog"
_VOLATILE = {"_capa_ingested_at"}


def apply_split(warehouse: LocalWarehouse, batch: list[ChangeEvent]) -> None:
    """What the streaming job does: plain tables column-wise, the rest as events."""
    tables, fallback = split_plain(batch)
    warehouse.apply_columns(tables)
    if fallback:
        warehouse.apply([batch[i] for i in fallback])


def stable(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Rows without the ingestion time, order-free, comparable."""
    return sorted(
        tuple(sorted((k, repr(v)) for k, v in row.items() if k not in _VOLATILE)) for row in rows
    )


def plain_only(history: list[ChangeEvent]) -> list[ChangeEvent]:
    return [e for e in history if is_plain(e)]


_SETTINGS = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_SETTINGS
@given(histories(max_steps=14, toast=True), st.integers(0, 2**32), st.booleans(), st.booleans())
def test_split_apply_equals_event_apply(tmp_path_factory, history, seed, plain, on_read) -> None:
    """Any history (truncates, key moves, TOAST), or only its plain events, delivered with
    duplicates, shuffled and cut into batches: the split path writes what the event path
    writes, row for row (replica with tombstones, changelog, pending log)."""
    history = plain_only(history) or history if plain else history
    by_events = LocalWarehouse(tmp_path_factory.mktemp("events"), merge_on_read=on_read)
    split = LocalWarehouse(tmp_path_factory.mktemp("split"), merge_on_read=on_read)
    for batch in shuffled_batches(history, seed):
        by_events.apply(batch)
        apply_split(split, batch)
    for table in (REPLICA, CHANGELOG):
        assert stable(split.rows(table, include_deleted=True)) == stable(
            by_events.rows(table, include_deleted=True)
        )
    if not any(e.unchanged for e in history):  # a reordered TOAST update: see capa.apply
        got = normalise(split.rows(REPLICA, include_deleted=True))
        assert got == sequential_replica(history)
    split.compact()
    by_events.compact()
    assert stable(split.rows(REPLICA, include_deleted=True)) == stable(
        by_events.rows(REPLICA, include_deleted=True)
    )


@_SETTINGS
@given(histories(max_steps=20), st.integers(0, 2**32))
def test_plain_histories_take_the_column_path(history, seed) -> None:
    for batch in shuffled_batches(plain_only(history) or [history[0]], seed):
        tables, fallback = split_plain(batch)
        plain = all(is_plain(e) for e in batch)
        assert (not fallback) == plain
        assert sum(len(t) for t in tables) + len(fallback) == len(batch)


def test_what_falls_back_to_the_event_path() -> None:
    insert = event(Op.INSERT, 1, 10, after=full_row(1, 1))
    cases = {
        "truncate": event(Op.TRUNCATE, None, 11),
        "toast": event(Op.UPDATE, 1, 12, after={"id": 1, "name": "x"}, unchanged=("doc",)),
        "key move": event(Op.UPDATE, 2, 13, after=full_row(2, 1), before={"id": 1}),
        "after without key": event(Op.UPDATE, 1, 14, after={"name": "x"}),
        "key of another type": event(Op.UPDATE, 1, 15, after={**full_row(1, 1), "id": 1.0}),
        "delete image of another key": event(Op.DELETE, 1, 16, before={"id": 2}),
    }
    for name, odd in cases.items():
        tables, fallback = split_plain([insert, odd])
        assert (tables, fallback) == ([], [0, 1]), name
    other = event(Op.INSERT, 5, 17, after=full_row(5, 1), table="items")
    tables, fallback = split_plain([insert, cases["truncate"], other])
    assert [t.table for t in tables] == ["items"] and fallback == [0, 1]


def test_plain_deletes_and_updates_are_column_path() -> None:
    batch = [
        event(Op.INSERT, 1, 10, after=full_row(1, 1)),
        event(Op.UPDATE, 1, 11, after=full_row(1, 2), before={"id": 1, "name": "n1"}),
        event(Op.DELETE, 1, 12, before={"id": 1}),
        event(Op.DELETE, 2, 13),
    ]
    (cols,), fallback = split_plain(batch)
    assert fallback == []
    assert cols.images["id"] == [1, 1, 1, 2] and cols.ops == ["c", "u", "d", "d"]
    assert cols.images["name"] == ["n1", "n2", None, None]


def test_plan_keeps_the_last_event_per_key_in_position_order() -> None:
    batch = [
        event(Op.UPDATE, 2, 30, after=full_row(2, 3)),
        event(Op.INSERT, 1, 10, after=full_row(1, 1)),
        event(Op.INSERT, 2, 20, after=full_row(2, 2)),
        event(Op.UPDATE, 1, 40, after=full_row(1, 4)),
        event(Op.INSERT, 1, 10, after=full_row(1, 1)),  # redelivered
    ]
    (cols,), _ = split_plain(batch)
    plan = plan_columns(cols, None)
    assert [cols.positions[i] for i in plan.changelog] == sorted({e.position for e in batch})
    assert [cols.images["name"][i] for i in plan.changes] == ["n3", "n4"]
    later = plan_columns(cols, event(Op.TRUNCATE, None, 25).position)
    assert later.stale == 2 and [cols.images["name"][i] for i in later.changes] == ["n3", "n4"]


def test_types_are_widened_and_drift_is_reported(tmp_path) -> None:
    warehouse = LocalWarehouse(tmp_path / "lake")
    apply_split(warehouse, [event(Op.INSERT, 1, 10, after={"id": 1, "qty": 1})])
    apply_split(warehouse, [event(Op.INSERT, 2, 11, after={"id": 2, "qty": 2.5})])
    assert sorted(r["qty"] for r in warehouse.rows(REPLICA)) == [1.0, 2.5]
    with pytest.raises(SchemaDriftError):
        apply_split(warehouse, [event(Op.INSERT, 3, 12, after={"id": 3, "qty": "lots"})])


def test_decimal_rows_keep_their_values(tmp_path) -> None:
    warehouse = LocalWarehouse(tmp_path / "lake", merge_on_read=True)
    apply_split(warehouse, [event(Op.INSERT, k, 10 + k, after=full_row(k, k)) for k in (1, 2, 3)])
    rows = {r["id"]: r for r in warehouse.rows(REPLICA)}
    assert rows[3]["amount"] == Decimal("0.75") and rows[1]["doc"] == "doc1"
