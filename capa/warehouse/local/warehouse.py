"""The local lakehouse: Delta Lake tables under one directory, written with delta-rs.

Layout: ``DIR/<namespace>/<name>/`` is a Delta table, e.g. ``DIR/raw/f2_public_orders``,
``DIR/raw/f2_public_orders_changelog`` and (written by Spark) ``DIR/consumption/<name>``.

Every batch, given as events (:meth:`LocalWarehouse.apply`) or column-wise
(:meth:`LocalWarehouse.apply_columns`), becomes one :class:`~capa.warehouse.local.plan.ColumnPlan`
and goes through ONE writer: per table, one append to the changelog (events already in it are
skipped, see :mod:`capa.warehouse.local.changelog`, so redelivery appends nothing) and either
ONE merge commit into the replica by :mod:`capa.merge_rule` (stale guard, latest wins, keep
flags; a truncate in the batch deletes older rows in the same commit, then raises the
watermark table property) or, with merge-on-read, one append to the pending log
(:mod:`capa.warehouse.local.pending`). A commit conflict (another writer committed first) is
retried with backoff, then raised as :class:`~capa.errors.WarehouseTransientError`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError

from capa import merge_rule, retry
from capa.apply import TablePlan, keyless_target, plan_table, resolve_plan
from capa.columnar import TableColumns
from capa.errors import WarehouseTerminalError, WarehouseTransientError
from capa.events import ChangeEvent, Op, iter_tables
from capa.keyless import (
    ROW_HASH,
    ROW_ID,
    UNMATCHED_PROPERTY,
    KeylessTarget,
    batch_needs,
    unmatched_reason,
)
from capa.merge_rule import DELTA, PENDING_SEQ
from capa.retry import RetryPolicy
from capa.warehouse.base import (
    CHANGELOG_SUFFIX,
    META_DELETED,
    META_EVENT_ID,
    META_OP,
    META_POSITION,
    RAW_NAMESPACE,
    ApplyReport,
    TableReport,
    WarehouseCapabilities,
)
from capa.warehouse.local import bulk, delta_io, pending
from capa.warehouse.local.changelog import unseen_rows
from capa.warehouse.local.delta_io import ident, sql_string
from capa.warehouse.local.plan import (
    CHANGELOG_META,
    REPLICA_META,
    ColumnPlan,
    column_types,
    plan_columns,
    plan_events,
)
from capa.warehouse.types import ColumnType

logger = logging.getLogger(__name__)

_Batch = Sequence[ChangeEvent] | TableColumns  # a table's events, or its plain changes

__all__ = ["LocalWarehouse"]
# Another writer committed first: replan on the new version, a few times, jittered so that
# two writers do not collide again.
COMMIT_RETRY = RetryPolicy(CommitFailedError, first_wait_s=0.05, attempts=4, jitter=True)


class LocalWarehouse:
    """Delta tables in a directory (the ``local:DIR`` warehouse)."""

    capabilities = WarehouseCapabilities(columns=True, compaction=True)

    def __init__(
        self,
        root: Path | str,
        *,
        soft_deletes: bool = False,
        merge_on_read: bool = False,
        compact_interval_s: float = 300.0,
        compact_pending_rows: int = 1_000_000,
        change_data_feed: bool = True,
    ) -> None:
        self.root = Path(root)
        self.replica_properties = delta_io.REPLICA_PROPERTIES if change_data_feed else {}
        self.soft_deletes = soft_deletes
        self.merge_on_read = merge_on_read
        self.compact_interval_s = compact_interval_s
        self.compact_pending_rows = compact_pending_rows
        self._pending_since: dict[str, float] = {}  # table -> when its pending log started
        self._pending_rows: dict[str, int] = {}

    # --- writing ---------------------------------------------------------------------

    def apply(self, events: Sequence[ChangeEvent]) -> ApplyReport:
        started = time.monotonic()
        reports = tuple(self._apply_table(batch[0].table_id, batch) for batch in _by_table(events))
        return ApplyReport(tables=reports, seconds=time.monotonic() - started)

    def apply_columns(self, tables: Sequence[TableColumns]) -> ApplyReport:
        """Apply plain changes given column-wise (:mod:`capa.columnar`): the same result as
        :meth:`apply` on their events, without an object per event."""
        started = time.monotonic()
        reports = tuple(self._apply_table(cols.table_id, cols) for cols in tables)
        return ApplyReport(tables=reports, seconds=time.monotonic() - started)

    def _apply_table(self, name: str, batch: _Batch) -> TableReport:
        """Plan and write one table's batch; a commit conflict replans on the new version."""
        return _replan_on_conflict(name, partial(self._apply_once, name, batch))

    def _apply_once(self, name: str, batch: _Batch) -> TableReport:
        path = self.table_path(RAW_NAMESPACE, name)
        ingested = datetime.now(UTC)
        with _write_errors(name, self.root):
            if isinstance(batch, TableColumns):  # typed before planning: one replica open
                types = column_types(batch)
                replica = self._ensure_replica(path, types)
                plan = plan_columns(batch, delta_io.read_watermark(replica), ingested, types)
            else:
                plan = self._plan_events(name, batch, ingested)
                replica = self._ensure_replica(path, plan.types)
            return self._write(plan, replica)

    def _plan_events(
        self, name: str, events: Sequence[ChangeEvent], ingested: datetime
    ) -> ColumnPlan:
        """The event path's plan against the replica's truncate watermark (a keyless batch
        is resolved against what the replica holds)."""
        path = self.table_path(RAW_NAMESPACE, name)
        plan = plan_table(events, delta_io.read_watermark(delta_io.open_table(path)), keyless=True)
        if plan.needs_target:
            self._compact_table(name)  # a keyless batch is resolved against the whole replica
            plan = resolve_plan(plan, _keyless_target(path, plan))
        return plan_events(plan, ingested)

    def _write(self, plan: ColumnPlan, replica: DeltaTable) -> TableReport:
        """The one writer: the changelog append, and the pending append (merge-on-read) or
        the guarded MERGE into ``replica`` (the snapshot the plan was made against: a commit
        by another writer since then is a conflict, and the batch is planned again). Both
        Delta writes run at the same time (delta-rs writes outside the GIL); they are
        independent commits either way (a crash between them is repaired by redelivery).
        Every Arrow conversion happens before either write starts."""
        name = plan.table
        log, log_rows = self._changelog_rows(plan)
        source = plan.rows.replica(delta_io.table_types(replica), plan.changes)
        appending = _BACKGROUND.submit(_append, log, log_rows)
        try:
            metrics = self._write_replica(plan, source, replica)
        finally:
            wait([appending])
        appended = appending.result()
        if metrics is None:  # merge-on-read
            return TableReport(name, plan.events, len(plan.changes), plan.stale, appended)
        report = _merged_report(name, plan.events, plan.stale, len(plan.changes), appended, metrics)
        return replace(report, unmatched=len(plan.unmatched))

    def _changelog_rows(self, plan: ColumnPlan) -> tuple[DeltaTable, pa.Table | None]:
        """The changelog and the rows of the batch it does not hold yet (None: all held)."""
        log = delta_io.ensure_table(
            self.table_path(RAW_NAMESPACE, plan.table + CHANGELOG_SUFFIX),
            CHANGELOG_META,
            plan.types,
        )
        new = unseen_rows(log, *plan.changelog_keys())
        if not new:
            return log, None
        rows = (
            [plan.changelog[i] for i in new] if len(new) < len(plan.changelog) else plan.changelog
        )
        return log, plan.log.changelog(delta_io.table_types(log), rows)

    def _write_replica(
        self, plan: ColumnPlan, source: pa.Table, replica: DeltaTable
    ) -> dict[str, Any] | None:
        """Pending append (merge-on-read; returns None) or the guarded MERGE's metrics."""
        if self.merge_on_read and plan.deferrable:
            if source.num_rows:
                self._pend(plan.table, source, plan.primary_key, plan.types)
            self._maybe_compact(plan.table)
            return None
        if self._compact_table(plan.table):  # a merge applies on top of a compact base
            replica = DeltaTable(replica.table_uri)
        return self._merge_replica(plan, source, replica)

    def _merge_replica(
        self, plan: ColumnPlan, source: pa.Table, replica: DeltaTable
    ) -> dict[str, Any]:
        """ONE merge commit (a truncate deletes older rows in it), then the raised truncate
        watermark and the keyless divergence record."""
        metrics: dict[str, Any] = {}
        if source.num_rows:
            metrics = _merge(replica, source, plan.primary_key, plan.keep, plan.truncate_position)
        elif plan.truncate_position:
            deleted = replica.delete(
                merge_rule.below_truncate(DELTA, sql_string(plan.truncate_position), in_merge=False)
            )
            metrics["num_target_rows_deleted"] = deleted.get("num_deleted_rows", 0)
        if plan.truncate_position:
            delta_io.write_watermark(DeltaTable(replica.table_uri), plan.truncate_position)
        if plan.unmatched:
            _record_unmatched(DeltaTable(replica.table_uri), plan.table, plan.unmatched)
        return metrics

    def _pend(
        self,
        name: str,
        source: pa.Table,
        primary_key: Sequence[str],
        types: Mapping[str, ColumnType | None],
    ) -> None:
        pending.append_pending(self.root, name, source, primary_key, types)
        self._pending_since.setdefault(name, time.monotonic())
        self._pending_rows[name] = self._pending_rows.get(name, 0) + len(source)

    def _maybe_compact(self, name: str) -> None:
        since = self._pending_since.get(name)
        due = since is not None and time.monotonic() - since >= self.compact_interval_s
        if due or self._pending_rows.get(name, 0) >= self.compact_pending_rows:
            self._compact_table(name)

    def compact(self, table: str | None = None) -> int:
        """Merge pending (merge-on-read) rows into the base replicas; returns rows merged.

        ``table`` is ``raw.<name>`` (or ``<name>``); default: every replica. Call it before
        anything that reads the Delta files directly (Spark builds, backups).
        """
        if table is not None:
            return self._compact_table(_split(table)[1])
        logs = (self.root / pending.PENDING_NAMESPACE).glob("*/_delta_log")
        return sum(self._compact_table(name) for name in sorted(p.parent.name for p in logs))

    def _compact_table(self, name: str) -> int:
        self._pending_since.pop(name, None)
        self._pending_rows.pop(name, None)
        log = pending.open_pending(self.root, name)
        base = delta_io.open_table(self.table_path(RAW_NAMESPACE, name))
        if log is None or base is None:
            return 0
        started = time.monotonic()
        resolved, top = pending.resolved_rows(base, log)
        key, _ = pending.resolve_args(resolved.column_names, log)
        if resolved.num_rows:
            _merge(base, resolved, key, (), None)
        if top is not None:
            log.delete(f"{ident(PENDING_SEQ)} <= {int(top)}")
        logger.info(
            "compacted %d pending rows into %s in %.2fs",
            resolved.num_rows,
            name,
            time.monotonic() - started,
        )
        return resolved.num_rows

    def _ensure_replica(self, path: Path, types: Mapping[str, ColumnType | None]) -> DeltaTable:
        """The replica at ``path``, created or evolved (with its change data feed when on)."""
        return delta_io.ensure_table(path, REPLICA_META, types, self.replica_properties)

    # --- bulk loads (the fast initial sync) -------------------------------------------

    def prepare_snapshot(
        self,
        name: str,
        types: Mapping[str, ColumnType | None],
        schema_lock: AbstractContextManager[Any] | None = None,
    ) -> None:
        """Create ``raw.<name>`` and its changelog for ``types`` before the first range
        arrives (the fast sync does it while its readers read the first ranges)."""
        with _write_errors(name, self.root), schema_lock or nullcontext():
            bulk.ensure_tables(
                self.table_path(RAW_NAMESPACE, name),
                self.table_path(RAW_NAMESPACE, name + CHANGELOG_SUFFIX),
                types,
                self.replica_properties,
            )

    def load_snapshot(
        self,
        name: str,
        data: pa.Table,
        types: Mapping[str, ColumnType | None],
        primary_key: Sequence[str],
        *,
        position: str,
        commit_ts: datetime,
        load_id: str,
        merge: bool = False,
        schema_lock: AbstractContextManager[Any] | None = None,
    ) -> int:
        """Append one range of snapshot reads to ``raw.<name>`` and its changelog, once per
        ``load_id`` (see :mod:`capa.warehouse.local.bulk`); returns the rows it holds.
        ``schema_lock``: held by concurrent loaders of one table while its schema changes."""
        with _write_errors(name, self.root):
            return bulk.load_snapshot_rows(
                self.table_path(RAW_NAMESPACE, name),
                self.table_path(RAW_NAMESPACE, name + CHANGELOG_SUFFIX),
                data,
                types=types,
                primary_key=primary_key,
                position=position,
                commit_ts=commit_ts,
                load_id=load_id,
                replica_properties=self.replica_properties,
                schema_lock=schema_lock,
                merge=merge,
            )

    def load_reads(self, cols: TableColumns, load_id: str) -> TableReport:
        """Write one file of backfill reads (plain, op ``r``, one table) once per ``load_id``.

        The same plan as :meth:`apply_columns` (types, truncate watermark, last row per key,
        changelog rows it holds already skipped), written by the bulk writer's once-only
        commits (:mod:`capa.warehouse.local.bulk`): a changelog append and ONE guarded merge
        into the base replica (never the merge-on-read pending log), each tagged with the
        Delta transaction ``capa-bulk:<load_id>``, so a load repeated after a crash (or a
        commit conflict with the apply job) writes nothing twice. The merge (never a blind
        append) keeps the result independent of the interleaving with streamed changes:
        a key the replica holds at a higher position (a change or a tombstone) stays.
        """
        if any(op != Op.READ.value for op in cols.ops):
            raise ValueError(f"load_reads takes snapshot reads only; {cols.table_id} has others")
        return _replan_on_conflict(cols.table_id, partial(self._load_reads_once, cols, load_id))

    def _load_reads_once(self, cols: TableColumns, load_id: str) -> TableReport:
        name = cols.table_id
        with _write_errors(name, self.root):
            types = column_types(cols)
            replica = self._ensure_replica(self.table_path(RAW_NAMESPACE, name), types)
            plan = plan_columns(cols, delta_io.read_watermark(replica), datetime.now(UTC), types)
            log, log_rows = self._changelog_rows(plan)  # events it holds already: skipped
            source = plan.rows.replica(delta_io.table_types(replica), plan.changes)
            appending = _BACKGROUND.submit(bulk.append_once, log, log_rows, load_id)
            try:
                metrics: dict[str, Any] = {}
                if source.num_rows and not bulk.written(replica, load_id):
                    commit = bulk.commit_once(load_id)
                    metrics = _merge(replica, source, plan.primary_key, (), None, commit)
            finally:
                wait([appending])
            appending.result()
            appended = 0 if log_rows is None else log_rows.num_rows
            return _merged_report(
                name, plan.events, plan.stale, len(plan.changes), appended, metrics
            )

    def discard_snapshot_reads(self, name: str) -> None:
        """Delete the snapshot reads (op ``r``) of ``raw.<name>`` and its changelog (a
        keyless table copied again by a resumed initial sync)."""
        for table in (name, name + CHANGELOG_SUFFIX):
            delta = delta_io.open_table(self.table_path(RAW_NAMESPACE, table))
            if delta is not None:
                delta.delete(f"{ident(META_OP)} = 'r'")

    def raise_watermark(self, name: str, position: str) -> None:
        """Set ``raw.<name>``'s watermark to ``position`` if higher: changes at or below it
        are no-ops (the table was copied at that position)."""
        delta = delta_io.open_table(self.table_path(RAW_NAMESPACE, name))
        if delta is not None and position > (delta_io.read_watermark(delta) or ""):
            delta_io.write_watermark(delta, position)

    # --- reading ---------------------------------------------------------------------

    def table_path(self, namespace: str, name: str) -> Path:
        return delta_io.path_under(self.root, namespace, name)

    def tables(self) -> list[str]:
        """Qualified names of the Delta tables under the root (``raw.x``, ``consumption.y``)."""
        found = []
        for log_dir in sorted(self.root.glob("*/*/_delta_log")):
            table_dir = log_dir.parent
            if table_dir.parent.name.startswith("_"):
                continue  # internal (the merge-on-read pending logs)
            found.append(f"{table_dir.parent.name}.{table_dir.name}")
        return found

    def rows(self, table: str, *, include_deleted: bool | None = None) -> list[dict[str, Any]]:
        """All rows of ``namespace.name`` (tombstones only if asked or soft deletes are on)."""
        data = self._read(table)
        if data is None:
            return []
        if self._hides_tombstones(table, data, include_deleted):
            data = data.filter(pc.invert(data[META_DELETED]))
        return data.to_pylist()

    def row_count(self, table: str, *, include_deleted: bool | None = None) -> int:
        data = self._read(table)
        if data is None:
            return 0
        if self._hides_tombstones(table, data, include_deleted):
            return int(pc.sum(pc.invert(data[META_DELETED])).as_py() or 0)
        return data.num_rows

    def watermark(self, table: str) -> str | None:
        namespace, name = _split(table)
        return delta_io.read_watermark(delta_io.open_table(self.table_path(namespace, name)))

    def _hides_tombstones(self, table: str, data: pa.Table, include_deleted: bool | None) -> bool:
        show = self.soft_deletes if include_deleted is None else include_deleted
        replica = not table.endswith(CHANGELOG_SUFFIX) and META_DELETED in data.column_names
        return replica and not show

    def _read(self, table: str) -> pa.Table | None:
        namespace, name = _split(table)
        delta = delta_io.open_table(self.table_path(namespace, name))
        if delta is None:
            return None
        log = pending.open_pending(self.root, name) if namespace == RAW_NAMESPACE else None
        return delta.to_pyarrow_table() if log is None else pending.read_replica(delta, log)

    def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        from capa.warehouse.local.views import connect

        with connect(self.root, soft_deletes=self.soft_deletes) as lake:
            cursor = lake.execute(sql, params)
            names = [d[0] for d in cursor.description or ()]
            rows = cursor.fetchall()
        for row in rows:
            yield dict(zip(names, row, strict=True))

    def close(self) -> None:
        """Nothing is held open between calls."""


def _by_table(events: Sequence[ChangeEvent]) -> list[list[ChangeEvent]]:
    """Events grouped by raw table (as :func:`capa.events.iter_tables`, naming each source
    table once instead of once per event)."""
    by_source: dict[tuple[str, str, str], list[ChangeEvent]] = {}
    for event in events:
        by_source.setdefault((event.source, event.schema, event.table), []).append(event)
    if len(by_source) == 1:
        return list(by_source.values())
    return [batch for _, batch in iter_tables(events)]


def _split(table: str) -> tuple[str, str]:
    namespace, _, name = table.rpartition(".")
    return namespace or RAW_NAMESPACE, name


_BACKGROUND = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capa-changelog")


def _append(table: DeltaTable, rows: pa.Table | None) -> int:
    if rows is None:
        return 0
    write_deltalake(table, rows, mode="append")
    return rows.num_rows


def _merge(
    table: DeltaTable,
    source: pa.Table,
    primary_key: Sequence[str],
    keep: Sequence[str],
    truncate_position: str | None,
    commit: CommitProperties | None = None,
) -> dict[str, Any]:
    """One MERGE of ``source`` (one row per key) into the replica by :mod:`capa.merge_rule`,
    rendered for the delta-rs merge builder (``commit``: e.g. a bulk load's transaction)."""
    columns = list(delta_io.table_types(table))
    merger = table.merge(
        source,
        merge_rule.key_match(DELTA, primary_key),
        source_alias=DELTA.source,
        target_alias=DELTA.target,
        commit_properties=commit,
    )
    merger = merger.when_matched_update(
        merge_rule.updates(DELTA, columns, [c for c in keep if c in columns]),
        predicate=merge_rule.guard(DELTA),
    ).when_not_matched_insert(merge_rule.inserts(DELTA, columns))
    if truncate_position:
        merger = merger.when_not_matched_by_source_delete(
            merge_rule.below_truncate(DELTA, sql_string(truncate_position))
        )
    return merger.execute()


@contextmanager
def _write_errors(name: str, root: Path) -> Iterator[None]:
    """Filesystem errors and Delta commit conflicts are transient (the batch is retried)."""
    try:
        yield
    except CommitFailedError:
        raise
    except OSError as exc:
        raise WarehouseTransientError(f"writing {name!r} under {root}: {exc}") from exc
    except Exception as exc:
        if type(exc).__module__.startswith("deltalake") and "conflict" in str(exc).lower():
            raise WarehouseTransientError(f"commit conflict on {name!r}: {exc}") from exc
        raise


def _merged_report(
    name: str, events: int, stale: int, changes: int, appended: int, metrics: Mapping[str, Any]
) -> TableReport:
    upserted = sum(
        int(metrics.get(k, 0)) for k in ("num_target_rows_inserted", "num_target_rows_updated")
    )
    applied = upserted + int(metrics.get("num_target_rows_deleted", 0))
    logger.debug("applied %s: %d events, %d rows written", name, events, applied)
    return TableReport(name, events, applied, stale + changes - upserted, appended)


def _keyless_target(path: Path, plan: TablePlan) -> KeylessTarget:
    """What a keyless replica holds for ``plan``: only the rows that can matter are read
    (at or above the batch's lowest position, or live with a hash the batch removes)."""
    table = delta_io.open_table(path)
    if table is None:
        return KeylessTarget()
    if ROW_ID not in delta_io.table_types(table):
        if not table.to_pyarrow_dataset().count_rows():
            return KeylessTarget()  # created by a truncate: no row written yet
        raise WarehouseTerminalError(
            f"raw.{path.name} was replicated with a primary key, but its source table now has "
            "none; restore the key at the source, or drop the replica and resync"
        )
    hashes, lowest = batch_needs(plan.keyless)
    read = [ROW_ID, ROW_HASH, META_POSITION, META_EVENT_ID, META_DELETED]
    # cast: delta-rs may read strings as string_view, which the compute kernels mix badly
    data = table.to_pyarrow_dataset().to_table(columns=read)
    position = data[META_POSITION].cast(pa.string())
    wanted = pc.greater_equal(position, pa.scalar(lowest or "", pa.string()))
    if hashes:
        held = pc.is_in(data[ROW_HASH].cast(pa.string()), pa.array(sorted(hashes), pa.string()))
        wanted = pc.or_(wanted, pc.and_(held, pc.invert(data[META_DELETED])))
    return keyless_target(plan, data.filter(wanted).to_pylist())


def _record_unmatched(table: DeltaTable, name: str, unmatched: Sequence[ChangeEvent]) -> None:
    """Mark the replica diverged (a table property with the count, the first position and
    the reason) and tell the operator once: a warning when the table first diverges, never
    one per event; the events themselves are in the changelog."""
    config = table.metadata().configuration
    previous = json.loads(config.get(UNMATCHED_PROPERTY) or "null")
    first = unmatched[0]
    record = previous or {"first_position": first.position, "reason": unmatched_reason(first)}
    record["count"] = int(record.get("count", 0)) + len(unmatched)
    table.alter.set_table_properties(
        {UNMATCHED_PROPERTY: json.dumps(record)}, raise_if_not_exists=False
    )
    if previous is None:
        logger.warning(
            "raw.%s no longer matches its source: %s (first at position %s; later ones are "
            "counted in the table property %s, not logged)",
            name,
            record["reason"],
            record["first_position"],
            UNMATCHED_PROPERTY,
        )


def _replan_on_conflict(name: str, write: Callable[[], TableReport]) -> TableReport:
    """``write()`` (which plans on the table's current version), again on a commit conflict;
    :class:`WarehouseTransientError` once :data:`COMMIT_RETRY` is spent."""
    try:
        return retry.call(write, COMMIT_RETRY, f"commit conflict on {name!r}")
    except CommitFailedError as exc:
        raise WarehouseTransientError(
            f"commit conflict on {name!r} after {COMMIT_RETRY.attempts} attempts: {exc}"
        ) from exc
