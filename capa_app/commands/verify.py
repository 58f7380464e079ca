"""``capa verify``: compare every replica with its PostgreSQL source; non-zero on mismatch."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from capa import console
from capa.config import load_settings

EXIT_FAILURE, EXIT_MISMATCH = 1, 4


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "verify", help="compare replicas with their source (count + per-row hash)"
    )
    parser.add_argument(
        "--dsn", help="PostgreSQL DSN of the source (default: the local F2 from config)"
    )
    parser.add_argument(
        "--source", help="source name used in raw table names (default: debezium.source_name)"
    )
    parser.add_argument(
        "--schema", default="public", help="PostgreSQL schema to compare (default public)"
    )
    parser.add_argument(
        "--warehouse",
        help="local:DIR or bigquery:PROJECT[@ENDPOINT][?options] (default: the configured "
        "warehouse); BigQuery computes its row hashes itself",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import psycopg

    settings = load_settings()
    dsn = args.dsn or settings.postgres.dsn()
    source = args.source or settings.debezium.source_name
    try:
        diffs = _diffs(args.warehouse, settings, dsn, source, args.schema)
    except psycopg.Error as exc:
        detail = " ".join(str(exc).split())
        console.error(
            f"cannot read the source PostgreSQL: {detail}; start it (capa up) or pass --dsn"
        )
        return EXIT_FAILURE
    console.table(
        ["table", "source rows", "replica rows", "missing", "extra", "different", "match"],
        [
            (
                d.table,
                d.source_rows,
                d.replica_rows,
                len(d.missing),
                len(d.extra),
                len(d.different),
                "yes" if d.ok else "NO",
            )
            for d in diffs
        ],
    )
    for d in diffs:
        if not d.ok:
            console.info(f"{d.table}: missing {d.missing} extra {d.extra} different {d.different}")
        for key in d.different:
            columns = ", ".join(d.columns.get(key, [])) or "?"
            console.info(f"{d.table}: key {list(key)} differs in column(s) {columns}")
    return 0 if all(d.ok for d in diffs) else EXIT_MISMATCH


def _diffs(spec: str | None, settings: Any, dsn: str, source: str, schema: str) -> list[Any]:
    from capa.config import LocalWarehouseConfig
    from capa.verify import verify_postgres_bigquery, verify_postgres_local
    from capa.warehouse import open_warehouse, parse_spec

    config = parse_spec(spec) if spec else settings.warehouse
    if isinstance(config, LocalWarehouseConfig):
        return verify_postgres_local(dsn, source, schema, Path(config.path))
    warehouse = open_warehouse(config)
    try:
        return verify_postgres_bigquery(dsn, source, schema, warehouse)
    finally:
        warehouse.close()
