"""Benchmark: a Datastream backfill through Kafka's path vs the bulk writer (not a test).

    .venvs/beam/bin/python -m bench.bench_datastream_backfill [--rows 500000]
        [--file_rows 50000]

Generates ``rows`` backfill reads (``read_method=postgresql-backfill``, no LSN: position
``0.0``) of one keyed table as Datastream Avro container files of ``file_rows`` records
(the writer schema of ``bench.bench_normalize``: long key, text, decimal, timestamp, json,
bytes), then measures in one process, each on a fresh local lakehouse:

* **baseline** ``read_to_arrow``: the files read by fastavro and their payloads turned into
  Arrow tables (``pa.Table.from_pylist``), nothing written: the floor of any path;
* **current path** = ``reader`` (read, normalise, canonical Avro encode: the bucket reader's
  work per record before the Kafka producer) + ``apply`` (the apply job's batch decode,
  native where built, and ``apply_columns`` in batches of ``max_batch_events``). Kafka
  itself is left out, so this is a lower bound of the current path's cost;
* **bulk path**: read, column-wise normalise (``DatastreamNormalizer.backfill_columns``) and
  ``LocalWarehouse.load_reads`` per file: what the bucket reader does with
  ``datastream.backfill_writer=bulk`` (changelog append + one guarded merge per file).

Rates are rows/s of wall time; ``current_serial`` is the current path's two stages one after
the other (CPU work per row: what a shared machine pays), ``current_pipelined`` the slower
of its two stages (the best case with a free core per stage). The check ``identical``
compares the replicas (and changelog row counts) the two paths wrote.
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pyarrow as pa

from bench.bench_normalize import DATASTREAM_SCHEMA
from bench.common import add_json_out, make_result, write_result
from capa.runtime import tune_gc
from connectors.base import normalize_one
from connectors.datastream.backfill import BulkBackfill
from connectors.datastream.files import read_avro_file
from connectors.datastream.normalizer import DatastreamNormalizer

TABLE = "f2_public_orders"


def backfill_file(start: int, count: int) -> bytes:
    base = datetime(2025, 1, 1, tzinfo=UTC)

    def records() -> Iterable[dict[str, Any]]:
        for i in range(start, start + count):
            yield {
                "uuid": f"626eb68e-e6df-4fce-baf5-{i:012d}",
                "read_timestamp": base,
                "source_timestamp": base,
                "object": "public_orders",
                "read_method": "postgresql-backfill",
                "stream_name": "projects/p/locations/l/streams/f2",
                "schema_key": "k",
                "sort_keys": [1739315197151, "", i],
                "source_metadata": {
                    "schema": "public",
                    "table": "orders",
                    "is_deleted": False,
                    "change_type": "INSERT",
                    "tx_id": None,
                    "lsn": None,
                    "primary_keys": ["id"],
                },
                "payload": {
                    "id": i,
                    "customer": f"customer {i % 1000}",
                    "amount": Decimal(i * 37 % 10**9).scaleb(-2),
                    "status": "paid",
                    "updated_at": base + timedelta(seconds=i),
                    "payload": '{"x": [1, 2, 3]}',
                    "photo": b"\xde\xad\xbe\xef",
                },
            }

    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(DATASTREAM_SCHEMA), records(), codec="null")
    return buf.getvalue()


def files(rows: int, file_rows: int) -> list[tuple[str, bytes]]:
    return [
        (f"f2/public_orders/2025/01/01/00/00/backfill-{n:05d}.avro", backfill_file(start, count))
        for n, start in enumerate(range(0, rows, file_rows))
        for count in [min(file_rows, rows - start)]
    ]


def timed(label: str, rows: int, fn: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    print(f"  {label:<28} {seconds:7.2f} s {rows / seconds:>10,.0f} rows/s", flush=True)
    return result, seconds


def normalised(data: bytes, name: str, normalizer: DatastreamNormalizer) -> list[Any]:
    return [normalize_one(normalizer, r) for r in read_avro_file(data, name)]


def read_to_arrow(batch: list[tuple[str, bytes]]) -> int:
    rows = 0
    for name, data in batch:
        table = pa.Table.from_pylist([r.value["payload"] for r in read_avro_file(data, name)])
        rows += table.num_rows
    return rows


def reader_stage(batch: list[tuple[str, bytes]]) -> list[bytes]:
    from capa.codec import encode_single_object

    normalizer = DatastreamNormalizer()
    return [
        encode_single_object(e) for name, data in batch for e in normalised(data, name, normalizer)
    ]


def apply_stage(values: list[bytes], root: Path, batch_events: int) -> None:
    from capa.native import decode_batch
    from capa.warehouse.local.warehouse import LocalWarehouse
    from connectors.kafka.batch_decode import BatchDecoder
    from connectors.kafka.wire import ChangeEventDecoder

    warehouse = LocalWarehouse(root)
    decoder = BatchDecoder(ChangeEventDecoder(), decode_batch)
    for start in range(0, len(values), batch_events):
        decoded = decoder.decode(values[start : start + batch_events])
        assert not decoded.errors and not decoded.events, "every record on the column path"
        warehouse.apply_columns(decoded.tables)


def bulk_path(batch: list[tuple[str, bytes]], root: Path) -> None:
    from capa.warehouse.local.warehouse import LocalWarehouse

    loader = BulkBackfill(LocalWarehouse(root), DatastreamNormalizer())
    for generation, (name, data) in enumerate(batch, start=1):
        records = list(read_avro_file(data, name))
        assert loader.load(records, name, generation) is not None


def replica(root: Path) -> tuple[list[tuple[Any, ...]], int]:
    from deltalake import DeltaTable

    columns = ["id", "customer", "amount", "status", "updated_at", "payload", "photo"]
    data = DeltaTable(str(root / "raw" / TABLE)).to_pyarrow_table(
        columns=[*columns, "_capa_position", "_capa_event_id"]
    )
    log = DeltaTable(str(root / "raw" / f"{TABLE}_changelog")).to_pyarrow_table(columns=["id"])
    rows = sorted(tuple(r.values()) for r in data.to_pylist())
    return rows, log.num_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--file_rows", type=int, default=50_000)
    parser.add_argument("--max_batch_events", type=int, default=50_000)
    add_json_out(parser)
    args = parser.parse_args()
    tune_gc()
    batch = files(args.rows, args.file_rows)
    size = sum(len(d) for _, d in batch)
    print(f"{args.rows:,} backfill rows in {len(batch)} Avro file(s), {size / 1e6:.1f} MB")
    rows = args.rows
    work = Path(tempfile.mkdtemp(prefix="capa-bench-dsbackfill-"))
    try:
        _, t_floor = timed("baseline read_to_arrow", rows, lambda: read_to_arrow(batch))
        values, t_reader = timed("current: reader", rows, lambda: reader_stage(batch))
        _, t_apply = timed(
            "current: apply",
            rows,
            lambda: apply_stage(values, work / "kafka", args.max_batch_events),
        )
        values.clear()
        _, t_bulk = timed("bulk: read+load_reads", rows, lambda: bulk_path(batch, work / "bulk"))
        current, bulk = replica(work / "kafka"), replica(work / "bulk")
        identical = current == bulk and len(current[0]) == rows
        print(f"  replicas identical: {identical}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures = {
        "bulk": rows / t_bulk,
        "current_serial": rows / (t_reader + t_apply),
        "current_pipelined": rows / max(t_reader, t_apply),
        "current_reader": rows / t_reader,
        "current_apply": rows / t_apply,
    }
    speedup = (t_reader + t_apply) / t_bulk
    print(
        f"  bulk vs current (serial): {t_reader + t_apply:.2f} s -> {t_bulk:.2f} s ({speedup:.2f}x)"
    )
    if args.json_out:
        label = "fastavro read of the files into Arrow alone"
        write_result(
            args.json_out,
            make_result(
                "datastream_backfill",
                {"rows": rows, "file_rows": args.file_rows},
                {**figures, "bulk_speedup": speedup},
                baselines=dict.fromkeys(figures, rows / t_floor),
                baseline_labels=dict.fromkeys(figures, label),
                units={**dict.fromkeys(figures, "rows/s"), "bulk_speedup": "x current (serial)"},
                checks={"identical": identical},
            ),
        )


if __name__ == "__main__":
    main()
