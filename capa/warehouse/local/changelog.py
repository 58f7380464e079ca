"""Append-only changelog with cheap duplicate suppression (no MERGE over the history).

The changelog's high watermark is the largest ``_capa_position`` it holds, read from the
Delta file statistics (``max`` per data file), which are committed atomically with the
data: no extra commit per batch, and no crash window in which the mark and the data
disagree. An event above the mark cannot be in the changelog yet and is appended as is;
only events at or below it may be redeliveries, and just those are checked, against the
event ids of the position range ``[lowest such event, mark]`` (file statistics prune the
read to the few recent files that overlap it). Redelivery appends nothing.

The one writer per table assumption of the streaming job matters here: two writers that
append the same redelivered events at the same moment could both see them as new (Delta
blind appends do not conflict). The replica is unaffected (its MERGE has the stale guard).
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from capa.events import ChangeEvent
from capa.warehouse.base import META_EVENT_ID, META_POSITION

logger = logging.getLogger(__name__)

_MAX_STAT = f"max.{META_POSITION}"


class _Unknown:
    """The mark when some data file has no statistics (then every event is checked)."""


UNKNOWN = _Unknown()


def high_watermark(table: DeltaTable) -> str | _Unknown | None:
    """The largest position in the changelog (None when empty) from file statistics."""
    actions = pa.table(table.get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return None
    if _MAX_STAT not in actions.column_names:
        return UNKNOWN
    maxima = actions[_MAX_STAT]
    with_rows = pc.fill_null(pc.greater(actions["num_records"], 0), True)
    if pc.any(pc.and_(with_rows, pc.is_null(maxima))).as_py():
        return UNKNOWN
    return pc.max(maxima).as_py()


def unseen_events(table: DeltaTable, events: Sequence[ChangeEvent]) -> list[ChangeEvent]:
    """``events`` (position order) minus those whose event id the changelog already holds."""
    rows = unseen_rows(table, [e.position for e in events], [e.event_id for e in events])
    return [events[i] for i in rows]


def unseen_rows(table: DeltaTable, positions: Sequence[str], event_ids: Sequence[str]) -> list[int]:
    """Indices of the events (given column-wise, in position order) the changelog lacks."""
    mark = high_watermark(table)
    if mark is None or not positions:
        return list(range(len(positions)))
    below = len(positions) if isinstance(mark, _Unknown) else bisect_right(positions, mark)
    if not below:
        return list(range(len(positions)))
    seen = _event_ids_between(table, positions[0], None if isinstance(mark, _Unknown) else mark)
    logger.debug("changelog %s: %d events at or below %s", table.table_uri, below, mark)
    return [i for i in range(below) if event_ids[i] not in seen] + list(
        range(below, len(positions))
    )


def _event_ids_between(table: DeltaTable, lower: str, upper: str | None) -> set[str]:
    position = pc.field(META_POSITION)
    predicate = position >= lower
    if upper is not None:
        predicate = predicate & (position <= upper)
    found = table.to_pyarrow_dataset().to_table(columns=[META_EVENT_ID], filter=predicate)
    return set(found[META_EVENT_ID].to_pylist())
