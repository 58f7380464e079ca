"""Which model keys did the input changes since the last build touch?

For a raw replica the changed rows come from its Delta change data feed between the version
the last build read and the current one (post-images and inserts, pre-images and deletes),
or, for a replica without a feed, from the data files that differ between the two versions,
compared by ``_capa_event_id``. Either way they are the row versions the old version lacks
(inserts, updates and tombstones: deleted rows stay in the replica with ``_capa_deleted``)
and the row versions they replaced or that a TRUNCATE removed (their old values may map to
other keys, e.g. an order that moved to another customer). This runs in the
driver with delta-rs and Arrow (:mod:`spark_jobs.diff`); tables delta-rs cannot read that way
(deletion vectors, column mapping) fall back to a Spark diff with the ``_capa_ingested_at``
watermark. Merge-on-read rows still in ``_pending/<table>`` are not part of any Delta version
of the replica: the build sees them once compacted, as a later version, like any other change.
For a model table (``ref``) the changed rows are the rows that differ between its two versions
(whole-row comparison of the differing files; the change data feed as a fallback).

Changed rows carry the engine's ``_capa_sign`` column (+1 new row version, -1 replaced or
removed one; the change data feed fallback has none); the additive strategy splits them by it
(:mod:`spark_jobs.strategies`), model SQL never sees it. Each model header maps every
input's changed rows to model keys (``incremental:``); a bare column mapping is read from the
Arrow rows, any other runs as Spark SQL. ``None`` from :func:`input_changes` means "cannot
tell, rebuild fully" (an input without a mapping, a vacuumed old version, a new input).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from capa.warehouse.base import META_EVENT_ID, META_INGESTED_AT
from spark_jobs.diff import changed_rows, feed_rows, plain_files, spark_schema
from spark_jobs.project import SIGN, Model, quote
from spark_jobs.state import InputMark, ModelState

if TYPE_CHECKING:
    from spark_jobs.context import BuildContext

logger = logging.getLogger(__name__)
_FEW = 50_000  # up to this many candidate rows are matched by value instead of a join


@dataclass(frozen=True, slots=True)
class InputSnapshot:
    """An input pinned at one Delta version for the whole build."""

    name: str
    kind: str  # raw | ref
    path: str
    version: int


def read_version(spark: Any, table: Any, path: str, version: int) -> Any:
    """The Delta table at ``path`` and ``version`` (``table``: that version opened with
    delta-rs): its Parquet files, read by Spark with the Delta schema (Spark's Delta reader
    would replay the log of every new version first); Spark's Delta reader when the version is
    not plain Parquet."""
    found = plain_files(table)
    if found is None:
        return spark.read.format("delta").option("versionAsOf", version).load(path)
    from pyspark.sql.types import StructType

    files, schema_json = found
    schema = StructType.fromJson(json.loads(schema_json))
    if not files:
        return spark.createDataFrame([], schema)
    return spark.read.schema(schema).parquet(*files)


def empty_version(spark: Any, table: Any) -> Any:
    """No rows, in the schema of the opened Delta ``table``: a local relation made from the
    Delta schema (Spark lists no file and runs no Python worker, unlike ``createDataFrame([])``
    with a StructType)."""
    schema = pa.schema(table.to_pyarrow_dataset().schema)
    return spark.createDataFrame(spark_schema(schema).empty_table())


class Handoff:
    """Arrow tables handed to Spark as Parquet files in one folder (removed by :meth:`close`).

    Cheaper than ``createDataFrame`` above a few thousand rows, and the planner knows the size
    (broadcast joins); a DataFrame made by ``createDataFrame`` from Arrow has no size
    estimate.
    """

    def __init__(self, spark: Any, folder: Path) -> None:
        self.spark, self.folder = spark, folder
        self._count = itertools.count(1)  # models build in threads: one name per call

    def frame(self, table: pa.Table) -> Any:
        """A DataFrame reading ``table`` (its schema given: Spark runs no job to infer it)."""
        import pyarrow.parquet as pq
        from pyspark.sql.pandas.types import from_arrow_schema

        path = self.folder / f"{os.getpid()}-{next(self._count)}"
        path.mkdir(parents=True)
        plain = table.cast(spark_schema(table.schema))
        # read once, whole: statistics and dictionaries would only cost time
        pq.write_table(
            plain, path / "part-00000.parquet", use_dictionary=False, write_statistics=False
        )
        schema = from_arrow_schema(plain.schema, prefer_timestamp_ntz=True)  # as Spark infers
        return self.spark.read.schema(schema).parquet(str(path))

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass(slots=True)
class Changes:
    """The changed rows of one input between two versions.

    ``rows`` is an Arrow table (the driver-side diff, with ``_capa_sign``: +1 for new row
    versions, -1 for replaced or removed ones) or a materialised Spark DataFrame (the Spark
    fallbacks; signed for raw replicas, unsigned for a change-data-feed read).
    """

    rows: Any
    _frame: Any = None

    @property
    def signed(self) -> bool:
        return SIGN in self.columns

    @property
    def columns(self) -> list[str]:
        if isinstance(self.rows, pa.Table):
            return list(self.rows.column_names)
        return list(self.rows.columns)

    def frame(self, handoff: Handoff) -> Any:
        """The rows as a Spark DataFrame (an Arrow table is handed over once)."""
        if self._frame is None:
            self._frame = handoff.frame(self.rows) if isinstance(self.rows, pa.Table) else self.rows
        return self._frame


def changed_raw_rows(ctx: BuildContext, snap: InputSnapshot, mark: InputMark) -> Changes:
    """Rows written since the last build plus the row versions they replaced, signed.

    From the replica's change data feed (capa creates replicas with one); else from the data
    files that differ between the two versions, by ``_capa_event_id`` (both in the driver,
    :mod:`spark_jobs.diff`); with Spark when delta-rs cannot read the table.
    """
    versions = (snap.path, mark.version, snap.version)
    rows = feed_rows(*versions, META_EVENT_ID, ctx.tables)
    if rows is None:
        rows = changed_rows(*versions, [META_EVENT_ID], ctx.tables)
    if rows is not None:
        return Changes(rows)
    return Changes(changed_raw_rows_spark(ctx, snap, mark).localCheckpoint(eager=True))


def changed_raw_rows_spark(ctx: BuildContext, snap: InputSnapshot, mark: InputMark) -> Any:
    """Rows written since the last build (sign +1) plus the row versions they replaced (-1),
    with Spark.

    The watermark prunes (files whose ``_capa_ingested_at`` statistics end before it are
    skipped); it is inclusive and may be a little early, so candidates whose event already
    existed in the previously read version are dropped by ``_capa_event_id``.
    """
    from pyspark.sql import functions as F

    current = ctx.read(snap.path, snap.version)
    old = ctx.read(snap.path, mark.version)
    candidates = current
    if mark.max_ingested_at is not None:
        since = datetime.fromisoformat(mark.max_ingested_at)
        candidates = current.where(F.col(META_INGESTED_AT) >= F.lit(since))
    fresh = _not_in(candidates, old).withColumn(SIGN, F.lit(1))
    gone = old.join(current.select(META_EVENT_ID), on=META_EVENT_ID, how="left_anti")
    return fresh.unionByName(gone.withColumn(SIGN, F.lit(-1)), allowMissingColumns=True)


def _not_in(candidates: Any, old: Any) -> Any:
    """Candidates whose event id the old version lacks; a few candidates filter the old
    version by value (no shuffle of its ids)."""
    from pyspark.sql import functions as F

    candidates = candidates.cache()
    ids = [r[0] for r in candidates.select(META_EVENT_ID).limit(_FEW + 1).collect()]
    if len(ids) > _FEW:
        return candidates.join(old.select(META_EVENT_ID), on=META_EVENT_ID, how="left_anti")
    seen = old.where(F.col(META_EVENT_ID).isin(ids)).select(META_EVENT_ID)
    return candidates.join(F.broadcast(seen), on=META_EVENT_ID, how="left_anti")


def changed_ref_rows(ctx: BuildContext, snap: InputSnapshot, mark: InputMark) -> Changes:
    """Rows of a model table that differ between the versions (old and new values).

    By comparison of the rows of the files that differ, paired by the model's key (an
    overwrite that kept most rows as they were yields just the changed ones); from the change
    data feed otherwise (unsigned).
    """
    key = ctx.project.models[snap.name].header.key
    rows = changed_rows(snap.path, mark.version, snap.version, None, ctx.tables, key)
    if rows is not None:
        return Changes(rows)
    return Changes(
        ctx.spark.read.format("delta")
        .option("readChangeFeed", "true")
        .option("startingVersion", mark.version + 1)
        .option("endingVersion", snap.version)
        .load(snap.path)
        .localCheckpoint(eager=True)
    )


_CHANGED_ROWS: dict[str, Callable[[BuildContext, InputSnapshot, InputMark], Changes]] = {
    "raw": changed_raw_rows,
    "ref": changed_ref_rows,
}


def input_changes(
    ctx: BuildContext, model: Model, snaps: dict[str, InputSnapshot], state: ModelState
) -> dict[str, Changes] | None:
    """The changed rows of every input that changed since the last build, or None when a
    full build is needed (an input new to the state or without a mapping, a failed diff).
    Each input and version pair is diffed once per build (:meth:`BuildContext.changes`)."""
    out = {}
    for name, snap in snaps.items():
        mark = state.inputs.get(name)
        if mark is None or mark.kind != snap.kind:
            logger.info("%s: input %s is new to the build state: full rebuild", model.name, name)
            return None
        if mark.version == snap.version:
            continue
        if name not in model.header.incremental:
            logger.info("%s: %s changed and has no incremental mapping: full", model.name, name)
            return None
        try:
            diff = functools.partial(_diffed, ctx, snap, mark)
            out[name] = ctx.changes((name, mark.version, snap.version), diff)
        except Exception as exc:  # vacuumed version, CDF not enabled ...: rebuild instead
            logger.warning("%s: cannot diff %s (%s): full rebuild", model.name, name, exc)
            return None
    return out


def _diffed(ctx: BuildContext, snap: InputSnapshot, mark: InputMark) -> Changes:
    started = time.monotonic()
    changes = _CHANGED_ROWS[snap.kind](ctx, snap, mark)
    logger.info("%s: changes diffed in %.1fs", snap.name, time.monotonic() - started)
    return changes


def affected_keys(
    spark: Any,
    model: Model,
    changes: dict[str, Changes],
    resolve: Callable[[str, str], str],
    key_schema: pa.Schema,
    handoff: Handoff,
) -> pa.Table:
    """The distinct model keys (``key_schema``, no NULLs) the changed rows map to.

    A mapping that is a bare column of the changed rows is evaluated in Arrow (no Spark job);
    other mappings run as Spark SQL over the changed rows, all in one job.
    """
    parts, queries = [], []
    for name, change in changes.items():
        column = model.mapped_column(name)
        if column is not None and isinstance(change.rows, pa.Table) and column in change.columns:
            field = key_schema.field(0)
            parts.append(pa.table({field.name: change.rows.column(column).cast(field.type)}))
            continue
        view = f"capa_changed__{model.name}__{name}"
        change.frame(handoff).createOrReplaceTempView(view)
        queries.append(spark.sql(model.mapping_sql(name, quote(view), resolve)))
    if queries:
        from pyspark.sql import functions as F

        frame = queries[0]
        for query in queries[1:]:
            frame = frame.unionByName(query)
        casts = [F.col(f.name).cast(_spark_type(f.type)).alias(f.name) for f in key_schema]
        parts.append(frame.select(casts).toArrow().cast(key_schema))
    if not parts:
        return key_schema.empty_table()
    keys = pa.concat_tables([p.cast(key_schema) for p in parts])
    for name in key_schema.names:
        keys = keys.filter(pc.is_valid(keys.column(name)))
    return keys.group_by(key_schema.names).aggregate([]).select(key_schema.names)


def _spark_type(arrow_type: pa.DataType) -> Any:
    from pyspark.sql.pandas.types import from_arrow_type

    return from_arrow_type(arrow_type)
