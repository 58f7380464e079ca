"""The oracle: compare replicas with their PostgreSQL source.

For each table: row count, then a per-row hash over the primary key and all source
columns, both sides normalised to the canonical JSON value form
(:func:`capa.codec.to_json_value`), so a mismatch means the replica really differs.

BigQuery replicas are not downloaded: BigQuery computes each live row's key and hash
(:mod:`capa.warehouse.bigquery.verify`: one canonical text per column type, as SQL and as
its Python twin), and the source rows are hashed the same way here.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from capa.codec import to_json_value
from capa.events import raw_table_name, stable_json
from capa.warehouse.base import META_COLUMNS, META_DELETED, RAW_NAMESPACE

logger = logging.getLogger(__name__)


@dataclass
class TableDiff:
    table: str
    source_rows: int
    replica_rows: int
    missing: list[Any] = field(default_factory=list)  # keys in source, not in replica
    extra: list[Any] = field(default_factory=list)  # keys in replica, not in source
    different: list[Any] = field(default_factory=list)  # keys whose row hash differs

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.different)

    @property
    def mismatches(self) -> int:
        return len(self.missing) + len(self.extra) + len(self.different)


def row_hash(row: Mapping[str, Any], columns: Iterable[str]) -> str:
    canonical = [[name, _normal(row.get(name))] for name in sorted(columns)]
    return hashlib.blake2b(stable_json(canonical).encode(), digest_size=16).hexdigest()


def _normal(value: Any) -> Any:
    """Canonical comparable form. Decimals compare by value (``12.30`` == ``12.300``): the
    replica's scale is a property of its column type, checked by the fidelity tests."""
    if isinstance(value, memoryview | bytearray):
        value = bytes(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Decimal) and value.is_finite():
        return format(value.normalize(), "f")
    if isinstance(value, list | tuple):
        return [_normal(v) for v in value]
    return to_json_value(value)


def hash_rows(
    rows: Iterable[Mapping[str, Any]], pk: tuple[str, ...], columns: list[str]
) -> dict[Any, str]:
    return {tuple(_normal(r[k]) for k in pk): row_hash(r, columns) for r in rows}


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
    """(table, pk columns, all columns) for every table with a primary key."""
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
    return [(name, tuple(pk), list(cols)) for name, cols, pk in rows if pk]


def pg_row_hashes(
    dsn: str, schema: str, table: str, pk: tuple[str, ...], columns: list[str]
) -> dict[Any, str]:
    from psycopg import sql

    query = sql.SQL("SELECT * FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    with _pg_connect(dsn) as conn:
        cur = conn.cursor(row_factory=_dict_row())
        return hash_rows(cur.execute(query), pk, columns)


def _dict_row() -> Any:
    from psycopg.rows import dict_row

    return dict_row


# --- replica side (local lakehouse) ------------------------------------------------------


def local_replica_row_hashes(
    lakehouse: Path, name: str, pk: tuple[str, ...], columns: list[str]
) -> dict[Any, str] | None:
    """Row hashes of ``raw.<name>`` in a local lakehouse, tombstones excluded; None if absent.

    Read as every reader sees the replica: the base table plus its merge-on-read pending
    log (``LocalWarehouse.rows``), not the base Delta table alone.
    """
    from capa.warehouse.local import delta_io
    from capa.warehouse.local.warehouse import LocalWarehouse

    if delta_io.open_table(lakehouse / RAW_NAMESPACE / name) is None:
        return None
    replica = LocalWarehouse(lakehouse).rows(f"{RAW_NAMESPACE}.{name}", include_deleted=True)
    rows = [r for r in replica if not r.get(META_DELETED)]
    for row in rows:
        for meta in META_COLUMNS:
            row.pop(meta, None)
    return hash_rows(rows, pk, columns)


def verify_postgres_local(dsn: str, source: str, schema: str, lakehouse: Path) -> list[TableDiff]:
    """Compare every PostgreSQL table of ``schema`` with its replica in ``lakehouse``."""
    diffs = []
    for table, pk, columns in sorted(pg_tables(dsn, schema)):
        name = raw_table_name(source, schema, table)
        src = pg_row_hashes(dsn, schema, table, pk, columns)
        rep = local_replica_row_hashes(lakehouse, name, pk, columns)
        if rep is None:
            logger.info("no replica for %s yet", name)
            rep = {}
        diffs.append(compare(f"{RAW_NAMESPACE}.{name}", src, rep))
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
    hashes = {
        tuple(_normal(r[k]) for k in pk): r["_capa_row_hash"] for r in warehouse.run(statement)
    }
    return hashes, types


def pg_bigquery_row_hashes(
    dsn: str, schema: str, table: str, pk: tuple[str, ...], types: dict[str, tuple[str, bool]]
) -> dict[Any, str]:
    """The source rows hashed as BigQuery hashes the replica (``types`` from the replica)."""
    from psycopg import sql

    from capa.warehouse.bigquery.verify import row_hash as bigquery_row_hash

    query = sql.SQL("SELECT * FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    with _pg_connect(dsn) as conn:
        cur = conn.cursor(row_factory=_dict_row())
        return {
            tuple(_normal(r[k]) for k in pk): bigquery_row_hash(r, types)
            for r in cur.execute(query)
        }


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
