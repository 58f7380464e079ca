"""Column-wise planning and Arrow sources for plain changes (:mod:`capa.columnar`).

For a table whose batch holds only plain changes the apply rules of :mod:`capa.apply`
reduce to: de-duplicate by event id, order by (position, event id), drop what is at or
below the truncate watermark, and per key keep the last event. Both Delta sources are
then row selections of ONE Arrow frame built from the batch's columns: the changelog
takes the distinct events, the replica (or the merge-on-read pending log) the last event
per key. No per-event objects; the property tests check the result equals the event path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa

from capa.columnar import TableColumns, require_keys
from capa.warehouse.base import (
    META_COMMIT_TS,
    META_DELETED,
    META_EVENT_ID,
    META_INGESTED_AT,
    META_OP,
    META_POSITION,
)
from capa.warehouse.local.arrow_types import arrow_type, to_arrow
from capa.warehouse.local.sources import (
    CHANGELOG_META,
    META_UNCHANGED,
    TIMESTAMP_US,
)
from capa.warehouse.types import ColumnType, infer_column_types

_DELETE = "d"


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    """Row selections (indices into the table's columns) of one table's batch."""

    changelog: list[int]  # distinct events, position order
    changes: list[int]  # the last live event per key, position order
    events: int
    stale: int  # distinct events at or below the truncate watermark


def plan_columns(cols: TableColumns, watermark: str | None) -> ColumnPlan:
    require_keys(cols)
    ids, positions = cols.event_ids, cols.positions
    distinct = _distinct(ids)
    pairs = list(zip(positions, ids, strict=True))
    order = sorted(distinct, key=pairs.__getitem__)  # linear when already in order
    live = order if watermark is None else [i for i in order if positions[i] > watermark]
    return ColumnPlan(
        changelog=order,
        changes=_last_per_key(live, _keys(cols)),
        events=len(ids),
        stale=len(order) - len(live),
    )


def _distinct(ids: Sequence[str]) -> list[int]:
    """One index per event id: the last arrival, as the event path's dict keeps it."""
    if len(set(ids)) == len(ids):
        return list(range(len(ids)))
    return list({event_id: i for i, event_id in enumerate(ids)}.values())


def _keys(cols: TableColumns) -> Sequence[Any]:
    columns = [cols.images[name] for name in cols.primary_key]
    return columns[0] if len(columns) == 1 else list(zip(*columns, strict=True))


def _last_per_key(order: Sequence[int], keys: Sequence[Any]) -> list[int]:
    seen: set[Any] = set()
    last: list[int] = []
    for i in reversed(order):
        key = keys[i]
        if key not in seen:
            seen.add(key)
            last.append(i)
    last.reverse()
    return last


def column_types(cols: TableColumns) -> dict[str, ColumnType | None]:
    """The batch's column types: every record's image is a changelog row (and the replica
    rows are some of them), so this is what the event path infers over both."""
    return infer_column_types(cols.images, cols.source_types)


class Frame:
    """The batch as Arrow columns (all records, arrival order), converted per table type
    once and shared by the changelog and the replica sources."""

    def __init__(self, cols: TableColumns, ingested: datetime) -> None:
        self.cols = cols
        self._meta = _meta_arrays(cols, ingested)
        self._values: dict[tuple[str, ColumnType], pa.Array] = {}

    def changelog(self, types: Mapping[str, ColumnType], rows: Sequence[int]) -> pa.Table:
        arrays = self._arrays(types, CHANGELOG_META)
        arrays[META_UNCHANGED] = pa.nulls(len(self.cols), CHANGELOG_META[META_UNCHANGED])
        return pa.table(arrays).take(pa.array(rows, pa.int64()))

    def replica(
        self, types: Mapping[str, ColumnType], meta: Mapping[str, Any], rows: Sequence[int]
    ) -> pa.Table:
        return pa.table(self._arrays(types, meta)).take(pa.array(rows, pa.int64()))

    def _arrays(self, types: Mapping[str, ColumnType], meta: Mapping[str, Any]) -> dict[str, Any]:
        arrays: dict[str, Any] = {n: a for n, a in self._meta.items() if n in meta}
        for name, column_type in types.items():
            if name not in meta:
                arrays[name] = self._column(name, column_type)
        return arrays

    def _column(self, name: str, column_type: ColumnType) -> pa.Array:
        cached = self._values.get((name, column_type))
        if cached is None:
            values = self.cols.images.get(name)
            cached = (
                to_arrow(values, column_type, name)
                if values is not None
                else pa.nulls(len(self.cols), arrow_type(column_type))
            )
            self._values[(name, column_type)] = cached
        return cached


def _meta_arrays(cols: TableColumns, ingested: datetime) -> dict[str, pa.Array]:
    rows = len(cols)
    ops = pa.array(cols.ops, pa.string())
    ingested_us = pa.scalar(ingested, type=TIMESTAMP_US)
    return {
        META_POSITION: pa.array(cols.positions, pa.string()),
        META_OP: ops,
        META_COMMIT_TS: pa.array(cols.commit_ts_us, pa.int64()).cast(TIMESTAMP_US),
        META_INGESTED_AT: pa.repeat(ingested_us, rows),
        META_EVENT_ID: pa.array(cols.event_ids, pa.string()),
        META_DELETED: pa.array([op == _DELETE for op in cols.ops], pa.bool_()),
    }
