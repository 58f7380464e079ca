"""Build the consumption models: raw Delta replicas -> consumption Delta tables, with Spark.

Run (from the spark environment)::

    .venvs/spark/bin/python -m spark_jobs.build run --lakehouse .state/lakehouse [--full] \
        [--select customer_360]
    .venvs/spark/bin/python -m spark_jobs.build serve   # JSON requests on stdin, one per line

Models (``spark_jobs/models/*.sql``) are built in dependency order into
``<lakehouse>/consumption/<model>/``, up to ``--workers`` independent ones at a time
(:mod:`spark_jobs.schedule`). Incremental by default: the rows of every input changed since the
last successful build are found in the driver (:mod:`spark_jobs.diff`: the raw replica's change
data feed, else the data files that differ; signed +1 / -1), and the keys they touch are
recomputed (:mod:`spark_jobs.keyed`: additive sums, part-wise columns of keyed joins, or the
keys' whole rows), replacing the old rows by one delta-rs overwrite for targets up to
``OVERWRITE_BELOW`` rows and by a Spark MERGE above. ``--full`` recomputes everything with
Spark, and so does a build that would recompute more than ``--rebuild-above`` of the target's
rows. Inputs are read at their pinned version as plain Parquet (file list from delta-rs, no
Delta log replay in Spark) when the version allows. After each model its checks run: in Arrow
over the whole new version when the driver wrote it (:mod:`spark_jobs.arrow_checks`), else as
one Spark query (after a MERGE the row-wise ones read the new rows only, see
:func:`spark_jobs.checks.incremental_checks`); a failing check restores the table to its
previous version, starts no further model and exits 1 with a table of the failing checks.
``serve`` keeps one SparkSession for many builds (tests, notebooks).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from capa import console
from capa.errors import CapaError, ConfigError, TerminalError
from capa.warehouse.base import META_DELETED, META_INGESTED_AT
from spark_jobs import arrow_checks, parts
from spark_jobs.checks import (
    CheckResult,
    failure_rows,
    incremental_checks,
    model_checks,
    run_checks,
)
from spark_jobs.diff import column_values, delta_version, forget_tables, open_table
from spark_jobs.incremental import (
    ChangeCache,
    Handoff,
    InputSnapshot,
    input_changes,
    read_version,
)
from spark_jobs.io_bigquery import BigQueryModelBuilder, add_arguments, target_from_args
from spark_jobs.keyed import Fresh, IncrementalBuilds, Kept, Written
from spark_jobs.project import (
    MODELS_DIR,
    SIGN,
    Model,
    Project,
    Relationship,
    load_project,
    quote,
)
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
from spark_jobs.tables import count_rows, delta_ref

logger = logging.getLogger(__name__)

_ISO = "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX"
REBUILD_ABOVE = 0.5  # recomputing more than this share of the target's rows: rebuild instead
WORKERS = 2  # models built at once (independent ones; see spark_jobs.schedule)
OVERWRITE_BELOW = 2_000_000  # targets up to this many rows: replace keys by one delta-rs
# overwrite in the driver (the whole target passes through driver memory), MERGE above
SERVED_BUILDERS = 4  # builders the serve mode keeps (by lakehouse and settings)
IO_THREADS = 4  # background delta-rs writes, diffs, hand-offs to Spark and target reads
TMP_DIR = "_capa_tmp"  # Arrow tables handed to Spark during a build (removed after it)


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


class SparkModelBuilder(IncrementalBuilds):
    """Builds models of one project from ``lakehouse/raw`` into ``consumption``."""

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
        self.rebuild_above = rebuild_above
        self.overwrite_below = overwrite_below
        self.workers = workers
        self.lakehouse = Path(lakehouse).resolve()
        self.consumption = Path(consumption or self.lakehouse / "consumption").resolve()
        self._snaps: dict[tuple[str, str], InputSnapshot] = {}
        self._views: set[str] = set()
        self._changed = ChangeCache()
        self._handoff = Handoff(spark, self.consumption / TMP_DIR)
        self._parts: dict[str, parts.ModelParts | None] = {}  # by model SQL
        self._pinning = threading.Lock()  # models build concurrently (spark_jobs.schedule)
        self._targets: dict[tuple[str, int], Future[pa.Table]] = {}  # see _target_rows
        self._fresh: dict[str, Fresh] = {}  # model -> rows it wrote in this build
        self._read_by_others: set[str] = set()  # models that later models of the build read
        self._kept: dict[str, Kept] = {}  # target -> the version this builder last wrote
        self._splits: dict[tuple[str, int], tuple[pa.Table, pa.Table, pa.Table]] = {}
        self._keeping = threading.Lock()

    # -- inputs ---------------------------------------------------------------------------
    def _path(self, kind: str, name: str) -> Path:
        return self.lakehouse / "raw" / name if kind == "raw" else self.consumption / name

    def snapshot(self, kind: str, name: str) -> InputSnapshot:
        """Pin an input at its current version (once per build, for every model)."""
        with self._pinning:
            return self._pin(kind, name)

    def _pin(self, kind: str, name: str) -> InputSnapshot:
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

    def resolve_signed(self, kind: str, name: str) -> str:
        """:meth:`resolve` plus ``_capa_sign`` = 1 per row (an additive model's full build)."""
        from pyspark.sql import functions as F

        plain = self.resolve(kind, name)
        if kind == "raw_history":
            return plain
        view = f"capa_{kind}_signed__{name}"
        if view not in self._views:
            self.spark.table(plain).withColumn(SIGN, F.lit(1)).createOrReplaceTempView(view)
            self._views.add(view)
        return quote(view)

    def resolver(self, model: Model) -> Callable[[str, str], str]:
        """The template resolver of a full build of ``model``."""
        return self.resolve_signed if model.header.additive is not None else self.resolve

    def resolve_table(self, name: str, project: Project) -> str:
        return self.resolve("ref" if name in project.models else "raw", name)

    # -- build ----------------------------------------------------------------------------
    def build(
        self, project: Project, *, full: bool = False, select: Sequence[str] | None = None
    ) -> list[ModelReport]:
        self._snaps.clear()
        self._views.clear()
        self._changed.clear()
        self._targets.clear()
        self._splits.clear()
        self._fresh.clear()
        forget_tables()
        models = project.order(select)
        self._read_by_others = {r for m in models for r in m.refs}
        self._io = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="capa-io")
        try:
            if not full:
                for model in models:
                    self._prefetch(model)
            return run_in_order(
                models, lambda model: self._build_logged(project, model, full), self.workers
            )
        finally:
            self._io.shutdown(wait=True)
            self._handoff.close()

    def _prefetch(self, model: Model) -> None:
        """Start reading the target of a model that will likely build incrementally in the
        driver: built before with the same SQL, at most ``overwrite_below`` rows, and a raw
        input changed since or a model it reads is built in this build."""
        target = self.consumption / model.name
        version = delta_version(target)
        state = self._resumable(model, version)
        if version is None or state is None:
            return
        changed = any(
            m.kind == "ref" or delta_version(self._path("raw", n)) != m.version
            for n, m in state.inputs.items()
        )
        if changed and self._target_size(target, version) <= self.overwrite_below:
            self._target_future(target, version, background=True)

    def _resumable(self, model: Model, version: int | None) -> ModelState | None:
        """The state of the model's last build when its table exists (``version``) and was
        built from the same SQL and header: an incremental build can go on from it."""
        state = load_state(self.consumption, model.name) if version is not None else None
        return state if state and state.fingerprint == fingerprint(model) else None

    def _build_logged(self, project: Project, model: Model, full: bool) -> ModelReport:
        report = self.build_model(project, model, full=full)
        logger.info("built %s", report)
        return report

    def build_model(self, project: Project, model: Model, *, full: bool = False) -> ModelReport:
        started = time.monotonic()
        target = self.consumption / model.name
        before = delta_version(target)
        snaps = {n: self.snapshot("ref" if n in model.refs else "raw", n) for n in model.inputs}
        state = self._resumable(model, before)
        outcome = Written("full")
        if not full and before is not None and state is not None:
            changes = input_changes(self.spark, model, snaps, state, self._changed)
            if changes is not None:
                outcome = self._incremental(model, target, before, changes)
        if outcome.mode == "full":
            self._overwrite(model, target)
        written = time.monotonic()
        if outcome.mode != "unchanged":
            unchanged = _unchanged_inputs(snaps, state) if outcome.mode == "incremental" else set()
            self._check(project, model, target, before, outcome, unchanged)
        logger.info(
            "%s: %s write %.1fs, checks %.1fs",
            model.name,
            outcome.mode,
            written - started,
            time.monotonic() - written,
        )
        version = delta_version(target) or 0
        save_state(self.consumption, self._state(model, snaps, version))
        rows = outcome.table.num_rows if outcome.table is not None else count_rows(target)
        keys = outcome.keys if outcome.mode != "full" else None
        columns = list(outcome.columns) if outcome.columns is not None else None
        seconds = round(time.monotonic() - started, 2)
        return ModelReport(model.name, outcome.mode, keys, rows, version, seconds, columns)

    def _overwrite(self, model: Model, target: Path) -> None:
        df = self.spark.sql(model.render(self.resolver(model)))
        writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
        writer.save(str(target))

    def _check(
        self,
        project: Project,
        model: Model,
        target: Path,
        before: int | None,
        written: Written,
        unchanged: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        """Run the model's checks; on failure restore the previous version and raise. A new
        version the driver holds is checked in Arrow (:mod:`spark_jobs.arrow_checks`, reading
        what :func:`incremental_checks` reads), else with Spark (all rows after a full build,
        :func:`incremental_checks` after a MERGE)."""
        results = None
        parents = lambda rel: self._parent_values(project, rel)  # noqa: E731
        try:
            if written.table is not None and written.fresh is not None:
                results = arrow_checks.evaluate_incremental(
                    model, written.table, written.fresh, parents, unchanged, written.replaced
                )
            elif written.table is not None:
                results = arrow_checks.evaluate(model, written.table, parents)
        finally:
            if written.finish is not None:  # the write ran while the checks did
                written.finish()
        if results is None:
            results = self._spark_checks(project, model, target, written.recomputed, unchanged)
        if all(r.ok for r in results):
            return
        self._restore(model, target, before)
        raise ChecksFailed(model.name, results)

    def _spark_checks(
        self,
        project: Project,
        model: Model,
        target: Path,
        recomputed: Any,
        unchanged: set[str] | frozenset[str],
    ) -> list[CheckResult]:
        view = f"capa_check__{model.name}"
        version = delta_version(target)
        assert version is not None
        read_version(self.spark, str(target), version).createOrReplaceTempView(view)
        parents = lambda n: self.resolve_table(n, project)  # noqa: E731
        if recomputed is None:
            checks = model_checks(model, quote(view), parents)
        else:
            changed = f"capa_changed_rows__{model.name}"
            recomputed.createOrReplaceTempView(changed)
            checks = incremental_checks(model, quote(view), quote(changed), parents, unchanged)
        return run_checks(self.spark, checks)

    def _parent_values(self, project: Project, rel: Relationship) -> pa.Array | None:
        """The referenced column of a relationship's parent at its pinned version (live rows
        of a raw replica): from the table this builder wrote when it is that version, else
        read with delta-rs; None when it cannot be read that way."""
        kind = "ref" if rel.to in project.models else "raw"
        snap = self.snapshot(kind, rel.to)
        kept = self._kept_rows(Path(snap.path), snap.version) if kind == "ref" else None
        if kept is not None and rel.field in kept.column_names:  # written in this build
            return kept.column(rel.field).combine_chunks()
        return column_values(snap.path, snap.version, rel.field, live_only=kind == "raw")

    def _restore(self, model: Model, target: Path, before: int | None) -> None:
        if before is None:
            shutil.rmtree(target, ignore_errors=True)
            forget_tables(target)
            clear_state(self.consumption, model.name)
        else:
            self.spark.sql(f"RESTORE TABLE {delta_ref(target)} TO VERSION AS OF {int(before)}")

    def _state(self, model: Model, snaps: dict[str, InputSnapshot], version: int) -> ModelState:
        return ModelState(
            model=model.name,
            fingerprint=fingerprint(model),
            target_version=version,
            inputs={n: self._mark(s) for n, s in snaps.items()},
            built_at=now_iso(),
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


def _unchanged_inputs(snaps: dict[str, InputSnapshot], state: ModelState | None) -> set[str]:
    """Inputs still at the version the last build read."""
    marks = state.inputs if state else {}
    return {n for n, s in snaps.items() if n in marks and marks[n].version == s.version}


def max_ingested_from_stats(snap: InputSnapshot) -> str | None:
    """Max ``_capa_ingested_at`` from the Delta file statistics of the pinned version, minus 1 ms
    (statistics keep milliseconds): the watermark may re-read a few rows, never skip one."""
    try:
        actions = pa.table(open_table(snap.path, snap.version).get_add_actions(flatten=True))
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


def run_once(
    args: argparse.Namespace, spark: Any, builders: dict[tuple[Any, ...], Any] | None = None
) -> list[ModelReport]:
    """One build. ``builders``: the serve mode's builders by their settings, reused by later
    requests with the same settings (a builder keeps the small targets it wrote)."""
    project = load_project(args.models_dir)
    target = target_from_args(args)
    builder: SparkModelBuilder | BigQueryModelBuilder
    if target:
        builder = BigQueryModelBuilder(spark, target)
    else:
        builder = _spark_builder(args, spark, builders)
    select = [s for s in args.select.split(",") if s] or None
    return builder.build(project, full=args.full, select=select)


def _spark_builder(
    args: argparse.Namespace, spark: Any, builders: dict[tuple[Any, ...], Any] | None
) -> SparkModelBuilder:
    """A builder for the arguments' settings: the serve mode's one for them when it has one
    (it keeps up to ``SERVED_BUILDERS``, the least recently used dropped first), else new."""
    settings = (
        Path(args.lakehouse).resolve(),
        Path(args.consumption).resolve() if args.consumption else None,
        args.rebuild_above,
        getattr(args, "overwrite_below", OVERWRITE_BELOW),
        getattr(args, "workers", WORKERS),
    )
    if builders is None:
        return SparkModelBuilder(spark, *settings)
    builder = builders.pop(settings, None) or SparkModelBuilder(spark, *settings)
    builders[settings] = builder  # the most recently used last
    while len(builders) > SERVED_BUILDERS:
        builders.pop(next(iter(builders)))
    return builder


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
    builders: dict[tuple[Any, ...], Any] = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        console.emit_json(_serve_one(args, spark, line, builders))
        sys.stdout.flush()
    return 0


def _serve_one(
    args: argparse.Namespace, spark: Any, line: str, builders: dict[tuple[Any, ...], Any]
) -> dict[str, Any]:
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
        return {"ok": True, "reports": [asdict(r) for r in run_once(ns, spark, builders)]}
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
