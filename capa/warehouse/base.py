"""The warehouse port: where the raw layer lives (STYLE rule 1).

Adapters: ``local`` (Delta Lake tables on the filesystem, via delta-rs; the embedded
default and on-prem store) and ``bigquery``. Pick one through :func:`open_warehouse`.

Raw table contract (public; Spark models and ``capa sql`` rely on it):

* ``raw.<name>``: the replica of a source table, ``<name>`` being
  :func:`capa.events.raw_table_name` of (source, schema, table): ``<source>_<schema>_<table>``
  for plain lower-case names, an escaped spelling for any other (see "Table identity" in
  docs/architecture.md). The replica is one row per primary key (for a table without
  one: per occurrence of a row, keyed by ``_capa_row_id``, see :mod:`capa.keyless`), with the
  source columns plus metadata columns ``_capa_position`` (string, byte-comparable),
  ``_capa_op`` (r/c/u/d), ``_capa_commit_ts`` (timestamp µs UTC), ``_capa_ingested_at``
  (timestamp µs UTC), ``_capa_event_id`` and ``_capa_deleted`` (bool). Deleted rows are
  kept as tombstones so that late, older events stay no-ops; readers see them only when
  soft deletes are configured (``capa sql`` views hide them otherwise). In the local
  lakehouse the replica's Delta table records a change data feed
  (``delta.enableChangeDataFeed``: pre/post images of every merged row), which incremental
  consumption builds read.
* ``raw.<name>_changelog``: append-only history, one row per event.

Adapters build every table name from that one ``<name>`` and the suffixes of
:data:`capa.events.DERIVED_SUFFIXES`; no source spelling reaches a path or an identifier.

Apply is idempotent: replaying any prefix or permutation of events gives the same replica.

What an adapter can do beyond the :class:`Warehouse` methods is declared, typed, in its
``capabilities`` (:class:`WarehouseCapabilities`); callers ask :func:`column_writer` and
:func:`compactor` for the matching port instead of probing for methods.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

from capa.events import CHANGELOG_SUFFIX as CHANGELOG_SUFFIX  # re-exported: adapters use it
from capa.events import ChangeEvent

if TYPE_CHECKING:
    from capa.columnar import TableColumns

META_POSITION = "_capa_position"
META_OP = "_capa_op"
META_COMMIT_TS = "_capa_commit_ts"
META_INGESTED_AT = "_capa_ingested_at"
META_EVENT_ID = "_capa_event_id"
META_DELETED = "_capa_deleted"
META_COLUMNS = (
    META_POSITION,
    META_OP,
    META_COMMIT_TS,
    META_INGESTED_AT,
    META_EVENT_ID,
    META_DELETED,
)
CHANGE_FEED_PROPERTY = "delta.enableChangeDataFeed"  # local replicas: Delta change data feed
RAW_NAMESPACE = "raw"


@dataclass(frozen=True, slots=True)
class TableReport:
    table: str
    events: int  # events received for this table
    applied: int  # rows inserted/updated/deleted in the replica
    stale: int  # events older than the applied position: no-ops
    changelog_rows: int  # new rows appended to the changelog (duplicates skipped)
    unmatched: int = 0  # keyless changes that matched no replica row (see capa.keyless)


@dataclass(frozen=True, slots=True)
class ApplyReport:
    tables: tuple[TableReport, ...] = field(default_factory=tuple)
    seconds: float = 0.0

    @property
    def events(self) -> int:
        return sum(t.events for t in self.tables)


@dataclass(frozen=True, slots=True)
class WarehouseCapabilities:
    """What an adapter offers beyond :class:`Warehouse` (each flag names a port below)."""

    columns: bool = False  # ColumnWriter: plain tables applied column-wise (the fast path)
    compaction: bool = False  # Compactor: pending (merge-on-read) rows merged on demand


@runtime_checkable
class Warehouse(Protocol):
    """A raw/consumption store."""

    capabilities: WarehouseCapabilities

    def apply(self, events: Sequence[ChangeEvent]) -> ApplyReport:
        """Apply a batch atomically per table; idempotent under replay and reordering."""
        ...

    def tables(self) -> list[str]:
        """Qualified names of the tables present (``raw.f2_public_orders`` ...)."""
        ...

    def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Run SQL over the store; rows as dicts. Values are bound, never interpolated."""
        ...

    def rows(self, table: str, *, include_deleted: bool | None = None) -> list[dict[str, Any]]:
        """All rows of ``namespace.name`` (a cheap replica read for checks and tests);
        tombstones only if asked or soft deletes are configured."""
        ...

    def row_count(self, table: str, *, include_deleted: bool | None = None) -> int:
        """Number of rows :meth:`rows` would return."""
        ...

    def close(self) -> None: ...


class ColumnWriter(Protocol):
    """A warehouse that applies plain tables given column-wise (``capabilities.columns``)."""

    def apply_columns(self, tables: Sequence[TableColumns]) -> ApplyReport:
        """The same result as ``apply`` on the tables' events, without an object per event."""
        ...


class Compactor(Protocol):
    """A warehouse with deferred (merge-on-read) writes (``capabilities.compaction``)."""

    def compact(self, table: str | None = None) -> int:
        """Merge pending rows into the base tables (one table, or all); rows merged."""
        ...


def column_writer(warehouse: Warehouse) -> ColumnWriter | None:
    """The warehouse as a :class:`ColumnWriter`, if it declares that capability."""
    return cast(ColumnWriter, warehouse) if warehouse.capabilities.columns else None


def compactor(warehouse: Warehouse) -> Compactor | None:
    """The warehouse as a :class:`Compactor`, if it declares that capability."""
    return cast(Compactor, warehouse) if warehouse.capabilities.compaction else None
