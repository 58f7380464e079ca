"""``capa sql``: run SQL (DuckDB) over a warehouse's tables.

    capa sql --warehouse local:DIR [--json] "SELECT * FROM raw.f2_public_orders"

Every Delta table under ``DIR/<namespace>/<name>`` is a view ``<namespace>.<name>``; raw
replicas hide tombstones (``raw.<name>_all`` shows them), ``raw.<name>_changelog`` is the
history. ``--json`` prints one JSON object per row (values as in ``capa normalize``);
otherwise an aligned table.

The local engine is read-only and sandboxed (:mod:`capa.warehouse.local.views`): one
SELECT-like statement, no file or network access, no settings. Exit 1 with the engine's
message when the SQL fails or names a table that cannot be read (the others still
answer), 2 for a bad ``--warehouse`` or a statement the sandbox refuses.
"""

from __future__ import annotations

import argparse
from typing import Any

from capa import console
from capa.codec import to_json_value
from capa.errors import ConfigError, QueryRefused, WarehouseError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("sql", help="query the warehouse tables with SQL (DuckDB)")
    parser.add_argument("--warehouse", required=True, help="local:DIR")
    parser.add_argument("--json", action="store_true", help="one JSON object per row")
    parser.add_argument("--soft-deletes", action="store_true", help="raw views keep deleted rows")
    parser.add_argument("query", help="the SQL text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from capa.warehouse import open_warehouse

    try:
        warehouse = open_warehouse(args.warehouse, soft_deletes=args.soft_deletes)
    except ConfigError as exc:
        console.error(str(exc))
        return EXIT_USAGE
    try:
        rows = list(warehouse.query(args.query))
    except QueryRefused as exc:
        console.error(f"refused: {exc}")
        return EXIT_USAGE
    except WarehouseError as exc:
        console.error(f"query failed: {exc}")
        return EXIT_FAILURE
    except Exception as exc:  # the engine's own error types (duckdb.Error, google.api_core...)
        if type(exc).__module__.split(".")[0] not in ("duckdb", "_duckdb", "google"):
            raise
        detail = " ".join(str(exc).split("\n\nLINE")[0].split())  # DuckDB adds a caret block
        console.error(f"query failed: {detail}")
        return EXIT_FAILURE
    finally:
        warehouse.close()
    _print(rows, as_json=args.json)
    return EXIT_OK


def _print(rows: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        for row in rows:
            console.emit_json({k: _json_value(v) for k, v in row.items()})
        return
    headers = list(rows[0]) if rows else []
    console.table(headers, [[_text(v) for v in row.values()] for row in rows])


def _json_value(value: Any) -> Any:
    try:
        return to_json_value(value)
    except TypeError:
        return str(value)


def _text(value: Any) -> Any:
    converted = _json_value(value)
    return (
        converted
        if isinstance(converted, str | int | float) or converted is None
        else str(converted)
    )
