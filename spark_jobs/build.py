"""Build the consumption models: raw Delta replicas -> consumption Delta tables, with Spark.

Run (from the spark environment)::

    .venvs/spark/bin/python -m spark_jobs.build run --lakehouse .state/lakehouse [--full] \
        [--select customer_360]
    .venvs/spark/bin/python -m spark_jobs.build serve   # JSON requests on stdin, one per line

Models (``spark_jobs/models/*.sql``) are built in dependency order into
``<lakehouse>/consumption/<model>/``, up to ``--workers`` independent ones at a time
(:mod:`spark_jobs.schedule`). One build shares one :class:`~spark_jobs.context.BuildContext`
(pinned input versions, Delta handles, changed input rows), made and closed by
:meth:`SparkModelBuilder.build`.

Incremental by default: the rows of every input changed since the model's last successful
build are found in the driver (:mod:`spark_jobs.incremental`), and the strategy the model's
header names (:mod:`spark_jobs.strategies`: ``keyed`` recompute or ``additive`` sums) replaces
the rows of the keys they touch. ``--full``, a model without a previous build, an input that
cannot be diffed and a change touching more than ``--rebuild-above`` of the target's rows
rebuild fully (strategy ``full``). After each model its checks run: in Arrow over the whole new
version when the driver wrote it (:mod:`spark_jobs.arrow_checks`), else as one Spark query
(after a MERGE the row-wise ones read the new rows only, see
:func:`spark_jobs.checks.incremental_checks`); a failing check restores the table to its
previous version, starts no further model and exits 1 with a table of the failing checks.
``serve`` keeps one SparkSession for many builds (tests); each build has its own context.
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

import pyarrow as pa

from capa import console, lineage
from capa.errors import CapaError, TerminalError
from capa.warehouse.base import META_INGESTED_AT
from spark_jobs import arrow_checks
from spark_jobs.build_lineage import model_run
from spark_jobs.checks import (
    CheckResult,
    failure_rows,
    incremental_checks,
    model_checks,
    run_checks,
)
from spark_jobs.context import BuildContext, BuildSettings
from spark_jobs.diff import column_values
from spark_jobs.incremental import InputSnapshot, input_changes
from spark_jobs.io_bigquery import BigQueryModelBuilder, add_arguments, target_from_args
from spark_jobs.project import MODELS_DIR, Model, Project, Relationship, load_project, quote
from spark_jobs.schedule import run_in_order
from spark_jobs.session import add_session_arguments
from spark_jobs.state import (
    InputMark,
    ModelState,
    clear_state,
    fingerprint,
    load_state,
    now_iso,
    save_state,
)
from spark_jobs.strategies import STRATEGIES, ModelRun, Written
from spark_jobs.tables import count_rows, delta_ref

logger = logging.getLogger(__name__)

_ISO = "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX"
REBUILD_ABOVE = 0.5  # recomputing more than this share of the target's rows: rebuild instead
WORKERS = 2  # models built at once (independent ones; see spark_jobs.schedule)
OVERWRITE_BELOW = 2_000_000  # targets up to this many rows: replace keys by one delta-rs
# overwrite in the driver (the whole target passes through driver memory), MERGE above


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
    columns: list[str] | None = None  # the only columns recomputed (part-wise), else all


class SparkModelBuilder:
    """Builds models of one project from ``lakehouse/raw`` into ``consumption``. Holds only
    its settings: every build makes its own :class:`BuildContext`."""

    def __init__(
        self,
        spark: Any,
        lakehouse: Path,
        consumption: Path | None = None,
        rebuild_above: float = REBUILD_ABOVE,
        overwrite_below: int = OVERWRITE_BELOW,
        workers: int = WORKERS,
    ) -> None:
        self.spark = spark
        self.lakehouse = Path(lakehouse).resolve()
        self.consumption = Path(consumption or self.lakehouse / "consumption").resolve()
        self.settings = BuildSettings(
            self.lakehouse, self.consumption, rebuild_above, overwrite_below, workers
        )
        self.lineage = lineage.emitter()

    def build(
        self, project: Project, *, full: bool = False, select: Sequence[str] | None = None
    ) -> list[ModelReport]:
        models = project.order(select)
        with BuildContext(self.spark, self.settings, project) as ctx:
            return run_in_order(
                models, lambda model: self._traced(ctx, model, full), ctx.settings.workers
            )

    def _traced(self, ctx: BuildContext, model: Model, full: bool) -> ModelReport:
        def table(layer: str, name: str) -> lineage.Dataset:
            return lineage.delta_table(ctx.path("raw" if layer == "raw" else "ref", name))

        with model_run(self.lineage, model, table):
            return self.build_model(ctx, model, full=full)

    def build_model(self, ctx: BuildContext, model: Model, *, full: bool = False) -> ModelReport:
        started = time.monotonic()
        target = ctx.target(model)
        before = ctx.tables.version(target)
        snaps = {n: ctx.pin("ref" if n in model.refs else "raw", n) for n in model.inputs}
        state = _resumable(ctx, model, before)
        changes = None if full or state is None else input_changes(ctx, model, snaps, state)
        run = ModelRun(model, target, before, changes or {})
        if changes is None:
            written = STRATEGIES["full"].build(ctx, run)
        elif not changes:
            written = Written("unchanged", 0)
        else:
            written = STRATEGIES[model.header.strategy].build(ctx, run)
        checked = time.monotonic()
        if written.mode != "unchanged":
            unchanged = _unchanged_inputs(snaps, state) if written.mode == "incremental" else set()
            self._check(ctx, model, before, written, unchanged)
        version = ctx.tables.version(target) or 0
        save_state(ctx.settings.consumption, _state(ctx, model, snaps, version))
        rows = (
            written.table.num_rows
            if written.table is not None
            else count_rows(ctx.tables.at(target, version))
        )
        keys = written.keys if written.mode != "full" else None
        columns = list(written.columns) if written.columns is not None else None
        seconds = round(time.monotonic() - started, 2)
        logger.info(
            "%s: %s write %.1fs, checks %.1fs",
            model.name,
            written.mode,
            checked - started,
            time.monotonic() - checked,
        )
        report = ModelReport(model.name, written.mode, keys, rows, version, seconds, columns)
        logger.info("built %s", report)
        return report

    def _check(
        self,
        ctx: BuildContext,
        model: Model,
        before: int | None,
        written: Written,
        unchanged: set[str],
    ) -> None:
        """Run the model's checks; on failure restore the previous version and raise. A new
        version the driver holds is checked in Arrow (:mod:`spark_jobs.arrow_checks`, reading
        what :func:`incremental_checks` reads), else with Spark (all rows after a full build,
        :func:`incremental_checks` after a MERGE)."""
        results = None
        parents = lambda rel: _parent_values(ctx, rel)  # noqa: E731
        if written.table is not None and written.fresh is not None:
            results = arrow_checks.evaluate_incremental(
                model, written.table, written.fresh, parents, unchanged, written.replaced
            )
        elif written.table is not None:
            results = arrow_checks.evaluate(model, written.table, parents)
        if results is None:
            results = _spark_checks(ctx, model, written.recomputed, unchanged)
        if all(r.ok for r in results):
            return
        _restore(ctx, model, before)
        raise ChecksFailed(model.name, results)


def _spark_checks(
    ctx: BuildContext, model: Model, recomputed: Any, unchanged: set[str]
) -> list[CheckResult]:
    target = ctx.target(model)
    view = f"capa_check__{model.name}"
    version = ctx.tables.version(target)
    assert version is not None
    ctx.read(target, version).createOrReplaceTempView(view)
    if recomputed is None:
        checks = model_checks(model, quote(view), ctx.resolve_table)
    else:
        changed = f"capa_changed_rows__{model.name}"
        recomputed.createOrReplaceTempView(changed)
        checks = incremental_checks(
            model, quote(view), quote(changed), ctx.resolve_table, unchanged
        )
    return run_checks(ctx.spark, checks)


def _parent_values(ctx: BuildContext, rel: Relationship) -> pa.Array | None:
    """The referenced column of a relationship's parent at its pinned version (live rows of a
    raw replica), read with delta-rs; None when it cannot be read that way."""
    kind = "ref" if rel.to in ctx.project.models else "raw"
    snap = ctx.pin(kind, rel.to)
    table = ctx.tables.at(snap.path, snap.version)
    return column_values(table, rel.field, live_only=kind == "raw")


def _restore(ctx: BuildContext, model: Model, before: int | None) -> None:
    target = ctx.target(model)
    if before is None:
        shutil.rmtree(target, ignore_errors=True)
        ctx.tables.forget(target)
        clear_state(ctx.settings.consumption, model.name)
    else:
        ctx.spark.sql(f"RESTORE TABLE {delta_ref(target)} TO VERSION AS OF {int(before)}")


def _resumable(ctx: BuildContext, model: Model, version: int | None) -> ModelState | None:
    """The state of the model's last build when its table exists (``version``) and was built
    from the same SQL and header: an incremental build can go on from it."""
    if version is None:
        return None
    state = load_state(ctx.settings.consumption, model.name)
    return state if state and state.fingerprint == fingerprint(model) else None


def _unchanged_inputs(snaps: dict[str, InputSnapshot], state: ModelState | None) -> set[str]:
    """Inputs still at the version the last build read."""
    marks = state.inputs if state else {}
    return {n for n, s in snaps.items() if n in marks and marks[n].version == s.version}


def _state(
    ctx: BuildContext, model: Model, snaps: dict[str, InputSnapshot], version: int
) -> ModelState:
    return ModelState(
        model=model.name,
        fingerprint=fingerprint(model),
        target_version=version,
        inputs={n: _mark(ctx, s) for n, s in snaps.items()},
        built_at=now_iso(),
    )


def _mark(ctx: BuildContext, snap: InputSnapshot) -> InputMark:
    if snap.kind == "ref":
        return InputMark(kind="ref", version=snap.version)
    since = max_ingested_from_stats(ctx.tables.at(snap.path, snap.version))
    if since is None:  # no file statistics for the column: scan it
        from pyspark.sql import functions as F

        since = (
            ctx.read(snap.path, snap.version)
            .agg(F.date_format(F.max(META_INGESTED_AT), _ISO).alias("m"))
            .collect()[0]["m"]
        )
    return InputMark(kind="raw", version=snap.version, max_ingested_at=since)


def max_ingested_from_stats(table: Any) -> str | None:
    """Max ``_capa_ingested_at`` from the Delta file statistics of an opened raw replica
    version, minus 1 ms (statistics keep milliseconds): the watermark may re-read a few rows,
    never skip one."""
    try:
        actions = pa.table(table.get_add_actions(flatten=True))
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
        help="rebuild a model fully when more than this share of its rows changed "
        f"(default {REBUILD_ABOVE})",
    )
    parser.add_argument(
        "--workers",
        type=_positive,
        default=WORKERS,
        help=f"models built at once when they do not read each other (default {WORKERS}; "
        "1: one after the other)",
    )
    add_session_arguments(parser)
    add_arguments(parser)  # --warehouse bigquery:PROJECT and its options (io_bigquery)


def _positive(value: Any) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"workers must be at least 1, got {value!r}")
    return number


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
    """One build with the arguments' settings."""
    project = load_project(args.models_dir)
    target = target_from_args(args)
    builder: SparkModelBuilder | BigQueryModelBuilder
    if target:
        builder = BigQueryModelBuilder(spark, target)
    else:
        builder = SparkModelBuilder(
            spark,
            args.lakehouse,
            args.consumption,
            args.rebuild_above,
            getattr(args, "overwrite_below", OVERWRITE_BELOW),
            getattr(args, "workers", WORKERS),
        )
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
    from spark_jobs.session import session_options, spark_session

    try:
        project = load_project(args.models_dir)
        project.order([s for s in args.select.split(",") if s] or None)  # fail fast on bad names
        options = session_options(args, delta=target_from_args(args) is None)
        reports = run_once(args, spark_session(**options))
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
    from spark_jobs.session import session_options, spark_session

    spark = spark_session(**session_options(args, delta=target_from_args(args) is None))
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
            overwrite_below=int(request.get("overwrite_below", OVERWRITE_BELOW)),
            workers=_positive(request.get("workers", args.workers)),
            select=",".join(request.get("select", [])),
        )
        # the session's other flags (--warehouse bigquery:... and its options) apply to each build
        vars(ns).update({k: v for k, v in vars(args).items() if k not in vars(ns)})
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
