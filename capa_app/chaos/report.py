"""The long fault-injection run (``make chaos``).

    .venvs/beam/bin/python -m capa_app.chaos [--events 200000 --faults 24 --rate 400 --seed 1]
    .venvs/beam/bin/python -m capa_app.chaos --poison      # make chaos-poison

Starts a throwaway stack (Kafka, PostgreSQL, Debezium bridge, streaming apply job) on free
ports, runs the randomized workload (inserts, updates, deletes, primary-key updates,
truncates) and kills the apply job, the bridge and the broker with SIGKILL at random
points, restarting each through its Service; then quiesces and runs the oracle. Prints the
report and replaces the "Chaos" section of docs/benchmarks.md (``--no-docs`` to skip).
Exit code 0 only if nothing was lost, duplicated or different.

``--poison`` (``make chaos-poison``) also mixes poison records into the run, one per
``--poison_every`` changes (see :mod:`capa_app.chaos.poison`: oversize rows, NULL keys,
type drift, hostile table names): the good rows must still equal their source, and every
poison record must be on the dead-letter topic exactly once with its reason. It writes
the "Chaos: poison soak" section instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from capa_app.chaos.harness import ChaosPlan, ChaosReport, ChaosRun, chaos_settings, chaos_state_dir
from capa_app.chaos.poison import DRIFT_TABLE, NULL_KEY_TABLE, POISON_KINDS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Chaos"
POISON_SECTION = "## Chaos: poison soak"
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

POISON_SETUP = (
    "With `--poison`, one poison record per {every} changes (every kind first once, then "
    "at random; `capa_app/chaos/poison.py`): an **oversize** row (1.2 MB, over the 1 MiB "
    "`kafka.max_message_bytes` this run sets) inserted in PostgreSQL and deleted in the same "
    "transaction, dead-lettered by the bridge; a **NULL key** canonical event produced "
    "straight onto the change topic (PostgreSQL cannot hold a NULL primary key), "
    "dead-lettered by the apply job; **type drift**, rows written after `ALTER COLUMN v TYPE "
    "text` on an integer column, dead-lettered by the apply job; a **long hostile name**, "
    "rows of a table named `../` x 21 whose raw name would exceed 230 characters, "
    "dead-lettered by the bridge. The legal hostile names (`Orders` beside `orders`, "
    "`orders_changelog`, `orders_all`, `x/../../..`, a name with a newline) are ordinary "
    "workload tables: replicated under the escaped raw-name encoding and compared row for "
    "row. The dead-letter oracle reads the whole dead-letter topic and matches every record "
    "to an injected poison by table + key (or `event_id`), checking its reason: every poison id "
    "must be there with its reason and no other record may be. Transport to Kafka is "
    "at-least-once, so a poison dead-lettered just before a kill -9 (of the bridge before its "
    "offset flush, of the apply job before its commit) is dead-lettered again on the replay: "
    "those extra copies carry the same id and reason and are counted on their own row."
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
        "--poison", action="store_true", help="mix poison records in (see capa_app/chaos/poison.py)"
    )
    parser.add_argument(
        "--poison_every", type=int, default=500, help="with --poison: one poison per N changes"
    )
    parser.add_argument(
        "--no-docs", dest="docs", action="store_false", help="do not update docs/benchmarks.md"
    )
    return parser.parse_args(argv)


def command_line(argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return " ".join([".venvs/beam/bin/python -m capa_app.chaos", *args])


def _rows(report: ChaosReport) -> list[tuple[str, str]]:
    return [
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
    ]


def _poison_rows(report: ChaosReport) -> list[tuple[str, str]]:
    poison = report.poison
    if poison is None:
        return []
    dlq = poison.dlq
    injected = ", ".join(f"{k} {poison.injected[k]}" for k in POISON_KINDS)
    found = ", ".join(f"{k} {dlq.once[k] + dlq.redelivered[k]}" for k in POISON_KINDS)
    return [
        ("poison injected", f"{sum(poison.injected.values())} ({injected})"),
        ("dead-letter records", str(dlq.letters)),
        ("poison on the dead-letter topic exactly once (by poison id)", found),
        (
            "of these, redelivered after a kill (extra copies, same id and reason)",
            f"{sum(dlq.redelivered.values())} ({dlq.extra_copies})",
        ),
        (
            "poison missing / wrong reason / unexpected letters",
            f"{len(dlq.missing)} / {len(dlq.wrong_reason)} / {len(dlq.unexpected)}",
        ),
        (
            f"`{DRIFT_TABLE}` replica keys (written before the type change)",
            str(poison.drift_replica_keys),
        ),
        (f"`{NULL_KEY_TABLE}` replica rows", str(poison.null_key_replica_rows)),
        (
            "legal hostile-name tables compared row for row (source rows)",
            ", ".join(f"{name!r} {n:,}" for name, n in poison.hostile_rows.items()),
        ),
    ]


def section_text(report: ChaosReport, command: str) -> str:
    plan = report.plan
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    rows = _rows(report) + _poison_rows(report)
    rows.append(("result", "**OK**" if report.ok else "**MISMATCH**"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    prose = SETUP.format(
        seed=plan.seed,
        rate=plan.rate,
        truncates=f"1-in-{plan.truncate_every}" if plan.truncate_every else "no",
        down=plan.max_down_s,
    )
    measured = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {load} (2 cores, shared)"
    if report.poison is None:
        title, make = SECTION, "`make chaos` runs the defaults: 200k events, 24 faults"
    else:
        title, make = POISON_SECTION, "`make chaos-poison` runs the defaults with `--poison`"
        prose += " " + POISON_SETUP.format(every=plan.poison_every)
    return (
        f"{title}\n\nCommand: `{command}` ({make}).\n\n{prose}\n\nMeasured {measured}.\n\n"
        f"| measure | result |\n|---|---|\n{table}\n"
    )


def replace_section(doc: str, section: str) -> str:
    """``doc`` with the section of ``section``'s title replaced by it (appended if absent)."""
    title = section.split("\n", 1)[0]
    start = doc.find(f"\n{title}\n")
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
        poison_every=args.poison_every if args.poison else 0,
    )
    with chaos_state_dir(keep=args.keep_state) as state_dir:
        report = ChaosRun(chaos_settings(state_dir, poison=args.poison), plan).run()
    print("\n".join(report.lines()))
    if args.docs:
        section = section_text(report, command_line(argv))
        DOCS.write_text(replace_section(DOCS.read_text(), section))
        print(f"updated {DOCS.relative_to(ROOT)} ({section.split(chr(10), 1)[0]})")
    return 0 if report.ok else 1
