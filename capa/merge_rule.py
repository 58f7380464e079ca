"""The merge-resolution rule, stated once; every engine's merge text is generated here.

A replica holds one row per key. The planned rows of a batch (one per key and batch, see
:mod:`capa.apply`) are merged into it by ONE rule:

1. **Stale guard**: a row takes effect only if its ``_capa_position`` is above the
   position the key already has (``S.pos > T.pos``); an older or equal row is a no-op, so
   replays and late older events change nothing.
2. **Latest wins**: of several rows for a key, the one with the highest position is the
   replica row. A tombstone (``_capa_deleted``) is a row like any other, so a later-arriving
   older event stays a no-op after a delete.
3. **Keep**: a column whose ``_capa_keep__<column>`` flag is true (a TOAST "unchanged"
   value) takes the value the key had before (the target's), NULL if it had none.
4. **Truncate**: target rows below a truncate position that the batch does not touch are
   deleted in the same statement.

:class:`ReplicaState` is the rule over a dict: the executable specification that the
property tests compare every engine with. The renderers below turn the rule into each
engine's text: the delta-rs merge builder
(DataFusion SQL, :data:`DELTA`), BigQuery's ``MERGE`` (:data:`BIGQUERY`, assembled in
:mod:`capa.warehouse.sql`) and DuckDB's merge-on-read resolution of a pending log over the
base table (:func:`replica_sql` / :func:`compact_sql`, :data:`DUCKDB`), which applies rules
1-3 to rows in arrival order with window functions. Identifiers are always quoted; values
are literals only where the engine cannot bind them (delta-rs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from capa.apply import KeyTuple, RowChange, TablePlan, keyless_target, resolve_plan
from capa.errors import WarehouseTerminalError
from capa.warehouse.base import META_POSITION

KEEP_PREFIX = "_capa_keep__"
PENDING_SEQ = "_capa_pending_seq"


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one engine spells identifiers, parameters, a conditional and the merge aliases."""

    name: str
    quote_char: str
    param_prefix: str = "@"
    target: str = "T"
    source: str = "S"
    backslash_escapes: bool = False  # BigQuery escapes a quote with a backslash

    def ident(self, name: str) -> str:
        q = self.quote_char
        if self.backslash_escapes:
            return q + name.replace("\\", "\\\\").replace(q, "\\" + q) + q
        return q + name.replace(q, q + q) + q

    def table(self, parts: Sequence[str]) -> str:
        return ".".join(self.ident(p) for p in parts)

    def param(self, name: str) -> str:
        return self.param_prefix + name

    def when(self, condition: str, then: str, otherwise: str) -> str:
        if self.name == "bigquery":
            return f"IF({condition}, {then}, {otherwise})"
        return f"CASE WHEN {condition} THEN {then} ELSE {otherwise} END"


BIGQUERY = Dialect("bigquery", "`", backslash_escapes=True)
DELTA = Dialect("delta", '"', target="t", source="s")  # delta-rs merge builder (DataFusion)
DUCKDB = Dialect("duckdb", '"')


# --- the rule over a dict: the executable specification ---------------------------------------------------------------


@dataclass
class ReplicaState:
    """The target side of the apply rules over a dict: the executable specification of
    rules 1-4, which every engine's rendering below must agree with."""

    rows: dict[KeyTuple, dict[str, Any]] = field(default_factory=dict)
    watermark: str | None = None

    def apply(self, plan: TablePlan) -> int:
        """Apply a plan (a keyless one is resolved against these rows first); returns the
        number of rows written."""
        if plan.needs_target:
            plan = resolve_plan(plan, keyless_target(plan, self.rows.values()))
        if plan.truncate_position and _after(plan.truncate_position, self.watermark):
            self.watermark = plan.truncate_position
            self.rows = {
                k: r for k, r in self.rows.items() if r["_capa_position"] >= self.watermark
            }
        return sum(
            self._apply_change(c) for c in plan.changes if _after(c.position, self.watermark)
        )

    def _apply_change(self, change: RowChange) -> bool:
        current = self.rows.get(change.key)
        if current is not None and change.position <= current["_capa_position"]:
            return False
        row = dict(change.values)
        row.update({name: (current or {}).get(name) for name in change.keep})
        row.update(
            _capa_position=change.position,
            _capa_deleted=change.deleted,
            _capa_op=change.op.value,
            _capa_event_id=change.event_id,
        )
        self.rows[change.key] = row
        return True

    def visible(self) -> dict[KeyTuple, dict[str, Any]]:
        """Rows as readers see them (tombstones hidden)."""
        return {k: r for k, r in self.rows.items() if not r["_capa_deleted"]}


def _after(position: str, watermark: str | None) -> bool:
    return watermark is None or position > watermark


# --- engine renderings ---------------------------------------------------------------------


def _t(d: Dialect, column: str) -> str:
    return f"{d.target}.{d.ident(column)}"


def _s(d: Dialect, column: str) -> str:
    return f"{d.source}.{d.ident(column)}"


def key_match(d: Dialect, keys: Sequence[str]) -> str:
    """The merge's ON clause: target and source rows of one key."""
    if not keys:
        raise WarehouseTerminalError("cannot merge a table without a primary key")
    return " AND ".join(f"{_t(d, k)} = {_s(d, k)}" for k in keys)


def guard(d: Dialect, position: str = META_POSITION) -> str:
    """Rule 1: the source row takes effect only above the target's position."""
    return f"{_s(d, position)} > {_t(d, position)}"


def value(d: Dialect, column: str, keep: bool) -> str:
    """Rule 3: the value a matched row's ``column`` takes."""
    if not keep:
        return _s(d, column)
    return d.when(_s(d, KEEP_PREFIX + column), _t(d, column), _s(d, column))


def updates(d: Dialect, columns: Sequence[str], keep: Sequence[str]) -> dict[str, str]:
    """Quoted column -> its value when a matched row is updated."""
    kept = set(keep)
    return {d.ident(c): value(d, c, c in kept) for c in columns}


def inserts(d: Dialect, columns: Sequence[str]) -> dict[str, str]:
    """Quoted column -> its value when a new key is inserted (the source row as it is)."""
    return {d.ident(c): _s(d, c) for c in columns}


def below_truncate(
    d: Dialect, truncate: str, position: str = META_POSITION, *, in_merge: bool = True
) -> str:
    """Rule 4: target rows the batch does not touch, below the truncate ``truncate`` (a
    parameter or literal in the dialect's spelling), are deleted. ``in_merge=False``: the
    condition of a plain DELETE (a batch whose only change is the truncate)."""
    column = _t(d, position) if in_merge else d.ident(position)
    return f"{column} < {truncate}"


def latest_per_key(d: Dialect, keys: Sequence[str], position: str = META_POSITION) -> str:
    """Rule 2 over a staged source: the condition selecting each key's latest row."""
    partition = ", ".join(d.ident(k) for k in keys)
    return f"ROW_NUMBER() OVER (PARTITION BY {partition} ORDER BY {d.ident(position)} DESC) = 1"


# --- merge-on-read: rules 1-3 over a pending log (DuckDB) ------------------------------------


def keep_columns(pending_columns: Sequence[str], base_columns: Sequence[str]) -> list[str]:
    """Base columns that have a keep flag column in the pending table."""
    flags = {c[len(KEEP_PREFIX) :] for c in pending_columns if c.startswith(KEEP_PREFIX)}
    return [c for c in base_columns if c in flags]


def _resolved_cte(
    base: str, pending: str, key: Sequence[str], columns: Sequence[str], keep: Sequence[str]
) -> str:
    """CTEs ``touched`` (pending keys) and ``resolved`` (one row per touched key): base
    rows arrived first (sequence 0), pending rows in ``_capa_pending_seq`` order."""
    q = DUCKDB.ident
    keys = ", ".join(q(k) for k in key)
    pos = q(META_POSITION)
    cols = ", ".join(q(c) for c in columns)
    base_flags = "".join(f", FALSE AS {q(KEEP_PREFIX + c)}" for c in keep)
    pending_flags = "".join(
        f", coalesce({q(KEEP_PREFIX + c)}, FALSE) AS {q(KEEP_PREFIX + c)}" for c in keep
    )
    resolved = ", ".join(_kept(c) if c in keep else q(c) for c in columns)
    return f"""
touched AS (SELECT DISTINCT {keys} FROM {pending}),
arrived AS (
    SELECT {cols}, 0::BIGINT AS __seq{base_flags} FROM {base} SEMI JOIN touched USING ({keys})
    UNION ALL BY NAME
    SELECT {cols}, {q(PENDING_SEQ)}::BIGINT AS __seq{pending_flags} FROM {pending}
),
guarded AS (
    SELECT *, max({pos}) OVER (PARTITION BY {keys} ORDER BY __seq
        ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS __before
    FROM arrived
),
effective AS (SELECT * FROM guarded WHERE __before IS NULL OR {pos} > __before),
ranked AS (
    SELECT {resolved},
        row_number() OVER (PARTITION BY {keys} ORDER BY {pos} DESC) AS __rank
    FROM effective
    WINDOW chain AS (PARTITION BY {keys} ORDER BY {pos}
        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
),
resolved AS (SELECT {cols} FROM ranked WHERE __rank = 1)"""


def _kept(column: str) -> str:
    """Rule 3, recursively: the last value of the key's effective rows that did not keep."""
    flag, col = DUCKDB.ident(KEEP_PREFIX + column), DUCKDB.ident(column)
    return (
        f"(last_value(CASE WHEN NOT {flag} THEN struct_pack(v := {col}) END IGNORE NULLS)"
        f" OVER chain).v AS {col}"
    )


def compact_sql(
    base: str, pending: str, key: Sequence[str], columns: Sequence[str], keep: Sequence[str]
) -> str:
    """SELECT of the resolved rows of the keys the pending log touches."""
    cols = ", ".join(DUCKDB.ident(c) for c in columns)
    return f"WITH {_resolved_cte(base, pending, key, columns, keep)}\nSELECT {cols} FROM resolved"


def replica_sql(
    base: str, pending: str, key: Sequence[str], columns: Sequence[str], keep: Sequence[str]
) -> str:
    """SELECT of the whole replica (tombstones included): resolved touched keys + the rest."""
    keys = ", ".join(DUCKDB.ident(k) for k in key)
    cols = ", ".join(DUCKDB.ident(c) for c in columns)
    return (
        f"{compact_sql(base, pending, key, columns, keep)}\n"
        f"UNION ALL BY NAME\n"
        f"SELECT {cols} FROM {base} ANTI JOIN touched USING ({keys})"
    )
