"""Shared apply cases: a realistic event-history strategy and an independent reference.

``sequential_replica`` is written from the apply rules in plain words (apply every distinct
event once, in position order), independently of :mod:`capa.apply`, so the adapters and
the planner are checked against it. Other apply/warehouse tests import this module.
"""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from capa.events import ChangeEvent, Column, Op, SourceKind
from capa.position import pg_position

KEYS = (1, 2, 3, 4)
COLUMNS = (
    Column("id", "int4"),
    Column("name", "text"),
    Column("amount", "numeric(10,2)"),
    Column("doc", "text"),
)


def event(
    op: Op,
    key: int | None,
    lsn: int,
    *,
    after: dict[str, Any] | None = None,
    before: dict[str, Any] | None = None,
    unchanged: tuple[str, ...] = (),
    table: str = "orders",
) -> ChangeEvent:
    keyed = op is not Op.TRUNCATE
    return ChangeEvent(
        source="f2",
        source_kind=SourceKind.POSTGRES,
        database="shop",
        schema="public",
        table=table,
        op=op,
        position=pg_position(lsn, snapshot=False),
        commit_ts_us=1_700_000_000_000_000 + lsn,
        primary_key=("id",) if keyed else (),
        key={"id": key} if keyed else {},
        before=before,
        after=after,
        columns=COLUMNS,
        unchanged=unchanged,
    )


def full_row(key: int, n: int) -> dict[str, Any]:
    return {"id": key, "name": f"n{n}", "amount": Decimal(n) / 4, "doc": f"doc{n}"}


@st.composite
def histories(draw: st.DrawFn, *, toast: bool = False, max_steps: int = 24) -> list[ChangeEvent]:
    """A source-valid history in position order: inserts, updates (optionally with TOAST
    ``unchanged``), deletes, primary-key moves and truncates."""
    steps = draw(
        st.lists(
            st.tuples(st.sampled_from(KEYS), st.integers(0, 99)), min_size=1, max_size=max_steps
        )
    )
    live: set[int] = set()
    events: list[ChangeEvent] = []
    for n, (key, dice) in enumerate(steps):
        lsn = 1000 + 7 * n
        events.append(_next_event(key, dice, n, lsn, live, toast))
    return events


def _next_event(key: int, dice: int, n: int, lsn: int, live: set[int], toast: bool) -> ChangeEvent:
    if dice < 4:
        live.clear()
        return event(Op.TRUNCATE, None, lsn)
    if key not in live:
        live.add(key)
        return event(Op.INSERT, key, lsn, after=full_row(key, n))
    if dice < 25:
        live.discard(key)
        before = {"id": key} if dice % 2 else full_row(key, n)
        return event(Op.DELETE, key, lsn, before=before)
    free = [k for k in KEYS if k not in live]
    if dice < 35 and free:
        live.discard(key)
        live.add(free[0])
        return event(Op.UPDATE, free[0], lsn, after=full_row(free[0], n), before={"id": key})
    if toast and dice % 3 == 0:
        after = {k: v for k, v in full_row(key, n).items() if k != "doc"}
        return event(Op.UPDATE, key, lsn, after=after, unchanged=("doc",))
    return event(Op.UPDATE, key, lsn, after=full_row(key, n))


def sequential_replica(events: list[ChangeEvent]) -> dict[int, dict[str, Any]]:
    """Apply each distinct event once in position order: key -> row (tombstones included)."""
    rows: dict[int, dict[str, Any]] = {}
    distinct = {e.event_id: e for e in events}.values()
    for e in sorted(distinct, key=lambda e: e.position):
        if e.op is Op.TRUNCATE:
            rows.clear()
            continue
        if e.op is Op.DELETE:
            rows[e.key["id"]] = {
                **dict.fromkeys(("name", "amount", "doc")),
                **e.before,
                "_deleted": True,
                "_pos": e.position,
            }
            continue
        if e.before and e.before.get("id") not in (None, e.key["id"]):
            rows[e.before["id"]] = {
                "id": e.before["id"],
                "name": None,
                "amount": None,
                "doc": None,
                "_deleted": True,
                "_pos": e.position,
            }
        previous = rows.get(e.key["id"], {})
        row = {**dict.fromkeys(("name", "amount", "doc")), **e.after}
        row.update({c: previous.get(c) for c in e.unchanged})
        rows[e.key["id"]] = {**row, "_deleted": False, "_pos": e.position}
    return rows


def shuffled_batches(
    events: list[ChangeEvent], seed: int, *, shuffle: bool = True
) -> list[list[ChangeEvent]]:
    """Duplicate some events, shuffle (optionally), cut into 1-4 batches."""
    rng = random.Random(seed)
    delivered = events + [e for e in events if rng.random() < 0.3]
    if shuffle:
        rng.shuffle(delivered)
    else:
        delivered.sort(key=lambda e: e.position)
    cuts = sorted(rng.sample(range(1, len(delivered)), min(rng.randint(0, 3), len(delivered) - 1)))
    return [delivered[a:b] for a, b in zip([0, *cuts], [*cuts, len(delivered)], strict=True)]


def normalise(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Warehouse rows (with ``_capa_*`` metadata) -> the reference's shape."""
    out = {}
    for row in rows:
        out[row["id"]] = {
            "id": row["id"],
            "name": row.get("name"),
            "amount": None if row.get("amount") is None else Decimal(row["amount"]),
            "doc": row.get("doc"),
            "_deleted": bool(row["_capa_deleted"]),
            "_pos": row["_capa_position"],
        }
    return out


def test_reference_applies_a_simple_history() -> None:
    history = [
        event(Op.INSERT, 1, 10, after=full_row(1, 1)),
        event(
            Op.UPDATE, 1, 11, after={"id": 1, "name": "x", "amount": Decimal(1)}, unchanged=("doc",)
        ),
        event(Op.INSERT, 2, 12, after=full_row(2, 2)),
        event(Op.DELETE, 2, 13, before={"id": 2}),
    ]
    rows = sequential_replica(history)
    assert rows[1]["name"] == "x" and rows[1]["doc"] == "doc1"
    assert rows[2]["_deleted"] is True
