"""DuckDB over the local lakehouse: every Delta table under ``DIR/<namespace>/<name>`` is a view.

* ``<namespace>.<name>``: the table; for raw replicas tombstones are hidden unless soft
  deletes are configured (then ``_capa_deleted`` tells them apart);
* ``raw.<name>_all``: a replica with its tombstones (metadata view);
* ``raw.<name>_changelog``: the append-only history, as written.

A replica written with merge-on-read is served as base + pending log, resolved in SQL
(:mod:`capa.warehouse.local.pending`); the internal ``_pending`` namespace is not listed.

Delta tables are read through delta-rs' Arrow datasets (offline; no DuckDB extension).
"""

from __future__ import annotations

from pathlib import Path

import duckdb
from deltalake import DeltaTable

from capa.events import ALL_ROWS_SUFFIX
from capa.warehouse.base import CHANGELOG_SUFFIX, META_DELETED, RAW_NAMESPACE
from capa.warehouse.local import pending


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def connect(root: Path, *, soft_deletes: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with one view per Delta table under ``root``."""
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    for table_dir in sorted(p.parent for p in Path(root).glob("*/*/_delta_log")):
        if not table_dir.parent.name.startswith("_"):
            register_table(con, table_dir, soft_deletes=soft_deletes)
    return con


def register_table(con: duckdb.DuckDBPyConnection, table_dir: Path, *, soft_deletes: bool) -> None:
    namespace, name = table_dir.parent.name, table_dir.name
    base = DeltaTable(str(table_dir))
    dataset = base.to_pyarrow_dataset()
    source = f"__delta__{namespace}__{name}"
    con.register(source, dataset)
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(namespace)}")
    log = (
        pending.open_pending(table_dir.parent.parent, name) if namespace == RAW_NAMESPACE else None
    )
    if log is not None:
        source = _register_merged(con, source, base, log, namespace, name)
    target = f"{_quote(namespace)}.{_quote(name)}"
    columns = {f.name for f in dataset.schema}
    hides = (
        namespace == RAW_NAMESPACE
        and META_DELETED in columns
        and not name.endswith(CHANGELOG_SUFFIX)
    )
    where = f" WHERE NOT {_quote(META_DELETED)}" if hides and not soft_deletes else ""
    con.execute(f"CREATE VIEW {target} AS SELECT * FROM {_quote(source)}{where}")
    if hides:
        con.execute(
            f"CREATE VIEW {_quote(namespace)}.{_quote(name + ALL_ROWS_SUFFIX)}"
            f" AS SELECT * FROM {_quote(source)}"
        )


def _register_merged(
    con: duckdb.DuckDBPyConnection,
    base: str,
    table: DeltaTable,
    log: DeltaTable,
    namespace: str,
    name: str,
) -> str:
    """Register the pending log and a view of base + pending; returns the view's name."""
    log_source = f"__pending__{namespace}__{name}"
    con.register(log_source, log.to_pyarrow_dataset())
    columns = [f.name for f in table.to_pyarrow_dataset().schema]
    key, keep = pending.resolve_args(columns, log)
    merged = f"__merged__{namespace}__{name}"
    sql = pending.replica_sql(_quote(base), _quote(log_source), key, columns, keep)
    con.execute(f"CREATE VIEW {_quote(merged)} AS {sql}")
    return merged
