"""Benchmark: normalise + canonical Avro encode, single process (not a test).

    .venvs/beam/bin/python bench/bench_normalize.py [--events 100000]

Inputs are generated here, shaped like the captured fixtures:

* ``debezium-json``: embedded-engine wrappers ``{destination, key, value}`` as JSON text,
  schemaless, ``decimal.handling.mode=string`` (capa's own Debezium setting), an
  ``orders``-like 7-column row; 70% updates with a full before image, 20% inserts, 10%
  deletes. Timed: ``json.loads`` + normalise + ``encode_single_object``.
* ``debezium-json-typezoo``: the 21-column typezoo row with its Connect schema
  (schemas enabled, precise decimals) - the slow, fully typed path.
* ``datastream-avro``: an Avro container file with a Datastream-like writer schema
  (timestamps, decimal logical type, json, bytes). Timed: fastavro read + normalise + encode.

Prints events/s per core (CPU time, so other load on a shared machine does not count) for
each stage and for the whole path, plus wall-clock rates.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import random
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro

from capa.codec import encode_single_object
from capa.runtime import tune_gc
from connectors.datastream.files import read_avro_file
from connectors.datastream.normalizer import DatastreamNormalizer
from connectors.debezium.normalizer import DebeziumNormalizer
from tests.oracles.fastavro_codec import encode_avro_generic

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def debezium_lines(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        row_id = rng.randrange(1, 50_000)
        row = {
            "id": row_id,
            "customer": f"customer-{row_id}",
            "amount": f"{rng.randrange(0, 10**9) / 100:.2f}",
            "status": rng.choice(["new", "paid", "shipped"]),
            "updated_at": (datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=i)).isoformat(),
            "payload": json.dumps({"n": i, "tags": ["a", "b"]}),
            "note": None,
        }
        op = rng.choices("ucd", weights=(7, 2, 1))[0]
        lsn = 26_000_000 + i * 64
        value = {
            "before": dict(row, status="new") if op in "ud" else None,
            "after": None if op == "d" else row,
            "source": {
                "version": "3.6.3.Final",
                "connector": "postgresql",
                "name": "f2",
                "ts_ms": 1795489122983 + i,
                "snapshot": "false",
                "db": "shop",
                "sequence": f'[null,"{lsn}"]',
                "ts_us": 1795489122983002 + i * 1000,
                "schema": "public",
                "table": "orders",
                "txId": 700 + i,
                "lsn": lsn,
                "xmin": None,
            },
            "transaction": None,
            "op": op,
            "ts_ms": 1795489123077 + i,
        }
        lines.append(
            json.dumps({"destination": "f2.public.orders", "key": {"id": row_id}, "value": value})
        )
    return lines


def typezoo_lines(n: int) -> list[str]:
    record = json.loads(
        (
            FIXTURES / "debezium_pg15_captured_here" / "pg_typezoo_schemas_enabled_precise.json"
        ).read_text()
    )
    out = []
    for i in range(n):
        record["value"]["payload"]["source"]["lsn"] = 26_000_000 + i * 64
        record["value"]["payload"]["after"]["id"] = i
        out.append(json.dumps(record))
    return out


DATASTREAM_SCHEMA = {
    "type": "record",
    "name": "public_orders",
    "fields": [
        {"name": "uuid", "type": "string"},
        {"name": "read_timestamp", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "source_timestamp", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "object", "type": "string"},
        {"name": "read_method", "type": "string"},
        {"name": "stream_name", "type": "string"},
        {"name": "schema_key", "type": "string"},
        {"name": "sort_keys", "type": {"type": "array", "items": ["string", "long"]}},
        {
            "name": "source_metadata",
            "type": {
                "type": "record",
                "name": "source_metadata",
                "fields": [
                    {"name": "schema", "type": "string"},
                    {"name": "table", "type": "string"},
                    {"name": "is_deleted", "type": ["null", "boolean"]},
                    {"name": "change_type", "type": ["null", "string"]},
                    {"name": "tx_id", "type": ["null", "long"]},
                    {"name": "lsn", "type": ["null", "string"]},
                    {
                        "name": "primary_keys",
                        "type": ["null", {"type": "array", "items": "string"}],
                    },
                ],
            },
        },
        {
            "name": "payload",
            "type": {
                "type": "record",
                "name": "payload",
                "fields": [
                    {"name": "id", "type": ["null", "long"]},
                    {"name": "customer", "type": ["null", "string"]},
                    {
                        "name": "amount",
                        "type": [
                            "null",
                            {
                                "type": "bytes",
                                "logicalType": "decimal",
                                "precision": 12,
                                "scale": 2,
                            },
                        ],
                    },
                    {"name": "status", "type": ["null", "string"]},
                    {
                        "name": "updated_at",
                        "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}],
                    },
                    {
                        "name": "payload",
                        "type": ["null", {"type": "string", "logicalType": "json"}],
                    },
                    {"name": "photo", "type": ["null", "bytes"]},
                ],
            },
        },
    ],
}


def datastream_avro(n: int, seed: int = 11) -> bytes:
    rng = random.Random(seed)
    base = datetime(2025, 1, 1, tzinfo=UTC)

    def records() -> Iterable[dict[str, Any]]:
        for i in range(n):
            lsn = 0x16_CB00_0000 + i * 64
            change = rng.choices(["UPDATE", "INSERT", "DELETE"], weights=(7, 2, 1))[0]
            yield {
                "uuid": f"626eb68e-e6df-4fce-baf5-{i:012d}",
                "read_timestamp": base,
                "source_timestamp": base,
                "object": "public_orders",
                "read_method": "postgresql-cdc",
                "stream_name": "projects/p/locations/l/streams/f2",
                "schema_key": "k",
                "sort_keys": [1739315197151 + i, f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"],
                "source_metadata": {
                    "schema": "public",
                    "table": "orders",
                    "is_deleted": change == "DELETE",
                    "change_type": change,
                    "tx_id": 363552 + i,
                    "lsn": f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}",
                    "primary_keys": ["id"],
                },
                "payload": {
                    "id": rng.randrange(1, 50_000),
                    "customer": "dave",
                    "amount": Decimal(rng.randrange(0, 10**9)).scaleb(-2),
                    "status": "paid",
                    "updated_at": base + timedelta(seconds=i),
                    "payload": '{"x": [1, 2, 3]}',
                    "photo": b"\xde\xad\xbe\xef",
                },
            }

    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(DATASTREAM_SCHEMA), records(), codec="null")
    return buf.getvalue()


def timed(label: str, n: int, fn: Callable[[], Any]) -> Any:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        f"  {label:<34} {cpu:7.3f} s CPU {n / cpu:>10,.0f} events/s per core"
        f"  (wall {n / wall:,.0f}/s)"
    )
    return result, cpu


def bench_debezium(label: str, lines: list[str]) -> dict[str, float]:
    n = len(lines)
    normalizer = DebeziumNormalizer()
    print(f"{label} ({n:,} records)")
    dicts, t1 = timed("json.loads", n, lambda: [json.loads(line) for line in lines])
    events, t2 = timed("normalise", n, lambda: [normalizer.normalize(d) for d in dicts])
    _, t3 = timed(
        "encode_single_object (Avro)", n, lambda: [encode_single_object(e) for e in events]
    )
    print(
        f"  {'TOTAL parse+normalise+encode':<34} {t1 + t2 + t3:7.3f} s CPU"
        f" {n / (t1 + t2 + t3):>10,.0f} events/s"
    )
    _, t4 = timed(
        "baseline: fastavro generic encode", n, lambda: [encode_avro_generic(e) for e in events]
    )
    return rates(n, read=t1, normalise=t2, encode=t3, generic_encode=t4)


def bench_datastream(data: bytes, n: int) -> dict[str, float]:
    normalizer = DatastreamNormalizer()
    print(f"datastream-avro ({n:,} records, {len(data) / 1e6:.1f} MB container)")
    raws, t1 = timed("fastavro read", n, lambda: list(read_avro_file(data, "bench.avro")))
    events, t2 = timed(
        "normalise", n, lambda: [normalizer.normalize(r.value, r.hints) for r in raws]
    )
    _, t3 = timed(
        "encode_single_object (Avro)", n, lambda: [encode_single_object(e) for e in events]
    )
    print(
        f"  {'TOTAL read+normalise+encode':<34} {t1 + t2 + t3:7.3f} s CPU"
        f" {n / (t1 + t2 + t3):>10,.0f} events/s"
    )
    _, t4 = timed(
        "baseline: fastavro generic encode", n, lambda: [encode_avro_generic(e) for e in events]
    )
    return rates(n, read=t1, normalise=t2, encode=t3, generic_encode=t4)


def rates(n: int, read: float, normalise: float, encode: float, generic_encode: float) -> dict:
    """Events/s per core of each stage (CPU seconds in, rates out)."""
    return {
        "read": n / read,
        "normalise": n / normalise,
        "encode": n / encode,
        "normalise_encode": n / (normalise + encode),
        "whole_path": n / (read + normalise + encode),
        "generic_encode": n / generic_encode,
    }


def json_result(events: int, cases: dict[str, dict[str, float]]) -> dict:
    """The run_all result: normalise+encode and the whole path against parsing alone
    (``json.loads`` / fastavro read), the Avro encoder against fastavro's generic writer."""
    from bench.common import make_result

    figures, baselines, labels = {}, {}, {}
    for case, r in cases.items():
        reader = "fastavro read" if case.startswith("datastream") else "json.loads"
        for stage, base, label in (
            ("normalise_encode", "read", f"{reader} alone"),
            ("whole_path", "read", f"{reader} alone"),
            ("encode", "generic_encode", "fastavro generic encode of the same events"),
        ):
            figures[f"{case}.{stage}"] = r[stage]
            baselines[f"{case}.{stage}"] = r[base]
            labels[f"{case}.{stage}"] = label
    units = dict.fromkeys(figures, "events/s per core")
    return make_result(
        "normalize",
        {"events": events},
        figures,
        baselines=baselines,
        baseline_labels=labels,
        units=units,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument(
        "--json-out",
        dest="json_out",
        default=None,
        help="also write the result as JSON to this path (bench.run_all)",
    )
    parser.add_argument(
        "--gc",
        choices=("tuned", "default"),
        default="tuned",
        help="tuned: the GC settings capa's processes run with "
        "(capa.runtime.tune_gc); default: CPython's thresholds",
    )
    args = parser.parse_args()
    if args.gc == "tuned":
        tune_gc()
    print(f"GC: {args.gc} {gc.get_threshold()}")
    cases = {
        "debezium_orders": bench_debezium(
            "debezium-json (orders, schemaless)", debezium_lines(args.events)
        ),
        "debezium_typezoo": bench_debezium(
            "debezium-json-typezoo (21 cols, schemas)", typezoo_lines(max(args.events // 5, 1))
        ),
        "datastream_avro": bench_datastream(datastream_avro(args.events), args.events),
    }
    if args.json_out:
        from bench.common import write_result

        write_result(args.json_out, json_result(args.events, cases))


if __name__ == "__main__":
    main()
