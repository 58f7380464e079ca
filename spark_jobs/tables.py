"""Delta tables and Arrow key sets: the small helpers the model builders share.

Row counts come from delta-rs (no Spark job); ``semi_join`` / ``anti_join`` keep or drop the
rows of an Arrow table whose key is in a key set; ``merge_sql`` is the Spark MERGE that replaces
the rows of a key set in a large target.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from spark_jobs.project import quote

PRESENT = "__capa_present"  # set on the source rows of a MERGE; a key without one is deleted


def count_rows(table: Any) -> int:
    """Rows of an opened Delta table (from its file statistics when they have them)."""
    return int(table.to_pyarrow_dataset().count_rows())


def merge_sql(target: str, source: str, key: Sequence[str], columns: Sequence[str]) -> str:
    """MERGE of recomputed rows; a key whose source row lacks ``__capa_present`` is deleted."""
    on = " AND ".join(f"t.{quote(k)} <=> s.{quote(k)}" for k in key)
    sets = ", ".join(f"t.{quote(c)} = s.{quote(c)}" for c in columns if c not in key)
    cols = ", ".join(quote(c) for c in columns)
    vals = ", ".join(f"s.{quote(c)}" for c in columns)
    update = f"WHEN MATCHED THEN UPDATE SET {sets} " if sets else ""
    return (
        f"MERGE INTO {target} t USING {source} s ON {on} "
        f"WHEN MATCHED AND s.{PRESENT} IS NULL THEN DELETE "
        f"{update}"
        f"WHEN NOT MATCHED AND s.{PRESENT} IS NOT NULL THEN INSERT ({cols}) VALUES ({vals})"
    )


def delta_ref(path: Path | str) -> str:
    return "delta.`" + str(path).replace("`", "``") + "`"


def semi_join(rows: pa.Table, keys: pa.Table) -> pa.Table:
    """``rows`` whose key (the columns of ``keys``) is in ``keys``."""
    if not keys.num_rows or not rows.num_rows:
        return rows.schema.empty_table()
    if keys.num_columns == 1:  # a hash-set lookup: cheaper than a join
        return rows.filter(_in_keys(rows, keys))
    return rows.join(keys, keys.column_names, join_type="left semi").select(rows.column_names)


def split_by_keys(rows: pa.Table, keys: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(:func:`semi_join`, :func:`anti_join`) of ``rows`` and ``keys``, one lookup for both."""
    if not keys.num_rows or not rows.num_rows:
        return rows.schema.empty_table(), rows
    if keys.num_columns == 1:
        inside = _in_keys(rows, keys)
        return rows.filter(inside), rows.filter(pc.invert(inside))
    return semi_join(rows, keys), anti_join(rows, keys)


def anti_join(rows: pa.Table, keys: pa.Table) -> pa.Table:
    """``rows`` whose key (the columns of ``keys``) is not in ``keys`` (NULL keys kept)."""
    if not keys.num_rows or not rows.num_rows:
        return rows
    if keys.num_columns == 1:
        return rows.filter(pc.invert(_in_keys(rows, keys)))
    names = keys.column_names
    return rows.join(keys, names, join_type="left anti").select(rows.column_names)


def _in_keys(rows: pa.Table, keys: pa.Table) -> pa.ChunkedArray:
    """Per row: is its (one-column) key in ``keys`` (a NULL key never is)."""
    name = keys.column_names[0]
    column = rows.column(name)
    inside = pc.is_in(column, value_set=keys.column(name).cast(column.type), skip_nulls=True)
    return pc.fill_null(inside, False)
