"""Benchmark: sustained apply into the local lakehouse (not a test).

    .venvs/beam/bin/python -m bench.bench_apply [--rows 1000000] [--batch 20000] [--batches 8]
        [--merge_on_read]

Seeds a 1M-row replica (Delta, written directly in the adapter's layout), then applies
batches of canonical events (60% updates, 30% inserts, 10% deletes, random keys) through
``LocalWarehouse.apply`` - planning, changelog append and the replica merge commit (or,
with ``--merge_on_read``, the pending-log append) - and reports events/s and p50/p95
seconds per batch. Event objects are built before timing. With ``--merge_on_read`` it then
times a full read (``row_count``, base + pending) and the compaction into the base.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal

import pyarrow as pa
from deltalake import write_deltalake

from capa.events import ChangeEvent, Column, Op, SourceKind
from capa.position import pg_position
from capa.warehouse.local import LocalWarehouse

COLUMNS = (Column("id", "int8"), Column("name", "text"), Column("amount", "numeric(12,2)"))


def make_event(op: Op, key: int, lsn: int) -> ChangeEvent:
    row = {"id": key, "name": f"name-{key}-{lsn}", "amount": Decimal(lsn % 100000) / 100}
    return ChangeEvent(
        source="f2",
        source_kind=SourceKind.POSTGRES,
        database="shop",
        schema="public",
        table="orders",
        op=op,
        position=pg_position(lsn, snapshot=False),
        commit_ts_us=1_700_000_000_000_000 + lsn,
        primary_key=("id",),
        key={"id": key},
        before={"id": key} if op is Op.DELETE else None,
        after=None if op is Op.DELETE else row,
        columns=COLUMNS,
    )


def seed(warehouse: LocalWarehouse, rows: int) -> None:
    warehouse.apply([make_event(Op.INSERT, 0, 1)])
    path = warehouse.table_path("raw", "f2_public_orders")
    from deltalake import DeltaTable

    schema = DeltaTable(str(path)).schema().to_arrow()
    now = datetime.now(UTC)
    ids = list(range(1, rows))
    data = {
        "id": ids,
        "name": [f"name-{i}" for i in ids],
        "amount": [Decimal(i % 100000) / 100 for i in ids],
        "_capa_position": [pg_position(2, snapshot=True)] * len(ids),
        "_capa_op": ["r"] * len(ids),
        "_capa_commit_ts": [now] * len(ids),
        "_capa_ingested_at": [now] * len(ids),
        "_capa_event_id": [f"seed{i}" for i in ids],
        "_capa_deleted": [False] * len(ids),
    }
    table = pa.table({f.name: pa.array(data[f.name], type=pa.field(f).type) for f in schema})  # type: ignore[arg-type]
    write_deltalake(str(path), table, mode="append")


def make_batches(
    rows: int, batch: int, batches: int, rng: random.Random
) -> list[list[ChangeEvent]]:
    lsn, next_key, out = 1000, rows, []
    for _ in range(batches):
        events = []
        for _ in range(batch):
            lsn += 1
            dice = rng.random()
            if dice < 0.3:
                events.append(make_event(Op.INSERT, next_key, lsn))
                next_key += 1
            else:
                events.append(
                    make_event(Op.UPDATE if dice < 0.9 else Op.DELETE, rng.randrange(rows), lsn)
                )
        out.append(events)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--merge_on_read", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        warehouse = LocalWarehouse(
            root, merge_on_read=args.merge_on_read, compact_interval_s=1e9,
            compact_pending_rows=10**9,
        )
        started = time.monotonic()
        seed(warehouse, args.rows)
        print(f"seeded {args.rows} rows in {time.monotonic() - started:.1f}s")
        batches = make_batches(args.rows, args.batch, args.batches + 1, random.Random(7))
        warehouse.apply(batches[0])  # warm-up
        times = []
        for events in batches[1:]:
            t0 = time.monotonic()
            warehouse.apply(events)
            times.append(time.monotonic() - t0)
            print(f"batch {len(times)}: {times[-1]:.2f}s")
        times.sort()
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        total = sum(times)
        print(
            f"rows={warehouse.row_count('raw.f2_public_orders')} batch={args.batch} "
            f"batches={len(times)} "
            f"p50={statistics.median(times):.2f}s p95={p95:.2f}s "
            f"events/s={args.batch * len(times) / total:,.0f}"
        )
        if args.merge_on_read:
            t0 = time.monotonic()
            warehouse.row_count("raw.f2_public_orders")
            read_s = time.monotonic() - t0
            t0 = time.monotonic()
            merged = warehouse.compact()
            print(f"read base+pending {read_s:.2f}s; compact {merged} rows "
                  f"{time.monotonic() - t0:.2f}s")


if __name__ == "__main__":
    main()
