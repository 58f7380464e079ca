"""Benchmark: incremental model build vs full rebuild after 1% of a 1M-row raw table changed.

Run from the spark environment (one SparkSession, local[2])::

    SPARK_LOCAL_IP=127.0.0.1 .venvs/spark/bin/python -m bench.bench_spark_incremental \
        [--orders 1000000]

Seeds a raw lakehouse (1M orders, 100k customers, ...), builds every model once (warm-up, full),
runs ``--warmup-rounds`` untimed rounds of (change 1% of the orders, incremental build), then
changes 1% of the orders again (updates incl. customer moves, 10% of them deletes, plus
inserts), times an incremental build and a full rebuild of the same input and checks both give
the same tables. Prints a JSON line (totals, per-model mode and seconds, load average before and
after the two timed builds); the builder logs per-phase timings (diff, keys, recompute, write,
checks) at INFO. docs/benchmarks.md ("Spark consumption models") records runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

from capa.warehouse.local.delta_io import REPLICA_PROPERTIES
from spark_jobs import sample
from spark_jobs.build import SparkModelBuilder
from spark_jobs.project import load_project


def bulk(lake: sample.RawLakehouse, table: str, rows: list[dict]) -> None:
    """First load without MERGE (an initial snapshot), in the raw-table contract."""
    stamped = lake._stamp(rows, "r", deleted=False)
    write_deltalake(
        str(lake.path(table)),
        pa.Table.from_pylist(stamped, schema=sample.schema(table)),
        configuration=REPLICA_PROPERTIES,
    )


def seed(root: Path, orders: int) -> sample.RawLakehouse:
    rng = random.Random(1)
    customers = max(10, orders // 10)
    accounts = customers // 2
    lake = sample.RawLakehouse(root)
    bulk(lake, "f2_public_customers", [sample.customer(i) for i in range(1, customers + 1)])
    bulk(lake, "f2_public_orders", [sample.order(rng, i, customers) for i in range(1, orders + 1)])
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


def per_model(reports: list) -> dict[str, str]:
    return {r.model: f"{r.mode} {r.seconds}s" for r in reports}


def identical(spark: object, left: Path, right: Path) -> bool:
    a = spark.read.format("delta").load(str(left))  # type: ignore[attr-defined]
    b = spark.read.format("delta").load(str(right))  # type: ignore[attr-defined]
    return a.exceptAll(b).isEmpty() and b.exceptAll(a).isEmpty()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument(
        "--warmup-rounds",
        type=int,
        default=1,
        help="untimed change + incremental build rounds before the timed one, so that both "
        "timed builds run query shapes the session has run before (default 1; 0: the "
        "incremental build is the session's first, the full rebuild is not)",
    )
    parser.add_argument(
        "--json-out",
        dest="json_out",
        default=None,
        help="also write the result as JSON to this path (bench.run_all)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    from spark_jobs.session import spark_session

    spark = spark_session("capa-bench")
    with tempfile.TemporaryDirectory(prefix="capa-bench-spark-") as tmp:
        root = Path(tmp)
        lake = seed(root / "lh", args.orders)
        inc = SparkModelBuilder(spark, lake.root, root / "incremental")
        full = SparkModelBuilder(spark, lake.root, root / "full")
        warm, _ = timed(inc, full=True)
        first_incremental = []
        for round_ in range(args.warmup_rounds):
            change(lake, args.orders, args.fraction, seed=100 + round_)
            first_incremental.append(round(timed(inc, full=False)[0], 1))
        changed = change(lake, args.orders, args.fraction)
        load_before = os.getloadavg()
        inc_s, inc_reports = timed(inc, full=False)
        full_s, full_reports = timed(full, full=True)
        load_after = os.getloadavg()
        same = all(
            identical(spark, root / "incremental" / m, root / "full" / m)
            for m in load_project().models
        )
        print(
            json.dumps(
                {
                    "orders": args.orders,
                    "changed_events": changed,
                    "warmup_full_s": round(warm, 1),
                    "warmup_incremental_s": first_incremental,
                    "incremental_s": round(inc_s, 1),
                    "full_s": round(full_s, 1),
                    "ratio": round(inc_s / full_s, 3),
                    "identical": same,
                    "keys": {r.model: r.keys for r in inc_reports},
                    "incremental_models": per_model(inc_reports),
                    "full_models": per_model(full_reports),
                    "load_avg": [round(v, 2) for v in (*load_before, *load_after)],
                }
            )
        )
        if args.json_out:  # machine-readable result for bench.run_all
            from bench.common import make_result, write_result

            write_result(
                args.json_out,
                make_result(
                    "spark_incremental",
                    {
                        "orders": args.orders,
                        "fraction": args.fraction,
                        "warmup_rounds": args.warmup_rounds,
                    },
                    {"incremental_build": inc_s, "warmup_full_build": warm},
                    baselines={"incremental_build": full_s},
                    baseline_labels={"incremental_build": "full rebuild of the same input"},
                    units={"incremental_build": "s", "warmup_full_build": "s"},
                    checks={"incremental_equals_full": same},
                ),
            )


if __name__ == "__main__":
    main()
