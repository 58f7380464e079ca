"""Build the consumption models: raw Delta replicas -> consumption Delta tables, with Spark.

Run (from the spark environment)::

    .venvs/spark/bin/python -m spark_jobs.build run --lakehouse .state/lakehouse [--full] \
        [--select customer_360]
    .venvs/spark/bin/python -m spark_jobs.build serve   # JSON requests on stdin, one per line

Models (``spark_jobs/models/*.sql``) are built in dependency order into
``<lakehouse>/consumption/<model>/``. Incremental by default: only the keys touched by raw rows
changed since the last successful build are recomputed and MERGEd (see
:mod:`spark_jobs.incremental`); ``--full`` recomputes everything. After each model its checks run;
a failing check restores the table to its previous version, stops the build and exits 1 with a
table of the failing checks. ``serve`` keeps one SparkSession for many builds (tests, notebooks).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

from capa import console
from capa.errors import CapaError, ConfigError, TerminalError
from capa.warehouse.base import META_DELETED, META_INGESTED_AT
from spark_jobs.checks import CheckResult, failure_rows, model_checks, run_checks
from spark_jobs.incremental import InputSnapshot, affected_keys, read_version
from spark_jobs.project import MODELS_DIR, Model, Project, load_project, quote
from spark_jobs.state import InputMark, ModelState, clear_state, fingerprint, load_state, save_state

logger = logging.getLogger(__name__)

_ISO = "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX"
_LITERAL_KEYS_MAX = 5_000  # up to this many single-column keys are pushed down as IN (...)
REBUILD_ABOVE = 0.1  # recomputing more than this share of the target's rows: rebuild instead
_PRESENT = "__capa_present"


class ChecksFailed(TerminalError):
    """A model's data-quality checks failed; its table was restored."""

    def __init__(self, model: str, results: Sequence[CheckResult]) -> None:
        self.model, self.results = model, list(results)
        failing = [r for r in results if not r.ok]
        super().__init__(
            f"model {model!r}: {len(failing)} data-quality check(s) failed; the table was left at "
            "its previous version and later models were not built"
        )


@dataclass(frozen=True, slots=True)
class ModelReport:
    model: str
    mode: str  # full | incremental | unchanged
    keys: int | None  # keys recomputed (incremental)
    rows: int
    version: int
    seconds: float


def delta_version(path: Path) -> int | None:
    from deltalake import DeltaTable

    try:
        return int(DeltaTable(str(path)).version())
    except Exception:  # not a Delta table (yet)
        return None


def count_rows(path: Path) -> int:
    from deltalake import DeltaTable

    return int(DeltaTable(str(path)).to_pyarrow_dataset().count_rows())


def merge_sql(target: str, source: str, key: Sequence[str], columns: Sequence[str]) -> str:
    """MERGE of recomputed rows; a key whose source row lacks ``__capa_present`` is deleted."""
    on = " AND ".join(f"t.{quote(k)} <=> s.{quote(k)}" for k in key)
    sets = ", ".join(f"t.{quote(c)} = s.{quote(c)}" for c in columns if c not in key)
    cols = ", ".join(quote(c) for c in columns)
    vals = ", ".join(f"s.{quote(c)}" for c in columns)
    update = f"WHEN MATCHED THEN UPDATE SET {sets} " if sets else ""
    return (
        f"MERGE INTO {target} t USING {source} s ON {on} "
        f"WHEN MATCHED AND s.{_PRESENT} IS NULL THEN DELETE "
        f"{update}"
        f"WHEN NOT MATCHED AND s.{_PRESENT} IS NOT NULL THEN INSERT ({cols}) VALUES ({vals})"
    )


def delta_ref(path: Path | str) -> str:
    return "delta.`" + str(path).replace("`", "``") + "`"


class SparkModelBuilder:
    """Builds models of one project from ``lakehouse/raw`` into ``consumption``."""

    def __init__(
        self,
        spark: Any,
        lakehouse: Path,
        consumption: Path | None = None,
        rebuild_above: float = REBUILD_ABOVE,
    ) -> None:
        self.spark = spark
        self.rebuild_above = rebuild_above
        self.lakehouse = Path(lakehouse).resolve()
        self.consumption = Path(consumption or self.lakehouse / "consumption").resolve()
        self._snaps: dict[tuple[str, str], InputSnapshot] = {}
        self._views: set[str] = set()
        self._changed: dict[tuple[str, int, int], Any] = {}

    # -- inputs ---------------------------------------------------------------------------
    def _path(self, kind: str, name: str) -> Path:
        return self.lakehouse / "raw" / name if kind == "raw" else self.consumption / name

    def snapshot(self, kind: str, name: str) -> InputSnapshot:
        """Pin an input at its current version (once per build)."""
        if (kind, name) not in self._snaps:
            path = self._path(kind, name)
            version = delta_version(path)
            if version is None:
                hint = "load or apply it first" if kind == "raw" else f"build model {name!r} first"
                raise ConfigError(f"{kind} table {name!r} not found at {path}: {hint}")
            self._snaps[(kind, name)] = InputSnapshot(name, kind, str(path), version)
        return self._snaps[(kind, name)]

    def resolve(self, kind: str, name: str) -> str:
        """Template resolver: registers the pinned input as a temp view, returns its name."""
        snap = self.snapshot("ref" if kind == "ref" else "raw", name)
        view = f"capa_{kind}__{name}"
        if view not in self._views:
            df = read_version(self.spark, snap.path, snap.version)
            if kind == "raw":
                df = df.where(f"NOT coalesce({quote(META_DELETED)}, false)")
            df.createOrReplaceTempView(view)
            self._views.add(view)
        return quote(view)

    def resolve_table(self, name: str, project: Project) -> str:
        return self.resolve("ref" if name in project.models else "raw", name)

    # -- build ----------------------------------------------------------------------------
    def build(
        self, project: Project, *, full: bool = False, select: Sequence[str] | None = None
    ) -> list[ModelReport]:
        self._snaps.clear()
        self._views.clear()
        self._changed.clear()
        reports = []
        for model in project.order(select):
            reports.append(self.build_model(project, model, full=full))
            logger.info("built %s", reports[-1])
        return reports

    def build_model(self, project: Project, model: Model, *, full: bool = False) -> ModelReport:
        started = time.monotonic()
        target = self.consumption / model.name
        before = delta_version(target)
        snaps = {n: self.snapshot("ref" if n in model.refs else "raw", n) for n in model.inputs}
        state = load_state(self.consumption, model.name)
        mode, keys = "full", None
        if not full and before is not None and state and state.fingerprint == fingerprint(model):
            keys_df = affected_keys(self.spark, model, snaps, state, self.resolve, self._changed)
            if keys_df is not None:
                mode, keys = self._merge(model, target, keys_df)
                keys = keys if mode != "full" else None
        if mode == "full":
            self._overwrite(model, target)
        written = time.monotonic()
        if mode != "unchanged":
            self._check(project, model, target, before)
        logger.info(
            "%s: %s write %.1fs, checks %.1fs",
            model.name,
            mode,
            written - started,
            time.monotonic() - written,
        )
        version = delta_version(target) or 0
        save_state(self.consumption, self._state(model, snaps, version))
        rows = count_rows(target)
        return ModelReport(
            model.name, mode, keys, rows, version, round(time.monotonic() - started, 2)
        )

    def _overwrite(self, model: Model, target: Path) -> None:
        df = self.spark.sql(model.render(self.resolve))
        writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
        writer.save(str(target))

    def _merge(self, model: Model, target: Path, keys_df: Any) -> tuple[str, int]:
        from pyspark.sql import functions as F

        started = time.monotonic()
        keys_df = keys_df.cache()
        count = keys_df.count()
        logger.info(
            "%s: %d changed keys found in %.1fs", model.name, count, time.monotonic() - started
        )
        if count == 0:
            return "unchanged", 0
        if count > self.rebuild_above * count_rows(target):
            logger.info("%s: %d keys changed, a full rebuild is cheaper", model.name, count)
            keys_df.unpersist()
            return "full", count
        df = self.spark.sql(model.render(self.resolve))
        key = list(model.header.key)
        keys_df = keys_df.select([F.col(k).cast(df.schema[k].dataType).alias(k) for k in key])
        if len(key) == 1 and count <= _LITERAL_KEYS_MAX:
            values = [r[0] for r in keys_df.collect()]
            recomputed = df.where(F.col(key[0]).isin(values))  # pushed below joins/aggregates
        else:
            recomputed = df.join(F.broadcast(keys_df), on=key, how="left_semi")
        source = keys_df.join(recomputed.withColumn(_PRESENT, F.lit(True)), on=key, how="left")
        source = source.localCheckpoint(eager=True)  # MERGE scans its source twice: compute once
        source.createOrReplaceTempView("capa_merge_source")
        self.spark.sql(merge_sql(delta_ref(target), "capa_merge_source", key, df.columns))
        keys_df.unpersist()
        return "incremental", count

    def _check(self, project: Project, model: Model, target: Path, before: int | None) -> None:
        view = f"capa_check__{model.name}"
        built = self.spark.read.format("delta").load(str(target)).cache()
        built.createOrReplaceTempView(view)
        checks = model_checks(model, quote(view), lambda n: self.resolve_table(n, project))
        results = run_checks(self.spark, checks)
        built.unpersist()
        if all(r.ok for r in results):
            return
        self._restore(model, target, before)
        raise ChecksFailed(model.name, results)

    def _restore(self, model: Model, target: Path, before: int | None) -> None:
        if before is None:
            shutil.rmtree(target, ignore_errors=True)
            clear_state(self.consumption, model.name)
        else:
            self.spark.sql(f"RESTORE TABLE {delta_ref(target)} TO VERSION AS OF {int(before)}")

    def _state(self, model: Model, snaps: dict[str, InputSnapshot], version: int) -> ModelState:
        return ModelState(
            model=model.name,
            fingerprint=fingerprint(model),
            target_version=version,
            inputs={n: self._mark(s) for n, s in snaps.items()},
        )

    def _mark(self, snap: InputSnapshot) -> InputMark:
        if snap.kind == "ref":
            return InputMark(kind="ref", version=snap.version)
        since = max_ingested_from_stats(snap)
        if since is None:  # no file statistics for the column: scan it
            from pyspark.sql import functions as F

            since = (
                read_version(self.spark, snap.path, snap.version)
                .agg(F.date_format(F.max(META_INGESTED_AT), _ISO).alias("m"))
                .collect()[0]["m"]
            )
        return InputMark(kind="raw", version=snap.version, max_ingested_at=since)


def max_ingested_from_stats(snap: InputSnapshot) -> str | None:
    """Max ``_capa_ingested_at`` from the Delta file statistics of the pinned version, minus 1 ms
    (statistics keep milliseconds): the watermark may re-read a few rows, never skip one."""
    from deltalake import DeltaTable

    try:
        import pyarrow as pa

        actions = pa.table(
            DeltaTable(snap.path, version=snap.version).get_add_actions(flatten=True)
        )
        column = actions.column(f"max.{META_INGESTED_AT}")
    except Exception:  # no stats for that column
        return None
    values = [v for v in column.to_pylist() if v is not None]
    if len(values) < actions.num_rows or not values:
        return None if actions.num_rows else "1970-01-01T00:00:00+00:00"
    latest = max(values)
    if latest.tzinfo is None:
        latest = latest.replace(tzinfo=UTC)
    return (latest - timedelta(milliseconds=1)).isoformat()


# -- command line -------------------------------------------------------------------------
def _builder_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lakehouse",
        type=Path,
        default=Path(".state/lakehouse"),
        help="lakehouse root holding raw/ (default .state/lakehouse)",
    )
    parser.add_argument(
        "--consumption",
        type=Path,
        default=None,
        help="where model tables go (default <lakehouse>/consumption)",
    )
    parser.add_argument(
        "--models-dir", type=Path, default=MODELS_DIR, help="folder of *.sql models"
    )
    parser.add_argument(
        "--rebuild-above",
        type=float,
        default=REBUILD_ABOVE,
        help="rebuild a model fully when more than this share of its rows changed (default 0.1)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m spark_jobs.build", description=__doc__.split("\n")[0]
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="build models once")
    _builder_args(run)
    run.add_argument("--full", action="store_true", help="recompute every row (no MERGE)")
    run.add_argument("--select", default="", help="comma-separated model names (default all)")
    serve = sub.add_parser("serve", help="one session, JSON build requests on stdin")
    _builder_args(serve)
    return parser


def run_once(args: argparse.Namespace, spark: Any) -> list[ModelReport]:
    project = load_project(args.models_dir)
    builder = SparkModelBuilder(spark, args.lakehouse, args.consumption, args.rebuild_above)
    select = [s for s in args.select.split(",") if s] or None
    return builder.build(project, full=args.full, select=select)


def report_failure(exc: ChecksFailed) -> None:
    console.error(str(exc))
    console.table(
        ["model", "check", "columns", "failing rows", "examples"],
        failure_rows(exc.results),
        stream=sys.stderr,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from spark_jobs.session import spark_session

    try:
        project = load_project(args.models_dir)
        project.order([s for s in args.select.split(",") if s] or None)  # fail fast on bad names
        reports = run_once(args, spark_session())
    except ChecksFailed as exc:
        report_failure(exc)
        return 1
    except CapaError as exc:
        console.error(str(exc))
        return 1
    console.table(
        ["model", "mode", "keys", "rows", "version", "seconds"],
        [(r.model, r.mode, r.keys, r.rows, r.version, r.seconds) for r in reports],
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Answer one JSON line per request: {"full", "select", "lakehouse", "consumption"}."""
    from spark_jobs.session import spark_session

    spark = spark_session()
    console.emit_json({"ready": True})
    for line in sys.stdin:
        if not line.strip():
            continue
        console.emit_json(_serve_one(args, spark, line))
        sys.stdout.flush()
    return 0


def _serve_one(args: argparse.Namespace, spark: Any, line: str) -> dict[str, Any]:
    try:
        request = json.loads(line)
        ns = argparse.Namespace(
            models_dir=Path(request.get("models_dir", args.models_dir)),
            lakehouse=Path(request.get("lakehouse", args.lakehouse)),
            consumption=request.get("consumption", args.consumption),
            full=bool(request.get("full", False)),
            rebuild_above=float(request.get("rebuild_above", args.rebuild_above)),
            select=",".join(request.get("select", [])),
        )
        return {"ok": True, "reports": [asdict(r) for r in run_once(ns, spark)]}
    except ChecksFailed as exc:
        return {"ok": False, "error": str(exc), "failures": failure_rows(exc.results)}
    except (CapaError, ValueError) as exc:
        return {"ok": False, "error": str(exc), "failures": []}


COMMANDS = {"run": cmd_run, "serve": cmd_serve}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
