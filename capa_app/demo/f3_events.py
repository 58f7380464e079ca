"""Debezium SQL Server change events for the F3 sample table ``dbo.invoices``.

SQL Server cannot run on this machine, so the F3 path is exercised with events in the
exact shape Debezium 3.6.3's SQL Server connector writes with the JSON converter and
schemas enabled: the envelope, source block (change_lsn / commit_lsn / event_serial_no),
Connect schemas and encodings (decimal -> base64 unscaled bytes, datetime2(7) ->
NanoTimestamp, datetimeoffset -> ZonedTimestamp) follow the record built with Debezium's
own classes in ``tests/fixtures/debezium_pg15_captured_here/sqlserver_example_schemas_enabled.json``.
The row values and LSNs are generated (deterministic by seed).
"""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

_SOURCE_FIELDS = [
    ("version", "string", False, None),
    ("connector", "string", False, None),
    ("name", "string", False, None),
    ("ts_ms", "int64", False, None),
    ("snapshot", "string", True, "io.debezium.data.Enum"),
    ("db", "string", False, None),
    ("sequence", "string", True, None),
    ("ts_us", "int64", True, None),
    ("ts_ns", "int64", True, None),
    ("schema", "string", False, None),
    ("table", "string", False, None),
    ("change_lsn", "string", True, None),
    ("commit_lsn", "string", True, None),
    ("event_serial_no", "int64", True, None),
]
_ROW_FIELDS: list[dict[str, Any]] = [
    {"type": "int32", "optional": False, "field": "invoice_id"},
    {"type": "int32", "optional": True, "field": "customer_id"},
    {
        "type": "bytes",
        "optional": True,
        "name": "org.apache.kafka.connect.data.Decimal",
        "version": 1,
        "parameters": {"scale": "2", "connect.decimal.precision": "12"},
        "field": "amount",
    },
    {"type": "string", "optional": True, "field": "status"},
    {
        "type": "int64",
        "optional": True,
        "name": "io.debezium.time.NanoTimestamp",
        "version": 1,
        "field": "issued_at",
    },
    {
        "type": "string",
        "optional": True,
        "name": "io.debezium.time.ZonedTimestamp",
        "version": 1,
        "field": "updated_at",
    },
]
STATUSES = ("open", "paid", "void")


def _schema(server: str, db: str) -> dict[str, Any]:
    row = {
        "type": "struct",
        "fields": _ROW_FIELDS,
        "optional": True,
        "name": f"{server}.{db}.dbo.invoices.Value",
    }
    source_fields = []
    for name, typ, optional, logical in _SOURCE_FIELDS:
        spec: dict[str, Any] = {"type": typ, "optional": optional, "field": name}
        if logical:
            spec.update(name=logical, version=1)
        source_fields.append(spec)
    return {
        "type": "struct",
        "fields": [
            dict(row, field="before"),
            dict(row, field="after"),
            {
                "type": "struct",
                "fields": source_fields,
                "optional": False,
                "name": "io.debezium.connector.sqlserver.Source",
                "version": 1,
                "field": "source",
            },
            {
                "type": "struct",
                "optional": True,
                "name": "event.block",
                "version": 1,
                "field": "transaction",
                "fields": [
                    {"type": "string", "optional": False, "field": "id"},
                    {"type": "int64", "optional": False, "field": "total_order"},
                    {"type": "int64", "optional": False, "field": "data_collection_order"},
                ],
            },
            {"type": "string", "optional": False, "field": "op"},
            {"type": "int64", "optional": True, "field": "ts_ms"},
            {"type": "int64", "optional": True, "field": "ts_us"},
            {"type": "int64", "optional": True, "field": "ts_ns"},
        ],
        "optional": False,
        "name": f"{server}.{db}.dbo.invoices.Envelope",
        "version": 2,
    }


def _decimal_bytes(value: Decimal) -> str:
    unscaled = int(value.scaleb(2))
    size = max(1, (unscaled.bit_length() + 8) // 8)
    return base64.b64encode(unscaled.to_bytes(size, "big", signed=True)).decode()


def _lsn(n: int) -> str:
    return f"{0x2D:08x}:{n >> 4:08x}:{n & 0xF:04x}"


class InvoiceEvents:
    """Generates snapshot reads, then inserts/updates/deletes, in commit order."""

    def __init__(
        self, seed: int = 3, server: str = "f3", db: str = "billing", customers: int = 200
    ) -> None:
        self.rng = random.Random(seed)
        self.server, self.db, self.customers = server, db, customers
        self.rows: dict[int, dict[str, Any]] = {}
        self.lsn = 0x1000
        self.now = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
        self.schema = _schema(server, db)

    def _row(self, invoice_id: int) -> dict[str, Any]:
        issued = self.now - timedelta(
            days=self.rng.randint(0, 90), seconds=self.rng.randint(0, 86399)
        )
        return {
            "invoice_id": invoice_id,
            "customer_id": self.rng.randint(1, self.customers),
            "amount": Decimal(self.rng.randint(100, 500_000)).scaleb(-2),
            "status": self.rng.choice(STATUSES),
            "issued_at": issued.replace(tzinfo=None),
            "updated_at": self.now,
        }

    def _encode(self, row: dict[str, Any] | None) -> dict[str, Any] | None:
        if row is None:
            return None
        epoch = datetime(1970, 1, 1)
        return {
            "invoice_id": row["invoice_id"],
            "customer_id": row["customer_id"],
            "amount": _decimal_bytes(row["amount"]),
            "status": row["status"],
            "issued_at": (row["issued_at"] - epoch) // timedelta(microseconds=1) * 1000,
            "updated_at": row["updated_at"].isoformat().replace("+00:00", "Z"),
        }

    def _record(
        self,
        op: str,
        before: Any,
        after: Any,
        snapshot: str,
        change: str | None,
        commit: str,
        serial: int,
    ) -> dict[str, Any]:
        ts_ms = int(self.now.timestamp() * 1000)
        source = {
            "version": "3.6.3.Final",
            "connector": "sqlserver",
            "name": self.server,
            "ts_ms": ts_ms,
            "snapshot": snapshot,
            "db": self.db,
            "sequence": None,
            "ts_us": ts_ms * 1000,
            "ts_ns": ts_ms * 1_000_000,
            "schema": "dbo",
            "table": "invoices",
            "change_lsn": change,
            "commit_lsn": commit,
            "event_serial_no": serial,
        }
        payload = {
            "before": self._encode(before),
            "after": self._encode(after),
            "source": source,
            "transaction": None,
            "op": op,
            "ts_ms": ts_ms + 5,
            "ts_us": (ts_ms + 5) * 1000,
            "ts_ns": (ts_ms + 5) * 1_000_000,
        }
        key_id = (after or before)["invoice_id"]
        key = {
            "schema": {
                "type": "struct",
                "fields": [_ROW_FIELDS[0]],
                "optional": False,
                "name": f"{self.server}.{self.db}.dbo.invoices.Key",
            },
            "payload": {"invoice_id": key_id},
        }
        return {
            "destination": f"{self.server}.{self.db}.dbo.invoices",
            "key": key,
            "value": {"schema": self.schema, "payload": payload},
        }

    def snapshot(self, rows: int) -> Iterator[dict[str, Any]]:
        commit = _lsn(self.lsn)
        for n, invoice_id in enumerate(range(1, rows + 1)):
            self.rows[invoice_id] = self._row(invoice_id)
            flag = "last" if n == rows - 1 else ("first" if n == 0 else "true")
            yield self._record("r", None, self.rows[invoice_id], flag, None, commit, 0)

    def changes(self, count: int) -> Iterator[dict[str, Any]]:
        for _ in range(count):
            self.lsn += 0x10
            self.now += timedelta(seconds=self.rng.randint(1, 30))
            change, commit = _lsn(self.lsn), _lsn(self.lsn + 1)
            yield self._change(change, commit)

    def _change(self, change: str, commit: str) -> dict[str, Any]:
        roll = self.rng.random()
        if not self.rows or roll < 0.35:
            invoice_id = max(self.rows, default=0) + 1
            self.rows[invoice_id] = self._row(invoice_id)
            return self._record("c", None, self.rows[invoice_id], "false", change, commit, 1)
        invoice_id = self.rng.choice(list(self.rows))
        before = self.rows[invoice_id]
        if roll < 0.9:
            after = dict(before, status=self.rng.choice(STATUSES), updated_at=self.now)
            self.rows[invoice_id] = after
            return self._record("u", before, after, "false", change, commit, 2)
        del self.rows[invoice_id]
        return self._record("d", before, None, "false", change, commit, 1)
