"""Merge-on-read for the local replica: a pending log served together with the base table.

With ``merge_on_read`` a batch is not merged into ``raw/<name>`` (a merge rewrites every
file holding a touched key: the whole table per commit with random keys). Its planned row
changes (one per key, exactly what the MERGE would have used, keep flags included) are
appended to ``_pending/<name>``, tagged with an arrival sequence ``_capa_pending_seq``.
Readers (``capa sql`` views, ``LocalWarehouse.rows()``) see base + pending resolved by the
same rule as the MERGE (:mod:`capa.merge_rule`, which renders it as DuckDB SQL over base
rows then pending rows in arrival order).

Truncates are not deferred: a batch with a truncate compacts first and then merges (so
pending rows never straddle a truncate watermark). :func:`resolved_rows` gives the resolved
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

from capa.merge_rule import (
    DUCKDB,
    KEEP_PREFIX,
    PENDING_SEQ,
    compact_sql,
    keep_columns,
    replica_sql,
)
from capa.warehouse.local import delta_io
from capa.warehouse.types import ColumnType

PENDING_NAMESPACE = "_pending"
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


def replica_view_sql(base: str, pending: str, columns: Sequence[str], log: DeltaTable) -> str:
    """SELECT of the whole replica over registered relations ``base`` and ``pending``."""
    key, keep = resolve_args(columns, log)
    return replica_sql(base, pending, key, columns, keep)


def read_replica(base: DeltaTable, pending: DeltaTable) -> pa.Table:
    """The whole replica, base + pending resolved, in the base table's schema."""
    schema = arrow_schema(base)
    con, _ = _connect(base, pending)
    with con:
        sql = replica_view_sql("__base", "__pending", schema.names, pending)
        data = _as_table(con.execute(sql).arrow())
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
        row = con.execute(f"SELECT max({DUCKDB.ident(PENDING_SEQ)}) FROM __pending").fetchone()
    top = None if row is None else row[0]
    return _with_columns(data, schema), top


def _as_table(data: Any) -> pa.Table:
    return data.read_all() if isinstance(data, pa.RecordBatchReader) else data
