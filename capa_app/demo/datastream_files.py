"""Datastream-format change files for the demo's cloud-path F2 table ``public.shipments``.

Same record layout as Datastream's PostgreSQL JSON output (see the real recorded files
under ``tests/fixtures/datastream_postgres_*``): a backfill file, then CDC files with
LSN-ordered inserts, updates and deletes, laid out as
``<prefix>/public_shipments/yyyy/mm/dd/hh/mm/<file>.jsonl``.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

CARRIERS = ("dhl", "ups", "postnl", "dpd")


def _record(
    read_method: str, change: str, lsn: int, ts: datetime, row: dict[str, Any], deleted: bool
) -> str:
    lsn_text = f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
    ms = int(ts.timestamp() * 1000)
    return json.dumps(
        {
            "uuid": str(uuid.UUID(int=lsn * 7919 + ms)),
            "read_timestamp": ts.isoformat(),
            "source_timestamp": ts.isoformat(),
            "object": "public_shipments",
            "read_method": read_method,
            "stream_name": "projects/capa-demo/locations/europe-west1/streams/f2",
            "schema_key": "0" * 40,
            "sort_keys": [ms, lsn_text if read_method.endswith("cdc") else ""],
            "source_metadata": {
                "schema": "public",
                "table": "shipments",
                "is_deleted": deleted,
                "change_type": change,
                "tx_id": lsn // 1000,
                "lsn": lsn_text if read_method.endswith("cdc") else None,
                "primary_keys": ["id"],
            },
            "payload": row,
        }
    )


def shipment_files(
    rows: int = 200, changes: int = 400, seed: int = 5
) -> tuple[dict[str, bytes], dict[int, dict[str, Any]]]:
    """(object name -> file bytes, expected final rows by id)."""
    rng = random.Random(seed)
    ts = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    state = {
        i: {
            "id": i,
            "order_id": rng.randint(1, 1000),
            "carrier": rng.choice(CARRIERS),
            "status": "created",
        }
        for i in range(1, rows + 1)
    }
    files = {
        _name(ts, "backfill"): "\n".join(
            _record("postgresql-backfill", "INSERT", 0, ts, dict(r), False) for r in state.values()
        ).encode()
    }
    lsn = 0x16_CB00_0000
    for chunk in range(4):
        ts += timedelta(minutes=1)
        lines = []
        for _ in range(changes // 4):
            lsn += rng.randint(40, 400)
            lines.append(_change(rng, state, lsn, ts))
        files[_name(ts, f"cdc{chunk}")] = "\n".join(lines).encode()
    return files, state


def _change(rng: random.Random, state: dict[int, dict[str, Any]], lsn: int, ts: datetime) -> str:
    roll = rng.random()
    if roll < 0.3 or not state:
        new_id = max(state, default=0) + 1
        state[new_id] = {
            "id": new_id,
            "order_id": rng.randint(1, 1000),
            "carrier": rng.choice(CARRIERS),
            "status": "created",
        }
        return _record("postgresql-cdc", "INSERT", lsn, ts, dict(state[new_id]), False)
    victim = rng.choice(list(state))
    if roll < 0.9:
        state[victim] = dict(
            state[victim], status=rng.choice(["picked", "in_transit", "delivered"])
        )
        return _record("postgresql-cdc", "UPDATE", lsn, ts, dict(state[victim]), False)
    row = state.pop(victim)
    return _record("postgresql-cdc", "DELETE", lsn, ts, row, True)


def _name(ts: datetime, tag: str) -> str:
    return f"public_shipments/{ts:%Y/%m/%d/%H/%M}/{tag}_{ts:%Y%m%d%H%M}.jsonl"
