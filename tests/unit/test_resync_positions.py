"""Positions of ``capa resync`` against the apply rule: an incremental-snapshot read sorts
at its high watermark's LSN in the snapshot phase (``L.0``), so a change streamed before it
loses to it and a change streamed after it (``L.1`` and later) wins, whatever order the
events reach the replica in; the sweep's deletes (at the resync's start ``S.0``) lose to the
resync's reads and to later changes. Also the notification and signal parsing."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from capa.apply import plan_table
from capa.config import CapaSettings
from capa.errors import DecodeError
from capa.events import ChangeEvent, Op
from capa.merge_rule import ReplicaState
from capa.position import pg_position
from capa_app.commands.resync import stray_delete
from connectors.debezium.normalizer import DebeziumNormalizer
from connectors.debezium.signals import parse_notification, split_name

NORMALIZER = DebeziumNormalizer(source="f2")


def debezium(op: str, lsn: int, row_id: int, name: str | None, snapshot: str = "false") -> Any:
    """An embedded-engine record (schemaless JSON) of ``public.t``."""
    image = None if name is None else {"id": row_id, "name": name}
    value = {
        "op": op,
        "before": {"id": row_id, "name": None} if op == "d" else None,
        "after": image,
        "source": {
            "connector": "postgresql",
            "name": "f2",
            "db": "shop",
            "schema": "public",
            "table": "t",
            "lsn": lsn,
            "snapshot": snapshot,
            "ts_ms": 1,
        },
    }
    record = {"destination": "f2.public.t", "key": json.dumps({"id": row_id})}
    return NORMALIZER.normalize({**record, "value": json.dumps(value)})


def read(lsn: int, row_id: int, name: str) -> ChangeEvent:
    """A chunk row emitted at the high watermark (``lsn``) of its window."""
    return debezium("r", lsn, row_id, name, snapshot="incremental")


def final_rows(events: list[ChangeEvent]) -> dict[int, str | None]:
    """Every arrival order, one event per batch and all in one batch, must agree."""
    results = set()
    for order in itertools.permutations(events):
        for batches in ([[e] for e in order], [list(order)]):
            state = ReplicaState()
            for batch in batches:
                state.apply(plan_table(batch, state.watermark))
            visible = state.visible()
            results.add(tuple(sorted((k[0], r.get("name")) for k, r in visible.items())))
    assert len(results) == 1, results
    return dict(results.pop())


def test_an_incremental_read_is_a_snapshot_phase_position_at_its_lsn() -> None:
    event = read(0x200, 1, "a")
    assert event.op is Op.READ and event.position == pg_position(0x200, snapshot=True)
    assert event.position.endswith(".0")


def test_a_read_without_an_lsn_takes_the_highest_streamed_lsn() -> None:
    """Debezium may send an incremental read without source.lsn (no offsets yet when the
    engine started); the bridge then supplies the highest LSN it has streamed."""
    value = {
        "op": "r",
        "after": {"id": 1, "name": "a"},
        "source": {"connector": "postgresql", "schema": "public", "table": "t"},
    }
    record = {"destination": "f2.public.t", "key": '{"id": 1}'}
    streamed: list[int | None] = [None]
    normalizer = DebeziumNormalizer(source="f2", stream_lsn=lambda: streamed[0])
    incremental = {**value, "source": {**value["source"], "snapshot": "incremental"}}
    with pytest.raises(DecodeError, match=r"no source\.lsn"):
        normalizer.normalize({**record, "value": json.dumps(incremental)})
    streamed[0] = 0x300
    event = normalizer.normalize({**record, "value": json.dumps(incremental)})
    assert event.position == pg_position(0x300, snapshot=True)
    own = {**incremental, "source": {**incremental["source"], "lsn": 0x400}}
    assert normalizer.normalize({**record, "value": json.dumps(own)}).position.startswith(
        f"{0x400:016x}"
    )
    initial = {**value, "source": {**value["source"], "snapshot": "true", "lsn": 0x100}}
    assert normalizer.normalize({**record, "value": json.dumps(initial)}).position == (
        pg_position(0x100, snapshot=True)
    )  # an initial-snapshot read keeps its own LSN


def test_a_read_beats_changes_before_its_window_and_loses_to_later_ones() -> None:
    before = debezium("u", 0x100, 1, "a")  # streamed before the low watermark: in the read
    later = debezium("u", 0x300, 1, "b")  # streamed after the high watermark
    assert final_rows([before, read(0x200, 1, "a"), later]) == {1: "b"}
    assert final_rows([before, read(0x200, 1, "a")]) == {1: "a"}


def test_a_read_never_resurrects_a_row_deleted_after_its_window() -> None:
    assert final_rows([read(0x200, 1, "a"), debezium("d", 0x300, 1, None)]) == {}


def test_a_change_at_the_reads_own_lsn_wins() -> None:
    assert final_rows([read(0x200, 1, "a"), debezium("u", 0x200, 1, "b")]) == {1: "b"}


def test_the_sweep_removes_stray_rows_but_never_a_row_the_resync_read() -> None:
    start = pg_position(0x150, snapshot=True)
    settings = CapaSettings()

    def swept(row_id: int) -> ChangeEvent:
        return stray_delete(settings, "public", "t", ("id",), {"id": row_id}, start, "sig")

    stray = debezium("c", 0x50, 7, "stray")  # in the replica, gone from the source
    kept = debezium("c", 0x60, 8, "old")  # still at the source: re-read at 0x200
    events = [stray, kept, read(0x200, 8, "new"), swept(7), swept(8)]
    assert final_rows(events) == {8: "new"}
    assert final_rows([swept(9), debezium("c", 0x400, 9, "back")]) == {9: "back"}


def test_notifications_parse_with_and_without_schemas() -> None:
    payload = {
        "id": "capa-resync-1",
        "aggregate_type": "Incremental Snapshot",
        "type": "COMPLETED",
        "additional_data": {"connector_name": "f2"},
        "timestamp": "1",
    }
    for value in (payload, {"schema": {}, "payload": payload}):
        note = parse_notification(json.dumps(value).encode())
        assert (note.id, note.type, note.data["connector_name"]) == (
            "capa-resync-1",
            "COMPLETED",
            "f2",
        )
    with pytest.raises(DecodeError):
        parse_notification(b"[1]")


def test_table_names_default_to_public() -> None:
    assert split_name("orders") == ("public", "orders")
    assert split_name("sales.orders") == ("sales", "orders")


def test_the_bridge_reads_lsns_of_positions_and_signal_rows() -> None:
    from capa.position import pg_position_lsn as position_lsn
    from connectors.debezium.bridge import _source_lsn

    assert position_lsn(pg_position(0x200, snapshot=False)) == 0x200
    assert position_lsn("0000002d00000a480003.00000000000000000000.00000001") is None
    row = {"op": "c", "source": {"lsn": 0x500}, "after": {"id": "x"}}
    assert _source_lsn(json.dumps(row)) == 0x500
    assert _source_lsn(json.dumps({"schema": {}, "payload": row})) == 0x500
    assert _source_lsn(None) is None and _source_lsn("not json") is None
