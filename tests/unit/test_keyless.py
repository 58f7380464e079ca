"""Keyless tables (no primary key) replicate as multisets: the apply rules (``ReplicaState``),
the local warehouse (merge and merge-on-read), redelivery of any prefix, unmatched changes
told once, duplicate snapshot rows kept apart, and ``capa verify``'s multiset comparison."""

from __future__ import annotations

import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capa.apply import apply_isolating_failures, plan_table
from capa.errors import DecodeError
from capa.events import ChangeEvent, Column, Op, SourceKind
from capa.keyless import ROW_ID, UNMATCHED_PROPERTY
from capa.merge_rule import ReplicaState
from capa.position import pg_position
from capa.verify import compare, hash_rows
from capa.warehouse.local import LocalWarehouse
from capa.warehouse.local.delta_io import open_table
from connectors.datastream.normalizer import DatastreamNormalizer
from connectors.debezium.normalizer import DebeziumNormalizer

REPLICA = "raw.f2_public_log"
COLUMNS = (Column("level", "text"), Column("msg", "text"), Column("n", "int4"))
IMAGES = [
    {"level": lv, "msg": m, "n": n}
    for lv in ("info", "warn")
    for m in ("a", "b")
    for n in (1, None)
]


def keyless(
    op: Op,
    lsn: int,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    snapshot: bool = False,
    event_id: str = "",
) -> ChangeEvent:
    return ChangeEvent(
        source="f2",
        source_kind=SourceKind.POSTGRES,
        database="shop",
        schema="public",
        table="log",
        op=op,
        position=pg_position(lsn, snapshot=snapshot),
        commit_ts_us=1_700_000_000_000_000 + lsn,
        primary_key=(),
        key={},
        before=before,
        after=after,
        columns=COLUMNS,
        event_id=event_id,
    )


def image_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row.get("level"), row.get("msg"), row.get("n"))


def multiset(rows: Any) -> Counter[tuple[Any, ...]]:
    return Counter(image_key(r) for r in rows)


# --- a source-valid keyless history and its expected multiset ---------------------------------


@st.composite
def keyless_histories(draw: st.DrawFn, max_steps: int = 30) -> tuple[list[ChangeEvent], Counter]:
    """(events in position order, the source's final multiset). A snapshot of duplicate rows
    (one position, numbered as the normalisers number them), then inserts, updates and deletes
    with full ``before`` images (REPLICA IDENTITY FULL), and the odd truncate."""
    snapshot = draw(st.lists(st.sampled_from(IMAGES), max_size=6))
    steps = draw(
        st.lists(st.tuples(st.integers(0, 99), st.sampled_from(IMAGES)), max_size=max_steps)
    )
    rows: list[dict[str, Any]] = []
    events: list[ChangeEvent] = []
    seen: Counter[str] = Counter()
    for image in snapshot:  # duplicate snapshot rows share position and image
        read = keyless(Op.READ, 500, after=image, snapshot=True)
        ordinal = seen[read.event_id]
        seen[read.event_id] += 1
        events.append(_numbered(read, ordinal))
        rows.append(image)
    for n, (dice, image) in enumerate(steps):
        lsn = 1000 + 3 * n
        if dice < 3:
            rows.clear()
            events.append(keyless(Op.TRUNCATE, lsn))
        elif not rows or dice < 45:
            rows.append(image)
            events.append(keyless(Op.INSERT, lsn, after=image))
        elif dice < 75:
            old = rows.pop(dice % len(rows))
            rows.append(image)
            events.append(keyless(Op.UPDATE, lsn, before=old, after=image))
        else:
            old = rows.pop(dice % len(rows))
            events.append(keyless(Op.DELETE, lsn, before=old))
    return events, multiset(rows)


def _numbered(event: ChangeEvent, ordinal: int) -> ChangeEvent:
    from dataclasses import replace

    from capa.events import occurrence_id

    return replace(event, event_id=occurrence_id(event.event_id, ordinal))


def redeliveries(events: list[ChangeEvent], seed: int) -> list[list[ChangeEvent]]:
    """Batches in order where each batch may start before the previous one ended (a crash
    redelivers from the last commit), and the last ones replay a random prefix again."""
    rng = random.Random(seed)
    batches, start = [], 0
    while start < len(events):
        end = rng.randint(start + 1, len(events))
        batches.append(events[start:end])
        start = rng.randint(max(0, start - 3), end)  # back up to before the end: redelivery
    if events:
        batches.append(events[: rng.randint(1, len(events))])
    return batches


def replay(batches: list[list[ChangeEvent]], state: ReplicaState | None = None) -> ReplicaState:
    state = state or ReplicaState()
    for batch in batches:
        state.apply(plan_table(batch, state.watermark, keyless=True))
    return state


@settings(max_examples=300, deadline=None)
@given(keyless_histories(), st.integers(0, 2**32))
def test_any_redelivery_of_prefixes_gives_the_source_multiset(history: Any, seed: int) -> None:
    events, expected = history
    state = replay(redeliveries(events, seed))
    assert multiset(state.visible().values()) == expected


@settings(max_examples=100, deadline=None)
@given(keyless_histories(), st.integers(0, 2**32))
def test_replaying_a_prefix_after_everything_changes_nothing(history: Any, seed: int) -> None:
    events, _ = history
    state = replay([events] if events else [])
    before = {k: dict(v) for k, v in state.rows.items()}
    cut = random.Random(seed).randint(0, len(events))
    if cut:
        assert state.apply(plan_table(events[:cut], state.watermark, keyless=True)) == 0
    assert state.rows == before


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(keyless_histories(max_steps=16), st.integers(0, 2**32), st.booleans())
def test_local_warehouse_gives_the_source_multiset_under_redelivery(
    tmp_path_factory: pytest.TempPathFactory, history: Any, seed: int, merge_on_read: bool
) -> None:
    events, expected = history
    warehouse = LocalWarehouse(tmp_path_factory.mktemp("wh"), merge_on_read=merge_on_read)
    reference = ReplicaState()
    for batch in redeliveries(events, seed):
        warehouse.apply(batch)
        reference.apply(plan_table(batch, reference.watermark, keyless=True))
    assert multiset(warehouse.rows(REPLICA)) == expected
    replica = {r[ROW_ID]: r["_capa_deleted"] for r in warehouse.rows(REPLICA, include_deleted=True)}
    assert replica == {k[0]: r["_capa_deleted"] for k, r in reference.rows.items()}


# --- the case: an append-only log ------------------------------------------------------


def test_append_only_log_replicates_every_row_without_a_warning_per_event(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The reported 45,368-row log table, scaled down: every row (duplicates included)
    reaches the replica, no dead letter, no warning line per event."""
    rng = random.Random(7)
    events = [keyless(Op.INSERT, 100 + n, after=rng.choice(IMAGES)) for n in range(2_000)]
    warehouse = LocalWarehouse(tmp_path)
    caplog.set_level(logging.WARNING)
    letters = []
    for start in range(0, len(events), 500):
        letters += apply_isolating_failures(warehouse.apply, events[start : start + 500])
    letters += apply_isolating_failures(warehouse.apply, events[:700])  # a redelivery
    assert letters == []
    assert warehouse.row_count(REPLICA) == 2_000
    assert multiset(warehouse.rows(REPLICA)) == multiset(e.after for e in events)
    assert warehouse.row_count(REPLICA + "_changelog") == 2_000
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) <= 1


def test_changes_without_a_before_image_are_kept_and_told_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without REPLICA IDENTITY FULL an update has no ``before``: the changelog keeps it, the
    replica still gets the new image, the table is marked diverged and ONE warning says why."""
    a, b = IMAGES[0], IMAGES[1]
    inserts = [keyless(Op.INSERT, 10 + n, after=a) for n in range(3)]
    blind = [keyless(Op.UPDATE, 20 + n, after=b) for n in range(5)]  # no before image
    warehouse = LocalWarehouse(tmp_path)
    caplog.set_level(logging.WARNING)
    reports = [warehouse.apply(inserts), warehouse.apply(blind[:2]), warehouse.apply(blind)]
    assert [r.tables[0].unmatched for r in reports] == [0, 2, 3]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "REPLICA IDENTITY FULL" in warnings[0], warnings
    assert multiset(warehouse.rows(REPLICA)) == Counter({image_key(a): 3, image_key(b): 5})
    assert warehouse.row_count(REPLICA + "_changelog") == 8
    table = open_table(warehouse.table_path("raw", "f2_public_log"))
    assert table is not None
    assert '"count": 5' in table.metadata().configuration[UNMATCHED_PROPERTY]


def test_an_unmatched_delete_is_counted_once_also_when_redelivered(tmp_path: Path) -> None:
    a, b = IMAGES[0], IMAGES[1]
    events = [keyless(Op.INSERT, 10, after=a), keyless(Op.DELETE, 11, before=b)]
    warehouse = LocalWarehouse(tmp_path)
    reports = [warehouse.apply(events), warehouse.apply(events), warehouse.apply(events[1:])]
    assert [r.tables[0].unmatched for r in reports] == [1, 0, 0]
    assert multiset(warehouse.rows(REPLICA)) == Counter({image_key(a): 1})
    table = open_table(warehouse.table_path("raw", "f2_public_log"))
    assert table is not None
    assert '"count": 1' in table.metadata().configuration[UNMATCHED_PROPERTY]


def test_a_delete_removes_one_duplicate_and_the_oldest_first() -> None:
    a = IMAGES[0]
    events = [keyless(Op.INSERT, 10 + n, after=a) for n in range(3)]
    events.append(keyless(Op.DELETE, 20, before=a))
    state = replay([events])
    live = sorted(r["_capa_position"] for r in state.visible().values())
    assert live == [pg_position(11, snapshot=False), pg_position(12, snapshot=False)]


def test_a_delete_never_removes_a_later_insert() -> None:
    """A delete whose row the replica never held (capture started late) matches nothing,
    also when an equal row is inserted after it."""
    a = IMAGES[0]
    state = ReplicaState()
    plan = plan_table(
        [keyless(Op.DELETE, 10, before=a), keyless(Op.INSERT, 11, after=a)], keyless=True
    )
    state.apply(plan)
    assert multiset(state.visible().values()) == Counter({image_key(a): 1})


def test_toast_unchanged_columns_come_from_the_full_before_image() -> None:
    a = {"level": "info", "msg": "long text", "n": 1}
    update = ChangeEvent(
        **{
            **{f: getattr(keyless(Op.UPDATE, 11), f) for f in ChangeEvent.__dataclass_fields__},
            "before": a,
            "after": {"level": "warn", "n": 1},
            "unchanged": ("msg",),
            "event_id": "",
        }
    )
    state = replay([[keyless(Op.INSERT, 10, after=a), update]])
    assert multiset(state.visible().values()) == Counter({("warn", "long text", 1): 1})


def test_adapters_that_do_not_resolve_keyless_plans_still_refuse_them() -> None:
    with pytest.raises(DecodeError, match="has no primary key"):
        plan_table([keyless(Op.INSERT, 10, after=IMAGES[0])])


def test_mixed_keyed_and_keyless_events_of_one_table_are_refused() -> None:
    from test_apply_cases import event, full_row

    keyed = event(Op.INSERT, 1, 10, after=full_row(1, 1), table="log")
    with pytest.raises(DecodeError, match="different primary keys"):
        plan_table([keyed, keyless(Op.INSERT, 11, after=IMAGES[0])], keyless=True)


# --- normalisers: keyless event ids --------------------------------------------------------------


def debezium_snapshot(row: dict[str, Any], op: str = "r") -> dict[str, Any]:
    source = {"connector": "postgresql", "db": "db", "schema": "public", "table": "log"}
    value = {
        "op": op,
        "after": row,
        "source": {**source, "lsn": 4242, "ts_ms": 1, "snapshot": "true" if op == "r" else "false"},
    }
    return {"destination": "f2.public.log", "key": None, "value": value}


def test_duplicate_snapshot_rows_get_distinct_ids_and_a_rerun_the_same_ones() -> None:
    rows = [{"msg": "a"}, {"msg": "a"}, {"msg": "b"}, {"msg": "a"}]
    normalizer, rerun = DebeziumNormalizer(), DebeziumNormalizer()
    first = [normalizer.normalize(debezium_snapshot(r)) for r in rows]
    again = [rerun.normalize(debezium_snapshot(r)) for r in rows]
    ids = [e.event_id for e in first]  # type: ignore[union-attr]
    assert len(set(ids)) == 4
    assert ids == [e.event_id for e in again]  # type: ignore[union-attr]
    assert all(e.primary_key == () for e in first)  # type: ignore[union-attr]


def test_keyless_stream_events_are_named_by_position_and_image() -> None:
    """A redelivered change keeps its id (no ordinal outside a snapshot)."""
    normalizer = DebeziumNormalizer()
    record = debezium_snapshot({"msg": "a"}, op="c")
    one, two = normalizer.normalize(record), normalizer.normalize(record)
    assert one.event_id == two.event_id  # type: ignore[union-attr]


def test_datastream_backfill_numbers_duplicate_keyless_rows() -> None:
    def record(msg: str) -> dict[str, Any]:
        meta = {"schema": "public", "table": "log", "primary_keys": [], "lsn": "0/10"}
        return {
            "read_method": "postgresql-backfill",
            "source_metadata": meta,
            "source_timestamp": "2026-01-01T00:00:00Z",
            "payload": {"msg": msg},
        }

    normalizer = DatastreamNormalizer(source="f2")
    events = [normalizer.normalize(record(m)) for m in ("a", "a", "b")]
    assert len({e.event_id for e in events}) == 3  # type: ignore[union-attr]


# --- capa verify: multisets ---------------------------------------------------------------------


def test_verify_compares_keyless_tables_as_multisets() -> None:
    columns = ["msg"]
    source = hash_rows([{"msg": "a"}, {"msg": "a"}, {"msg": "b"}], (), columns)
    same = hash_rows([{"msg": "b"}, {"msg": "a"}, {"msg": "a"}], (), columns)
    assert compare("raw.t", source, same).ok
    short = compare("raw.t", source, hash_rows([{"msg": "a"}, {"msg": "b"}], (), columns))
    assert not short.ok and len(short.missing) == 1 and not short.extra
    extra = compare("raw.t", source, hash_rows([{"msg": "a"}] * 3 + [{"msg": "b"}], (), columns))
    assert not extra.ok and len(extra.extra) == 1 and not extra.missing


# --- the bridge's one warning about replica identities --------------------------------------------


def test_the_bridge_names_captured_keyless_tables_without_full_identity_once() -> None:
    from connectors.debezium.identity import KeylessTable, captured, identity_warning

    tables = [
        KeylessTable("public", "app_log", "d"),
        KeylessTable("public", "audit", "f"),
        KeylessTable("public", "events", "i"),
        KeylessTable("other", "app_log", "n"),
    ]
    chosen = captured(tables, "public\\.app_log, public\\.a.*,public.events")
    assert [t.name for t in chosen] == ["public.app_log", "public.audit", "public.events"]
    assert captured(tables, None) == tables
    message = identity_warning(chosen)
    assert message is not None
    assert "public.app_log (REPLICA IDENTITY DEFAULT)" in message
    assert "public.events (REPLICA IDENTITY USING INDEX)" in message
    assert 'ALTER TABLE "public"."app_log" REPLICA IDENTITY FULL' in message
    assert "audit" not in message  # FULL: its updates and deletes are matched
    assert identity_warning([tables[1]]) is None


def test_the_bridge_names_tables_keyed_by_a_unique_index_without_an_identity() -> None:
    """A unique index but no primary key: keyed by the index, so USING INDEX (or FULL) is
    enough, and the fix names the index; DEFAULT is refused by PostgreSQL."""
    from connectors.debezium.identity import KeylessTable, identity_warning

    tables = [
        KeylessTable("public", "codes", "d", "codes_code"),
        KeylessTable("public", "ok_index", "i", "ok_index_code"),
        KeylessTable("public", "ok_full", "f", "ok_full_code"),
    ]
    message = identity_warning(tables)
    assert message is not None
    assert "public.codes (REPLICA IDENTITY DEFAULT, keyed by unique index codes_code)" in message
    assert 'ALTER TABLE "public"."codes" REPLICA IDENTITY USING INDEX "codes_code"' in message
    assert "ok_index" not in message and "ok_full" not in message
    assert identity_warning(tables[1:]) is None
