"""One table's batch as the local writer takes it: a :class:`ColumnPlan`, from either path.

Every batch becomes one column-wise plan, whichever way it arrived:

* :func:`plan_columns`: plain changes given column-wise (:class:`~capa.columnar.TableColumns`,
  from the native decoder or :func:`capa.columnar.split_plain`). For them the apply rules of
  :mod:`capa.apply` reduce to: de-duplicate by event id, order by (position, event id), drop
  what is at or below the truncate watermark, and per key keep the last event. The changelog
  and the replica rows are then two row selections of ONE set of columns: no per-event
  objects (the property tests check the result equals the event path).
* :func:`plan_events`: any other batch, planned by :func:`capa.apply.plan_table` (and, for a
  keyless table, resolved against its replica), its changelog events and folded row changes
  turned into columns.

A plan holds :class:`Rows` (one value list per column, plus the metadata lists) and row
selections of them; a :class:`Frame` converts Rows to Arrow per table type once, so the
changelog and the replica sources share the conversion. Columns the table has but the batch
does not carry are NULL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain
from typing import Any

import pyarrow as pa

from capa.apply import RowChange, TablePlan
from capa.columnar import TableColumns, image, require_keys
from capa.events import ChangeEvent, Op
from capa.merge_rule import KEEP_PREFIX
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
Types = dict[str, ColumnType | None]
_DELETE = Op.DELETE.value


@dataclass(frozen=True, slots=True)
class Rows:
    """Rows column-wise: per row an image (``images``: column -> values) and metadata."""

    images: Mapping[str, Sequence[Any]]
    positions: Sequence[str]
    ops: Sequence[str]  # Op values: "r", "c", "u", "d"
    commit_ts_us: Sequence[int | None]
    event_ids: Sequence[str]
    deleted: Sequence[bool] | None = None  # None: the row is a tombstone iff its op is "d"
    unchanged: Sequence[list[str] | None] | None = None  # changelog rows: TOAST columns
    keep: Mapping[str, Sequence[bool]] = field(default_factory=dict)  # replica keep flags

    def __len__(self) -> int:
        return len(self.event_ids)


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    """What the writer applies to one table: changelog rows and replica rows (selections of
    frames), the truncate watermark it raises, and the counts of the report."""

    table: str
    primary_key: tuple[str, ...]
    types: Types  # the raw-layer type of every column the batch carries
    log: Frame
    changelog: Sequence[int]  # rows of ``log``: the distinct events, position order
    rows: Frame  # ``log`` itself for plain changes
    changes: Sequence[int]  # rows of ``rows``: one per key, position order
    events: int  # events received (with duplicates)
    stale: int  # distinct events at or below the truncate watermark
    keep: tuple[str, ...] = ()  # columns with keep flags (TOAST-unchanged somewhere)
    truncate_position: str | None = None  # the watermark after this batch, if raised
    keyless: bool = False  # resolved against the replica: never deferred
    unmatched: tuple[ChangeEvent, ...] = ()

    @property
    def deferrable(self) -> bool:
        """May go to the merge-on-read pending log (truncates and keyless tables merge)."""
        return not self.truncate_position and not self.keyless

    def changelog_keys(self) -> tuple[list[str], list[str]]:
        """(positions, event ids) of the changelog rows, position order."""
        rows = self.log.rows
        return (
            [rows.positions[i] for i in self.changelog],
            [rows.event_ids[i] for i in self.changelog],
        )


# --- planning ------------------------------------------------------------------------------


def column_types(cols: TableColumns) -> Types:
    """The batch's column types: every record's image is a changelog row (and the replica
    rows are some of them), so this is what the event path infers over both."""
    return infer_column_types(cols.images, cols.source_types)


def plan_columns(
    cols: TableColumns,
    watermark: str | None,
    ingested: datetime | None = None,
    types: Types | None = None,
) -> ColumnPlan:
    """The plan of plain changes: selections of one frame of the batch's columns
    (``types``: :func:`column_types`, if the caller has them already)."""
    require_keys(cols)
    ingested = ingested or datetime.now(UTC)
    ids, positions = cols.event_ids, cols.positions
    distinct = _distinct(ids)
    pairs = list(zip(positions, ids, strict=True))
    order = sorted(distinct, key=pairs.__getitem__)  # linear when already in order
    live = order if watermark is None else [i for i in order if positions[i] > watermark]
    frame = Frame(Rows(cols.images, positions, cols.ops, cols.commit_ts_us, ids), ingested)
    return ColumnPlan(
        table=cols.table_id,
        primary_key=cols.primary_key,
        types=column_types(cols) if types is None else types,
        log=frame,
        changelog=order,
        rows=frame,
        changes=_last_per_key(live, _keys(cols)),
        events=len(ids),
        stale=len(order) - len(live),
    )


def plan_events(plan: TablePlan, ingested: datetime) -> ColumnPlan:
    """The plan of a :func:`capa.apply.plan_table` result (resolved, if keyless)."""
    events, changes = plan.changelog, plan.changes
    replica = image_columns([c.values for c in changes])
    log = image_columns([image(e) for e in events])
    keep = tuple(sorted(plan.keep_columns))
    log_rows = _rows(
        events,
        log,
        deleted=[e.op.is_delete for e in events],
        unchanged=[list(e.unchanged) if e.unchanged else None for e in events],
    )
    replica_rows = _rows(
        changes,
        replica,
        deleted=[c.deleted for c in changes],
        keep={name: [name in c.keep for c in changes] for name in keep},
    )
    return ColumnPlan(
        table=plan.table,
        primary_key=plan.primary_key,
        types=_types_over(plan.source_types, replica, log),
        log=Frame(log_rows, ingested),
        changelog=range(len(events)),
        rows=Frame(replica_rows, ingested),
        changes=range(len(changes)),
        events=plan.events,
        stale=plan.stale,
        keep=keep,
        truncate_position=plan.truncate_position,
        keyless=bool(plan.keyless),
        unmatched=plan.unmatched,
    )


def _rows(
    items: Sequence[ChangeEvent] | Sequence[RowChange], images: Columns, **extra: Any
) -> Rows:
    """Rows of events or row changes (both have a position, op, commit time and event id)."""
    return Rows(
        images,
        [i.position for i in items],
        [i.op.value for i in items],
        [i.commit_ts_us for i in items],
        [i.event_id for i in items],
        **extra,
    )


def image_columns(images: Sequence[Mapping[str, Any]]) -> Columns:
    """Row images -> column name -> values (names in order of first appearance)."""
    names = dict.fromkeys(chain.from_iterable(images))
    return {name: [image.get(name) for image in images] for name in names}


def _types_over(source_types: Mapping[str, str], *columns: Columns) -> Types:
    """Types over the replica images then the changelog images of the batch."""
    names = dict.fromkeys(chain.from_iterable(columns))
    merged = {name: list(chain.from_iterable(c.get(name, ()) for c in columns)) for name in names}
    return infer_column_types(merged, source_types)


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


# --- Arrow ---------------------------------------------------------------------------------


class Frame:
    """:class:`Rows` as Arrow columns, converted per table type once and shared by the
    changelog and the replica sources taken from them."""

    def __init__(self, rows: Rows, ingested: datetime) -> None:
        self.rows = rows
        self._meta = _meta_arrays(rows, ingested)
        self._values: dict[tuple[str, ColumnType], pa.Array] = {}

    def changelog(self, types: Mapping[str, ColumnType], take: Sequence[int]) -> pa.Table:
        """Changelog rows ``take`` with the columns of ``types`` (the changelog's)."""
        arrays = self._arrays(types, CHANGELOG_META)
        unchanged = self.rows.unchanged
        arrays[META_UNCHANGED] = (
            pa.nulls(len(self.rows), CHANGELOG_META[META_UNCHANGED])
            if unchanged is None
            else pa.array(unchanged, CHANGELOG_META[META_UNCHANGED])
        )
        return _take(pa.table(arrays), take).select(list(types))

    def replica(self, types: Mapping[str, ColumnType], take: Sequence[int]) -> pa.Table:
        """Replica rows ``take`` with the columns of ``types`` (the replica's) and the keep
        flags."""
        arrays = self._arrays(types, REPLICA_META)
        for name, flags in self.rows.keep.items():
            arrays[KEEP_PREFIX + name] = pa.array(flags, pa.bool_())
        return _take(pa.table(arrays), take)

    def _arrays(self, types: Mapping[str, ColumnType], meta: Mapping[str, Any]) -> dict[str, Any]:
        arrays: dict[str, Any] = {n: a for n, a in self._meta.items() if n in meta}
        for name, column_type in types.items():
            if name not in meta:
                arrays[name] = self._column(name, column_type)
        return arrays

    def _column(self, name: str, column_type: ColumnType) -> pa.Array:
        cached = self._values.get((name, column_type))
        if cached is None:
            values = self.rows.images.get(name)
            cached = (
                to_arrow(values, column_type, name)
                if values is not None
                else pa.nulls(len(self.rows), arrow_type(column_type))
            )
            self._values[(name, column_type)] = cached
        return cached


def _take(table: pa.Table, rows: Sequence[int]) -> pa.Table:
    if isinstance(rows, range) and rows == range(table.num_rows):
        return table
    return table.take(pa.array(rows, pa.int64()))


def _meta_arrays(rows: Rows, ingested: datetime) -> dict[str, pa.Array]:
    deleted = rows.deleted
    if deleted is None:
        deleted = [op == _DELETE for op in rows.ops]
    return {
        META_POSITION: pa.array(rows.positions, pa.string()),
        META_OP: pa.array(rows.ops, pa.string()),
        META_COMMIT_TS: pa.array(rows.commit_ts_us, pa.int64()).cast(TIMESTAMP_US),
        META_INGESTED_AT: pa.repeat(pa.scalar(ingested, type=TIMESTAMP_US), len(rows)),
        META_EVENT_ID: pa.array(rows.event_ids, pa.string()),
        META_DELETED: pa.array(deleted, pa.bool_()),
    }
