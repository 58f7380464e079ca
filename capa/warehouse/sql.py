"""MERGE and DDL text, one generator per dialect (STYLE rule 23: merge semantics are data).

A :class:`MergeSpec` says what to merge: target and source tables, key columns, the
ordering position column, the columns to write and the "keep" columns (TOAST: the target
keeps its value when the source row's ``_capa_keep__<column>`` flag is true). How rows
merge is :mod:`capa.merge_rule` (the one rule); this module assembles BigQuery's statements
from its fragments. Identifiers are always quoted; values
(positions, stage names, table names used as data) are always bound parameters:

* ``@stage`` - which staged rows to read (``change`` rows for the replica, ``event`` rows
  for the changelog);
* ``@watermark`` - the table's truncate watermark ('' when none): staged rows at or below
  it are no-ops;
* ``@truncate`` - a truncate position raised by this batch (NULL when none): target rows
  older than it that the batch does not touch are deleted, in the same MERGE;
* ``@truncate`` in :func:`select_history_sql` - cdc mode's truncate position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from capa import merge_rule
from capa.merge_rule import BIGQUERY, Dialect
from capa.warehouse.base import META_EVENT_ID, META_INGESTED_AT, META_POSITION

DIALECTS: dict[str, Dialect] = {"bigquery": BIGQUERY}


@dataclass(frozen=True, slots=True)
class MergeSpec:
    target: tuple[str, ...]
    source: tuple[str, ...]
    keys: tuple[str, ...]
    columns: tuple[str, ...]  # every target column written (source columns + metadata)
    position: str = META_POSITION
    keep: tuple[str, ...] = ()
    stage_column: str = "_capa_stage"
    # the truncate clause (WHEN NOT MATCHED BY SOURCE) reads every target row, so it is
    # rendered only for a merge that carries a truncate; without it the MERGE can prune
    delete_below_truncate: bool = True


def dialect(name: str) -> Dialect:
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"no SQL dialect {name!r}; known: {sorted(DIALECTS)}") from None


def merge_replica_sql(spec: MergeSpec, dialect_name: str = "bigquery") -> str:
    """The staged rows merged by :mod:`capa.merge_rule`: latest staged row per key above
    the watermark, stale guard, keep flags; a truncate deletes older untouched rows."""
    d = dialect(dialect_name)
    pos = d.ident(spec.position)
    assignments = merge_rule.updates(d, spec.columns, spec.keep)
    return "\n".join(
        [
            f"MERGE {d.table(spec.target)} AS T",
            f"USING (SELECT * FROM {d.table(spec.source)}",
            f"  WHERE {d.ident(spec.stage_column)} = {d.param('stage')}"
            f" AND {pos} > {d.param('watermark')}",
            f"  QUALIFY {merge_rule.latest_per_key(d, spec.keys, spec.position)}) AS S",
            f"ON {merge_rule.key_match(d, spec.keys)}",
            f"WHEN MATCHED AND {merge_rule.guard(d, spec.position)} THEN UPDATE SET "
            + ", ".join(f"{column} = {value}" for column, value in assignments.items()),
            f"WHEN NOT MATCHED THEN INSERT ({_column_list(spec.columns, d)}) "
            f"VALUES ({_column_list(spec.columns, d, 'S.')})",
            *(
                [
                    "WHEN NOT MATCHED BY SOURCE AND "
                    + merge_rule.below_truncate(d, d.param("truncate"), spec.position)
                    + " THEN DELETE"
                ]
                if spec.delete_below_truncate
                else []
            ),
        ]
    )


def _column_list(columns: Sequence[str], d: Dialect, prefix: str = "") -> str:
    return ", ".join(prefix + d.ident(c) for c in columns)


def select_changelog_sql(changelog: Sequence[str], dialect_name: str = "bigquery") -> str:
    """The changelog as readers must see it: one row per ``_capa_event_id`` (appends are
    at-least-once, so a replayed batch may have appended an event twice)."""
    d = dialect(dialect_name)
    return (
        f"SELECT * FROM {d.table(changelog)} QUALIFY ROW_NUMBER() OVER "
        f"(PARTITION BY {d.ident(META_EVENT_ID)} ORDER BY {d.ident(META_INGESTED_AT)}) = 1"
    )


def select_history_sql(
    changelog: Sequence[str],
    primary_key: Sequence[str],
    keys: int,
    *,
    below_truncate: bool,
    dialect_name: str = "bigquery",
) -> str:
    """Changelog rows of ``keys`` keys (bound as ``@k<i>_<j>``: key i, key column j), and
    with ``below_truncate`` every row below ``@truncate`` (cdc mode's TOAST and truncate
    lookups)."""
    d = dialect(dialect_name)
    matches = [
        "("
        + " AND ".join(f"{d.ident(c)} = {d.param(f'k{i}_{j}')}" for j, c in enumerate(primary_key))
        + ")"
        for i in range(keys)
    ]
    if below_truncate:
        matches.append(f"{d.ident(META_POSITION)} < {d.param('truncate')}")
    where = " OR ".join(matches) or "FALSE"
    return f"SELECT * FROM {d.table(changelog)} WHERE {where}"


def select_watermark_sql(state: Sequence[str], dialect_name: str = "bigquery") -> str:
    """A table's truncate watermark: the greatest truncate position appended for it (the
    state table is append-only, so raising a watermark is never DML)."""
    d = dialect(dialect_name)
    return (
        f"SELECT MAX({d.ident('truncate_position')}) FROM {d.table(state)} "
        f"WHERE {d.ident('table_name')} = {d.param('table')}"
    )


def alter_column_type_sql(
    table: Sequence[str], column: str, type_sql: str, dialect_name: str = "bigquery"
) -> str:
    """Widen a column's type in place (BigQuery: INT64 -> NUMERIC/FLOAT64, NUMERIC(p,s) growth)."""
    d = dialect(dialect_name)
    return f"ALTER TABLE {d.table(table)} ALTER COLUMN {d.ident(column)} SET DATA TYPE {type_sql}"
