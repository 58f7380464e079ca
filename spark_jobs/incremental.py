"""Which model keys did the input changes since the last build touch?

For a raw replica the changed rows are the rows of the data files that differ between the
version the last build read and the current one, compared by ``_capa_event_id``: rows whose
event the old files lack (inserts, updates and tombstones: deleted rows stay in the replica with
``_capa_deleted``) and the row versions they replaced or that a TRUNCATE removed (their old
values may map to other keys, e.g. an order that moved to another customer). This runs in the
driver with delta-rs and Arrow (:mod:`spark_jobs.diff`); tables delta-rs cannot read that way
(deletion vectors, column mapping) fall back to a Spark diff with the ``_capa_ingested_at``
watermark. Merge-on-read rows still in ``_pending/<table>`` are not part of any Delta version
of the replica: the build sees them once compacted, as a later version, like any other change.
For a model table (``ref``) the changed rows are the rows that differ between its two versions
(whole-row comparison of the differing files; the change data feed as a fallback).

Each model header maps every input's changed rows to model keys (``incremental:``); the build
recomputes just those keys and replaces them in the target. ``None`` from :func:`affected_keys`
means "cannot tell, rebuild fully" (an input without a mapping, a vacuumed old version, a new
input).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from capa.warehouse.base import META_EVENT_ID, META_INGESTED_AT
from spark_jobs.diff import changed_rows
from spark_jobs.project import Model, quote
from spark_jobs.state import InputMark, ModelState

logger = logging.getLogger(__name__)
_FEW = 50_000  # up to this many candidate rows are matched by value instead of a join


@dataclass(frozen=True, slots=True)
class InputSnapshot:
    """An input pinned at one Delta version for the whole build."""

    name: str
    kind: str  # raw | ref
    path: str
    version: int


def read_version(spark: Any, path: str, version: int) -> Any:
    return spark.read.format("delta").option("versionAsOf", version).load(path)


def changed_raw_rows(spark: Any, snap: InputSnapshot, mark: InputMark) -> Any:
    """Rows written since the last build plus the row versions they replaced, materialised.

    From the data files that differ between the two versions, by ``_capa_event_id``
    (:mod:`spark_jobs.diff`, in the driver); with Spark when delta-rs cannot read the table.
    """
    rows = changed_rows(snap.path, mark.version, snap.version, [META_EVENT_ID])
    if rows is not None:
        return arrow_frame(spark, rows)
    return changed_raw_rows_spark(spark, snap, mark).localCheckpoint(eager=True)


def arrow_frame(spark: Any, rows: Any) -> Any:
    """A Spark DataFrame of an Arrow table (a local relation: no Spark job to build it)."""
    return spark.createDataFrame(rows)


def changed_raw_rows_spark(spark: Any, snap: InputSnapshot, mark: InputMark) -> Any:
    """Rows written since the last build plus the row versions they replaced, with Spark.

    The watermark prunes (files whose ``_capa_ingested_at`` statistics end before it are
    skipped); it is inclusive and may be a little early, so candidates whose event already
    existed in the previously read version are dropped by ``_capa_event_id``.
    """
    current = read_version(spark, snap.path, snap.version)
    old = read_version(spark, snap.path, mark.version)
    candidates = current
    if mark.max_ingested_at is not None:
        from pyspark.sql import functions as F

        since = datetime.fromisoformat(mark.max_ingested_at)
        candidates = current.where(F.col(META_INGESTED_AT) >= F.lit(since))
    fresh = _not_in(candidates, old)
    gone = old.join(current.select(META_EVENT_ID), on=META_EVENT_ID, how="left_anti")
    return fresh.unionByName(gone, allowMissingColumns=True)


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


def changed_ref_rows(spark: Any, snap: InputSnapshot, mark: InputMark) -> Any:
    """Rows of a model table that differ between the versions (old and new values).

    By whole-row comparison of the files that differ (an overwrite that kept most rows as
    they were yields just the changed ones); from the change data feed otherwise.
    """
    rows = changed_rows(snap.path, mark.version, snap.version, None)
    if rows is not None:
        return arrow_frame(spark, rows)
    return (
        spark.read.format("delta")
        .option("readChangeFeed", "true")
        .option("startingVersion", mark.version + 1)
        .option("endingVersion", snap.version)
        .load(snap.path)
        .localCheckpoint(eager=True)
    )


_CHANGED_ROWS: dict[str, Callable[[Any, InputSnapshot, InputMark], Any]] = {
    "raw": changed_raw_rows,
    "ref": changed_ref_rows,
}


def affected_keys(
    spark: Any,
    model: Model,
    snaps: dict[str, InputSnapshot],
    state: ModelState,
    resolve: Callable[[str, str], str],
    changed: dict[tuple[str, int, int], Any] | None = None,
) -> Any | None:
    """A DataFrame of distinct model keys to recompute, or None when a full build is needed.

    ``changed`` caches the (materialised) changed rows per input and version pair, so models
    of one build that read the same input diff it once.
    """
    changed = {} if changed is None else changed
    parts = []
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
        cache_key = (name, mark.version, snap.version)
        try:
            if cache_key not in changed:
                started = time.monotonic()
                changed[cache_key] = _CHANGED_ROWS[snap.kind](spark, snap, mark)
                logger.info("%s: changes diffed in %.1fs", name, time.monotonic() - started)
            rows = changed[cache_key]
        except Exception as exc:  # vacuumed version, CDF not enabled ...: rebuild instead
            logger.warning("%s: cannot diff %s (%s): full rebuild", model.name, name, exc)
            return None
        view = f"capa_changed__{name}"
        rows.createOrReplaceTempView(view)
        parts.append(spark.sql(model.mapping_sql(name, quote(view), resolve)))
    if not parts:
        return _empty_keys(spark, model)
    keys = parts[0]
    for part in parts[1:]:
        keys = keys.unionByName(part)
    not_null = " AND ".join(f"{quote(k)} IS NOT NULL" for k in model.header.key)
    return keys.where(not_null).distinct()


def _empty_keys(spark: Any, model: Model) -> Any:
    cols = ", ".join(f"CAST(NULL AS STRING) AS {quote(k)}" for k in model.header.key)
    return spark.sql(f"SELECT {cols} WHERE false")
