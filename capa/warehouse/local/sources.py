"""A planned batch -> Arrow tables for delta-rs, built column by column (no per-row dicts).

* :func:`batch_types`: the raw-layer type of every column the batch carries, inferred once
  per column (the replica images first, then the changelog images, as the row-wise code did);
* :func:`changelog_source`: one row per event (the event's row image plus metadata);
* :func:`replica_source`: one row per key (the folded image, metadata and one
  ``_capa_keep__<col>`` flag column per TOAST-unchanged column).

Columns the table has but the batch does not carry are NULL; metadata columns are built
from plain lists (positions, ids, µs timestamps cast to ``timestamp[us, UTC]``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from itertools import chain
from typing import Any

import pyarrow as pa

from capa.apply import RowChange, TablePlan
from capa.columnar import image
from capa.events import ChangeEvent
from capa.warehouse.base import (
    META_COMMIT_TS,
    META_DELETED,
    META_EVENT_ID,
    META_INGESTED_AT,
    META_OP,
    META_POSITION,
)
from capa.warehouse.local.arrow_types import arrow_type, to_arrow
from capa.warehouse.types import ColumnType, infer_column_types

META_UNCHANGED = "_capa_unchanged"
KEEP_PREFIX = "_capa_keep__"
TIMESTAMP_US = pa.timestamp("us", tz="UTC")
REPLICA_META: dict[str, pa.DataType] = {
    META_POSITION: pa.string(),
    META_OP: pa.string(),
    META_COMMIT_TS: TIMESTAMP_US,
    META_INGESTED_AT: TIMESTAMP_US,
    META_EVENT_ID: pa.string(),
    META_DELETED: pa.bool_(),
}
CHANGELOG_META = {**REPLICA_META, META_UNCHANGED: pa.list_(pa.string())}

Columns = dict[str, list[Any]]


def image_columns(images: Sequence[Mapping[str, Any]]) -> Columns:
    """Row images -> column name -> values (names in order of first appearance)."""
    names = dict.fromkeys(chain.from_iterable(images))
    return {name: [image.get(name) for image in images] for name in names}


def changelog_images(events: Iterable[ChangeEvent]) -> list[Mapping[str, Any]]:
    return [image(event) for event in events]


def batch_types(
    plan: TablePlan, replica: Columns, changelog: Columns
) -> dict[str, ColumnType | None]:
    """Types over the replica images then the changelog images of the batch."""
    names = dict.fromkeys(chain(replica, changelog))
    merged = {name: replica.get(name, []) + changelog.get(name, []) for name in names}
    return infer_column_types(merged, plan.source_types)


def changelog_source(
    events: Sequence[ChangeEvent],
    columns: Columns,
    types: Mapping[str, ColumnType],
    ingested: datetime,
) -> pa.Table:
    """The changelog rows of ``events`` (``columns`` are their images, same order)."""
    arrays = _source_arrays(columns, types, len(events), CHANGELOG_META)
    arrays |= _meta_arrays(events, [e.op.is_delete for e in events], len(events), ingested)
    unchanged = [list(e.unchanged) if e.unchanged else None for e in events]
    arrays[META_UNCHANGED] = pa.array(unchanged, type=CHANGELOG_META[META_UNCHANGED])
    return pa.table(arrays)


def replica_source(
    changes: Sequence[RowChange],
    columns: Columns,
    types: Mapping[str, ColumnType],
    keep: Sequence[str],
    ingested: datetime,
) -> pa.Table:
    """One row per key: folded image, metadata, and the keep flags of ``keep`` columns."""
    arrays = _source_arrays(columns, types, len(changes), REPLICA_META)
    arrays |= _meta_arrays(changes, [c.deleted for c in changes], len(changes), ingested)
    for name in keep:
        arrays[KEEP_PREFIX + name] = pa.array([name in c.keep for c in changes], pa.bool_())
    return pa.table(arrays)


def _source_arrays(
    columns: Columns, types: Mapping[str, ColumnType], rows: int, meta: Mapping[str, Any]
) -> dict[str, pa.Array]:
    arrays: dict[str, pa.Array] = {}
    for name, column_type in types.items():
        if name in meta:
            continue
        values = columns.get(name)
        arrays[name] = (
            to_arrow(values, column_type, name)
            if values is not None
            else pa.nulls(rows, type=arrow_type(column_type))
        )
    return arrays


def _meta_arrays(
    items: Sequence[ChangeEvent] | Sequence[RowChange],
    deleted: list[bool],
    rows: int,
    ingested: datetime,
) -> dict[str, pa.Array]:
    """Metadata columns; ``items`` have position, op, commit_ts_us and event_id."""
    ingested_us = pa.scalar(ingested, type=TIMESTAMP_US).cast(pa.int64()).as_py()
    return {
        META_POSITION: pa.array([i.position for i in items], pa.string()),
        META_OP: pa.array([i.op for i in items], pa.string()),  # Op is a str enum
        META_COMMIT_TS: _micros([i.commit_ts_us for i in items]),
        META_INGESTED_AT: _micros([ingested_us] * rows),
        META_EVENT_ID: pa.array([i.event_id for i in items], pa.string()),
        META_DELETED: pa.array(deleted, pa.bool_()),
    }


def _micros(values: list[int | None]) -> pa.Array:
    return pa.array(values, pa.int64()).cast(TIMESTAMP_US)
