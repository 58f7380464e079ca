"""MERGE and DDL text, one generator per dialect (STYLE rule 23: merge semantics are data).

A :class:`MergeSpec` says what to merge: target and source tables, key columns, the
ordering position column, the columns to write and the "keep" columns (TOAST: the target
keeps its value when the source row's ``<keep_prefix><column>`` flag is true). The
generator renders it for a :class:`Dialect`. Identifiers are always quoted; values
(positions, stage names, table names used as data) are always bound parameters:

* ``@stage`` - which staged rows to read (``change`` rows for the replica, ``event`` rows
  for the changelog);
* ``@watermark`` - the table's truncate watermark ('' when none): staged rows at or below
  it are no-ops;
* ``@truncate`` - a truncate position raised by this batch (NULL when none): target rows
  older than it that the batch does not touch are deleted, in the same MERGE;
* ``@first_position`` - the smallest position of the batch (prunes the changelog check).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from capa.warehouse.base import META_EVENT_ID, META_POSITION


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    quote_char: str
    param_prefix: str

    def ident(self, name: str) -> str:
        q = self.quote_char
        return q + name.replace("\\", "\\\\").replace(q, "\\" + q) + q

    def table(self, parts: Sequence[str]) -> str:
        return ".".join(self.ident(p) for p in parts)

    def param(self, name: str) -> str:
        return self.param_prefix + name


DIALECTS: dict[str, Dialect] = {"bigquery": Dialect("bigquery", "`", "@")}


@dataclass(frozen=True, slots=True)
class MergeSpec:
    target: tuple[str, ...]
    source: tuple[str, ...]
    keys: tuple[str, ...]
    columns: tuple[str, ...]  # every target column written (source columns + metadata)
    position: str = META_POSITION
    keep: tuple[str, ...] = ()
    keep_prefix: str = "_capa_keep__"
    stage_column: str = "_capa_stage"


def dialect(name: str) -> Dialect:
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"no SQL dialect {name!r}; known: {sorted(DIALECTS)}") from None


def merge_replica_sql(spec: MergeSpec, dialect_name: str = "bigquery") -> str:
    """Upsert the latest staged row per key; stale guard; truncate deletes older rows."""
    d = dialect(dialect_name)
    pos = d.ident(spec.position)
    partition = ", ".join(d.ident(k) for k in spec.keys)
    on = " AND ".join(f"T.{d.ident(k)} = S.{d.ident(k)}" for k in spec.keys)
    return "\n".join(
        [
            f"MERGE {d.table(spec.target)} AS T",
            f"USING (SELECT * FROM {d.table(spec.source)}",
            f"  WHERE {d.ident(spec.stage_column)} = {d.param('stage')}"
            f" AND {pos} > {d.param('watermark')}",
            f"  QUALIFY ROW_NUMBER() OVER (PARTITION BY {partition} ORDER BY {pos} DESC) = 1) AS S",
            f"ON {on}",
            f"WHEN MATCHED AND S.{pos} > T.{pos} THEN UPDATE SET {_assignments(spec, d)}",
            f"WHEN NOT MATCHED THEN INSERT ({_column_list(spec.columns, d)}) "
            f"VALUES ({_column_list(spec.columns, d, 'S.')})",
            f"WHEN NOT MATCHED BY SOURCE AND T.{pos} < {d.param('truncate')} THEN DELETE",
        ]
    )


def _assignments(spec: MergeSpec, d: Dialect) -> str:
    keep = set(spec.keep)
    parts = []
    for column in spec.columns:
        value = f"S.{d.ident(column)}"
        if column in keep:
            value = f"IF(S.{d.ident(spec.keep_prefix + column)}, T.{d.ident(column)}, {value})"
        parts.append(f"{d.ident(column)} = {value}")
    return ", ".join(parts)


def _column_list(columns: Sequence[str], d: Dialect, prefix: str = "") -> str:
    return ", ".join(prefix + d.ident(c) for c in columns)


def merge_changelog_sql(
    target: Sequence[str],
    source: Sequence[str],
    columns: Sequence[str],
    dialect_name: str = "bigquery",
) -> str:
    """Append staged events whose ``_capa_event_id`` the changelog does not hold yet."""
    d = dialect(dialect_name)
    event_id, pos = d.ident(META_EVENT_ID), d.ident(META_POSITION)
    return "\n".join(
        [
            f"MERGE {d.table(target)} AS T",
            f"USING (SELECT * FROM {d.table(source)}"
            f" WHERE {d.ident('_capa_stage')} = {d.param('stage')}",
            f"  QUALIFY ROW_NUMBER() OVER (PARTITION BY {event_id} ORDER BY {pos}) = 1) AS S",
            f"ON T.{event_id} = S.{event_id} AND T.{pos} >= {d.param('first_position')}",
            f"WHEN NOT MATCHED THEN INSERT ({_column_list(columns, d)})"
            f" VALUES ({_column_list(columns, d, 'S.')})",
        ]
    )


def merge_watermark_sql(state: Sequence[str], dialect_name: str = "bigquery") -> str:
    """Raise a table's truncate watermark (never lowers it)."""
    d = dialect(dialect_name)
    name, wm = d.ident("table_name"), d.ident("truncate_position")
    return "\n".join(
        [
            f"MERGE {d.table(state)} AS T",
            f"USING (SELECT {d.param('table')} AS {name}, {d.param('truncate')} AS {wm}) AS S",
            f"ON T.{name} = S.{name}",
            f"WHEN MATCHED AND S.{wm} > T.{wm} THEN UPDATE SET {wm} = S.{wm}",
            f"WHEN NOT MATCHED THEN INSERT ({name}, {wm}) VALUES (S.{name}, S.{wm})",
        ]
    )


def select_watermark_sql(state: Sequence[str], dialect_name: str = "bigquery") -> str:
    d = dialect(dialect_name)
    return (
        f"SELECT {d.ident('truncate_position')} FROM {d.table(state)} "
        f"WHERE {d.ident('table_name')} = {d.param('table')}"
    )


def alter_column_type_sql(
    table: Sequence[str], column: str, type_sql: str, dialect_name: str = "bigquery"
) -> str:
    """Widen a column's type in place (BigQuery: INT64 -> NUMERIC/FLOAT64, NUMERIC(p,s) growth)."""
    d = dialect(dialect_name)
    return f"ALTER TABLE {d.table(table)} ALTER COLUMN {d.ident(column)} SET DATA TYPE {type_sql}"
