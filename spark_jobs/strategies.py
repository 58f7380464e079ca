"""Build strategies: how a model's new version is made, chosen by its header (ADR 0005).

:data:`STRATEGIES` maps the name :attr:`ModelHeader.strategy <spark_jobs.project.ModelHeader>`
gives to the strategy that builds the model when its inputs changed since its last build:

* ``full`` (no ``incremental:`` mappings): the model's SQL over every input row, written by
  Spark. Every strategy falls back to it when it cannot go on incrementally.
* ``keyed`` (``incremental:`` mappings): the changed input rows name the model keys they touch;
  the rows of those keys are recomputed from the inputs (each read only inside the key set when
  its mapping is a plain key expression) and replace the old rows of the keys. A keyed join
  whose driving relation did not change recomputes only the columns of its changed parts, over
  the current rows of the keys (:mod:`spark_jobs.parts`).
* ``additive`` (``additive:``): every non-key column is a sum over input rows, so the new row of
  a key is its current row plus the model's SQL over the rows added since, minus the same SQL
  over the rows removed since. No input is read beyond its changed rows.

A strategy gets the build's :class:`~spark_jobs.context.BuildContext` and a :class:`ModelRun`
and returns :class:`Written`. Targets up to ``overwrite_below`` rows have their key set replaced
by one delta-rs overwrite in the driver (current rows of other keys + new rows: the checks then
run in Arrow on the new version); larger targets are MERGEd by Spark.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from capa.errors import ConfigError
from capa.warehouse.base import META_DELETED
from spark_jobs import parts
from spark_jobs.context import BuildContext, WrittenRows
from spark_jobs.diff import keyed_rows_changed, rows_changed, spark_schema
from spark_jobs.incremental import Changes, affected_keys, empty_version
from spark_jobs.project import SIGN, Model, quote, render
from spark_jobs.tables import PRESENT, count_rows, delta_ref, merge_sql, semi_join, split_by_keys

logger = logging.getLogger(__name__)

_KEY = "__capa_key"


@dataclass(frozen=True, slots=True)
class ModelRun:
    """One model's turn in a build: what a strategy builds from."""

    model: Model
    target: Path  # the model's table
    before: int | None  # its version before this build (None: no table yet)
    changes: dict[str, Changes] = field(default_factory=dict)  # changed inputs' rows since
    # the model's last build (empty for a full rebuild)


@dataclass(frozen=True, slots=True)
class Written:
    """How a model's new version was written, and what its checks read."""

    mode: str  # full | incremental | unchanged
    keys: int | None = None  # keys recomputed (incremental)
    recomputed: Any = None  # the recomputed rows as a DataFrame (MERGEd targets)
    table: pa.Table | None = None  # the whole new version (targets rewritten in the driver)
    fresh: pa.Table | None = None  # its recomputed rows, in the target's schema
    replaced: pa.Table | None = None  # the rows they replaced (the old rows of those keys)
    columns: tuple[str, ...] | None = None  # part-wise: the only columns recomputed


class Strategy(Protocol):
    def build(self, ctx: BuildContext, run: ModelRun) -> Written: ...


class FullRebuild:
    """The model's SQL over every input row, overwriting its table."""

    def build(self, ctx: BuildContext, run: ModelRun) -> Written:
        df = ctx.spark.sql(run.model.render(ctx.resolve))
        writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
        writer.save(str(run.target))
        return Written("full")


class KeyedRecompute:
    """Recompute the rows of the keys the changed input rows map to (see module doc)."""

    def build(self, ctx: BuildContext, run: ModelRun) -> Written:
        model, started = run.model, time.monotonic()
        found = affected_keys(
            ctx.spark, model, run.changes, ctx.resolve, _key_schema(ctx, run), ctx.handoff
        )
        logger.info(
            "%s: %d changed keys found in %.1fs", model.name, found.num_rows, _since(started)
        )
        if found.num_rows == 0:
            return Written("unchanged", 0)
        size = _size(ctx, run)
        if found.num_rows > ctx.settings.rebuild_above * size:
            logger.info(
                "%s: %d keys changed, a full rebuild is cheaper", model.name, found.num_rows
            )
            return FullRebuild().build(ctx, run)
        target = Target(ctx, run, found, size)
        keys = KeySet(ctx, found, f"capa_keys__{model.name}")
        split = parts.analyse(model)
        plan = split.plan(run.changes) if split is not None else None
        if plan is None:
            rows = ctx.spark.sql(model.render(_keyed_resolver(ctx, model, keys)))
            return target.replace(rows, keys, inside=False)
        if not plan.columns:  # the changed inputs feed no output column
            return Written("unchanged", 0)
        logger.info("%s: recomputing %s only", model.name, ", ".join(plan.columns))
        # in the driver, Spark gets only the keys and returns the key and the recomputed
        # columns; the other columns are copied from the current rows there (Target.widen)
        sql = plan.narrow if target.split is not None else plan.sql
        current = quote(target.current_view(keys))
        rows = ctx.spark.sql(
            render(sql.replace(parts.CURRENT_VIEW, current), _keyed_resolver(ctx, model, keys))
        )
        return target.replace(rows, keys, columns=plan.columns)


class Additive:
    """New row of a key = current row + the change of its sums over the changed input rows.

    Exact for a model whose every non-key column is a sum over input rows (``COUNT(*)``,
    ``COUNT(x)``, ``SUM(x)`` and sums of those): the model's SQL is weighted by the engine's
    sign of each changed row (:func:`signed_sql`: +1 added row version, -1 removed one), so over
    the changed rows it gives the change per key. No input is read beyond its changed rows.
    Keys whose new row fails the header's ``exists`` condition are deleted.
    """

    def build(self, ctx: BuildContext, run: ModelRun) -> Written:
        model, additive = run.model, run.model.header.additive
        assert additive is not None
        if not all(c.signed for c in run.changes.values()):  # a change data feed read
            return KeyedRecompute().build(ctx, run)
        try:
            sql = signed_sql(model)
        except ImportError:  # no sqlglot (as parts.analyse): the keyed recompute is exact too
            return KeyedRecompute().build(ctx, run)
        delta = ctx.spark.sql(render(sql, _signed_resolver(ctx, run)))
        key = list(model.header.key)
        sums = [f for f in delta.schema.fields if f.name not in key]
        numeric = ("Decimal", "Long", "Integer", "Short", "Byte", "Double", "Float")
        bad = [f.name for f in sums if not type(f.dataType).__name__.startswith(numeric)]
        if bad:
            raise ConfigError(f"model {model.name!r} is additive but {bad} are not numeric sums")
        current = _target_frame(ctx, run)
        types = {f.name: f.dataType.simpleString() for f in current.schema.fields}
        d, t = f"capa_delta__{model.name}", f"capa_current__{model.name}"
        delta.createOrReplaceTempView(d)
        current.createOrReplaceTempView(t)
        columns = [f"d.{quote(k)}" for k in key] + [
            f"CAST(coalesce(t.{quote(f.name)}, 0) + coalesce(d.{quote(f.name)}, 0) "
            f"AS {types[f.name]}) AS {quote(f.name)}"
            for f in sums
        ]
        rows = f"SELECT {', '.join(columns)} FROM {quote(d)} d LEFT JOIN {quote(t)} t ON "
        rows += " AND ".join(f"t.{quote(k)} <=> d.{quote(k)}" for k in key)
        merged = ctx.spark.sql(f"SELECT *, ({additive.exists}) AS {PRESENT} FROM ({rows})")
        table = merged.toArrow()
        found = table.select(key).cast(_key_schema(ctx, run))
        if found.num_rows == 0:
            return Written("unchanged", 0)
        kept = table.filter(pc.fill_null(table.column(PRESENT), False)).select(delta.columns)
        target = Target(ctx, run, found, _size(ctx, run))
        if target.split is None:
            keys = KeySet(ctx, found, f"capa_keys__{model.name}")
            return target.merge(ctx.handoff.frame(kept), keys, None)
        return target.rewrite(kept)


def signed_sql(model: Model) -> str:
    """The SQL of an additive model with every aggregate weighted by the sign of its row:
    ``COUNT(*)`` -> ``SUM(_capa_sign)``, ``COUNT(x)`` -> ``SUM(IF(x IS NULL, 0, _capa_sign))``,
    ``SUM(x)`` -> ``SUM(x * _capa_sign)``. Any other aggregate, or one over a join (a row of
    the result would come from two input rows), is not a sum over input rows: ConfigError."""
    from sqlglot import exp

    def weigh(node: Any) -> Any:
        if not isinstance(node, exp.AggFunc):
            return node
        select = node.find_ancestor(exp.Select)
        plain = isinstance(node, exp.Count | exp.Sum) and not isinstance(node.this, exp.Distinct)
        if not plain or (select is not None and select.args.get("joins")):
            raise ConfigError(
                f"model {model.name!r} is additive, but {node.sql(dialect='spark')} is not a "
                "COUNT or SUM over the rows of one input"
            )
        if isinstance(node.this, exp.Star):
            return exp.maybe_parse(f"SUM({SIGN})", dialect="spark")
        value = node.this.sql(dialect="spark")
        if isinstance(node, exp.Count):
            return exp.maybe_parse(f"SUM(IF(({value}) IS NULL, 0, {SIGN}))", dialect="spark")
        return exp.maybe_parse(f"SUM(({value}) * {SIGN})", dialect="spark")

    return parts.template_sql(parts.parse_template(model.sql).transform(weigh))


STRATEGIES: dict[str, Strategy] = {
    "full": FullRebuild(),
    "keyed": KeyedRecompute(),
    "additive": Additive(),
}


# -- the target's rows of a key set ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Split:
    """The target's current rows, split by a key set (a target rewritten in the driver)."""

    inside: pa.Table  # rows whose key is in the set
    outside: pa.Table  # the others


class Target:
    """A model's table at the version before the build, and how the rows of a key set are
    replaced in it: small targets (up to ``overwrite_below`` rows) are read into the driver
    once and rewritten whole, larger ones are MERGEd."""

    def __init__(self, ctx: BuildContext, run: ModelRun, found: pa.Table, size: int) -> None:
        self.ctx, self.run, self.found, self.size = ctx, run, found, size
        self.split: Split | None = None
        if size <= ctx.settings.overwrite_below:
            assert run.before is not None
            table = ctx.tables.at(run.target, run.before).to_pyarrow_dataset().to_table()
            self.split = Split(*split_by_keys(table.cast(spark_schema(table.schema)), found))

    def current_view(self, keys: KeySet) -> str:
        """A view of the current rows of the key set: their key column only when the driver
        holds them (the narrow part-wise plan), else read by Spark."""
        model = self.run.model
        view = f"capa_current__{model.name}"
        if self.split is not None:
            key_only = self.split.inside.select(list(model.header.key))
            self.ctx.handoff.frame(key_only).createOrReplaceTempView(view)
            return view
        key = quote(model.header.key[0])
        self.ctx.spark.sql(
            f"SELECT /*+ BROADCAST(k) */ t.* FROM {quote(self._view())} t "
            f"LEFT SEMI JOIN {quote(keys.view())} k ON t.{key} = k.{key}"
        ).createOrReplaceTempView(view)
        return view

    def _view(self) -> str:
        view = f"capa_target__{self.run.model.name}"
        _target_frame(self.ctx, self.run).createOrReplaceTempView(view)
        return view

    def replace(
        self,
        rows: Any,
        keys: KeySet,
        *,
        inside: bool = True,
        columns: tuple[str, ...] | None = None,
    ) -> Written:
        """Replace the key set's rows by ``rows`` (a DataFrame: the key set's new rows, or
        more when not ``inside``; for a part-wise plan in the driver, the key and ``columns``
        only)."""
        if self.split is None:
            if not inside:
                rows = rows.join(keys.frame(), on=list(self.run.model.header.key), how="left_semi")
            return self.merge(rows.localCheckpoint(eager=True), keys, columns)
        table = rows.toArrow()
        table = table if inside else semi_join(table, self.found)
        if columns is not None:
            table = self.widen(table)
        return self.rewrite(table, columns)

    def widen(self, narrow: pa.Table) -> pa.Table:
        """The rows of a narrow part-wise plan (key + recomputed columns) with the other
        columns copied from the current rows of their keys (one plan row per current row)."""
        assert self.split is not None
        key = self.run.model.header.key[0]
        current = self.split.inside
        recomputed = [c for c in narrow.column_names if c != key]
        keys = current.column(key).combine_chunks()
        rows = pc.index_in(narrow.column(key).cast(keys.type), value_set=keys)
        widened = current.drop_columns(recomputed).take(rows)  # any column type (no join)
        for name in recomputed:
            widened = widened.append_column(narrow.schema.field(name), narrow.column(name))
        return widened

    def rewrite(self, fresh: pa.Table, columns: tuple[str, ...] | None = None) -> Written:
        """One delta-rs overwrite: the current rows outside the key set plus ``fresh``. A
        small target is cheaper to rewrite once than to MERGE, which rewrites every file
        holding a key anyway when the keys are spread over all files."""
        from deltalake import write_deltalake

        assert self.split is not None
        schema = self.split.inside.schema
        fresh = fresh.select(schema.names).cast(schema)
        whole = pa.concat_tables([self.split.outside, fresh])
        write_deltalake(str(self.run.target), whole, mode="overwrite")
        self._hand_over(fresh, columns)
        count = self.found.num_rows
        return Written(
            "incremental",
            count,
            table=whole,
            fresh=fresh,
            replaced=self.split.inside,
            columns=columns,
        )

    def _hand_over(self, fresh: pa.Table, columns: tuple[str, ...] | None) -> None:
        """Tell the build context what this rewrite changed (:meth:`BuildContext.wrote`)."""
        assert self.split is not None and self.run.before is not None
        after = self.ctx.tables.version(self.run.target)
        key = self.run.model.header.key
        old = self.split.inside
        changed = keyed_rows_changed(old, fresh, key, columns)
        changed = rows_changed(old, fresh) if changed is None else changed
        if after is None or changed is None:
            return
        keys = self.found.cast(pa.schema([fresh.schema.field(k) for k in key]))
        rows = WrittenRows(after, keys, fresh)
        self.ctx.wrote(self.run.model.name, self.run.before, after, rows, Changes(changed))

    def merge(self, recomputed: Any, keys: KeySet, columns: tuple[str, ...] | None) -> Written:
        """Spark MERGE: recomputed rows upserted, keys without a row deleted."""
        from pyspark.sql import functions as F

        key = list(self.run.model.header.key)
        source = keys.frame().join(recomputed.withColumn(PRESENT, F.lit(True)), on=key, how="left")
        view = f"capa_merge_source__{self.run.model.name}"
        source.createOrReplaceTempView(view)
        statement = merge_sql(delta_ref(self.run.target), quote(view), key, recomputed.columns)
        self.ctx.spark.sql(statement)
        return Written("incremental", self.found.num_rows, recomputed=recomputed, columns=columns)


class KeySet:
    """The keys a build recomputes: an Arrow table, handed to Spark (as a broadcast temp
    view) only when a query needs them there."""

    def __init__(self, ctx: BuildContext, table: pa.Table, view_name: str) -> None:
        self.ctx, self.table, self._name = ctx, table, view_name
        self._frame: Any = None

    def frame(self) -> Any:
        from pyspark.sql import functions as F

        if self._frame is None:
            self._frame = F.broadcast(self.ctx.handoff.frame(self.table))
            self._frame.createOrReplaceTempView(self._name)
        return self._frame

    def view(self) -> str:
        self.frame()
        return self._name


# -- template resolvers of incremental runs -------------------------------------------------
def _keyed_resolver(ctx: BuildContext, model: Model, keys: KeySet) -> Callable[[str, str], str]:
    """Template resolver reading mapped inputs only inside the key set (an input whose mapping
    is a plain key expression cannot change rows of other keys)."""
    key = quote(model.header.key[0])

    def resolve(kind: str, name: str) -> str:
        expr = model.key_expression(name) if kind != "raw_history" else None
        if expr is None:
            return ctx.resolve(kind, name)
        keyed = f"capa_keyed__{model.name}__{name}"
        own_key = ctx.project.models[name].header.key if kind == "ref" else ()
        if own_key == (model.mapped_column(name),):  # the ref's rows of the key set ...
            written = ctx.rows_written(name, keys.table.column(0))
            if written is not None:  # ... as this build wrote them: no read of its table
                ctx.handoff.frame(written).createOrReplaceTempView(keyed)
                return quote(keyed)
        view = ctx.resolve(kind, name)
        ctx.spark.sql(
            f"SELECT /*+ BROADCAST(k) */ v.* FROM {view} v LEFT SEMI JOIN "
            f"(SELECT {key} AS {_KEY} FROM {quote(keys.view())}) k ON ({expr}) = k.{_KEY}"
        ).createOrReplaceTempView(keyed)
        return quote(keyed)

    return resolve


def _signed_resolver(ctx: BuildContext, run: ModelRun) -> Callable[[str, str], str]:
    """Template resolver of an additive run: each input is its signed changed rows (deleted
    rows of raw replicas left out), an unchanged input no rows."""
    from pyspark.sql import functions as F

    model = run.model

    def resolve(kind: str, name: str) -> str:
        if kind == "raw_history":
            raise ConfigError(f"model {model.name!r}: additive models cannot read raw_history")
        view = f"capa_signed__{model.name}__{name}"
        change = run.changes.get(name)
        if change is None:  # no rows, only the schema: no file of the input is listed
            snap = ctx.pin("ref" if kind == "ref" else "raw", name)
            frame = empty_version(ctx.spark, ctx.tables.at(snap.path, snap.version))
            frame = frame.withColumn(SIGN, F.lit(1))
        else:
            frame = change.frame(ctx.handoff)
            if kind == "raw":
                frame = frame.where(f"NOT coalesce({quote(META_DELETED)}, false)")
        frame.createOrReplaceTempView(view)
        return quote(view)

    return resolve


def _size(ctx: BuildContext, run: ModelRun) -> int:
    """Rows of the target before the build."""
    assert run.before is not None
    return count_rows(ctx.tables.at(run.target, run.before))


def _target_frame(ctx: BuildContext, run: ModelRun) -> Any:
    assert run.before is not None
    return ctx.read(run.target, run.before)


def _key_schema(ctx: BuildContext, run: ModelRun) -> pa.Schema:
    """Arrow types of the key columns, from the target's schema (no Spark analysis)."""
    assert run.before is not None
    table = ctx.tables.at(run.target, run.before)
    schema = spark_schema(table.to_pyarrow_dataset().schema)
    return pa.schema([schema.field(k) for k in run.model.header.key])


def _since(started: float) -> float:
    return time.monotonic() - started
