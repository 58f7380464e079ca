"""Delta table housekeeping through delta-rs: create, evolve the schema, truncate watermark.

Schema changes are their own commits before the data commit; they only add NULL columns
or widen types exactly, so a crash between them and the data commit loses nothing (the
replayed batch finds the schema ready).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from capa.errors import WarehouseTerminalError
from capa.warehouse.base import CHANGE_FEED_PROPERTY
from capa.warehouse.local.arrow_types import arrow_type, column_type
from capa.warehouse.types import ColumnType, widen

logger = logging.getLogger(__name__)

WATERMARK_PROPERTY = "capa.truncatePosition"
# Replicas record a change data feed (pre/post images of every merged row, ``_change_data/``):
# incremental consumption builds read what changed between two versions from it instead of
# diffing the rewritten data files. Costs ~15% more per MERGE (10k rows into 1M: 0.135 ->
# 0.156 s median).
REPLICA_PROPERTIES = {CHANGE_FEED_PROPERTY: "true"}


def path_under(root: Path, namespace: str, name: str) -> Path:
    """``root/namespace/name``, refused unless it stays inside ``root``.

    Defence in depth: raw names come from :func:`capa.events.raw_table_name` (``[a-z0-9_]``
    only), so this never refuses one; it guards against any other caller. The check is on
    the normalised path, not the symlink-resolved one: an operator may link a namespace to
    another disk.
    """
    for part in (namespace, name):
        if part in ("", ".", "..") or any(sep in part for sep in ("/", "\\", "\0")):
            raise WarehouseTerminalError(
                f"table name part {part!r} is not a single path component; "
                "raw table names come from capa.events.raw_table_name"
            )
    base = os.path.abspath(root)
    path = os.path.abspath(os.path.join(base, namespace, name))
    if os.path.commonpath([base, path]) != base:
        raise WarehouseTerminalError(f"table path {path!r} is outside the warehouse root {base!r}")
    return Path(root) / namespace / name


def open_table(path: Path) -> DeltaTable | None:
    return DeltaTable(str(path)) if DeltaTable.is_deltatable(str(path)) else None


def table_types(table: DeltaTable) -> dict[str, ColumnType]:
    schema: Any = table.schema().to_arrow()
    return {f.name: column_type(pa.field(f).type) for f in schema}


def ensure_table(
    path: Path,
    fixed: Mapping[str, pa.DataType],
    wanted: Mapping[str, ColumnType | None],
    properties: Mapping[str, str] | None = None,
) -> DeltaTable:
    """Create the table or evolve it so it holds ``fixed`` and ``wanted`` columns.

    ``fixed`` (metadata columns) have exact Arrow types; ``wanted`` (source columns) are
    added when new and widened when the batch needs a wider type (SchemaDriftError if it
    cannot be). Columns of unknown type (all NULL so far) are not created yet. ``properties``
    are set at creation, and on a table made without them (one commit, once).
    """
    table = open_table(path)
    if table is None:
        return _create(path, fixed, wanted, properties or {})
    table = _with_properties(table, properties or {})
    current = table_types(table)
    new = {n: t for n, t in wanted.items() if t is not None and n not in current}
    widened = {
        n: widen(current[n], t, column=n)
        for n, t in wanted.items()
        if t is not None and n in current
    }
    widened = {n: t for n, t in widened.items() if t != current[n]}
    if widened:
        _rewrite_widened(table, widened)
    if new:
        _add_columns(table, new)
    return DeltaTable(str(path)) if (new or widened) else table


def _create(
    path: Path,
    fixed: Mapping[str, pa.DataType],
    wanted: Mapping[str, ColumnType | None],
    properties: Mapping[str, str],
) -> DeltaTable:
    fields = [pa.field(n, arrow_type(t)) for n, t in wanted.items() if t is not None]
    fields += [pa.field(n, t) for n, t in fixed.items()]
    path.mkdir(parents=True, exist_ok=True)
    write_deltalake(
        str(path), pa.schema(fields).empty_table(), mode="append", configuration=dict(properties)
    )
    logger.info("created Delta table %s", path)
    return DeltaTable(str(path))


def _with_properties(table: DeltaTable, properties: Mapping[str, str]) -> DeltaTable:
    """``table`` with ``properties`` set (a table created before they were introduced)."""
    current = table.metadata().configuration
    missing = {k: v for k, v in properties.items() if current.get(k) != v}
    if not missing:
        return table
    table.alter.set_table_properties(missing, raise_if_not_exists=False)
    logger.info("set %s on %s", missing, table.table_uri)
    return DeltaTable(table.table_uri)


def _add_columns(table: DeltaTable, new: Mapping[str, ColumnType]) -> None:
    schema: Any = table.schema().to_arrow()
    fields = [pa.field(f) for f in schema] + [pa.field(n, arrow_type(t)) for n, t in new.items()]
    write_deltalake(table, pa.schema(fields).empty_table(), mode="append", schema_mode="merge")
    logger.info("added columns %s to %s", sorted(new), table.table_uri)


def _rewrite_widened(table: DeltaTable, widened: Mapping[str, ColumnType]) -> None:
    """Rewrite the table with wider column types (rare; costs one full table rewrite)."""
    data = table.to_pyarrow_table()
    schema = pa.schema(
        [
            pa.field(f.name, arrow_type(widened[f.name])) if f.name in widened else f
            for f in data.schema
        ]
    )
    write_deltalake(table, data.cast(schema), mode="overwrite", schema_mode="overwrite")
    logger.warning(
        "widened columns %s of %s (full rewrite)",
        {n: str(t) for n, t in widened.items()},
        table.table_uri,
    )


def read_watermark(table: DeltaTable | None) -> str | None:
    if table is None:
        return None
    return table.metadata().configuration.get(WATERMARK_PROPERTY) or None


def write_watermark(table: DeltaTable, position: str) -> None:
    table.alter.set_table_properties({WATERMARK_PROPERTY: position}, raise_if_not_exists=False)


def sql_string(value: str) -> str:
    """A DataFusion string literal (delta-rs predicates cannot bind parameters)."""
    return "'" + value.replace("'", "''") + "'"


def ident(name: str) -> str:
    """A DataFusion quoted identifier."""
    return '"' + name.replace('"', '""') + '"'
