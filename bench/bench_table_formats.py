"""Benchmark: micro-batch CDC MERGE cost on a 1M-row table, Delta (delta-rs) vs Iceberg (pyiceberg).

Not a test; needs deltalake and pyiceberg[sql-sqlite,pyarrow] in one environment. pyiceberg is
not part of the project's environments (the ADR rejects it), so make a throwaway venv:

    uv venv .cache/venv-bench-formats
    uv pip install --python .cache/venv-bench-formats/bin/python \
        "pyiceberg[sql-sqlite,pyarrow]==0.12.0" deltalake==1.6.6 pyarrow numpy
    .cache/venv-bench-formats/bin/python bench/bench_table_formats.py [--rows 1000000] [--batches 6]

Each batch is 60% updates / 30% inserts / 10% deletes over random keys, deduplicated to the
highest position per key, applied with the stale guard (position must grow) in one commit:
* delta-rs: ``merge`` with ``s._pos > t._pos`` in the matched predicates;
* pyiceberg: it cannot express a source-vs-target guard, so scan the batch's keys first,
  then ``overwrite(rows, overwrite_filter=In(id, keys))`` (delete + append, one snapshot).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def seed_table(rows: int) -> pa.Table:
    ids = np.arange(rows, dtype=np.int64)
    return pa.table(
        {
            "id": ids,
            "name": pa.array([f"n{i}" for i in range(rows)]),
            "amount": ids.astype(np.float64) / 100,
            "_pos": pa.array([f"{1:016x}"] * rows),
            "_deleted": pa.array([False] * rows),
        }
    )


def make_batch(
    rng: np.random.Generator, rows: int, size: int, start_pos: int, next_id: int
) -> pa.Table:
    dice = rng.random(size)
    ids = np.where(dice < 0.3, np.arange(next_id, next_id + size), rng.integers(0, rows, size))
    pos = np.arange(start_pos, start_pos + size)
    batch = pa.table(
        {
            "id": ids.astype(np.int64),
            "name": pa.array([f"u{p}" for p in pos]),
            "amount": pos.astype(np.float64),
            "_pos": pa.array([f"{p:016x}" for p in pos]),
            "_deleted": pa.array(dice >= 0.9),
        }
    )
    # dedupe: highest position per id
    order = pc.sort_indices(batch, [("id", "ascending"), ("_pos", "descending")])
    batch = batch.take(order)
    ids_sorted = batch["id"].to_numpy()
    keep = np.ones(len(ids_sorted), dtype=bool)
    keep[1:] = ids_sorted[1:] != ids_sorted[:-1]
    return batch.filter(pa.array(keep))


def delta_apply(path: str, batch: pa.Table) -> None:
    from deltalake import DeltaTable

    cols = {c: f"s.{c}" for c in batch.column_names}
    (
        DeltaTable(path)
        .merge(batch, "t.id = s.id", source_alias="s", target_alias="t")
        .when_matched_update(cols, predicate="s._pos > t._pos AND NOT s._deleted")
        .when_matched_delete(predicate="s._pos > t._pos AND s._deleted")
        .when_not_matched_insert(cols, predicate="NOT s._deleted")
        .execute()
    )


def iceberg_apply(table, batch: pa.Table) -> None:
    from pyiceberg.expressions import In

    keys = batch["id"].to_pylist()
    current = table.scan(row_filter=In("id", keys), selected_fields=("id", "_pos")).to_arrow()
    known = dict(zip(current["id"].to_pylist(), current["_pos"].to_pylist(), strict=True))
    fresh = pa.array(
        [
            known.get(i) is None or p > known[i]
            for i, p in zip(keys, batch["_pos"].to_pylist(), strict=True)
        ]
    )
    batch = batch.filter(fresh)
    changed = batch["id"].to_pylist()
    if changed:
        upserts = batch.filter(pc.invert(batch["_deleted"]))
        table.overwrite(upserts, overwrite_filter=In("id", changed))


def run(name: str, apply, rows: int, size: int, batches: int) -> dict:
    rng = np.random.default_rng(11)
    times, pos, next_id = [], 10, rows
    for n in range(batches + 1):
        batch = make_batch(rng, rows, size, pos, next_id)
        pos, next_id = pos + size, next_id + size
        t0 = time.monotonic()
        apply(batch)
        if n:  # first batch is warm-up
            times.append(time.monotonic() - t0)
    times.sort()
    result = {
        "variant": name,
        "batch": size,
        "p50": statistics.median(times),
        "p95": times[round(0.95 * (len(times) - 1))],
        "events_per_s": size * len(times) / sum(times),
    }
    print(
        f"{name:>28} batch={size:>6} p50={result['p50']:.2f}s p95={result['p95']:.2f}s "
        f"events/s={result['events_per_s']:,.0f}",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument(
        "--json-out",
        dest="json_out",
        default=None,
        help="also write the result as JSON to this path (bench.run_all)",
    )
    args = parser.parse_args()
    results = []
    from deltalake import write_deltalake
    from pyiceberg.catalog.sql import SqlCatalog

    with tempfile.TemporaryDirectory() as root:
        seed = seed_table(args.rows)
        delta_path = str(Path(root) / "delta")
        write_deltalake(delta_path, seed)
        for size in (2_000, 20_000):
            results.append(
                run(
                    "delta-rs merge",
                    lambda b: delta_apply(delta_path, b),
                    args.rows,
                    size,
                    args.batches,
                )
            )
        catalog = SqlCatalog(
            "bench", uri=f"sqlite:///{root}/catalog.db", warehouse=f"file://{root}/iceberg"
        )
        catalog.create_namespace("bench")
        table = catalog.create_table("bench.orders", schema=seed.schema)
        table.append(seed)
        results.append(
            run(
                "pyiceberg scan+overwrite",
                lambda b: iceberg_apply(table, b),
                args.rows,
                2_000,
                args.batches,
            )
        )
    if args.json_out:
        write_json(args, results)


def write_json(args: argparse.Namespace, results: list[dict]) -> None:
    """run_all result: pyiceberg's rate against delta-rs at the same batch size."""
    from bench.common import make_result, write_result

    figures = {f"{r['variant']} {r['batch']}": r["events_per_s"] for r in results}
    delta_2k = figures["delta-rs merge 2000"]
    write_result(
        args.json_out,
        make_result(
            "table_formats",
            {"rows": args.rows, "batches": args.batches},
            figures,
            baselines={"pyiceberg scan+overwrite 2000": delta_2k},
            baseline_labels={"pyiceberg scan+overwrite 2000": "delta-rs merge, 2k batch"},
            units=dict.fromkeys(figures, "events/s"),
        ),
    )


if __name__ == "__main__":
    main()
