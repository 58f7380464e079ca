"""Benchmark: incremental model build vs full rebuild after 1% of a 1M-row raw table changed.

Run from the spark environment (one SparkSession, local[2])::

    SPARK_LOCAL_IP=127.0.0.1 .venvs/spark/bin/python -m bench.bench_spark_incremental \
        [--orders 1000000]

Seeds a raw lakehouse (1M orders, 100k customers, ...), builds every model once (warm-up, full),
runs ``--warmup-rounds`` untimed rounds of (change 1% of the orders, incremental build), then
``--rounds`` timed rounds: change 1% of the orders again (updates incl. customer moves, 10% of
them deletes, plus inserts), time an incremental build and a full rebuild of the same input
and check both give the same tables (``--schedule serve``: every incremental build first, then
the full rebuilds). Prints a JSON line: the medians over the timed rounds
(the ratio is the median of the rounds' ratios) and every round (totals, per-model mode and
seconds, CPU seconds of Python and of the JVM per build, load average before and after its
two timed builds); the builder logs per-phase
timings (diff, keys, recompute, write, checks) at INFO. docs/benchmarks.md ("Spark consumption models") records runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import random
import statistics
import tempfile
import time
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

from capa.warehouse.local.delta_io import REPLICA_PROPERTIES
from capa_app.stack.base import process_cpu_seconds
from spark_jobs import sample
from spark_jobs.build import WORKERS, SparkModelBuilder
from spark_jobs.project import load_project

SEED_CHUNK = 1_000_000  # rows per initial append


def bulk(lake: sample.RawLakehouse, table: str, rows: Iterable[dict]) -> None:
    """First load without MERGE (an initial snapshot), in the raw-table contract: one append
    per ``SEED_CHUNK`` rows (a 1M-row table is one data file; 10M rows fit in memory)."""
    pending = iter(rows)
    while chunk := list(itertools.islice(pending, SEED_CHUNK)):
        stamped = lake._stamp(chunk, "r", deleted=False)
        write_deltalake(
            str(lake.path(table)),
            pa.Table.from_pylist(stamped, schema=sample.schema(table)),
            mode="append",
            configuration=REPLICA_PROPERTIES,
        )


def seed(root: Path, orders: int) -> sample.RawLakehouse:
    rng = random.Random(1)
    customers = max(10, orders // 10)
    accounts = customers // 2
    lake = sample.RawLakehouse(root)
    bulk(lake, "f2_public_customers", (sample.customer(i) for i in range(1, customers + 1)))
    bulk(lake, "f2_public_orders", (sample.order(rng, i, customers) for i in range(1, orders + 1)))
    bulk(
        lake,
        "f3_dbo_invoices",
        [sample.invoice(rng, i, customers) for i in range(1, orders // 10 + 1)],
    )
    bulk(
        lake,
        "crm_crm_accounts",
        [sample.account(rng, i, customers) for i in range(1, accounts + 1)],
    )
    bulk(
        lake,
        "crm_crm_contacts",
        [sample.contact(rng, i, accounts) for i in range(1, accounts * 2 + 1)],
    )
    return lake


def change(lake: sample.RawLakehouse, orders: int, fraction: float, seed: int = 2) -> int:
    rng = random.Random(seed)
    customers = max(10, orders // 10)
    ids = rng.sample(range(1, orders + 1), int(orders * fraction))
    deletes, updates = ids[: len(ids) // 10], ids[len(ids) // 10 :]
    rows = [sample.order(rng, i, customers) | {"amount": Decimal("1.23")} for i in updates]
    rows += [sample.order(rng, orders + i, customers) for i in range(1, len(ids) // 10 + 1)]
    lake.upsert("f2_public_orders", rows)
    lake.delete("f2_public_orders", deletes)
    return len(rows) + len(deletes)


def timed(builder: SparkModelBuilder, full: bool) -> tuple[float, list]:
    started = time.monotonic()
    reports = builder.build(load_project(), full=full)
    return time.monotonic() - started, reports


def cpu_seconds(spark: object) -> tuple[float, float]:
    """(this Python process, the Spark JVM) CPU seconds so far, from /proc (Linux; 0 when the
    JVM is not a child this process started)."""
    proc = getattr(spark.sparkContext._gateway, "proc", None)  # type: ignore[attr-defined]
    jvm = process_cpu_seconds(proc.pid) if proc is not None else None
    return process_cpu_seconds(os.getpid()) or 0.0, jvm or 0.0


def cpu_timed(spark: object, builder: SparkModelBuilder, full: bool) -> tuple[float, list, dict]:
    """:func:`timed` plus the CPU seconds the build took in Python and in the JVM."""
    before = cpu_seconds(spark)
    seconds, reports = timed(builder, full)
    after = cpu_seconds(spark)
    cpu = {"python": round(after[0] - before[0], 2), "jvm": round(after[1] - before[1], 2)}
    return seconds, reports, cpu


def per_model(reports: list) -> dict[str, str]:
    return {r.model: f"{r.mode} {r.seconds}s" for r in reports}


def identical(spark: object, left: Path, right: Path) -> bool:
    a = spark.read.format("delta").load(str(left))  # type: ignore[attr-defined]
    b = spark.read.format("delta").load(str(right))  # type: ignore[attr-defined]
    return a.exceptAll(b).isEmpty() and b.exceptAll(a).isEmpty()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument(
        "--warmup-rounds",
        type=int,
        default=1,
        help="untimed change + incremental build rounds before the timed ones, so that both "
        "timed builds run query shapes the session has run before (default 1; 0: the "
        "first incremental build is the session's first, the full rebuild is not)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="timed rounds (change, incremental build, full rebuild, compare); the result is "
        "their median (default 3)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=WORKERS,
        help=f"models built at once by both builders (default {WORKERS}, the builder's)",
    )
    parser.add_argument(
        "--schedule",
        choices=("interleaved", "serve"),
        default="interleaved",
        help="'interleaved' (default): each timed round changes the orders, then times an "
        "incremental build and a full rebuild in turn; 'serve': all timed incremental builds "
        "first with no full rebuild between them, as the serve mode runs them, then "
        "--warmup-rounds untimed and --rounds timed full rebuilds (the JIT of a JVM that "
        "only runs small builds differs, see docs/benchmarks.md)",
    )
    parser.add_argument(
        "--json-out",
        dest="json_out",
        default=None,
        help="also write the result as JSON to this path (bench.run_all)",
    )
    return parser.parse_args()


def timed_round(
    spark: object,
    lake: sample.RawLakehouse,
    builders: tuple[SparkModelBuilder, SparkModelBuilder],
    args: argparse.Namespace,
    n: int,
) -> dict:
    """Change 1% of the orders, time an incremental build and a full rebuild, compare them."""
    changed, incremental, load_before = changed_build(spark, lake, builders[0], args, n)
    rebuild = cpu_timed(spark, builders[1], full=True)
    load = (*load_before, *os.getloadavg())
    return record(changed, incremental, rebuild, same_tables(spark, builders), load)


def changed_build(
    spark: object,
    lake: sample.RawLakehouse,
    inc: SparkModelBuilder,
    args: argparse.Namespace,
    n: int,
) -> tuple[int, tuple[float, list, dict], tuple[float, ...]]:
    """Round ``n``'s change of the orders, then a timed incremental build: (changed events,
    the build's seconds / reports / CPU, the load average before it)."""
    changed = change(lake, args.orders, args.fraction, seed=2 + n)
    load_before = os.getloadavg()
    return changed, cpu_timed(spark, inc, full=False), load_before


def serve_rounds(
    spark: object,
    lake: sample.RawLakehouse,
    builders: tuple[SparkModelBuilder, SparkModelBuilder],
    args: argparse.Namespace,
) -> list[dict]:
    """``--schedule serve``: every timed incremental build first, each after its change and
    with no full rebuild between them (as ``serve`` runs them), then ``--warmup-rounds``
    untimed and as many timed full rebuilds of the last input (each path warmed by its own
    kind of build); round n pairs the n-th of each, the tables are compared once at the end."""
    inc, full = builders
    builds = [changed_build(spark, lake, inc, args, n) for n in range(args.rounds)]
    for _ in range(args.warmup_rounds):
        timed(full, full=True)
    rebuilds = []
    for _ in range(args.rounds):
        load_before = os.getloadavg()
        rebuilds.append((cpu_timed(spark, full, full=True), load_before))
    same = same_tables(spark, builders)
    pairs = zip(builds, rebuilds, strict=True)
    return [
        record(changed, incremental, rebuild, same, (*inc_load, *full_load))
        for (changed, incremental, inc_load), (rebuild, full_load) in pairs
    ]


def same_tables(spark: object, builders: tuple[SparkModelBuilder, SparkModelBuilder]) -> bool:
    inc, full = builders
    models = load_project().models
    return all(identical(spark, inc.consumption / m, full.consumption / m) for m in models)


def record(
    changed: int,
    incremental: tuple[float, list, dict],
    rebuild: tuple[float, list, dict],
    same: bool,
    load: tuple[float, ...],
) -> dict:
    """One timed round: both builds' seconds, CPU and per-model modes, their ratio."""
    inc_s, inc_reports, inc_cpu = incremental
    full_s, full_reports, full_cpu = rebuild
    return {
        "changed_events": changed,
        "incremental_s": round(inc_s, 2),
        "full_s": round(full_s, 2),
        "ratio": round(inc_s / full_s, 3),
        "identical": same,
        "cpu_s": {"incremental": inc_cpu, "full": full_cpu},
        "keys": {r.model: r.keys for r in inc_reports},
        "incremental_models": per_model(inc_reports),
        "full_models": per_model(full_reports),
        "load_avg": [round(v, 2) for v in load],
    }


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    from spark_jobs.session import spark_session

    spark = spark_session("capa-bench")
    with tempfile.TemporaryDirectory(prefix="capa-bench-spark-") as tmp:
        root = Path(tmp)
        lake = seed(root / "lh", args.orders)
        inc = SparkModelBuilder(spark, lake.root, root / "incremental", workers=args.workers)
        full = SparkModelBuilder(spark, lake.root, root / "full", workers=args.workers)
        warm, _ = timed(inc, full=True)
        first_incremental = []
        for round_ in range(args.warmup_rounds):
            change(lake, args.orders, args.fraction, seed=100 + round_)
            first_incremental.append(round(timed(inc, full=False)[0], 1))
        if args.schedule == "serve":
            rounds = serve_rounds(spark, lake, (inc, full), args)
        else:
            rounds = [timed_round(spark, lake, (inc, full), args, n) for n in range(args.rounds)]
    result = summary(args, warm, first_incremental, rounds)
    print(json.dumps(result))
    if args.json_out:
        write_json(args, result, warm)


def summary(args: argparse.Namespace, warm: float, first: list, rounds: list[dict]) -> dict:
    """Medians over the timed rounds (ratio: the median of the rounds' ratios), then each."""
    return {
        "orders": args.orders,
        "fraction": args.fraction,
        "workers": args.workers,
        "schedule": args.schedule,
        "warmup_full_s": round(warm, 1),
        "warmup_incremental_s": first,
        "incremental_s": statistics.median(r["incremental_s"] for r in rounds),
        "full_s": statistics.median(r["full_s"] for r in rounds),
        "ratio": statistics.median(r["ratio"] for r in rounds),
        "identical": all(r["identical"] for r in rounds),
        "rounds": rounds,
    }


def write_json(args: argparse.Namespace, result: dict, warm: float) -> None:
    """The machine-readable result for bench.run_all."""
    from bench.common import make_result, write_result

    write_result(
        args.json_out,
        make_result(
            "spark_incremental",
            {
                "orders": args.orders,
                "fraction": args.fraction,
                "warmup_rounds": args.warmup_rounds,
                "rounds": args.rounds,
                "schedule": args.schedule,
            },
            {"incremental_build": result["incremental_s"], "warmup_full_build": warm},
            baselines={"incremental_build": result["full_s"]},
            baseline_labels={"incremental_build": "full rebuild of the same input (median)"},
            units={"incremental_build": "s", "warmup_full_build": "s"},
            checks={"incremental_equals_full": result["identical"]},
        ),
    )


if __name__ == "__main__":
    main()
