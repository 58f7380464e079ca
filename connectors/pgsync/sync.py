"""The fast initial sync: exported-snapshot slot, parallel CTID-range readers, bulk writes.

Fresh start (no sync state, no Debezium offsets, no slot):

1. the publication is created (as Debezium would: every table, or the tables of
   ``debezium.table_include_list``), so the slot can decode from its first LSN;
2. ``CREATE_REPLICATION_SLOT <slot> LOGICAL pgoutput (SNAPSHOT 'export')`` on a replication
   connection gives the slot's consistent point L and a snapshot of exactly that point
   (unlike ``pg_create_logical_replication_slot`` + ``pg_export_snapshot``, whose snapshot
   is not tied to the slot's start); the connection stays open while readers import it;
3. ``initial_load_workers`` readers (default: the core count) each import the snapshot
   (``SET TRANSACTION SNAPSHOT`` in a REPEATABLE READ transaction) and copy CTID ranges
   (:mod:`connectors.pgsync.reader`) into the raw replica and changelog
   (:mod:`capa.warehouse.local.bulk`) as snapshot reads at position ``L.0``;
4. the state file records each finished range; when all are done the bridge starts
   Debezium on the same slot with ``snapshot.mode=no_data``: it streams every change
   committed after L, whose positions (``x.1``, x >= L) sort after the snapshot rows.

Resume after a crash (state ``copying``): the slot still holds L, but the exported snapshot
died with its connection. The unfinished ranges are read in the snapshot of a TEMPORARY slot
created now, at L' >= L, and merged by key with the stale guard (a row an update moved may
already be in a finished range). Streamed changes between L and L' are then stale against
those rows (``x.1 < L'.0``) and apply to rows of the finished ranges, so the replica ends
equal. A keyless table (copied through the apply rules, in one range) is copied again whole
at L' and its replica's watermark set to ``L'.0``, so changes up to L' are not applied twice.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from capa.config import CapaSettings
from capa.errors import ConfigError, SlotLost, TerminalError
from capa.events import ChangeEvent, Column, Op, SourceKind, raw_table_name
from capa.position import pg_position
from capa.verify_source import source_columns
from capa.warehouse.local.warehouse import LocalWarehouse
from connectors.base import SnapshotOrdinals
from connectors.pgsync import reader
from connectors.pgsync.progress import (
    COPYING,
    DONE,
    RangeState,
    StateFile,
    SyncState,
    TableState,
    progress_line,
    state_path,
    table_progress,
)
from connectors.pgsync.ranges import PageRange, split_pages

logger = logging.getLogger(__name__)

KEYLESS_BATCH = 20_000  # rows per apply() of a keyless table


def decide(settings: CapaSettings, slot_exists: bool, offsets_exist: bool) -> str:
    """``fast`` (copy now), ``resume``, ``done`` (stream with no_data) or ``debezium``."""
    if settings.debezium.initial_load != "fast":
        return "debezium"
    if getattr(settings.warehouse, "type", "") != "local":
        logger.info("initial sync: the fast path writes the local warehouse only; using Debezium")
        return "debezium"
    state = StateFile(state_path(settings.state_dir, settings.debezium.engine_name)).load()
    if state is not None:
        return DONE if state.status == DONE else "resume"
    if slot_exists or offsets_exist:
        return "debezium"  # an existing deployment: Debezium keeps its own offsets
    return "fast"


@dataclass(frozen=True)
class Snapshot:
    lsn: str  # X/Y
    name: str  # the exported snapshot
    connection: Any  # the replication connection that keeps it alive

    @property
    def position(self) -> str:
        return pg_position(self.lsn, snapshot=True)


def export_slot(dsn: str, slot: str, *, temporary: bool = False) -> Snapshot:
    import psycopg

    conn = psycopg.connect(dsn, replication="database", autocommit=True)
    kind = "TEMPORARY LOGICAL" if temporary else "LOGICAL"
    row = conn.execute(
        f"CREATE_REPLICATION_SLOT {reader.quote_ident(slot)} {kind} pgoutput (SNAPSHOT 'export')"
    ).fetchone()
    assert row is not None
    return Snapshot(str(row[1]), str(row[2]), conn)


def slot_exists(dsn: str, slot: str) -> bool:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        found = conn.execute(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [slot]
        ).fetchone()
    return found is not None


def ensure_publication(conn: Any, name: str, include: str | None) -> None:
    """The publication Debezium would create (``all_tables``, or ``filtered`` by the
    include list), created before the slot so decoding finds it from the first LSN."""
    from psycopg import sql

    if conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", [name]).fetchone():
        return
    if not include:
        conn.execute(sql.SQL("CREATE PUBLICATION {} FOR ALL TABLES").format(sql.Identifier(name)))
        return
    patterns = [re.compile(p.strip()) for p in include.split(",") if p.strip()]
    tables = [
        (s, t)
        for s, t in conn.execute(
            "SELECT schemaname, tablename FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        )
        if any(p.fullmatch(f"{s}.{t}") for p in patterns)
    ]
    if not tables:
        raise ConfigError(f"debezium.table_include_list {include!r} matches no table")
    names = sql.SQL(", ").join(sql.Identifier(s, t) for s, t in tables)
    conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(name), names))


_PK_SQL = """
    SELECT a.attname::text
      FROM pg_index i
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
     WHERE i.indrelid = format('%%I.%%I', %s::text, %s::text)::regclass AND i.indisprimary
     ORDER BY array_position(i.indkey::int2[], a.attnum)
"""


def _plan(settings: CapaSettings, conn: Any, workers: int) -> dict[str, TableState]:
    dbz = settings.debezium
    tables: dict[str, TableState] = {}
    rows = conn.execute(
        "SELECT p.schemaname::text, p.tablename::text, c.relpages, c.reltuples "
        "FROM pg_publication_tables p "
        "JOIN pg_class c ON c.oid = format('%%I.%%I', p.schemaname, p.tablename)::regclass "
        "WHERE p.pubname = %s ORDER BY c.relpages DESC",
        [dbz.publication],
    ).fetchall()
    for schema, table, relpages, reltuples in rows:
        key = [r[0] for r in conn.execute(_PK_SQL, [schema, table])]
        parts = (
            split_pages(int(relpages), workers, dbz.initial_load_range_pages)
            if key
            else [PageRange(0, 0, None)]  # keyless: one range, through the apply rules
        )
        tables[f"{schema}.{table}"] = TableState(
            schema,
            table,
            raw_table_name(dbz.source_name, schema, table),
            key,
            max(int(reltuples), 0),
            [RangeState(p.index, p.start_page, p.end_page) for p in parts],
        )
    return tables


@dataclass(frozen=True)
class _Task:
    table: TableState
    part: RangeState


class InitialSync:
    """Runs (or resumes) the fast initial sync for the configured source."""

    def __init__(
        self,
        settings: CapaSettings,
        warehouse: LocalWarehouse,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()
        self.warehouse = warehouse
        self.dsn = settings.postgres.dsn()
        dbz = settings.debezium
        self.workers = dbz.initial_load_workers or os.cpu_count() or 1
        self.file = StateFile(state_path(settings.state_dir, dbz.engine_name))
        self._locks: dict[str, threading.Lock] = {}
        self._errors: list[BaseException] = []
        self._started = time.time()

    # --- entry points --------------------------------------------------------------------

    def run_fresh(self) -> SyncState:
        import psycopg

        dbz = self.settings.debezium
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            ensure_publication(conn, dbz.publication, dbz.table_include_list)
        snapshot = export_slot(self.dsn, dbz.slot_name)
        try:
            with self._in_snapshot(snapshot) as conn:
                tables = _plan(self.settings, conn, self.workers)
            state = SyncState(dbz.slot_name, snapshot.lsn, tables=tables)
            self.file.save(state)
            logger.info(
                "initial sync: slot %s at %s, %d table(s), %d range(s), %d reader(s)",
                dbz.slot_name,
                snapshot.lsn,
                len(tables),
                sum(len(t.ranges) for t in tables.values()),
                self.workers,
            )
            self._copy(state, snapshot, resumed=False)
        finally:
            snapshot.connection.close()
        return state

    def resume(self) -> SyncState:
        state = self.file.load()
        assert state is not None
        if not slot_exists(self.dsn, state.slot):
            raise SlotLost(
                f"replication slot {state.slot!r} of the unfinished initial sync is gone; "
                f"delete {self.file.path} (and the raw replicas it wrote) to copy again"
            )
        snapshot = export_slot(self.dsn, f"{state.slot}_resume", temporary=True)
        state.resumed_at = time.time()
        self._started = state.resumed_at
        todo = sum(not r.done for t in state.tables.values() for r in t.ranges)
        logger.info(
            "initial sync: resuming %d unfinished range(s) at %s (slot %s holds %s)",
            todo,
            snapshot.lsn,
            state.slot,
            state.lsn,
        )
        try:
            self._copy(state, snapshot, resumed=True)
        finally:
            snapshot.connection.close()
        return state

    # --- copying -------------------------------------------------------------------------

    def _copy(self, state: SyncState, snapshot: Snapshot, *, resumed: bool) -> None:
        tasks: queue.Queue[_Task] = queue.Queue()
        for table in state.tables.values():
            self._locks[table.raw] = threading.Lock()
            for part in table.ranges:
                if not part.done:
                    tasks.put(_Task(table, part))
        with self._in_snapshot(snapshot) as conn:
            specs = {
                name: reader.column_specs(source_columns(conn, t.schema, t.table))
                for name, t in state.tables.items()
            }
        preparing = threading.Thread(
            target=self._prepare_tables, args=(state, specs), name="initial-sync-tables"
        )
        preparing.start()  # creates the tables while the readers read their first ranges
        stop = threading.Event()
        monitor = threading.Thread(
            target=self._monitor, args=(state, stop), name="initial-sync-progress", daemon=True
        )
        monitor.start()
        threads = [
            threading.Thread(
                target=self._worker,
                args=(tasks, state, snapshot, specs, resumed),
                name=f"initial-sync-{i}",
            )
            for i in range(min(self.workers, max(tasks.qsize(), 1)))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        preparing.join()
        stop.set()
        monitor.join()
        if self._errors:
            raise self._errors[0]
        if self.stop.is_set():
            logger.info("initial sync stopped; finished ranges are kept")
            return
        state.status, state.finished_at = DONE, time.time()
        self.file.save(state)
        self._log_progress(state)
        total = sum(t.rows_done for t in state.tables.values())
        logger.info(
            "initial sync done: %d row(s) in %.1f s; streaming starts from slot %s at %s",
            total,
            state.finished_at - state.started_at,
            state.slot,
            state.lsn,
        )

    def _prepare_tables(self, state: SyncState, specs: dict[str, list[reader.ColumnSpec]]) -> None:
        """Create the replica and changelog of each keyed table whose column types are all
        known before reading (no parsed column: creating it later would change the column
        order); failures are left to the readers, which create or evolve tables anyway."""
        for name, table in state.tables.items():
            types = {s.name: s.fast for s in specs[name]}
            if not table.primary_key or None in types.values():
                continue
            try:
                self.warehouse.prepare_snapshot(table.raw, types, self._locks[table.raw])
            except Exception as exc:  # the readers meet it again
                logger.debug("initial sync: creating %s ahead failed: %s", table.raw, exc)

    def _worker(
        self,
        tasks: queue.Queue[_Task],
        state: SyncState,
        snapshot: Snapshot,
        specs: dict[str, list[reader.ColumnSpec]],
        resumed: bool,
    ) -> None:
        try:
            with self._adbc_snapshot(snapshot) as cursor:
                while not self._errors and not self.stop.is_set():
                    try:
                        task = tasks.get_nowait()
                    except queue.Empty:
                        return
                    name = f"{task.table.schema}.{task.table.table}"
                    rows = self._copy_range(cursor, task, specs[name], snapshot, resumed)
                    task.part.rows, task.part.done = rows, True
                    self.file.save(state)
        except BaseException as exc:  # surfaced by _copy
            logger.error("initial sync reader failed: %s", exc)
            self._errors.append(exc)

    def _copy_range(
        self,
        cursor: Any,
        task: _Task,
        specs: list[reader.ColumnSpec],
        snapshot: Snapshot,
        resumed: bool,
    ) -> int:
        table, part = task.table, task.part
        started = time.monotonic()
        cursor.execute(reader.range_query(table.schema, table.table, specs, part.page_range()))
        data = cursor.fetch_arrow_table()
        position = snapshot.position
        if not table.primary_key:
            return self._copy_keyless(table, data, specs, position, resumed)
        typed, types = reader.typed_columns(data, specs)
        del data
        read = time.monotonic()
        rows = self.warehouse.load_snapshot(
            table.raw,
            typed,
            types,
            table.primary_key,
            position=position,
            commit_ts=datetime.now(UTC),
            load_id=f"{table.raw}:{position}:{part.index}",
            merge=resumed,
            schema_lock=self._locks[table.raw],
        )
        logger.debug(
            "range %d of %s.%s: %d rows read in %.2f s, written in %.2f s",
            part.index,
            table.schema,
            table.table,
            rows,
            read - started,
            time.monotonic() - read,
        )
        return rows

    def _copy_keyless(
        self,
        table: TableState,
        data: pa.Table,
        specs: list[reader.ColumnSpec],
        position: str,
        resumed: bool,
    ) -> int:
        """A keyless table through the apply rules (row ids, row hashes, duplicates)."""
        with self._locks[table.raw]:
            if resumed:
                self.warehouse.discard_snapshot_reads(table.raw)
            columns = tuple(Column(s.name, s.source_type) for s in specs)
            rows = reader.canonical_rows(data, specs)
            ordinals = SnapshotOrdinals()
            commit_ts_us = int(time.time() * 1_000_000)
            for start in range(0, len(rows), KEYLESS_BATCH):
                events = [
                    ordinals.number(self._read_event(table, row, columns, position, commit_ts_us))
                    for row in rows[start : start + KEYLESS_BATCH]
                ]
                self.warehouse.apply(events)
            if resumed:
                self.warehouse.raise_watermark(table.raw, position)
            return len(rows)

    def _read_event(
        self,
        table: TableState,
        row: dict[str, Any],
        columns: tuple[Column, ...],
        position: str,
        commit_ts_us: int,
    ) -> ChangeEvent:
        return ChangeEvent(
            source=self.settings.debezium.source_name,
            source_kind=SourceKind.POSTGRES,
            database=self.settings.postgres.database,
            schema=table.schema,
            table=table.table,
            op=Op.READ,
            position=position,
            commit_ts_us=commit_ts_us,
            primary_key=(),
            key={},
            before=None,
            after=row,
            columns=columns,
            origin="initial-sync",
        )

    # --- connections ---------------------------------------------------------------------

    @contextmanager
    def _in_snapshot(self, snapshot: Snapshot) -> Iterator[Any]:
        import psycopg

        with psycopg.connect(self.dsn) as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.execute(f"SET TRANSACTION SNAPSHOT '{_snapshot_name(snapshot.name)}'")
            yield conn
            conn.rollback()

    @contextmanager
    def _adbc_snapshot(self, snapshot: Snapshot) -> Iterator[Any]:
        import adbc_driver_postgresql.dbapi as adbc

        with adbc.connect(self.dsn, autocommit=True) as conn, conn.cursor() as cursor:
            cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cursor.execute(f"SET TRANSACTION SNAPSHOT '{_snapshot_name(snapshot.name)}'")
            yield cursor
            cursor.execute("ROLLBACK")

    # --- progress ------------------------------------------------------------------------

    def _monitor(self, state: SyncState, stop: threading.Event) -> None:
        interval = self.settings.debezium.initial_load_log_interval_s
        while not stop.wait(interval):
            self._log_progress(state)

    def _log_progress(self, state: SyncState) -> None:
        elapsed = time.time() - self._started
        for table in state.tables.values():
            logger.info("initial sync %s", progress_line(table_progress(table, elapsed)))


_SNAPSHOT_NAME = re.compile(r"^[0-9A-F-]+$")


def _snapshot_name(name: str) -> str:
    """An exported snapshot id (``00000003-0000004F-1``), checked before it is spliced into
    SET TRANSACTION SNAPSHOT (which takes no bind parameters)."""
    if not _SNAPSHOT_NAME.match(name):
        raise TerminalError(f"unexpected exported snapshot name {name!r}")
    return name


def run_initial_sync(
    settings: CapaSettings, *, offsets_exist: bool, stop: threading.Event | None = None
) -> bool:
    """Run, resume or skip the fast initial sync; True when Debezium must start with
    ``snapshot.mode=no_data`` (the sync did, or had done, the initial copy)."""
    dsn = settings.postgres.dsn()
    mode = decide(settings, slot_exists(dsn, settings.debezium.slot_name), offsets_exist)
    if mode in ("debezium",):
        return False
    if mode == DONE:
        return True
    from capa.warehouse import open_warehouse

    warehouse = open_warehouse(settings.warehouse)
    if not isinstance(warehouse, LocalWarehouse):
        return False
    sync = InitialSync(settings, warehouse, stop)
    if mode == "resume":
        sync.resume()
    else:
        sync.run_fresh()
    return True


__all__: Sequence[str] = ("COPYING", "InitialSync", "SlotLost", "decide", "run_initial_sync")
