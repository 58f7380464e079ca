"""Column-wise change events: the fast path of the apply job for the common case.

A :class:`TableColumns` holds one table's share of a batch as columns (event ids,
positions, ops, commit times, and one value list per row-image column) instead of one
:class:`~capa.events.ChangeEvent` per record. It is only built for tables whose every event
is a *plain* change, for which the apply rules reduce to "the last event per key wins":

* an insert, snapshot read or update whose ``after`` image holds the key (same values);
  an update whose ``before`` image holds the whole key holds the same key (no key move);
* a delete whose ``before`` image, when present, holds the key (same values);
* no truncate, no TOAST ("unchanged") columns, one primary key and one column list;
* a non-NULL value for every key column (a NULL key is refused by the apply rules, see
  :func:`capa.apply.require_key_values`, on the event path where it dead-letters).

Anything else (and any record that does not decode) stays on the event path, unchanged:
:func:`split_plain` and the native decoder (``capa.native``) return it as *fallback*
indices. The image of a record is ``after`` for upserts and ``before`` (else ``key``) for
deletes: for plain events that is both the changelog row and the replica row.

The native decoder builds these straight from the Kafka bytes; :func:`split_plain` builds
the same from decoded events (tests, ``capa apply``, machines without the extension).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from capa.errors import DecodeError, TableNameError
from capa.events import ChangeEvent, Column, Op, SourceKind, raw_table_name

_SOURCE_KINDS = (SourceKind.POSTGRES, SourceKind.SQLSERVER, SourceKind.CRM)
_UPSERTS = frozenset({Op.INSERT, Op.READ, Op.UPDATE})


@dataclass(frozen=True, slots=True)
class TableColumns:
    """One table's plain changes of a batch, column-wise (arrival order)."""

    source: str
    source_kind: SourceKind
    database: str | None
    schema: str
    table: str
    primary_key: tuple[str, ...]
    columns: tuple[Column, ...]
    indices: Sequence[int]  # the records' positions in the batch
    event_ids: Sequence[str]
    positions: Sequence[str]
    ops: Sequence[str]  # Op values: "r", "c", "u", "d"
    commit_ts_us: Sequence[int | None]
    images: Mapping[str, Sequence[Any]]  # column -> one value per record (None if absent)

    @property
    def table_id(self) -> str:
        return raw_table_name(self.source, self.schema, self.table)

    @property
    def source_types(self) -> dict[str, str]:
        return {c.name: c.source_type for c in self.columns if c.source_type}

    def __len__(self) -> int:
        return len(self.event_ids)


def from_native(row: tuple[Any, ...]) -> TableColumns:
    """A table tuple of ``capa_native.decode_batch`` -> :class:`TableColumns`."""
    source, kind, database, schema, table, key, columns, *rest = row
    return TableColumns(
        source,
        _SOURCE_KINDS[kind],
        database,
        schema,
        table,
        tuple(key),
        tuple(Column(name, source_type) for name, source_type in columns),
        *rest,
    )


def split_plain(events: Sequence[ChangeEvent]) -> tuple[list[TableColumns], list[int]]:
    """(plain tables column-wise, indices of the events of every other table), as the
    native decoder splits a batch."""
    groups: dict[tuple[str, str, str], list[int]] = {}
    for index, event in enumerate(events):
        groups.setdefault((event.source, event.schema, event.table), []).append(index)
    tables: list[TableColumns] = []
    fallback: list[int] = []
    for indices in groups.values():
        chosen = [events[i] for i in indices]
        if all_plain(chosen):
            tables.append(_columns_of(chosen, indices))
        else:
            fallback.extend(indices)
    tables, moved = applicable_tables(tables)
    return tables, sorted([*fallback, *moved])


def applicable_tables(tables: list[TableColumns]) -> tuple[list[TableColumns], list[int]]:
    """(tables the column path can write, indices of the records of the others).

    The native decoder checks the shape of a table's records but not the rules that need
    their values: a table with a NULL key value, or whose raw name is invalid (too long),
    goes to the event path, where the record gets its dead letter and reason. (Distinct
    (source, schema, table) triples always have distinct raw names: no two tables merge.)
    """
    kept: list[TableColumns] = []
    moved: list[int] = []
    for table in tables:
        if has_null_key(table) or not _has_valid_name(table):
            moved.extend(table.indices)
        else:
            kept.append(table)
    return kept, sorted(moved)


def has_null_key(cols: TableColumns) -> bool:
    """True if a record lacks a key column's value or holds NULL there (one C-level scan
    per key column)."""
    for name in cols.primary_key:
        values = cols.images.get(name)
        if values is None or None in values:
            return True
    return False


def require_keys(cols: TableColumns) -> None:
    """Raise DecodeError if a record of ``cols`` has a NULL or missing key value: callers
    that bypass :func:`applicable_tables` still never write a NULL-key row."""
    if has_null_key(cols):
        raise DecodeError(
            f"table {cols.table_id!r}: a column-wise batch holds a NULL or missing value in "
            f"key column(s) {list(cols.primary_key)}; apply those records as events, where "
            "each one is refused with its reason (capa.apply.require_key_values)"
        )


def _has_valid_name(cols: TableColumns) -> bool:
    try:
        cols.table_id  # noqa: B018 - raises TableNameError for an unusable name
    except TableNameError:
        return False
    return True


def all_plain(events: Sequence[ChangeEvent]) -> bool:
    first = events[0]
    return bool(first.primary_key) and all(
        e.primary_key == first.primary_key and e.columns == first.columns and is_plain(e)
        for e in events
    )


def is_plain(event: ChangeEvent) -> bool:
    """The event applies as "last per key wins" with ``image(event)`` as its row."""
    key, primary_key = event.key, event.primary_key
    if event.op is Op.TRUNCATE or event.unchanged or not event.event_id:
        return False
    if len(key) != len(primary_key) or not all(key.get(name) is not None for name in primary_key):
        return False
    if event.op in _UPSERTS:
        if not event.after or not _holds_key(event.after, key):
            return False
        before = event.before
        return not (
            event.op is Op.UPDATE
            and before
            and all(name in before for name in primary_key)
            and not _holds_key(before, key)
        )
    return not event.before or _holds_key(event.before, key)


def _holds_key(image: Mapping[str, Any], key: Mapping[str, Any]) -> bool:
    """Every key value is in ``image``, equal and of the same type (NaN never is)."""
    for name, value in key.items():
        if name not in image:
            return False
        held = image[name]
        if type(held) is not type(value) or held != value:
            return False
    return True


def image(event: ChangeEvent) -> Mapping[str, Any]:
    """The row an event writes to the changelog (``after``, or ``before`` for a delete;
    the key when that is empty); for a plain event also its replica row."""
    return event.row or event.key


def _columns_of(events: Sequence[ChangeEvent], indices: Sequence[int]) -> TableColumns:
    first = events[0]
    images = [image(e) for e in events]
    names = dict.fromkeys(name for row in images for name in row)
    return TableColumns(
        first.source,
        first.source_kind,
        first.database,
        first.schema,
        first.table,
        first.primary_key,
        first.columns,
        list(indices),
        [e.event_id for e in events],
        [e.position for e in events],
        [e.op.value for e in events],
        [e.commit_ts_us for e in events],
        {name: [row.get(name) for row in images] for name in names},
    )
