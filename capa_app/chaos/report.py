"""The long fault-injection run (``make chaos``).

    .venvs/beam/bin/python -m capa_app.chaos [--events 200000 --faults 24 --rate 400 --seed 1]

Starts a throwaway stack (Kafka, PostgreSQL, Debezium bridge, streaming apply job) on free
ports, runs the randomized workload (inserts, updates, deletes, primary-key updates,
truncates) and kills the apply job, the bridge and the broker with SIGKILL at random
points, restarting each through its Service; then quiesces and runs the oracle. Prints the
report and replaces the "Chaos" section of docs/benchmarks.md (``--no-docs`` to skip).
Exit code 0 only if nothing was lost, duplicated or different.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from capa_app.chaos.harness import ChaosPlan, ChaosReport, ChaosRun, chaos_settings, chaos_state_dir

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Chaos"
SETUP = (
    "A throwaway stack (Kafka, PostgreSQL, Debezium bridge, streaming apply job) on free "
    "ports; the randomized workload (`capa_app/workload.py`, seed {seed}, {rate:.0f} changes/s, "
    "inserts / updates / deletes / primary-key updates, {truncates} truncates) runs "
    "while `capa_app/chaos/harness.py` kills the apply job, the bridge and the broker with SIGKILL (by "
    "PID record) at random points, keeps each down 0-{down:.0f} s and restarts it through "
    "its Service. After quiesce (a marker row past the workload confirmed by the replication "
    "slot, apply lag 0 twice) the oracle (`capa/verify.py`) compares every table: row count "
    "and per-row hash."
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="row changes to commit")
    parser.add_argument("--faults", type=int, default=24, help="kill -9 faults (cycling kinds)")
    parser.add_argument("--rate", type=float, default=400.0, help="row changes per second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--truncate_every", type=int, default=40_000, help="1-in-N changes is a TRUNCATE (0 = none)"
    )
    parser.add_argument("--quiesce_timeout_s", type=float, default=1800.0)
    parser.add_argument("--keep_state", action="store_true", help="keep the temp state dir")
    parser.add_argument(
        "--no-docs", dest="docs", action="store_false", help="do not update docs/benchmarks.md"
    )
    return parser.parse_args(argv)


def command_line(argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return " ".join([".venvs/beam/bin/python -m capa_app.chaos", *args])


def section_text(report: ChaosReport, command: str) -> str:
    plan = report.plan
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    rows = [
        ("events (row changes committed)", f"{report.events:,}"),
        ("faults (kill -9)", f"{sum(report.faults.values())} ({report.fault_summary()})"),
        (
            "unexpected exits (restarted by the driver)",
            ", ".join(f"{k} {v}" for k, v in sorted(report.unexpected_exits.items())) or "none",
        ),
        (
            "seconds (total / workload / quiesce)",
            f"{report.seconds:.0f} / {report.workload_seconds:.0f} / {report.quiesce_seconds:.0f}",
        ),
        (
            "tables / source rows / replica rows",
            f"{len(report.diffs)} / {report.source_rows:,} / {report.replica_rows:,}",
        ),
        ("lost rows (missing)", str(report.missing)),
        ("duplicated rows (extra)", str(report.extra)),
        ("different rows (hash)", str(report.different)),
        ("result", "**OK**" if report.ok else "**MISMATCH**"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    prose = SETUP.format(
        seed=plan.seed,
        rate=plan.rate,
        truncates=f"1-in-{plan.truncate_every}" if plan.truncate_every else "no",
        down=plan.max_down_s,
    )
    measured = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {load} (2 cores, shared)"
    return (
        f"{SECTION}\n\nCommand: `{command}` (`make chaos` runs the defaults: 200k events, "
        f"24 faults).\n\n{prose}\n\nMeasured {measured}.\n\n"
        f"| measure | result |\n|---|---|\n{table}\n"
    )


def replace_section(doc: str, section: str) -> str:
    """``doc`` with its Chaos section replaced by ``section`` (appended if absent)."""
    start = doc.find(f"\n{SECTION}\n")
    if start < 0:
        return doc.rstrip("\n") + "\n\n" + section
    end = doc.find("\n## ", start + 1)
    rest = "" if end < 0 else doc[end:]
    return doc[: start + 1] + section + rest


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = parse_args(argv)
    plan = ChaosPlan(
        events=args.events,
        faults=args.faults,
        rate=args.rate,
        seed=args.seed,
        truncate_every=args.truncate_every,
        quiesce_timeout_s=args.quiesce_timeout_s,
    )
    with chaos_state_dir(keep=args.keep_state) as state_dir:
        report = ChaosRun(chaos_settings(state_dir), plan).run()
    print("\n".join(report.lines()))
    if args.docs:
        DOCS.write_text(replace_section(DOCS.read_text(), section_text(report, command_line(argv))))
        print(f"updated {DOCS.relative_to(ROOT)} ({SECTION})")
    return 0 if report.ok else 1
