"""Build the consumption models: raw Delta replicas -> consumption Delta tables, with Spark.

Run (from the spark environment)::

    .venvs/spark/bin/python -m spark_jobs.build run --lakehouse .state/lakehouse [--full] \
        [--select customer_360]
    .venvs/spark/bin/python -m spark_jobs.build serve   # JSON requests on stdin, one per line

Models (``spark_jobs/models/*.sql``) are built in dependency order into
``<lakehouse>/consumption/<model>/``. Incremental by default: the rows of every input changed
since the last successful build are found in the driver (:mod:`spark_jobs.diff`: the raw
replica's change data feed, else the data files that differ; signed +1 / -1). A model whose
header declares ``additive:`` adds the signed change of its sums (its own SQL over just the
changed rows) to the current rows of the touched keys, without reading any input further. Any
other model recomputes the keys the changed rows map to (see :mod:`spark_jobs.incremental`;
inputs mapped by a plain key expression are read only inside the key set). The new rows of those
keys replace the old ones by one delta-rs overwrite ("current rows of other keys + new rows")
for targets up to ``OVERWRITE_BELOW`` rows and by a Spark MERGE above; ``--full`` recomputes
everything with Spark, and so does a build that would recompute more than ``--rebuild-above`` of
the target's rows. Inputs are read at their pinned version as plain Parquet (file list from
delta-rs, no Delta log replay in Spark) when the version allows. After each model its checks
run: in Arrow over the whole new version when the driver wrote it
(:mod:`spark_jobs.arrow_checks`), else as one Spark query (after a MERGE the row-wise ones read
the new rows only, see :func:`spark_jobs.checks.incremental_checks`); a failing check restores
the table to its previous version, stops the build and exits 1 with a table of the failing
checks. ``serve`` keeps one SparkSession for many builds (tests, notebooks).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from capa import console
from capa.errors import CapaError, ConfigError, TerminalError
from capa.warehouse.base import META_DELETED, META_INGESTED_AT
from spark_jobs import arrow_checks
from spark_jobs.checks import (
    CheckResult,
    failure_rows,
    incremental_checks,
    model_checks,
    run_checks,
)
from spark_jobs.diff import column_values, rows_changed, spark_schema
from spark_jobs.incremental import (
    Changes,
    Handoff,
    InputSnapshot,
    affected_keys,
    input_changes,
    read_version,
)
from spark_jobs.io_bigquery import BigQueryModelBuilder, add_arguments, target_from_args
from spark_jobs.project import (
    MODELS_DIR,
    SIGN,
    Model,
    Project,
    Relationship,
    load_project,
    quote,
)
from spark_jobs.session import add_session_arguments
from spark_jobs.state import InputMark, ModelState, clear_state, fingerprint, load_state, save_state

logger = logging.getLogger(__name__)

_ISO = "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX"
REBUILD_ABOVE = 0.5  # recomputing more than this share of the target's rows: rebuild instead
OVERWRITE_BELOW = 2_000_000  # targets up to this many rows: replace keys by one delta-rs
# overwrite in the driver (the whole target passes through driver memory), MERGE above
_PRESENT = "__capa_present"
_KEY = "__capa_key"
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


@dataclass(frozen=True, slots=True)
class Written:
    """How a model's new version was written, and what its checks read."""

    mode: str  # full | incremental | unchanged
    keys: int | None = None  # keys recomputed (incremental)
    recomputed: Any = None  # the recomputed rows as a DataFrame (MERGEd targets)
    table: pa.Table | None = None  # the whole new version (targets rewritten in the driver)


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
        overwrite_below: int = OVERWRITE_BELOW,
    ) -> None:
        self.spark = spark
        self.rebuild_above = rebuild_above
        self.overwrite_below = overwrite_below
        self.lakehouse = Path(lakehouse).resolve()
        self.consumption = Path(consumption or self.lakehouse / "consumption").resolve()
        self._snaps: dict[tuple[str, str], InputSnapshot] = {}
        self._views: set[str] = set()
        self._changed: dict[tuple[str, int, int], Changes] = {}
        self._handoff = Handoff(spark, self.consumption / TMP_DIR)

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
        reports = []
        try:
            for model in project.order(select):
                reports.append(self.build_model(project, model, full=full))
                logger.info("built %s", reports[-1])
        finally:
            self._handoff.close()
        return reports

    def build_model(self, project: Project, model: Model, *, full: bool = False) -> ModelReport:
        started = time.monotonic()
        target = self.consumption / model.name
        before = delta_version(target)
        snaps = {n: self.snapshot("ref" if n in model.refs else "raw", n) for n in model.inputs}
        state = load_state(self.consumption, model.name)
        outcome = Written("full")
        if not full and before is not None and state and state.fingerprint == fingerprint(model):
            changes = input_changes(self.spark, model, snaps, state, self._changed)
            if changes is not None:
                outcome = self._incremental(model, target, before, changes)
        if outcome.mode == "full":
            self._overwrite(model, target)
        written = time.monotonic()
        if outcome.mode != "unchanged":
            unchanged = _unchanged_inputs(snaps, state) if outcome.recomputed is not None else set()
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
        return ModelReport(
            model.name, outcome.mode, keys, rows, version, round(time.monotonic() - started, 2)
        )

    def _overwrite(self, model: Model, target: Path) -> None:
        df = self.spark.sql(model.render(self.resolver(model)))
        writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
        writer.save(str(target))

    def _incremental(
        self, model: Model, target: Path, before: int, changes: dict[str, Changes]
    ) -> Written:
        """Replace the rows of the changed keys. Additive models add the signed change of their
        sums to the current rows; the others recompute the keys' rows from their inputs.
        Targets up to ``overwrite_below`` rows are rewritten once with delta-rs (the outcome
        holds the whole new version, checked in Arrow), larger ones are MERGEd by Spark (the
        outcome holds the new rows of the keys as a DataFrame that reads no input again)."""
        if not changes:
            return Written("unchanged", 0)
        started = time.monotonic()
        if model.header.additive is not None and all(c.signed for c in changes.values()):
            found, rows = self._additive(model, target, before, changes)
        else:
            found, rows = self._recompute(model, target, changes)
        if rows is None:
            return Written("unchanged", 0) if found.num_rows == 0 else Written("full")
        count = found.num_rows
        if count_rows(target) <= self.overwrite_below:
            table = rows if isinstance(rows, pa.Table) else rows.toArrow()  # the one Spark job
            logger.info("%s: %d keys recomputed in %.1fs", model.name, count, _since(started))
            started = time.monotonic()
            whole = self._replace_keys(model, target, before, found, table)
            logger.info("%s: %d keys written in %.1fs", model.name, count, _since(started))
            return Written("incremental", count, table=whole)
        recomputed = (
            self._handoff.frame(rows)
            if isinstance(rows, pa.Table)
            else rows.localCheckpoint(eager=True)
        )
        logger.info("%s: %d keys recomputed in %.1fs", model.name, count, _since(started))
        started = time.monotonic()
        self._merge_keys(target, list(model.header.key), self._keys_frame(found), recomputed)
        logger.info("%s: %d keys written in %.1fs", model.name, count, _since(started))
        return Written("incremental", count, recomputed=recomputed)

    def _key_schema(self, model: Model, target: Path) -> pa.Schema:
        """Arrow types of the key columns, from the target's schema (no Spark analysis)."""
        from deltalake import DeltaTable

        schema = spark_schema(DeltaTable(str(target)).to_pyarrow_dataset().schema)
        return pa.schema([schema.field(k) for k in model.header.key])

    def _keys_frame(self, found: pa.Table) -> Any:
        from pyspark.sql import functions as F

        return F.broadcast(self._handoff.frame(found))

    def _recompute(
        self, model: Model, target: Path, changes: dict[str, Changes]
    ) -> tuple[pa.Table, Any]:
        """(the changed keys, a DataFrame recomputing their rows from the inputs, or None when
        none changed or a full rebuild is cheaper). Inputs whose mapping is a plain key
        expression are read only for rows inside the key set (:meth:`Model.key_expression`)."""
        started = time.monotonic()
        key_schema = self._key_schema(model, target)
        found = affected_keys(self.spark, model, changes, self.resolve, key_schema, self._handoff)
        count = found.num_rows
        logger.info("%s: %d changed keys found in %.1fs", model.name, count, _since(started))
        if count == 0:
            return found, None
        if count > self.rebuild_above * count_rows(target):
            logger.info("%s: %d keys changed, a full rebuild is cheaper", model.name, count)
            return found, None
        keys = self._keys_frame(found)
        keys.createOrReplaceTempView(_keys_view(model))
        recomputed = self.spark.sql(model.render(self._keyed_resolver(model)))
        return found, recomputed.join(keys, on=list(model.header.key), how="left_semi")

    def _additive(
        self, model: Model, target: Path, before: int, changes: dict[str, Changes]
    ) -> tuple[pa.Table, pa.Table | None]:
        """(the keys the signed change touches, their new rows, in Arrow): the model's SQL over
        the signed changed rows of its inputs (unchanged inputs: no rows) gives the change of
        every sum per key, added to the key's current row in the same Spark query; keys whose
        new row fails ``exists`` are deleted. No input is read beyond its changed rows."""
        additive = model.header.additive
        assert additive is not None
        delta = self.spark.sql(model.render(self._signed_resolver(model, changes)))
        key = list(model.header.key)
        others = [f for f in delta.schema.fields if f.name not in key]
        numeric = ("Decimal", "Long", "Integer", "Short", "Byte", "Double", "Float")
        bad = [f.name for f in others if not type(f.dataType).__name__.startswith(numeric)]
        if bad:
            raise ConfigError(f"model {model.name!r} is additive but {bad} are not numeric sums")
        t, d = f"capa_current__{model.name}", f"capa_delta__{model.name}"
        read_version(self.spark, str(target), before).createOrReplaceTempView(t)
        delta.createOrReplaceTempView(d)
        on = " AND ".join(f"t.{quote(k)} <=> d.{quote(k)}" for k in key)
        columns = [f"d.{quote(k)}" for k in key] + [
            f"CAST(coalesce(t.{quote(f.name)}, 0) + coalesce(d.{quote(f.name)}, 0) AS "
            f"{f.dataType.simpleString()}) AS {quote(f.name)}"
            for f in others
        ]
        merged = self.spark.sql(
            f"SELECT *, ({additive.exists}) AS {_PRESENT} FROM (SELECT {', '.join(columns)} "
            f"FROM {quote(d)} d LEFT JOIN {quote(t)} t ON {on})"
        ).toArrow()
        found = merged.select(key).cast(self._key_schema(model, target))
        present = pc.fill_null(merged.column(_PRESENT), False)
        rows = merged.filter(present).select(delta.columns)
        return found, (rows if found.num_rows else None)

    def _signed_resolver(
        self, model: Model, changes: dict[str, Changes]
    ) -> Callable[[str, str], str]:
        """Template resolver of an additive model's incremental run: each input is its signed
        changed rows (tombstones of raw replicas dropped), an unchanged input no rows."""

        def resolve(kind: str, name: str) -> str:
            if kind == "raw_history":
                raise ConfigError(f"model {model.name!r}: additive models cannot read raw_history")
            view = f"capa_signed__{model.name}__{name}"
            change = changes.get(name)
            if change is None:
                frame = self.spark.table(self.resolve_signed(kind, name)).where("false")
            else:
                frame = change.frame(self._handoff)
                if kind == "raw":
                    frame = frame.where(f"NOT coalesce({quote(META_DELETED)}, false)")
            frame.createOrReplaceTempView(view)
            return quote(view)

        return resolve

    def _keyed_resolver(self, model: Model) -> Callable[[str, str], str]:
        """Template resolver reading mapped inputs only inside the changed key set. (Caching
        the keyed rows for a later model of the build with the same keys was measured slower:
        building the cache cost more than the second scan.)"""
        keys_view = quote(_keys_view(model))
        key = quote(model.header.key[0])

        def resolve(kind: str, name: str) -> str:
            view = self.resolve(kind, name)
            expr = model.key_expression(name) if kind != "raw_history" else None
            if expr is None:
                return view
            keyed = f"capa_keyed__{model.name}__{name}"
            self.spark.sql(
                f"SELECT /*+ BROADCAST(k) */ v.* FROM {view} v LEFT SEMI JOIN "
                f"(SELECT {key} AS {_KEY} FROM {keys_view}) k ON ({expr}) = k.{_KEY}"
            ).createOrReplaceTempView(keyed)
            return quote(keyed)

        return resolve

    def _replace_keys(
        self, model: Model, target: Path, before: int, found: pa.Table, fresh: pa.Table
    ) -> pa.Table:
        """One overwrite with delta-rs in the driver: the current rows outside the key set
        plus the recomputed rows (a small target is cheaper to rewrite once than to MERGE,
        which rewrites every file holding a key anyway when keys are spread over all files;
        Spark's Delta writer adds ~1-2 s per commit). The rows that changed are kept for the
        models of this build that read this one (no diff of the two versions needed)."""
        from deltalake import DeltaTable, write_deltalake

        current = DeltaTable(str(target)).to_pyarrow_dataset().to_table()
        schema = spark_schema(current.schema)
        current = current.cast(schema)
        keys = found.cast(pa.schema([schema.field(k) for k in found.column_names]))
        kept = _anti_join(current, keys)
        fresh = fresh.select(schema.names).cast(schema)
        whole = pa.concat_tables([kept, fresh])
        write_deltalake(str(target), whole, mode="overwrite")
        replaced = _semi_join(current, keys)
        changed = rows_changed(replaced, fresh)
        after = delta_version(target)
        if changed is not None and after is not None:
            self._changed[(model.name, before, after)] = Changes(changed)
        return whole

    def _merge_keys(self, target: Path, key: list[str], keys: Any, recomputed: Any) -> None:
        """MERGE for large targets: recomputed rows upserted, keys without a row deleted."""
        from pyspark.sql import functions as F

        source = keys.join(recomputed.withColumn(_PRESENT, F.lit(True)), on=key, how="left")
        source.createOrReplaceTempView("capa_merge_source")
        self.spark.sql(merge_sql(delta_ref(target), "capa_merge_source", key, recomputed.columns))

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
        version the driver holds is checked in Arrow (:mod:`spark_jobs.arrow_checks`), else
        with Spark (all rows after a full build, :func:`incremental_checks` after a MERGE)."""
        results = None
        if written.table is not None:
            results = arrow_checks.evaluate(
                model, written.table, lambda rel: self._parent_values(project, rel)
            )
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
        of a raw replica), read with delta-rs; None when it cannot be read that way."""
        kind = "ref" if rel.to in project.models else "raw"
        snap = self.snapshot(kind, rel.to)
        return column_values(snap.path, snap.version, rel.field, live_only=kind == "raw")

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


def _since(started: float) -> float:
    return time.monotonic() - started


def _semi_join(rows: pa.Table, keys: pa.Table) -> pa.Table:
    """``rows`` whose key (the columns of ``keys``) is in ``keys``."""
    if not keys.num_rows or not rows.num_rows:
        return rows.schema.empty_table()
    return rows.join(keys, keys.column_names, join_type="left semi").select(rows.column_names)


def _anti_join(rows: pa.Table, keys: pa.Table) -> pa.Table:
    """``rows`` whose key (the columns of ``keys``) is not in ``keys`` (NULL keys kept)."""
    if not keys.num_rows or not rows.num_rows:
        return rows
    names = keys.column_names
    return rows.join(keys, names, join_type="left anti").select(rows.column_names)


def _keys_view(model: Model) -> str:
    return f"capa_keys__{model.name}"


def _unchanged_inputs(snaps: dict[str, InputSnapshot], state: ModelState | None) -> set[str]:
    """Inputs still at the version the last build read."""
    marks = state.inputs if state else {}
    return {n for n, s in snaps.items() if n in marks and marks[n].version == s.version}


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
        help="rebuild a model fully when more than this share of its rows changed "
        f"(default {REBUILD_ABOVE})",
    )
    add_session_arguments(parser)
    add_arguments(parser)  # --warehouse bigquery:PROJECT and its options (io_bigquery)


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
    target = target_from_args(args)
    builder: SparkModelBuilder | BigQueryModelBuilder = (
        BigQueryModelBuilder(spark, target)
        if target
        else SparkModelBuilder(
            spark,
            args.lakehouse,
            args.consumption,
            args.rebuild_above,
            getattr(args, "overwrite_below", OVERWRITE_BELOW),
        )
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
