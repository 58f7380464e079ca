"""Incremental model builds: recompute the rows of the keys that changed, replace them.

The part of :class:`spark_jobs.build.SparkModelBuilder` that runs when a model was built
before and its inputs changed (see ADR 0005). The keys come from the changed input rows
(:mod:`spark_jobs.incremental`). Then, by model kind:

* additive models (``additive:`` header) add the signed change of their sums to the current
  rows, reading no input beyond its changed rows;
* keyed joins whose driver did not change recompute only the columns of their changed parts,
  over the current rows of the keys (:mod:`spark_jobs.parts`);
* any other model recomputes the keys' rows from its inputs, each read only inside the key
  set when its mapping is a plain key expression, and a model built earlier in this build is
  read from the rows it wrote (:meth:`IncrementalBuilds._fresh_view`).

Targets up to ``overwrite_below`` rows are rewritten by one delta-rs overwrite ("current rows of
other keys + new rows"), written in the background while the checks run on the new version in
Arrow; larger targets are MERGEd by Spark.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from capa.errors import ConfigError
from capa.warehouse.base import META_DELETED
from spark_jobs import parts
from spark_jobs.diff import (
    delta_version,
    keyed_rows_changed,
    latest_files,
    open_table,
    rows_changed,
    spark_schema,
)
from spark_jobs.incremental import (
    ChangeCache,
    Changes,
    Handoff,
    InputSnapshot,
    affected_keys,
    empty_version,
    read_version,
)
from spark_jobs.project import SIGN, Model, quote, render
from spark_jobs.tables import (
    PRESENT,
    count_rows,
    delta_ref,
    merge_sql,
    semi_join,
    split_by_keys,
)

logger = logging.getLogger(__name__)

_KEY = "__capa_key"
KEEP_ROWS = 1_000_000  # rows of written targets a builder keeps for its next build (over all)


@dataclass(frozen=True, slots=True)
class Recomputed:
    """What :meth:`SparkModelBuilder._recompute` worked out for the changed keys."""

    found: pa.Table  # the changed keys
    rows: Any = None  # DataFrame of their new rows; None: nothing to do, or rebuild fully
    inside: bool = True  # rows hold only keys of ``found`` (else the caller filters)
    columns: tuple[str, ...] | None = None  # part-wise: the columns recomputed
    keys: KeySet | None = None  # ``found`` as handed to Spark, when a query needed it there
    narrow: bool = False  # rows hold only the key and ``columns`` (see _widen)


@dataclass(frozen=True, slots=True)
class Written:
    """How a model's new version was written, and what its checks read."""

    mode: str  # full | incremental | unchanged
    keys: int | None = None  # keys recomputed (incremental)
    recomputed: Any = None  # the recomputed rows as a DataFrame (MERGEd targets)
    table: pa.Table | None = None  # the whole new version (targets rewritten in the driver)
    fresh: pa.Table | None = None  # its recomputed rows, in the target's schema
    replaced: pa.Table | None = None  # the rows they replaced (the old rows of those keys)
    finish: Callable[[], None] | None = None  # waits for the write of ``table`` (see _check)
    columns: tuple[str, ...] | None = None  # part-wise: the only columns recomputed


class KeySet:
    """The keys one incremental build recomputes: an Arrow table, handed to Spark (as a
    temp view) only when a query needs them there."""

    def __init__(self, table: pa.Table, view_name: str, make: Callable[[], Any]) -> None:
        self.table, self._name, self._make = table, view_name, make
        self._frame: Any = None

    def frame(self) -> Any:
        if self._frame is None:
            self._frame = self._make()
            self._frame.createOrReplaceTempView(self._name)
        return self._frame

    def view(self) -> str:
        self.frame()
        return self._name


@dataclass(frozen=True, slots=True)
class Replaced:
    """What :meth:`IncrementalBuilds._replace_keys` did."""

    whole: pa.Table  # the new version
    fresh: pa.Table  # the recomputed rows in it (in the target's schema)
    old: pa.Table  # the rows they replaced
    finish: Callable[[], None]  # waits for the write


@dataclass(frozen=True, slots=True)
class Kept:
    """A model table's version as this builder wrote it, kept for its next build."""

    version: int
    files: list[str]  # its data files (a table made again reaches the same version with others)
    table: pa.Table


@dataclass(frozen=True, slots=True)
class Fresh:
    """The rows an incremental build of a model wrote for the keys it recomputed."""

    version: int  # the table version they made
    key: str  # the model's (one-column) key
    keys: pa.ChunkedArray  # every key recomputed (a key without a row was deleted)
    rows: pa.Table  # the new rows of those keys
    frame: Future[Any] | None = None  # ``rows`` handed to Spark (when a later model reads them)


class IncrementalBuilds:
    """Incremental builds of :class:`spark_jobs.build.SparkModelBuilder` (a mixin: the
    builder owns the session, the pinned inputs and the per-build caches named here)."""

    spark: Any
    rebuild_above: float
    overwrite_below: int
    _handoff: Handoff
    _changed: ChangeCache
    _parts: dict[str, parts.ModelParts | None]  # by model SQL
    _targets: dict[tuple[str, int], Future[pa.Table]]  # see _target_rows
    _fresh: dict[str, Fresh]  # model -> rows it wrote in this build
    _read_by_others: set[str]  # models of this build that later models of it read
    _kept: dict[str, Kept]  # target path -> the version this builder last wrote to it
    _splits: dict[tuple[str, int], tuple[pa.Table, pa.Table, pa.Table]]  # see _split_target
    _keeping: threading.Lock  # guards _kept
    _io: ThreadPoolExecutor  # background delta-rs writes, diffs, hand-offs and reads
    snapshot: Callable[[str, str], InputSnapshot]
    resolve: Callable[[str, str], str]
    resolve_signed: Callable[[str, str], str]

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
        size = self._target_size(target, before)
        if model.header.additive is not None and all(c.signed for c in changes.values()):
            outcome = Recomputed(*self._additive(model, target, before, changes))
        else:
            outcome = self._recompute(model, target, before, changes, size)
        found, rows, columns = outcome.found, outcome.rows, outcome.columns
        if rows is None:
            return Written("unchanged", 0) if found.num_rows == 0 else Written("full")
        count = found.num_rows
        if size <= self.overwrite_below:
            table = rows if isinstance(rows, pa.Table) else rows.toArrow()  # the one Spark job
            table = table if outcome.inside else semi_join(table, found)
            if outcome.narrow:
                table = self._widen(model, target, before, found, table)
            logger.info("%s: %d keys recomputed in %.1fs", model.name, count, _since(started))
            replaced = self._replace_keys(model, target, before, found, table, columns)
            return Written(
                "incremental",
                count,
                table=replaced.whole,
                fresh=replaced.fresh,
                replaced=replaced.old,
                finish=replaced.finish,
                columns=columns,
            )
        keys = outcome.keys.frame() if outcome.keys is not None else self._keys_frame(found)
        if not outcome.inside:
            rows = rows.join(keys, on=list(model.header.key), how="left_semi")
        recomputed = (
            self._handoff.frame(rows)
            if isinstance(rows, pa.Table)
            else rows.localCheckpoint(eager=True)
        )
        logger.info("%s: %d keys recomputed in %.1fs", model.name, count, _since(started))
        started = time.monotonic()
        self._merge_keys(target, list(model.header.key), keys, recomputed)
        logger.info("%s: %d keys written in %.1fs", model.name, count, _since(started))
        return Written("incremental", count, recomputed=recomputed, columns=columns)

    def _key_schema(self, model: Model, target: Path, version: int) -> pa.Schema:
        """Arrow types of the key columns, from the target's schema (no Spark analysis)."""
        schema = spark_schema(open_table(str(target), version).to_pyarrow_dataset().schema)
        return pa.schema([schema.field(k) for k in model.header.key])

    def _keys_frame(self, found: pa.Table) -> Any:
        from pyspark.sql import functions as F

        return F.broadcast(self._handoff.frame(found))

    def _key_set(self, model: Model, found: pa.Table) -> KeySet:
        return KeySet(found, _keys_view(model), lambda: self._keys_frame(found))

    def _recompute(
        self, model: Model, target: Path, before: int, changes: dict[str, Changes], size: int
    ) -> Recomputed:
        """The changed keys and a DataFrame recomputing their rows from the inputs (none when
        no key changed or a full rebuild is cheaper). Its rows may hold other keys too (then
        the caller keeps the ones of the set, in Arrow when it collects the rows anyway).
        Inputs whose mapping is a plain key expression are read only for rows inside the key
        set (:meth:`Model.key_expression`). ``size``: the target's rows at ``before``.
        A keyed-join model whose driver did not change recomputes only the columns of its
        changed parts over the current rows of the keys (:mod:`spark_jobs.parts`)."""
        started = time.monotonic()
        key_schema = self._key_schema(model, target, before)
        found = affected_keys(self.spark, model, changes, self.resolve, key_schema, self._handoff)
        count = found.num_rows
        logger.info("%s: %d changed keys found in %.1fs", model.name, count, _since(started))
        if count == 0:
            return Recomputed(found)
        if count > self.rebuild_above * size:
            logger.info("%s: %d keys changed, a full rebuild is cheaper", model.name, count)
            return Recomputed(found)
        keys = self._key_set(model, found)
        plan = self._part_plan(model, changes)
        if plan is None:
            rows = self.spark.sql(model.render(self._keyed_resolver(model, keys)))
            return Recomputed(found, rows, inside=False, keys=keys)
        if not plan.columns:  # the changed inputs feed no output column
            return Recomputed(key_schema.empty_table())
        logger.info("%s: recomputing %s only", model.name, ", ".join(plan.columns))
        in_driver = size <= self.overwrite_below  # then the driver copies the other columns
        current = self._current_rows(model, target, before, keys, in_driver)
        sql = (plan.narrow if in_driver else plan.sql).replace(parts.CURRENT_VIEW, quote(current))
        rows = self.spark.sql(render(sql, self._keyed_resolver(model, keys)))
        return Recomputed(found, rows, columns=plan.columns, keys=keys, narrow=in_driver)

    def _part_plan(self, model: Model, changes: dict[str, Changes]) -> parts.PartPlan | None:
        if model.sql not in self._parts:
            self._parts[model.sql] = parts.analyse(model)
        split = self._parts[model.sql]
        return split.plan(changes) if split is not None else None

    def _current_rows(
        self, model: Model, target: Path, before: int, keys: KeySet, in_driver: bool
    ) -> str:
        """A view of the target's rows (at ``before``) whose key is in the changed key set:
        picked in the driver for targets it rewrites anyway (``in_driver``: :meth:`_replace_keys`
        reads the whole target; handing Spark 19k rows saves a keyed scan of the target and
        its broadcast, 0.28 s against 0.43 s measured), and then only their key column (the
        narrow plan: :meth:`_widen` copies the other columns in the driver), else by Spark."""
        view = f"capa_current__{model.name}"
        if in_driver:
            rows, _ = self._split_target(target, before, keys.table)
            self._handoff.frame(rows.select(list(model.header.key))).createOrReplaceTempView(view)
            return view
        key = quote(model.header.key[0])
        self.spark.sql(
            f"SELECT /*+ BROADCAST(k) */ t.* FROM {quote(self._target_view(target, before))} t "
            f"LEFT SEMI JOIN {quote(keys.view())} k ON t.{key} = k.{key}"
        ).createOrReplaceTempView(view)
        return view

    def _widen(
        self, model: Model, target: Path, before: int, found: pa.Table, narrow: pa.Table
    ) -> pa.Table:
        """The rows of a narrow part-wise plan (key + recomputed columns) with the other
        columns copied from the current rows of their keys (the plan gives one row per
        current row of the key set)."""
        key = model.header.key[0]
        current, _ = self._split_target(target, before, found)
        recomputed = [c for c in narrow.column_names if c != key]
        keys = current.column(key).combine_chunks()
        rows = pc.index_in(narrow.column(key).cast(keys.type), value_set=keys)
        widened = current.drop_columns(recomputed).take(rows)  # any column type (no join)
        for name in recomputed:
            widened = widened.append_column(narrow.schema.field(name), narrow.column(name))
        return widened

    def _split_target(
        self, target: Path, before: int, found: pa.Table
    ) -> tuple[pa.Table, pa.Table]:
        """(rows of the target at ``before`` whose key is in ``found``, the other rows), worked
        out once per model build (the current rows, the copied columns and the rewrite all
        need them)."""
        key = (str(target), before)
        cached = self._splits.get(key)
        if cached is None or cached[0] is not found:
            inside, outside = split_by_keys(self._target_rows(target, before), found)
            cached = self._splits[key] = (found, inside, outside)
        return cached[1], cached[2]

    def _target_rows(self, target: Path, before: int) -> pa.Table:
        """The target at ``before`` in the driver (plain Arrow types), read once per build
        (in the background from its start when the build prefetched it)."""
        return self._target_future(target, before, background=False).result()

    def _target_future(self, target: Path, version: int, *, background: bool) -> Future[pa.Table]:
        """The target at ``version``: the table this builder kept, else read once per build,
        here or (``background``: a prefetch at the build's start; the read, ~25 ms per 100k
        rows, then overlaps the Spark jobs of the models built before it) in the background."""
        key = (str(target), version)
        if key not in self._targets:
            kept = self._kept_rows(target, version)
            if kept is not None:
                self._targets[key] = _done(kept)
            elif background:
                self._targets[key] = self._io.submit(read_target, target, version)
            else:
                self._targets[key] = _done(read_target(target, version))
        return self._targets[key]

    def _target_size(self, target: Path, version: int) -> int:
        """Rows of the target at ``version`` (the kept table's when this builder has it)."""
        kept = self._kept_rows(target, version)
        return kept.num_rows if kept is not None else count_rows(target, version)

    def _kept_rows(self, target: Path, version: int) -> pa.Table | None:
        """The target at ``version`` when this builder wrote that version itself (a builder
        that serves many builds reads none of its small targets back)."""
        kept = self._kept.get(str(target))
        if kept is None or kept.version != version:
            return None
        if sorted(open_table(str(target), version).file_uris()) != kept.files:
            return None
        return kept.table

    def _target_view(self, target: Path, version: int) -> str:
        view = f"capa_target__{target.name}"
        read_version(self.spark, str(target), version).createOrReplaceTempView(view)
        return view

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
            f"SELECT *, ({additive.exists}) AS {PRESENT} FROM (SELECT {', '.join(columns)} "
            f"FROM {quote(d)} d LEFT JOIN {quote(t)} t ON {on})"
        ).toArrow()
        found = merged.select(key).cast(self._key_schema(model, target, before))
        present = pc.fill_null(merged.column(PRESENT), False)
        rows = merged.filter(present).select(delta.columns)
        return found, (rows if found.num_rows else None)

    def _signed_resolver(
        self, model: Model, changes: dict[str, Changes]
    ) -> Callable[[str, str], str]:
        """Template resolver of an additive model's incremental run: each input is its signed
        changed rows (tombstones of raw replicas dropped), an unchanged input no rows."""
        from pyspark.sql import functions as F

        def resolve(kind: str, name: str) -> str:
            if kind == "raw_history":
                raise ConfigError(f"model {model.name!r}: additive models cannot read raw_history")
            view = f"capa_signed__{model.name}__{name}"
            change = changes.get(name)
            if change is None:  # no rows, only the schema: no file of the input is listed
                snap = self.snapshot("ref" if kind == "ref" else "raw", name)
                frame = empty_version(self.spark, snap.path, snap.version)
                frame = frame.withColumn(SIGN, F.lit(1))
            else:
                frame = change.frame(self._handoff)
                if kind == "raw":
                    frame = frame.where(f"NOT coalesce({quote(META_DELETED)}, false)")
            frame.createOrReplaceTempView(view)
            return quote(view)

        return resolve

    def _keyed_resolver(self, model: Model, keys: KeySet) -> Callable[[str, str], str]:
        """Template resolver reading mapped inputs only inside the changed key set ``keys``.
        A model built earlier in this build whose recomputed keys cover the set is read from
        the rows it wrote (:meth:`_fresh_view`), not from its table. (Caching the keyed rows
        of a raw input for a later model with the same keys was measured slower: building
        the cache cost more than the second scan.)"""
        key = quote(model.header.key[0])

        def resolve(kind: str, name: str) -> str:
            expr = model.key_expression(name) if kind != "raw_history" else None
            if expr is None:
                return self.resolve(kind, name)
            fresh = self._fresh_view(model, kind, name, keys.table)
            if fresh is not None:
                return quote(fresh)
            view = self.resolve(kind, name)
            keyed = f"capa_keyed__{model.name}__{name}"
            self.spark.sql(
                f"SELECT /*+ BROADCAST(k) */ v.* FROM {view} v LEFT SEMI JOIN "
                f"(SELECT {key} AS {_KEY} FROM {quote(keys.view())}) k ON ({expr}) = k.{_KEY}"
            ).createOrReplaceTempView(keyed)
            return quote(keyed)

        return resolve

    def _fresh_view(self, model: Model, kind: str, name: str, found: pa.Table) -> str | None:
        """A view of the rows model ``name`` wrote in this build for the keys in ``found``,
        when that is all of its rows inside the set: ``model`` maps ``name`` by the column
        that is ``name``'s own key, ``name`` recomputed every key of the set, and its table is
        still at the version those rows made. Saves reading (and broadcasting against) the
        table Spark would otherwise scan for them."""
        fresh = self._fresh.get(name) if kind == "ref" else None
        if fresh is None or model.mapped_column(name) != fresh.key:
            return None
        if self.snapshot("ref", name).version != fresh.version:
            return None
        wanted = found.column(0)
        try:
            covered = pc.is_in(wanted, value_set=fresh.keys.cast(wanted.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        if not pc.all(covered, min_count=0).as_py():
            return None
        view = f"capa_fresh__{model.name}__{name}"
        if fresh.frame is not None:  # all its new rows, handed over once for every reader:
            # rows of other keys only make rows of other keys, which the caller leaves out
            fresh.frame.result().createOrReplaceTempView(view)
            return view
        inside = pc.is_in(fresh.rows.column(fresh.key).cast(wanted.type), value_set=wanted)
        self._handoff.frame(fresh.rows.filter(inside)).createOrReplaceTempView(view)
        return view

    def _replace_keys(
        self,
        model: Model,
        target: Path,
        before: int,
        found: pa.Table,
        fresh: pa.Table,
        columns: tuple[str, ...] | None = None,
    ) -> Replaced:
        """One overwrite with delta-rs in the driver: the current rows outside the key set
        plus the recomputed rows (a small target is cheaper to rewrite once than to MERGE,
        which rewrites every file holding a key anyway when keys are spread over all files;
        Spark's Delta writer adds ~1-2 s per commit). Returns the whole new version, the
        recomputed rows in the target's schema, the rows they replaced and a call that waits
        for the write: the write and, when a later model of this build
        reads this one, the changed rows (its input changes) and the hand-off of the new rows
        to Spark run in the background while the checks run in the caller."""
        from deltalake import write_deltalake

        schema = self._target_rows(target, before).schema
        replaced, others = self._split_target(target, before, found)
        del self._targets[(str(target), before)]  # this build writes the next version
        del self._splits[(str(target), before)]
        keys = found.cast(pa.schema([schema.field(k) for k in found.column_names]))
        fresh = fresh.select(schema.names).cast(schema)
        whole = pa.concat_tables([others, fresh])
        write = self._io.submit(write_deltalake, str(target), whole, mode="overwrite")
        read = model.name in self._read_by_others  # by a later model of this build
        diff = (
            self._io.submit(_rows_changed, replaced, fresh, model.header.key, columns)
            if read
            else _done(None)
        )
        single = len(model.header.key) == 1
        frame = self._io.submit(self._handoff.frame, fresh) if single and read else None

        def finish() -> None:
            started = time.monotonic()
            write.result()
            changed = diff.result()
            after = delta_version(target)
            logger.info("%s: written (waited %.2fs)", model.name, _since(started))
            if after is None:
                return
            self._keep(target, after, whole)
            if changed is not None:
                self._changed.put((model.name, before, after), Changes(changed))
            if single:
                key = model.header.key[0]
                self._fresh[model.name] = Fresh(after, key, keys.column(key), fresh, frame)

        return Replaced(whole, fresh, replaced, finish)

    def _keep(self, target: Path, version: int, table: pa.Table) -> None:
        """Keep the version just written for the next build (up to ``KEEP_ROWS`` rows over
        all targets; the oldest kept tables go first)."""
        files = latest_files(target)
        with self._keeping:  # models finish in their own threads
            self._kept.pop(str(target), None)
            if files is None or table.num_rows > KEEP_ROWS:
                return
            held = sum(k.table.num_rows for k in self._kept.values())
            while self._kept and held + table.num_rows > KEEP_ROWS:
                held -= self._kept.pop(next(iter(self._kept))).table.num_rows
            self._kept[str(target)] = Kept(version, files, table)

    def _merge_keys(self, target: Path, key: list[str], keys: Any, recomputed: Any) -> None:
        """MERGE for large targets: recomputed rows upserted, keys without a row deleted."""
        from pyspark.sql import functions as F

        source = keys.join(recomputed.withColumn(PRESENT, F.lit(True)), on=key, how="left")
        view = f"capa_merge_source__{target.name}"
        source.createOrReplaceTempView(view)
        self.spark.sql(merge_sql(delta_ref(target), quote(view), key, recomputed.columns))


def read_target(target: Path, version: int) -> pa.Table:
    """A model table at ``version``, whole, in plain Arrow types (Spark's)."""
    current = open_table(str(target), version).to_pyarrow_dataset().to_table()
    return current.cast(spark_schema(current.schema))


def _rows_changed(
    old: pa.Table, new: pa.Table, key: tuple[str, ...], columns: tuple[str, ...] | None
) -> pa.Table | None:
    """The signed changed rows; ``columns``: the only ones a part-wise build recomputed."""
    changed = keyed_rows_changed(old, new, key, columns)
    return rows_changed(old, new) if changed is None else changed


def _done(value: Any) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(value)
    return future


def _since(started: float) -> float:
    return time.monotonic() - started


def _keys_view(model: Model) -> str:
    return f"capa_keys__{model.name}"
