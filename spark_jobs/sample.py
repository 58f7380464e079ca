"""Small raw lakehouses in the raw-table contract, for tests, benchmarks and local trials.

Writes ``<lakehouse>/raw/<table>/`` (replica: source columns + ``_capa_*`` metadata, deletes kept
as tombstones) and ``<table>_changelog`` (one row per change) with delta-rs, the way the apply
job does, without Kafka or Debezium. Runs in the beam or spark environment (deltalake + pyarrow).

    python -m spark_jobs.sample --lakehouse /tmp/lh --customers 50
"""

from __future__ import annotations

import argparse
import hashlib
import random
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa

from capa.warehouse.base import (
    CHANGELOG_SUFFIX,
    META_COMMIT_TS,
    META_DELETED,
    META_EVENT_ID,
    META_INGESTED_AT,
    META_OP,
    META_POSITION,
)
from capa.warehouse.local.delta_io import REPLICA_PROPERTIES

TS = pa.timestamp("us", tz="UTC")
MONEY = pa.decimal128(12, 2)
META_FIELDS = [
    pa.field(META_POSITION, pa.string()),
    pa.field(META_OP, pa.string()),
    pa.field(META_COMMIT_TS, TS),
    pa.field(META_INGESTED_AT, TS),
    pa.field(META_EVENT_ID, pa.string()),
    pa.field(META_DELETED, pa.bool_()),
]

# table -> (primary key, source columns)
TABLES: dict[str, tuple[str, list[pa.Field]]] = {
    "f2_public_customers": (
        "id",
        [
            pa.field("id", pa.int64()),
            pa.field("email", pa.string()),
            pa.field("full_name", pa.string()),
            pa.field("country", pa.string()),
            pa.field("created_at", TS),
        ],
    ),
    "f2_public_orders": (
        "id",
        [
            pa.field("id", pa.int64()),
            pa.field("customer_id", pa.int64()),
            pa.field("status", pa.string()),
            pa.field("amount", MONEY),
            pa.field("currency", pa.string()),
            pa.field("ordered_at", TS),
            pa.field("notes", pa.string()),
        ],
    ),
    "f3_dbo_invoices": (
        "invoice_id",
        [
            pa.field("invoice_id", pa.int32()),
            pa.field("customer_id", pa.int32()),
            pa.field("amount", MONEY),
            pa.field("issued_at", TS),
            pa.field("status", pa.string()),
        ],
    ),
    "crm_crm_accounts": (
        "account_id",
        [
            pa.field("account_id", pa.string()),
            pa.field("name", pa.string()),
            pa.field("industry", pa.string()),
            pa.field("country", pa.string()),
            pa.field("customer_id", pa.int64()),
            pa.field("last_modified", TS),
        ],
    ),
    "crm_crm_contacts": (
        "contact_id",
        [
            pa.field("contact_id", pa.string()),
            pa.field("account_id", pa.string()),
            pa.field("first_name", pa.string()),
            pa.field("last_name", pa.string()),
            pa.field("email", pa.string()),
            pa.field("last_modified", TS),
        ],
    ),
}
INDUSTRIES = ["software", "retail", "manufacturing", "finance", "healthcare", "education"]
STATUSES = ["new", "paid", "shipped", "cancelled"]


def schema(table: str) -> pa.Schema:
    return pa.schema(TABLES[table][1] + META_FIELDS)


class RawLakehouse:
    """Applies upserts and deletes to raw replicas (idempotent per call, one Delta commit each)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._position = 0

    def path(self, table: str) -> Path:
        return self.root / "raw" / table

    def _stamp(
        self, rows: Sequence[Mapping[str, Any]], op: str, deleted: bool
    ) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        out = []
        for row in rows:
            self._position += 1
            pos = f"{self._position:016x}.1"
            digest = hashlib.sha256(f"{pos}|{sorted(row.items())}".encode()).hexdigest()[:32]
            out.append(
                {
                    **row,
                    META_POSITION: pos,
                    META_OP: op,
                    META_COMMIT_TS: now,
                    META_INGESTED_AT: now,
                    META_EVENT_ID: digest,
                    META_DELETED: deleted,
                }
            )
        return out

    def upsert(self, table: str, rows: Sequence[Mapping[str, Any]], op: str = "u") -> None:
        self._write(table, self._stamp(rows, op, deleted=False))

    def delete(self, table: str, keys: Iterable[Any]) -> None:
        """Tombstones: the key stays, other source columns become NULL, ``_capa_deleted``."""
        pk = TABLES[table][0]
        self._write(table, self._stamp([{pk: k} for k in keys], "d", deleted=True))

    def _write(self, table: str, rows: list[dict[str, Any]]) -> None:
        from deltalake import DeltaTable, write_deltalake

        if not rows:
            return
        data = pa.Table.from_pylist(rows, schema=schema(table))
        path = str(self.path(table))
        write_deltalake(path + CHANGELOG_SUFFIX, data, mode="append")
        if not (self.path(table) / "_delta_log").is_dir():
            write_deltalake(path, data, mode="append", configuration=REPLICA_PROPERTIES)
            return
        pk = TABLES[table][0]
        (
            DeltaTable(path)
            .merge(source=data, predicate=f"t.{pk} = s.{pk}", source_alias="s", target_alias="t")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute()
        )


def _ts(rng: random.Random, days: int = 60) -> datetime:
    base = datetime(2026, 9, 1, tzinfo=UTC)
    return base + timedelta(seconds=rng.randint(0, days * 86400))


def customer(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "email": f"c{i}@example.com",
        "full_name": f"Customer {i}",
        "country": "DE",
        "created_at": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=i),
    }


def order(rng: random.Random, i: int, customers: int) -> dict[str, Any]:
    return {
        "id": i,
        "customer_id": rng.randint(1, customers),
        "status": rng.choice(STATUSES),
        "amount": Decimal(rng.randint(100, 90_000)).scaleb(-2),
        "currency": "EUR",
        "ordered_at": _ts(rng),
        "notes": None,
    }


def invoice(rng: random.Random, i: int, customers: int) -> dict[str, Any]:
    return {
        "invoice_id": i,
        "customer_id": rng.randint(1, customers),
        "amount": Decimal(rng.randint(100, 500_000)).scaleb(-2),
        "issued_at": _ts(rng),
        "status": "open",
    }


def account(rng: random.Random, i: int, customers: int) -> dict[str, Any]:
    return {
        "account_id": f"A{i:05d}",
        "name": f"Account {i}",
        "industry": rng.choice(INDUSTRIES),
        "country": rng.choice(["DE", "FR", "US", "JP"]),
        "customer_id": rng.randint(1, customers),
        "last_modified": _ts(rng),
    }


def contact(rng: random.Random, i: int, accounts: int) -> dict[str, Any]:
    return {
        "contact_id": f"K{i:06d}",
        "account_id": f"A{rng.randint(1, accounts):05d}",
        "first_name": "Ada",
        "last_name": f"Contact {i}",
        "email": f"k{i}@example.com",
        "last_modified": _ts(rng),
    }


def seed(
    root: Path, customers: int = 50, orders: int = 300, invoices: int = 150, seed_: int = 7
) -> RawLakehouse:
    """A fresh raw lakehouse with every sample table."""
    rng = random.Random(seed_)
    lake = RawLakehouse(root)
    accounts = max(1, customers * 2 // 3)
    lake.upsert("f2_public_customers", [customer(i) for i in range(1, customers + 1)], op="r")
    lake.upsert(
        "f2_public_orders", [order(rng, i, customers) for i in range(1, orders + 1)], op="r"
    )
    lake.upsert(
        "f3_dbo_invoices", [invoice(rng, i, customers) for i in range(1, invoices + 1)], op="r"
    )
    lake.upsert(
        "crm_crm_accounts", [account(rng, i, customers) for i in range(1, accounts + 1)], op="r"
    )
    lake.upsert(
        "crm_crm_contacts", [contact(rng, i, accounts) for i in range(1, accounts * 2 + 1)], op="r"
    )
    return lake


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spark_jobs.sample", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--lakehouse", type=Path, required=True)
    parser.add_argument("--customers", type=int, default=50)
    parser.add_argument("--orders", type=int, default=300)
    args = parser.parse_args(argv)
    seed(args.lakehouse, customers=args.customers, orders=args.orders, invoices=args.orders // 2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["TABLES", "RawLakehouse", "seed"]
