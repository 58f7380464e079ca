"""DuckDB over the local lakehouse: every Delta table under ``DIR/<namespace>/<name>`` is a view.

* ``<namespace>.<name>``: the table; for raw replicas tombstones are hidden unless soft
  deletes are configured (then ``_capa_deleted`` tells them apart);
* ``raw.<name>_all``: a replica with its tombstones (metadata view);
* ``raw.<name>_changelog``: the append-only history, as written.

A replica written with merge-on-read is served as base + pending log, resolved in SQL
(:mod:`capa.warehouse.local.pending`); the internal ``_pending`` namespace is not listed.

Delta tables are read through delta-rs' Arrow datasets (offline; no DuckDB extension), so
DuckDB itself needs no file access at all: once the views exist the connection is
sandboxed with DuckDB's own settings (``enable_external_access=false``: no file, URL,
``COPY``, ``ATTACH``, ``INSTALL``/``LOAD``; no Python replacement scans;
``lock_configuration=true`` so no query can turn that back on), and :class:`Lakehouse`
runs one read-only statement at a time (DuckDB's parser must call it a SELECT: ``WITH``,
``DESCRIBE``, ``SHOW``, ``SUMMARIZE`` ... are SELECTs to it).

A table that cannot be opened (a corrupt ``_delta_log``, a missing data file) gets no
view; its reason is recorded and only a query naming it fails, with that reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import duckdb
from deltalake import DeltaTable

from capa.errors import QueryRefused, WarehouseTerminalError
from capa.events import ALL_ROWS_SUFFIX
from capa.warehouse.base import CHANGELOG_SUFFIX, META_DELETED, RAW_NAMESPACE
from capa.warehouse.local import pending

# Applied after the views exist, in this order (the lock last). Every one is DuckDB's own.
_SANDBOX = (
    "SET enable_external_access = false",
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET python_enable_replacements = false",
    "SET lock_configuration = true",
)
_READ_ONLY = frozenset({duckdb.StatementType.SELECT})


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class Lakehouse:
    """A sandboxed, read-only DuckDB over the lakehouse, and the tables it could not open."""

    con: duckdb.DuckDBPyConnection
    broken: dict[str, str] = field(default_factory=dict)  # "namespace.name" -> reason

    def execute(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> duckdb.DuckDBPyConnection:
        """Run one read-only statement; :class:`QueryRefused` for anything else,
        :class:`WarehouseTerminalError` when it names a table that cannot be read."""
        refuse_writes(self.con, sql)
        self._check_tables(sql)
        try:
            return self.con.execute(sql, params) if params is not None else self.con.execute(sql)
        except duckdb.PermissionException as exc:
            raise QueryRefused(
                f"capa sql reads only the lakehouse tables (raw.*, consumption.*): "
                f"{_first_line(exc)}"
            ) from None

    def _check_tables(self, sql: str) -> None:
        if not self.broken:
            return
        try:
            named = self.con.get_table_names(sql, qualified=True)
        except duckdb.Error:
            return  # not parseable: DuckDB's own error when it runs says why
        for name in sorted(named):
            reason = self.broken.get(name.split(" AS ")[0].replace('"', "").lower())
            if reason is not None:
                raise WarehouseTerminalError(reason)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Lakehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def refuse_writes(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """:class:`QueryRefused` unless ``sql`` is exactly one statement DuckDB parses as a SELECT."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error:
        return  # a syntax error: running it reports DuckDB's message
    if len(statements) != 1:
        raise QueryRefused(
            f"capa sql runs one statement at a time, got {len(statements)}: {sql!r:.120}"
        )
    kind = statements[0].type
    if kind not in _READ_ONLY:
        raise QueryRefused(
            f"capa sql is read-only: a {kind.name} statement is refused ({sql!r:.120}); "
            "use SELECT / WITH / DESCRIBE / SHOW"
        )


def connect(root: Path, *, soft_deletes: bool = False) -> Lakehouse:
    """An in-memory, sandboxed DuckDB with one view per readable Delta table under ``root``."""
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    lake = Lakehouse(con)
    for table_dir in sorted(p.parent for p in Path(root).glob("*/*/_delta_log")):
        if table_dir.parent.name.startswith("_"):
            continue
        try:
            register_table(con, table_dir, soft_deletes=soft_deletes)
        except Exception as exc:  # delta-rs, Arrow and OS errors alike: keep the others
            _record_broken(lake, table_dir, exc)
    for statement in _SANDBOX:
        con.execute(statement)
    return lake


def _record_broken(lake: Lakehouse, table_dir: Path, exc: Exception) -> None:
    namespace, name = table_dir.parent.name, table_dir.name
    reason = (
        f"table {namespace}.{name} cannot be read ({type(exc).__name__}: {_first_line(exc)}); "
        f"repair or remove {table_dir} (the other tables are unaffected)"
    )
    for view in (name, name + ALL_ROWS_SUFFIX):
        lake.broken[f"{namespace}.{view}".lower()] = reason


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _missing_files(table: DeltaTable) -> list[str]:
    paths = [unquote(urlparse(u).path) if "://" in u else u for u in table.file_uris()]
    return [p for p in paths if not os.path.exists(p)]


def register_table(con: duckdb.DuckDBPyConnection, table_dir: Path, *, soft_deletes: bool) -> None:
    namespace, name = table_dir.parent.name, table_dir.name
    base = DeltaTable(str(table_dir))
    missing = _missing_files(base)
    if missing:  # the scan would fail only when a query reads it: say so up front
        raise FileNotFoundError(f"{len(missing)} data file(s) missing, e.g. {missing[0]}")
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
    merged = f"__merged__{namespace}__{name}"
    sql = pending.replica_view_sql(_quote(base), _quote(log_source), columns, log)
    con.execute(f"CREATE VIEW {_quote(merged)} AS {sql}")
    return merged
