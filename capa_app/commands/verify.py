"""``capa verify``: compare every replica with its PostgreSQL source; non-zero on mismatch."""

from __future__ import annotations

import argparse
from pathlib import Path

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
    parser.add_argument("--warehouse", help="local:DIR (default: warehouse.path from config)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import psycopg

    from capa.verify import verify_postgres_local

    settings = load_settings()
    dsn = args.dsn or settings.postgres.dsn()
    source = args.source or settings.debezium.source_name
    lakehouse = _lakehouse(args.warehouse, settings)
    try:
        diffs = verify_postgres_local(dsn, source, args.schema, lakehouse)
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


def _lakehouse(spec: str | None, settings: object) -> Path:
    if spec:
        kind, _, path = spec.partition(":")
        if kind != "local" or not path:
            from capa.errors import ConfigError

            raise ConfigError(
                f"--warehouse {spec!r}: capa verify compares local replicas; use local:DIR"
            )
        return Path(path)
    return Path(settings.warehouse.path)  # type: ignore[attr-defined]
