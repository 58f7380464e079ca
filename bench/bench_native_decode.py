"""Micro-benchmark of decoding Kafka values (not a test): µs/event of capa's decoder, native
(``capa_native.decode_batch`` on batches, ``capa.codec.decode_single_object`` on one framed
value at a time, i.e. ``capa_native.decode_event``) vs. the pure-Python reference reader
(``tests/oracles/avro_reader.read_event`` on the body), the production reader until
2026-12-07.

    .venvs/beam/bin/python -m bench.bench_native_decode [--events 50000] [--batch 5000]
        [--repeat 5] [--json-out PATH]

Two event shapes: ``plain`` is bench/bench_streaming.py's (id long, qty long, name string,
price double); ``typed`` adds a decimal, a timestamptz, a timestamp and a date (values the
native decoder builds itself, through the cached ``Decimal``/``datetime``/``date`` classes). Best of ``--repeat`` runs; the native
decoder gets batches of ``--batch`` values (the apply job consumes up to 5000 at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from bench.common import add_json_out, make_result, write_result
from capa.codec import decode_single_object, encode_single_object, schema_fingerprint
from capa.events import ChangeEvent, Op, SourceKind
from capa.native import decode_batch
from tests.oracles.avro_reader import read_event

_T0 = datetime(2024, 1, 1, tzinfo=UTC)


def bench_events(shape: str, n: int) -> list[ChangeEvent]:
    """``n`` events of one table: inserts of new keys, then updates of them (4:1)."""
    out = []
    for seq in range(n):
        key = seq if seq % 5 else seq // 5
        after: dict[str, Any] = {
            "id": key,
            "qty": seq % 1000,
            "name": f"row-{key}-{seq}",
            "price": seq * 0.01,
        }
        if shape == "typed":
            ts = _T0 + timedelta(seconds=seq)
            after |= {
                "amount": Decimal(seq) / 100,
                "created_at": ts,
                "updated_at": ts.replace(tzinfo=None),
                "day": ts.date(),
            }
        out.append(
            ChangeEvent(
                source="bench",
                source_kind=SourceKind.POSTGRES,
                database="db",
                schema="public",
                table="t",
                op=Op.UPDATE if seq % 5 == 0 else Op.INSERT,
                position=f"{seq:016x}.1",
                commit_ts_us=1_700_000_000_000_000 + seq,
                primary_key=("id",),
                key={"id": key},
                before=None,
                after=after,
            )
        )
    return out


def best_us_per_event(run: Callable[[], Any], n: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best / n * 1e6


def measure(values: Sequence[bytes], batch: int, repeat: int) -> dict[str, float]:
    bodies = [v[10:] for v in values]
    n = len(values)
    figures = {
        "read_event": best_us_per_event(lambda: [read_event(b) for b in bodies], n, repeat),
        "decode_single_object": best_us_per_event(
            lambda: [decode_single_object(v) for v in values], n, repeat
        ),
    }
    fingerprint = schema_fingerprint()
    chunks = [list(values[i : i + batch]) for i in range(0, n, batch)]
    tables, fallback = decode_batch(chunks[0], fingerprint)
    if fallback or len(tables) != 1:
        raise SystemExit(f"the native decoder did not take the batch: {fallback[:5]}")
    figures["native_decode_batch"] = best_us_per_event(
        lambda: [decode_batch(c, fingerprint) for c in chunks], n, repeat
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    add_json_out(parser)
    args = parser.parse_args(argv)
    results: dict[str, float] = {}
    rows = []
    for shape in ("plain", "typed"):
        values = [encode_single_object(e) for e in bench_events(shape, args.events)]
        figures = measure(values, args.batch, args.repeat)
        results |= {f"{shape}_{name}": us for name, us in figures.items()}
        native = figures["native_decode_batch"]
        rows.append(
            f"| {shape} | {figures['read_event']:.2f} | {figures['decode_single_object']:.2f} "
            f"| {native:.2f} | {figures['read_event'] / native:.1f}x |"
        )
    load = os.getloadavg()
    print(json.dumps({"us_per_event": results, "loadavg": load}, indent=2))
    print("\n| shape | reference read_event µs/event | decode_single_object (native) µs/event "
          "| native decode_batch µs/event | read_event / decode_batch |")  # fmt: skip
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    print(f"\n{args.events} events, batches of {args.batch}, best of {args.repeat}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")  # fmt: skip
    if args.json_out:
        write_result(
            args.json_out,
            make_result(
                "native_decode",
                {k: v for k, v in vars(args).items() if k != "json_out"},
                results,
                units={k: "µs/event" for k in results},
            ),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
