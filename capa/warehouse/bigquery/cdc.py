"""``cdc`` apply mode, pure part: a table plan -> the rows sent to BigQuery CDC.

BigQuery applies CDC rows per primary key: the row with the greatest
``_CHANGE_SEQUENCE_NUMBER`` wins; ``UPSERT`` replaces the whole row, ``DELETE`` removes it.
capa's apply rules (:mod:`capa.apply`) map onto that as follows:

1. every :class:`~capa.apply.RowChange` of the plan is one ``UPSERT`` of the full row with
   the change's metadata and ``_CHANGE_SEQUENCE_NUMBER = change_sequence_number(position)``
   (:func:`capa.position.change_sequence_number`), so BigQuery's "greatest sequence number
   wins" is capa's stale guard, and a replayed batch sends equal rows again;
2. a delete is an ``UPSERT`` of the tombstone (``_capa_deleted = true``), as in every capa
   replica: tombstones keep later-arriving older events no-ops and are what soft deletes
   show;
3. "unchanged" TOAST columns (``RowChange.keep``): a CDC upsert cannot keep a column, so the
   adapter reads the key's earlier images from the changelog (append-only, written before
   the replica and queryable at once) and :func:`resolve_kept` takes, per column, the value
   of the latest earlier event that carried it;
4. a truncate at P: every key the changelog holds below P gets a ``DELETE`` with sequence
   number P, so rows changed after P (greater sequence numbers) survive, as the truncate
   rule says; the watermark keeps later-delivered older events out (``plan_table``).

Nothing here issues DML. The adapter (``apply_cdc.py``) runs the two changelog reads (3, 4)
only for batches that hold TOAST updates or truncates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from capa.apply import KeyTuple, RowChange, TablePlan
from capa.errors import WarehouseTerminalError
from capa.events import Op
from capa.position import change_sequence_number
from capa.warehouse.base import (
    META_COMMIT_TS,
    META_DELETED,
    META_EVENT_ID,
    META_INGESTED_AT,
    META_OP,
    META_POSITION,
)
from capa.warehouse.bigquery.write_api import CHANGE_SEQUENCE_NUMBER, CHANGE_TYPE

UPSERT = "UPSERT"
DELETE = "DELETE"
UNCHANGED = "_capa_unchanged"  # changelog column: the event's TOAST-unchanged columns


@dataclass(frozen=True, slots=True)
class HistoryNeed:
    """Which changelog rows a batch needs: the TOAST keys, and all keys below a truncate."""

    keys: tuple[KeyTuple, ...]  # keys of changes with "unchanged" columns
    truncate_position: str | None  # every key below it (None: no truncate in the batch)

    @property
    def empty(self) -> bool:
        return not self.keys and self.truncate_position is None


def history_need(plan: TablePlan) -> HistoryNeed:
    return HistoryNeed(
        keys=tuple(c.key for c in plan.changes if c.keep),
        truncate_position=plan.truncate_position,
    )


def replica_rows(
    plan: TablePlan,
    history: Sequence[Mapping[str, Any]],
    columns: Iterable[str],
    ingested_at: Any,
    primary_key: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The CDC rows for one table's batch (rules 1-4 of the module docstring).

    ``history`` holds the changelog rows :func:`history_need` asked for; ``columns`` the
    replica's columns (values of other columns are not sent); ``primary_key`` the table's
    key, needed when the batch holds only truncates (its plan has no key then).
    """
    wanted = set(columns)
    rows = truncate_rows(plan, history, plan.primary_key or tuple(primary_key))
    kept = resolve_kept(plan.changes, plan.primary_key, history)
    for change in plan.changes:
        values = {k: v for k, v in change.values.items() if k in wanted}
        values.update(kept.get(change.key, {}))
        rows.append(
            {
                **values,
                META_POSITION: change.position,
                META_OP: change.op.value,
                META_COMMIT_TS: change.commit_ts_us,
                META_INGESTED_AT: ingested_at,
                META_EVENT_ID: change.event_id,
                META_DELETED: change.deleted,
                CHANGE_TYPE: UPSERT,
                CHANGE_SEQUENCE_NUMBER: change_sequence_number(change.position),
            }
        )
    return rows


def truncate_rows(
    plan: TablePlan, history: Sequence[Mapping[str, Any]], primary_key: Sequence[str]
) -> list[dict[str, Any]]:
    """``DELETE`` at the truncate's sequence number for every key seen below it."""
    position = plan.truncate_position
    if position is None:
        return []
    if not primary_key:
        raise WarehouseTerminalError(
            f"cannot truncate {plan.table!r} in cdc mode: its primary key is unknown "
            "(the table holds no primary key constraint or clustering)"
        )
    csn = change_sequence_number(position)
    keys = {
        tuple(row[k] for k in primary_key)
        for row in history
        if row[META_POSITION] < position and row[META_OP] != Op.TRUNCATE.value
    }
    return [
        {
            **dict(zip(primary_key, key, strict=True)),
            CHANGE_TYPE: DELETE,
            CHANGE_SEQUENCE_NUMBER: csn,
        }
        for key in sorted(keys, key=repr)
    ]


def resolve_kept(
    changes: Sequence[RowChange],
    primary_key: Sequence[str],
    history: Sequence[Mapping[str, Any]],
) -> dict[KeyTuple, dict[str, Any]]:
    """Key -> {kept column: the value of the latest earlier changelog image carrying it}.

    A column with no earlier image (the key's history is not in the changelog) stays NULL,
    which is also what the local lakehouse writes for a key it has never seen.
    """
    by_key: dict[KeyTuple, list[Mapping[str, Any]]] = {}
    for row in history:
        if row[META_OP] in (Op.INSERT.value, Op.READ.value, Op.UPDATE.value):
            by_key.setdefault(tuple(row[k] for k in primary_key), []).append(row)
    resolved: dict[KeyTuple, dict[str, Any]] = {}
    for change in changes:
        if not change.keep:
            continue
        earlier = sorted(
            (r for r in by_key.get(change.key, ()) if r[META_POSITION] < change.position),
            key=lambda r: r[META_POSITION],
            reverse=True,
        )
        resolved[change.key] = {
            column: next((r.get(column) for r in earlier if column not in _unchanged(r)), None)
            for column in change.keep
        }
    return resolved


def _unchanged(row: Mapping[str, Any]) -> Sequence[str]:
    return row.get(UNCHANGED) or ()
