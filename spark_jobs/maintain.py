"""Raw-layer upkeep and freshness, with delta-rs (no Spark session needed).

    python -m spark_jobs.maintain freshness --lakehouse L --max-age-minutes 60 [--tables a,b]
    python -m spark_jobs.maintain compact   --lakehouse L
    python -m spark_jobs.maintain vacuum    --lakehouse L --retention-hours 168
    python -m spark_jobs.maintain retention --lakehouse L --changelog-days 30

* ``freshness``: every raw table the models read exists and had a commit within the max age;
  exit 1 with a table of stale/missing tables otherwise (the consumption DAG runs it first).
* ``compact``: bin-packs small files of raw replicas and changelogs (``optimize.compact``).
* ``vacuum``: deletes files no longer referenced and older than the retention, change data
  feed files included. Keep it longer than the interval between model builds: an incremental
  build reads the changes since the raw version it read last time (feed, else data files) and
  falls back to a full rebuild when they were vacuumed.
* ``retention``: deletes changelog rows whose ``_capa_commit_ts`` is older than N days.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from capa import console
from capa.errors import CapaError
from capa.warehouse.base import CHANGELOG_SUFFIX, META_COMMIT_TS


def raw_tables(lakehouse: Path, changelogs: bool = True) -> list[Path]:
    raw = lakehouse / "raw"
    if not raw.is_dir():
        return []
    return sorted(
        p
        for p in raw.iterdir()
        if (p / "_delta_log").is_dir() and (changelogs or not p.name.endswith(CHANGELOG_SUFFIX))
    )


def last_commit(path: Path) -> datetime | None:
    from deltalake import DeltaTable

    try:
        history = DeltaTable(str(path)).history(1)
    except Exception:
        return None
    return datetime.fromtimestamp(history[0]["timestamp"] / 1000, tz=UTC) if history else None


def freshness(args: argparse.Namespace) -> int:
    names = [t for t in args.tables.split(",") if t] or _model_tables()
    now, limit = datetime.now(UTC), timedelta(minutes=args.max_age_minutes)
    rows = []
    for name in names:
        committed = last_commit(args.lakehouse / "raw" / name)
        status = "missing" if committed is None else ("stale" if now - committed > limit else "ok")
        rows.append((name, committed.isoformat(timespec="seconds") if committed else "-", status))
    console.table(["raw table", "last commit (UTC)", "status"], rows)
    bad = [r for r in rows if r[2] != "ok"]
    if bad:
        console.error(
            f"{len(bad)} raw table(s) missing or older than {args.max_age_minutes} min: "
            f"{', '.join(r[0] for r in bad)}; check the apply job (capa status)"
        )
    return 1 if bad else 0


def _model_tables() -> list[str]:
    from spark_jobs.project import load_project

    return load_project().raw_tables()


def compact(args: argparse.Namespace) -> int:
    from deltalake import DeltaTable

    rows = []
    for path in raw_tables(args.lakehouse):
        metrics = DeltaTable(str(path)).optimize.compact()
        rows.append((path.name, metrics.get("numFilesRemoved", 0), metrics.get("numFilesAdded", 0)))
    console.table(["table", "files removed", "files added"], rows)
    return 0


def vacuum(args: argparse.Namespace) -> int:
    from deltalake import DeltaTable

    rows = []
    for path in raw_tables(args.lakehouse):
        deleted = DeltaTable(str(path)).vacuum(
            retention_hours=args.retention_hours, dry_run=False, enforce_retention_duration=False
        )
        rows.append((path.name, len(deleted)))
    console.table(["table", "files deleted"], rows)
    return 0


def retention(args: argparse.Namespace) -> int:
    from deltalake import DeltaTable

    cutoff = datetime.now(UTC) - timedelta(days=args.changelog_days)
    literal = cutoff.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # generated here, not user text
    rows = []
    for path in raw_tables(args.lakehouse):
        if not path.name.endswith(CHANGELOG_SUFFIX):
            continue
        metrics = DeltaTable(str(path)).delete(f"\"{META_COMMIT_TS}\" < '{literal}'")
        rows.append((path.name, metrics.get("num_deleted_rows", 0)))
    console.table(["changelog", "rows deleted"], rows)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "freshness": freshness,
    "compact": compact,
    "vacuum": vacuum,
    "retention": retention,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m spark_jobs.maintain", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        cmd = sub.add_parser(name)
        cmd.add_argument("--lakehouse", type=Path, default=Path(".state/lakehouse"))
    sub.choices["freshness"].add_argument("--max-age-minutes", type=float, default=60.0)
    sub.choices["freshness"].add_argument(
        "--tables", default="", help="default: tables the models read"
    )
    sub.choices["vacuum"].add_argument("--retention-hours", type=int, default=168)
    sub.choices["retention"].add_argument("--changelog-days", type=float, default=30.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    try:
        code = COMMANDS[args.command](args)
    except CapaError as exc:
        console.error(str(exc))
        return 1
    console.info(f"{args.command} done in {time.monotonic() - started:.1f}s")
    return code


if __name__ == "__main__":
    sys.exit(main())
