"""Merge-on-read for the local replica: a pending log served together with the base table.

With ``merge_on_read`` a batch is not merged into ``raw/<name>`` (a merge rewrites every
file holding a touched key: the whole table per commit with random keys). Its planned row
changes (one per key, exactly what the MERGE would have used, keep flags included) are
appended to ``_pending/<name>``, tagged with an arrival sequence ``_capa_pending_seq``.
Readers (``capa sql`` views, ``LocalWarehouse.rows()``) see base + pending resolved by the
same rules as the MERGE, in SQL (DuckDB):

* the stale guard: a row takes effect only if its position is above every position that
  arrived before it for the key (base rows arrived first), so late older events stay no-ops;
* the replica row is the effective row with the highest position (tombstones included);
* a TOAST-unchanged column (``_capa_keep__<col>`` true) takes the value of the previous
  effective row of the key, recursively (NULL if there is none), as the MERGE's CASE does.

Truncates are not deferred: a batch with a truncate compacts first and then merges (so
pending rows never straddle a truncate watermark). :func:`compact_sql` gives the resolved
rows of the touched keys, which the warehouse merges into the base (guarded) before it
deletes the compacted pending rows; a crash in between is harmless (base rows then win
over the already-compacted pending rows by position).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from capa.warehouse.base import META_POSITION
from capa.warehouse.local import delta_io
from capa.warehouse.types import ColumnType

PENDING_NAMESPACE = "_pending"
PENDING_SEQ = "_capa_pending_seq"
KEEP_PREFIX = "_capa_keep__"


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def keep_columns(pending_columns: Sequence[str], base_columns: Sequence[str]) -> list[str]:
    """Source columns that have a keep flag column in the pending table."""
    flags = {c[len(KEEP_PREFIX) :] for c in pending_columns if c.startswith(KEEP_PREFIX)}
    return [c for c in base_columns if c in flags]


def _resolved_cte(
    base: str, pending: str, key: Sequence[str], columns: Sequence[str], keep: Sequence[str]
) -> str:
    """CTEs ``touched`` (pending keys) and ``resolved`` (one row per touched key)."""
    keys = ", ".join(quote(k) for k in key)
    pos = quote(META_POSITION)
    cols = ", ".join(quote(c) for c in columns)
    base_flags = "".join(f", FALSE AS {quote(KEEP_PREFIX + c)}" for c in keep)
    pending_flags = "".join(
        f", coalesce({quote(KEEP_PREFIX + c)}, FALSE) AS {quote(KEEP_PREFIX + c)}" for c in keep
    )
    resolved = ", ".join(_kept(c) if c in keep else quote(c) for c in columns)
    return f"""
touched AS (SELECT DISTINCT {keys} FROM {pending}),
arrived AS (
    SELECT {cols}, 0::BIGINT AS __seq{base_flags} FROM {base} SEMI JOIN touched USING ({keys})
    UNION ALL BY NAME
    SELECT {cols}, {quote(PENDING_SEQ)}::BIGINT AS __seq{pending_flags} FROM {pending}
),
guarded AS (
    SELECT *, max({pos}) OVER (PARTITION BY {keys} ORDER BY __seq
        ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS __before
    FROM arrived
),
effective AS (SELECT * FROM guarded WHERE __before IS NULL OR {pos} > __before),
ranked AS (
    SELECT {resolved},
        row_number() OVER (PARTITION BY {keys} ORDER BY {pos} DESC) AS __rank
    FROM effective
    WINDOW chain AS (PARTITION BY {keys} ORDER BY {pos}
        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
),
resolved AS (SELECT {cols} FROM ranked WHERE __rank = 1)"""


def _kept(column: str) -> str:
    flag, col = quote(KEEP_PREFIX + column), quote(column)
    return (
        f"(last_value(CASE WHEN NOT {flag} THEN struct_pack(v := {col}) END IGNORE NULLS)"
        f" OVER chain).v AS {col}"
    )


def replica_sql(
    base: str, pending: str, key: Sequence[str], columns: Sequence[str], keep: Sequence[str]
) -> str:
    """SELECT of the whole replica (tombstones included): resolved touched keys + the rest."""
    keys = ", ".join(quote(k) for k in key)
    cols = ", ".join(quote(c) for c in columns)
    return (
        f"WITH {_resolved_cte(base, pending, key, columns, keep)}\n"
        f"SELECT {cols} FROM resolved\n"
        f"UNION ALL BY NAME\n"
        f"SELECT {cols} FROM {base} ANTI JOIN touched USING ({keys})"
    )


def compact_sql(
    base: str, pending: str, key: Sequence[str], columns: Sequence[str], keep: Sequence[str]
) -> str:
    """SELECT of the resolved rows of the keys the pending log touches."""
    cols = ", ".join(quote(c) for c in columns)
    return f"WITH {_resolved_cte(base, pending, key, columns, keep)}\nSELECT {cols} FROM resolved"


# --- Delta / DuckDB operations ---------------------------------------------------------------

PRIMARY_KEY_PROPERTY = "capa.primaryKey"


def pending_path(root: Path, name: str) -> Path:
    return delta_io.path_under(root, PENDING_NAMESPACE, name)


def open_pending(root: Path, name: str) -> DeltaTable | None:
    """The pending log of replica ``name`` if it holds rows, else None."""
    path = pending_path(root, name)
    if not DeltaTable.is_deltatable(str(path)):
        return None
    table = DeltaTable(str(path))
    return table if pa.table(table.get_add_actions(flatten=True)).num_rows else None


def append_pending(
    root: Path,
    name: str,
    source: pa.Table,
    primary_key: Sequence[str],
    types: Mapping[str, ColumnType | None],
) -> None:
    """Append one batch's planned row changes (``source``), tagged with the next sequence."""
    path = pending_path(root, name)
    if not DeltaTable.is_deltatable(str(path)):
        path.mkdir(parents=True, exist_ok=True)
        empty = source.schema.append(pa.field(PENDING_SEQ, pa.int64())).empty_table()
        write_deltalake(str(path), empty, mode="append")
        DeltaTable(str(path)).alter.set_table_properties(
            {PRIMARY_KEY_PROPERTY: json.dumps(list(primary_key))}, raise_if_not_exists=False
        )
    flags = {c: ColumnType("bool") for c in source.column_names if c.startswith(KEEP_PREFIX)}
    fixed = {f.name: f.type for f in source.schema if f.name not in types and f.name not in flags}
    table = delta_io.ensure_table(path, {**fixed, PENDING_SEQ: pa.int64()}, {**types, **flags})
    seq = pa.array([table.version() + 1] * source.num_rows, pa.int64())
    data = source.append_column(PENDING_SEQ, seq)
    write_deltalake(table, _with_columns(data, arrow_schema(table)), mode="append")


def arrow_schema(table: DeltaTable) -> pa.Schema:
    schema: Any = table.schema().to_arrow()
    return pa.schema([pa.field(f) for f in schema])


def _with_columns(data: pa.Table, schema: pa.Schema) -> pa.Table:
    """``data`` with every column of ``schema`` (missing ones NULL), cast to its types."""
    for field in schema:
        if field.name not in data.column_names:
            data = data.append_column(field, pa.nulls(data.num_rows, type=field.type))
    return data.select(schema.names).cast(schema)


def _connect(base: DeltaTable, pending: DeltaTable) -> tuple[duckdb.DuckDBPyConnection, str]:
    """A DuckDB connection with ``__base``/``__pending`` registered, and the resolving args."""
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    con.register("__base", base.to_pyarrow_dataset())
    con.register("__pending", pending.to_pyarrow_dataset())
    return con, "__base"


def resolve_args(base_columns: Sequence[str], pending: DeltaTable) -> tuple[list[str], list[str]]:
    """(primary key, keep columns) for resolving ``pending`` over a base of ``base_columns``."""
    key = json.loads(pending.metadata().configuration[PRIMARY_KEY_PROPERTY])
    return key, keep_columns(arrow_schema(pending).names, base_columns)


def read_replica(base: DeltaTable, pending: DeltaTable) -> pa.Table:
    """The whole replica, base + pending resolved, in the base table's schema."""
    schema = arrow_schema(base)
    key, keep = resolve_args(schema.names, pending)
    con, _ = _connect(base, pending)
    with con:
        data = _as_table(
            con.execute(replica_sql("__base", "__pending", key, schema.names, keep)).arrow()
        )
    return _with_columns(data, schema)


def resolved_rows(base: DeltaTable, pending: DeltaTable) -> tuple[pa.Table, int | None]:
    """(resolved rows of the touched keys in the base schema, highest pending sequence)."""
    schema = arrow_schema(base)
    key, keep = resolve_args(schema.names, pending)
    con, _ = _connect(base, pending)
    with con:
        data = _as_table(
            con.execute(compact_sql("__base", "__pending", key, schema.names, keep)).arrow()
        )
        row = con.execute(f"SELECT max({quote(PENDING_SEQ)}) FROM __pending").fetchone()
    top = None if row is None else row[0]
    return _with_columns(data, schema), top


def _as_table(data: Any) -> pa.Table:
    return data.read_all() if isinstance(data, pa.RecordBatchReader) else data
