"""The oracle: compare replicas with their PostgreSQL source.

For each table: row count, then a per-row hash over the primary key and all source
columns. Both sides are first brought to canonical values (:mod:`capa.events`) and then to
their comparable form by :func:`capa.values.comparable`, the one rule the fidelity tests
use too, so a mismatch means the replica really differs. For rows that differ, a second
pass names the differing columns.

The source is read per column type (:data:`SOURCE_TYPES`): types whose Python form differs
from the canonical value, or that psycopg cannot load at all (``infinity`` dates, ranges
with an ``infinity`` bound), are read as PostgreSQL text and parsed here, with the same
special-value rules as the normalisers (:mod:`capa.values`).
A table without a primary key is compared as a multiset: each row is named by its hash
and its occurrence number among equal rows, so a duplicate too many or too few shows up
as an extra or missing ``(hash, n)``.

BigQuery replicas are not downloaded: BigQuery computes each live row's key and hash
(:mod:`capa.warehouse.bigquery.verify`: one canonical text per column type, as SQL and as
its Python twin), and the source rows are hashed the same way here.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capa.events import raw_table_name, stable_json
from capa.keyless import KEYLESS_COLUMNS, ROW_HASH
from capa.values import comparable
from capa.verify_source import SourceColumn, source_columns, source_rows
from capa.warehouse.base import META_COLUMNS, META_DELETED, RAW_NAMESPACE

logger = logging.getLogger(__name__)

Key = tuple[Any, ...]


@dataclass
class TableDiff:
    table: str
    source_rows: int
    replica_rows: int
    missing: list[Any] = field(default_factory=list)  # keys in source, not in replica
    extra: list[Any] = field(default_factory=list)  # keys in replica, not in source
    different: list[Any] = field(default_factory=list)  # keys whose row hash differs
    # key -> names of the columns that differ (filled for the keys in ``different``)
    columns: dict[Any, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.different)

    @property
    def mismatches(self) -> int:
        return len(self.missing) + len(self.extra) + len(self.different)


def row_hash(row: Mapping[str, Any], columns: Iterable[str]) -> str:
    canonical = [[name, comparable(row.get(name))] for name in sorted(columns)]
    return hashlib.blake2b(stable_json(canonical).encode(), digest_size=16).hexdigest()


def row_key(row: Mapping[str, Any], pk: tuple[str, ...]) -> Key:
    return tuple(comparable(row[k]) for k in pk)


def hash_rows(
    rows: Iterable[Mapping[str, Any]], pk: tuple[str, ...], columns: list[str]
) -> dict[Any, str]:
    """Row key -> row hash; for a keyless table (empty ``pk``) see :func:`keyed_hashes`."""
    return keyed_hashes(((row_key(r, pk), row_hash(r, columns)) for r in rows), pk)


def keyed_hashes(pairs: Iterable[tuple[Key, str]], pk: tuple[str, ...]) -> dict[Any, str]:
    """(row key, row hash) pairs -> a dict; for a keyless table (empty ``pk``) the key is
    (hash, n), n counting the equal rows before it, so the dicts compare as multisets."""
    if not pk:
        counts: Counter[str] = Counter(h for _, h in pairs)
        return {(h, n): h for h, count in counts.items() for n in range(count)}
    return dict(pairs)


def differing_columns(
    source: Mapping[str, Any], replica: Mapping[str, Any], columns: Iterable[str]
) -> list[str]:
    """The columns whose values are not the same value (by :func:`comparable`)."""
    return [c for c in sorted(columns) if comparable(source.get(c)) != comparable(replica.get(c))]


def compare(
    table: str, source: dict[Any, str], replica: dict[Any, str], limit: int = 20
) -> TableDiff:
    diff = TableDiff(table, len(source), len(replica))
    diff.missing = sorted(source.keys() - replica.keys())[:limit]
    diff.extra = sorted(replica.keys() - source.keys())[:limit]
    diff.different = sorted(k for k in source.keys() & replica.keys() if source[k] != replica[k])[
        :limit
    ]
    return diff


def rows_with_keys(
    rows: Iterable[Mapping[str, Any]], pk: tuple[str, ...], keys: Collection[Key]
) -> dict[Key, Mapping[str, Any]]:
    wanted = set(keys)
    return {k: r for r in rows if (k := row_key(r, pk)) in wanted}


def name_differences(
    diff: TableDiff,
    source: Callable[[], Iterable[Mapping[str, Any]]],
    replica: Callable[[], Iterable[Mapping[str, Any]]],
    pk: tuple[str, ...],
    columns: list[str],
) -> None:
    """Fill ``diff.columns`` for the differing keys (a second read of both sides)."""
    if not diff.different:
        return
    src = rows_with_keys(source(), pk, diff.different)
    rep = rows_with_keys(replica(), pk, diff.different)
    for key in diff.different:
        diff.columns[key] = differing_columns(src.get(key, {}), rep.get(key, {}), columns)


# --- PostgreSQL side ---------------------------------------------------------------


def _pg_connect(dsn: str) -> Any:
    import psycopg
    from psycopg.types.json import set_json_loads

    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("SET TIME ZONE 'UTC'")
    set_json_loads(_json_text, conn)  # keep json/jsonb as their text
    return conn


def _json_text(data: str | bytes | memoryview) -> str:
    return bytes(data).decode() if isinstance(data, bytes | memoryview) else data


def pg_tables(dsn: str, schema: str = "public") -> list[tuple[str, tuple[str, ...], list[str]]]:
    """(table, pk columns, all columns) for every table; pk is () for a keyless table."""
    sql = """
        SELECT c.table_name,
               array_agg(c.column_name::text ORDER BY c.ordinal_position) AS cols,
               (SELECT array_agg(a.attname::text ORDER BY array_position(i.indkey, a.attnum))
                  FROM pg_index i JOIN pg_attribute a
                    ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                 WHERE i.indrelid = format('%%I.%%I', c.table_schema, c.table_name)::regclass
                   AND i.indisprimary) AS pk
          FROM information_schema.columns c
          JOIN information_schema.tables t
            ON t.table_schema = c.table_schema AND t.table_name = c.table_name
         WHERE c.table_schema = %s AND t.table_type = 'BASE TABLE'
         GROUP BY c.table_schema, c.table_name
    """
    with _pg_connect(dsn) as conn:
        rows = conn.execute(sql, [schema]).fetchall()
    return [(name, tuple(pk or ()), list(cols)) for name, cols, pk in rows]


def pg_rows(dsn: str, schema: str, table: str) -> Iterator[dict[str, Any]]:
    """Every row of ``schema.table`` as canonical values (see :mod:`capa.verify_source`)."""
    with _pg_connect(dsn) as conn:
        typed: list[SourceColumn] = source_columns(conn, schema, table)
        yield from source_rows(conn, schema, table, typed)


def pg_row_hashes(
    dsn: str, schema: str, table: str, pk: tuple[str, ...], columns: list[str]
) -> dict[Any, str]:
    return hash_rows(pg_rows(dsn, schema, table), pk, columns)


# --- replica side (local lakehouse) ------------------------------------------------------


def local_replica_rows(lakehouse: Path, name: str) -> list[dict[str, Any]] | None:
    """The live rows of ``raw.<name>`` without capa's meta columns; None if absent.

    Read as every reader sees the replica: the base table plus its merge-on-read pending
    log (``LocalWarehouse.rows``), not the base Delta table alone.
    """
    from capa.warehouse.local import delta_io
    from capa.warehouse.local.warehouse import LocalWarehouse

    warehouse = LocalWarehouse(lakehouse)
    if delta_io.open_table(warehouse.table_path(RAW_NAMESPACE, name)) is None:
        return None
    replica = warehouse.rows(f"{RAW_NAMESPACE}.{name}", include_deleted=True)
    rows = [r for r in replica if not r.get(META_DELETED)]
    for row in rows:
        for meta in (*META_COLUMNS, *KEYLESS_COLUMNS):
            row.pop(meta, None)
    return rows


def local_replica_row_hashes(
    lakehouse: Path, name: str, pk: tuple[str, ...], columns: list[str]
) -> dict[Any, str] | None:
    """Row hashes of ``raw.<name>`` in a local lakehouse, tombstones excluded; None if absent."""
    rows = local_replica_rows(lakehouse, name)
    return None if rows is None else hash_rows(rows, pk, columns)


def verify_postgres_local(
    dsn: str,
    source: str,
    schema: str,
    lakehouse: Path,
    tables: Collection[str] | None = None,
) -> list[TableDiff]:
    """Compare every PostgreSQL table of ``schema`` (or only ``tables``) with its replica."""
    diffs = []
    for table, pk, columns in sorted(pg_tables(dsn, schema)):
        if tables is not None and table not in tables:
            continue
        name = raw_table_name(source, schema, table)
        src = pg_row_hashes(dsn, schema, table, pk, columns)
        rep = local_replica_row_hashes(lakehouse, name, pk, columns)
        if rep is None:
            logger.info("no replica for %s yet", name)
            rep = {}
        diff = compare(f"{RAW_NAMESPACE}.{name}", src, rep)
        name_differences(
            diff,
            lambda t=table: pg_rows(dsn, schema, t),  # type: ignore[misc]
            lambda n=name: local_replica_rows(lakehouse, n) or [],  # type: ignore[misc]
            pk,
            columns,
        )
        diffs.append(diff)
    return diffs


# --- replica side (BigQuery): hashes computed inside BigQuery ---------------------------


def bigquery_replica_row_hashes(
    warehouse: Any, name: str, pk: tuple[str, ...], columns: list[str]
) -> tuple[dict[Any, str], dict[str, tuple[str, bool]]] | None:
    """Key -> row hash of the live rows of ``raw.<name>``, computed by BigQuery (only keys
    and hashes leave it), and the column types the hashes used; None if absent."""
    from capa.warehouse.bigquery.verify import row_hashes_sql, standard_type

    if not warehouse.catalog.exists(name):
        return None
    fields = warehouse.catalog.schema(name)
    types = {
        c: (standard_type(fields[c].field_type), fields[c].mode == "REPEATED")
        if c in fields
        else ("", False)
        for c in columns
    }
    statement = row_hashes_sql(warehouse.parts(name), pk, types)
    rows = warehouse.run(statement)
    return keyed_hashes(((row_key(r, pk), r[ROW_HASH]) for r in rows), pk), types


def pg_bigquery_row_hashes(
    dsn: str, schema: str, table: str, pk: tuple[str, ...], types: dict[str, tuple[str, bool]]
) -> dict[Any, str]:
    """The source rows hashed as BigQuery hashes the replica (``types`` from the replica)."""
    from psycopg import sql
    from psycopg.rows import dict_row

    from capa.warehouse.bigquery.verify import row_hash as bigquery_row_hash

    query = sql.SQL("SELECT * FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    with _pg_connect(dsn) as conn:
        cur = conn.cursor(row_factory=dict_row)
        rows = cur.execute(query)
        return keyed_hashes(((row_key(r, pk), bigquery_row_hash(r, types)) for r in rows), pk)


def verify_postgres_bigquery(dsn: str, source: str, schema: str, warehouse: Any) -> list[TableDiff]:
    """Compare every PostgreSQL table of ``schema`` with its replica in a BigQuery warehouse
    (a :class:`~capa.warehouse.bigquery.BigQueryWarehouse`)."""
    diffs = []
    for table, pk, columns in sorted(pg_tables(dsn, schema)):
        name = raw_table_name(source, schema, table)
        replica = bigquery_replica_row_hashes(warehouse, name, pk, columns)
        if replica is None:
            logger.info("no replica for %s yet", name)
            src = pg_row_hashes(dsn, schema, table, pk, columns)
            diffs.append(compare(f"{RAW_NAMESPACE}.{name}", src, {}))
            continue
        rep, types = replica
        src = pg_bigquery_row_hashes(dsn, schema, table, pk, types)
        diffs.append(compare(f"{RAW_NAMESPACE}.{name}", src, rep))
    return diffs
