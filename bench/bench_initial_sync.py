"""Benchmark of the initial sync of PostgreSQL (not a test): fast path vs COPY vs Debezium.

    .venvs/beam/bin/python -m bench.bench_initial_sync [--scale 100] [--debezium_scale 10]
        [--workers 0] [--debezium_timeout_s 900] [--sync_log PATH]

``--debezium_scale 0`` skips the Debezium path (about 2 minutes) while iterating.

Starts a throwaway PostgreSQL 15 (capa_app.stack.postgres) and, for the Debezium path, a
throwaway Kafka broker; ``pgbench -i -s SCALE`` creates ``pgbench_accounts`` (SCALE x 100k
rows) before capture starts. Measured in the same run:

1. floor: ``psql -c "\\copy pgbench_accounts to '/dev/null' (format binary)"`` (a bare
   binary COPY into /dev/null);
2. fast initial sync (``connectors.pgsync``, the embedded default) in a subprocess: slot with
   an exported snapshot, parallel CTID-range readers (ADBC), bulk Delta writes of the raw
   replica and its changelog; wall time, rows/s, heap MB/s, the subprocess's peak RSS and
   CPU seconds, and the cores the whole machine kept busy during the floor and the sync
   (other jobs share the machine: the floor uses about one core, the sync both);
   then ``capa verify`` (``verify_postgres_local``) must be equal (timed separately: it is
   the check, not part of the sync);
3. Debezium's own snapshot through capa (``debezium.initial_load=debezium``): bridge ->
   Kafka -> streaming apply job -> replica, on a second database with ``pgbench -i -s
   DEBEZIUM_SCALE`` (at 4.3k rows/s the full scale would take ~40 min): wall time from the
   bridge's start until the replica holds every row and ``capa verify`` is equal; rows/s.

The issue's targets: fast wall time within 2x of the floor (ratio), fast rows/s at least 10x
Debezium's rows/s (both rates; the sizes differ, see above), peak memory under 1 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import add_json_out, make_result, write_result
from capa.config import CapaSettings, LocalWarehouseConfig
from capa.verify import verify_postgres_local
from capa_app.stack.base import StateDirs
from capa_app.stack.kafka import KafkaBroker
from capa_app.stack.postgres import PostgresCluster
from capa_app.stack.throwaway import running_service, throwaway_settings, throwaway_state_dir

ROOT = Path(__file__).resolve().parents[1]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
SOURCE = "bench"


def cpu_stat() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)  # minus idle and iowait


def busy_cores(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Cores the whole machine (every process) kept busy between two :func:`cpu_stat`."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total * (os.cpu_count() or 1) if total else 0.0


# The fast sync alone, in its own process (its peak RSS is the figure).
_SYNC = """
import json, logging, resource, sys, time
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
logging.getLogger("connectors.pgsync").setLevel(logging.DEBUG)
from capa.config import load_settings
from connectors.pgsync.sync import run_initial_sync
from bench.bench_initial_sync import busy_cores, cpu_stat
settings = load_settings()  # from the CAPA__* environment
started, stat = time.monotonic(), cpu_stat()
assert run_initial_sync(settings, offsets_exist=False)
seconds, busy, usage = time.monotonic() - started, busy_cores(stat, cpu_stat()), resource.getrusage(0)
print(json.dumps({"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024,
                  "cpu_s": usage.ru_utime + usage.ru_stime, "machine_busy_cores": busy}))
"""


def psql_env(settings: CapaSettings) -> dict[str, str]:
    pg = settings.postgres
    return os.environ | {
        "PGHOST": pg.host,
        "PGPORT": str(pg.port),
        "PGUSER": pg.user,
        "PGPASSWORD": pg.password.get_secret_value(),
    }


def pgbench_init(settings: CapaSettings, database: str, scale: int) -> float:
    env = psql_env(settings)
    subprocess.run(
        ["psql", "-q", "-d", "postgres", "-c", f"CREATE DATABASE {database}"], env=env, check=True
    )
    started = time.monotonic()
    subprocess.run(
        [str(PG_BIN / "pgbench"), "-i", "-q", "-s", str(scale), database],
        env=env,
        check=True,
        capture_output=True,
    )
    return time.monotonic() - started


def bare_copy(settings: CapaSettings, database: str) -> tuple[float, float]:
    """Wall seconds of the bare COPY and the cores the machine kept busy meanwhile."""
    started, stat = time.monotonic(), cpu_stat()
    subprocess.run(
        [
            "psql",
            "-q",
            "-d",
            database,
            "-c",
            "\\copy pgbench_accounts to '/dev/null' (format binary)",
        ],
        env=psql_env(settings),
        check=True,
    )
    return time.monotonic() - started, busy_cores(stat, cpu_stat())


def heap_bytes(settings: CapaSettings, database: str) -> int:
    import psycopg

    with psycopg.connect(settings.postgres.dsn(database)) as conn:
        row = conn.execute("SELECT pg_relation_size('pgbench_accounts')").fetchone()
    return int(row[0]) if row else 0


def for_database(settings: CapaSettings, database: str, name: str, **debezium: Any) -> CapaSettings:
    pg = settings.postgres.model_copy(update={"database": database})
    dbz = settings.debezium.model_copy(
        update={
            "source_name": SOURCE,
            "engine_name": f"bench-{name}",
            "slot_name": f"bench_{name}",
            "publication": f"bench_{name}",
            "table_include_list": "public.pgbench_accounts",
            **debezium,
        }
    )
    lake = LocalWarehouseConfig(path=settings.state_dir / f"lake-{name}")
    return settings.model_copy(update={"postgres": pg, "debezium": dbz, "warehouse": lake})


def settings_environment(settings: CapaSettings) -> dict[str, str]:
    """The environment of a capa process configured by ``settings`` (no stray CAPA_ vars)."""
    from capa_app.stack.debezium import settings_env

    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPA_")}
    return env | settings_env(settings) | {"PYTHONPATH": str(ROOT)}


def run_fast(settings: CapaSettings, log: Path) -> dict[str, Any]:
    with log.open("ab") as out:
        proc = subprocess.run(
            [sys.executable, "-c", _SYNC],
            cwd=ROOT,
            env=settings_environment(settings),
            stdout=subprocess.PIPE,
            stderr=out,
            check=True,
        )
    return dict(json.loads(proc.stdout.decode().strip().splitlines()[-1]))


def verified(settings: CapaSettings) -> tuple[bool, float]:
    started = time.monotonic()
    diffs = verify_postgres_local(
        settings.postgres.dsn(), SOURCE, "public", settings.warehouse.path,  # type: ignore[union-attr]
        tables=["pgbench_accounts"],
    )  # fmt: skip
    return all(d.ok for d in diffs) and len(diffs) == 1, time.monotonic() - started


def run_debezium(settings: CapaSettings, rows: int, timeout_s: float, logs: Path) -> float:
    """Bridge (Debezium's snapshot) + streaming apply job until the replica is equal."""
    from capa.warehouse import open_warehouse

    lake: Path = settings.warehouse.path  # type: ignore[union-attr]
    env = settings_environment(settings)
    kafka = settings.kafka
    apply_argv = [
        *(sys.executable, "-m", "beam_jobs.streaming_apply", "--bootstrap", kafka.bootstrap),
        *("--topic", kafka.topic, "--dlq_topic", kafka.dlq_topic, "--warehouse", f"local:{lake}"),
        *("--consumer_group", "bench-dbz"),
    ]
    started = time.monotonic()
    with (logs / "bridge.log").open("ab") as b, (logs / "apply.log").open("ab") as a:
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "connectors.debezium.bridge"],
                cwd=settings.state_dir, env=env, stdout=b, stderr=subprocess.STDOUT,
            ),
            subprocess.Popen(apply_argv, cwd=ROOT, env=env, stdout=a, stderr=subprocess.STDOUT),
        ]  # fmt: skip
        try:
            replica = f"raw.{SOURCE}_public_pgbench_accounts"
            while time.monotonic() - started < timeout_s:
                time.sleep(2)
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"a pipeline process exited (logs in {logs})")
                if open_warehouse(f"local:{lake}").row_count(replica) >= rows:
                    return time.monotonic() - started
            raise RuntimeError(f"Debezium path not done within {timeout_s:.0f} s")
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=int, default=100, help="pgbench scale, fast path")
    parser.add_argument(
        "--debezium_scale", type=int, default=10, help="pgbench scale, Debezium (0: skip it)"
    )
    parser.add_argument("--workers", type=int, default=0, help="readers (0: the core count)")
    parser.add_argument("--debezium_timeout_s", type=float, default=900.0)
    parser.add_argument("--sync_log", type=Path, help="keep the fast sync's DEBUG log here")
    add_json_out(parser)
    args = parser.parse_args()
    state = throwaway_state_dir("capa-bench-sync-")  # PostgreSQL runs as its own OS user
    base = throwaway_settings(state)
    try:
        with running_service(PostgresCluster(StateDirs(state), base.postgres)):
            init_s = pgbench_init(base, "fast", args.scale)
            rows = args.scale * 100_000
            floor_s, floor_busy = bare_copy(base, "fast")
            fast = for_database(base, "fast", "fast", initial_load_workers=args.workers)
            synced = run_fast(fast, state / "fast-sync.log")
            equal, verify_s = verified(fast)
            heap = heap_bytes(base, "fast")
            if args.sync_log:
                shutil.copyfile(state / "fast-sync.log", args.sync_log)
            dbz_rows, dbz_s, dbz_equal = 0, float("nan"), True
            if args.debezium_scale:
                pgbench_init(base, "dbz", args.debezium_scale)
                dbz_rows = args.debezium_scale * 100_000
                slow = for_database(base, "dbz", "dbz", initial_load="debezium")
                with running_service(KafkaBroker(StateDirs(state), base.kafka)):
                    dbz_s = run_debezium(slow, dbz_rows, args.debezium_timeout_s, state)
                dbz_equal, _ = verified(slow)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    fast_s = synced["seconds"]
    fast_rate = rows / fast_s
    dbz_rate = dbz_rows / dbz_s if args.debezium_scale else 0.0
    params = {
        "scale": args.scale,
        "rows": rows,
        "debezium_scale": args.debezium_scale,
        "debezium_rows": dbz_rows,
        "workers": args.workers or os.cpu_count(),
        "pgbench_init_s": round(init_s, 1),
        "verify_s": round(verify_s, 1),
        # machine load: cores busy (every process) during the floor and the sync, and the
        # sync process's own CPU seconds; other helpers' jobs share the 2 cores
        "floor_machine_busy_cores": round(floor_busy, 2),
        "sync_machine_busy_cores": round(synced["machine_busy_cores"], 2),
        "sync_cpu_s": round(synced["cpu_s"], 1),
    }
    figures = {
        "fast_sync_wall": fast_s,
        "fast_sync_rows_per_s": fast_rate,
        "fast_sync_heap_mb_per_s": heap / 2**20 / fast_s,
        "fast_sync_peak_rss": synced["peak_rss_mb"],
    }
    baselines = {"fast_sync_wall": floor_s}
    if args.debezium_scale:
        figures |= {"debezium_rows_per_s": dbz_rate, "debezium_wall": dbz_s}
        baselines["fast_sync_rows_per_s"] = dbz_rate
    result = make_result(
        "initial_sync",
        params,
        figures,
        baselines=baselines,
        baseline_labels={
            "fast_sync_wall": "bare binary COPY of the same table into /dev/null (psql)",
            "fast_sync_rows_per_s": f"Debezium's snapshot through capa, pgbench scale "
            f"{args.debezium_scale}, rows/s",
        },
        units={
            "fast_sync_wall": "s",
            "fast_sync_rows_per_s": "rows/s",
            "fast_sync_heap_mb_per_s": "MB/s",
            "fast_sync_peak_rss": "MB",
            "debezium_rows_per_s": "rows/s",
            "debezium_wall": "s",
        },
        checks={"fast_verify_equal": equal, "debezium_verify_equal": dbz_equal},
    )
    print(json.dumps(result, indent=2))
    if args.json_out:
        write_result(args.json_out, result)
    return 0 if equal and dbz_equal else 1


if __name__ == "__main__":
    sys.exit(main())
