"""What the warehouse already holds for the CRM: replica keys/positions and completed loads.

Reads go through the warehouse port (``tables()`` and ``query``); values are bound and
identifiers quoted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from capa.codec import to_json_value
from capa.events import raw_table_name, stable_json
from capa.warehouse.base import META_DELETED, META_POSITION, RAW_NAMESPACE, Warehouse
from connectors.crm.contract import CrmContract, ObjectContract
from connectors.crm.load import LOADS_TABLE, ReplicaRow

logger = logging.getLogger(__name__)


def _double_quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _backtick(name: str) -> str:
    return "`" + name.replace("`", "\\`") + "`"


# Warehouse adapter class -> identifier quoting of its SQL dialect (DuckDB / GoogleSQL).
QUOTING = {"LocalWarehouse": _double_quote, "BigQueryWarehouse": _backtick}


def _quoter(warehouse: Warehouse) -> Callable[[str], str]:
    return QUOTING.get(type(warehouse).__name__, _double_quote)


def _table(contract: CrmContract, table: str) -> str:
    return raw_table_name(contract.source, contract.schema_, table)


def _exists(warehouse: Warehouse, name: str) -> bool:
    return f"{RAW_NAMESPACE}.{name}" in set(warehouse.tables())


def read_replica(
    warehouse: Warehouse, contract: CrmContract, obj: ObjectContract
) -> Iterator[tuple[str, ReplicaRow]]:
    """(key JSON, state) for the live rows of the object's replica.

    Tombstones are not needed: a deleted key cannot be deleted again, and a re-sent older
    version of it is a no-op under the warehouse's stale guard.
    """
    name = _table(contract, obj.name)
    if not _exists(warehouse, name):
        return
    q = _quoter(warehouse)
    cols = ", ".join(q(c) for c in (*obj.primary_key, META_POSITION, META_DELETED))
    for row in warehouse.query(f"SELECT {cols} FROM {q(RAW_NAMESPACE)}.{q(name)}"):
        if row[META_DELETED]:
            continue
        key = stable_json([to_json_value(row[c]) for c in obj.primary_key])
        yield key, ReplicaRow(str(row[META_POSITION]), False)


def load_completed(warehouse: Warehouse, contract: CrmContract, load_id: str) -> bool:
    """True if the loads ledger records ``load_id`` as completed."""
    name = _table(contract, LOADS_TABLE)
    if not _exists(warehouse, name):
        return False
    q = _quoter(warehouse)
    sql = f"SELECT {q('load_id')}, {q('status')} FROM {q(RAW_NAMESPACE)}.{q(name)}"
    rows: list[dict[str, Any]] = list(warehouse.query(sql))  # the ledger is small: no binding
    return any(r["load_id"] == load_id and r["status"] == "completed" for r in rows)
