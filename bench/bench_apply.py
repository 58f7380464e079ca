"""Benchmark: sustained apply into the local lakehouse (not a test).

    .venvs/beam/bin/python -m bench.bench_apply [--rows 1000000] [--batch 20000] [--batches 8]
        [--merge_on_read] [--columns]

Seeds a 1M-row replica (Delta, written directly in the adapter's layout), then applies
batches of canonical events (60% updates, 30% inserts, 10% deletes, random keys) through
``LocalWarehouse.apply`` - planning, changelog append and the replica merge commit (or,
with ``--merge_on_read``, the pending-log append) - and reports events/s and p50/p95
seconds per batch. Event objects are built before timing. With ``--merge_on_read`` it then
times a full read (``row_count``, base + pending) and the compaction into the base. With
``--columns`` the batches go column-wise through ``LocalWarehouse.apply_columns`` (the
streaming job's path for plain changes; the columns are built before timing, as the native
decoder hands them over).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
from deltalake import write_deltalake

from bench.common import add_json_out, make_result, write_result
from capa.columnar import split_plain
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


def bare_source(schema: pa.Schema, events: list[ChangeEvent]) -> pa.Table:
    """The batch as the replica rows delta-rs gets: last event per key, deletes as tombstones."""
    last = {e.key["id"]: e for e in events}
    now = datetime.now(UTC)
    rows = [
        {
            "id": k,
            "name": None if e.after is None else e.after["name"],
            "amount": None if e.after is None else e.after["amount"],
            "_capa_position": e.position,
            "_capa_op": e.op.value,
            "_capa_commit_ts": now,
            "_capa_ingested_at": now,
            "_capa_event_id": f"bare{e.position}",
            "_capa_deleted": e.op is Op.DELETE,
        }
        for k, e in last.items()
    ]
    return pa.Table.from_pylist(rows, schema=schema)


def bare_baseline(root: str, rows: int, batch: int, batches: int, append: bool) -> list[float]:
    """In-run baseline: seconds per batch of a bare delta-rs MERGE (or, for merge-on-read, an
    append) of the same kind of batch into a replica of the same size, with no capa work."""
    from deltalake import DeltaTable

    path = LocalWarehouse(root).table_path("raw", "f2_public_orders")
    schema = DeltaTable(str(path)).schema().to_arrow()
    columns = {f'"{f.name}"': f's."{f.name}"' for f in schema}
    later = make_batches(rows, batch, batches, random.Random(8))
    times = []
    for events in later:
        source = bare_source(pa.schema(schema), [shift(e) for e in events])  # type: ignore[arg-type]
        t0 = time.monotonic()
        if append:
            write_deltalake(str(path) + "_bare_append", source, mode="append")
        else:
            DeltaTable(str(path)).merge(
                source, "t.id = s.id", source_alias="s", target_alias="t"
            ).when_matched_update(
                columns, predicate="s._capa_position > t._capa_position"
            ).when_not_matched_insert(columns).execute()
        times.append(time.monotonic() - t0)
    return times


def shift(event: ChangeEvent) -> ChangeEvent:
    """The same event at a later position (so the stale guard lets it through)."""
    import dataclasses

    lsn = int(event.position.split(".")[0], 16) + 10**9
    return dataclasses.replace(event, position=pg_position(lsn, snapshot=False))


def summary(times: list[float], batch: int) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "p50": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "events_per_s": batch * len(ordered) / sum(ordered),
    }


def json_result(args: argparse.Namespace, ours: dict, bare: dict) -> dict:
    what = "append" if args.merge_on_read else "MERGE"
    label = f"bare delta-rs {what} of the same batch size (no capa planning/changelog)"
    figures = {"apply": ours["events_per_s"], "batch_p50": ours["p50"], "batch_p95": ours["p95"]}
    baselines = {"apply": bare["events_per_s"], "batch_p50": bare["p50"], "batch_p95": bare["p95"]}
    return make_result(
        "apply",
        {k: v for k, v in vars(args).items() if k != "json_out"},
        figures,
        baselines=baselines,
        baseline_labels=dict.fromkeys(figures, label),
        units={"apply": "events/s", "batch_p50": "s", "batch_p95": "s"},
    )


def _column_apply(warehouse: LocalWarehouse) -> Any:
    return warehouse.apply_columns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--merge_on_read", action="store_true")
    parser.add_argument("--columns", action="store_true")
    add_json_out(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        warehouse = LocalWarehouse(
            root,
            merge_on_read=args.merge_on_read,
            compact_interval_s=1e9,
            compact_pending_rows=10**9,
        )
        started = time.monotonic()
        seed(warehouse, args.rows)
        print(f"seeded {args.rows} rows in {time.monotonic() - started:.1f}s")
        batches = make_batches(args.rows, args.batch, args.batches + 1, random.Random(7))
        apply = _column_apply(warehouse) if args.columns else warehouse.apply
        ready = [split_plain(b)[0] for b in batches] if args.columns else batches
        apply(ready[0])  # warm-up
        times = []
        for events in ready[1:]:
            t0 = time.monotonic()
            apply(events)
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
            print(
                f"read base+pending {read_s:.2f}s; compact {merged} rows "
                f"{time.monotonic() - t0:.2f}s"
            )
        bare = summary(
            bare_baseline(root, args.rows, args.batch, args.batches, args.merge_on_read), args.batch
        )
        print(
            f"baseline: bare delta-rs p50={bare['p50']:.2f}s p95={bare['p95']:.2f}s "
            f"events/s={bare['events_per_s']:,.0f}"
        )
        if args.json_out:
            write_result(args.json_out, json_result(args, summary(times, args.batch), bare))


if __name__ == "__main__":
    main()
