"""Fault injection: a live pipeline under ``kill -9``, then the oracle.

The driver starts a throwaway local stack (Kafka, PostgreSQL, the Debezium bridge and the
streaming apply job, through :class:`capa_app.stack.Stack`), runs the randomized
:class:`capa_app.workload.Workload` in a thread at a steady rate, and meanwhile kills one
component at a time with SIGKILL (by the PID of its Service record, never by name), keeps
it down for a moment and restarts it through its Service. After the workload it quiesces
(the replication slot has confirmed every WAL byte the workload wrote, and the apply job's
committed offsets reach the end of the topic twice in a row) and compares every source
table with its replica (:func:`capa.verify.verify_postgres_local`).

    from capa_app.chaos.harness import ChaosPlan, run_chaos
    report = run_chaos(ChaosPlan(events=4_000, faults=3))
    assert report.ok, report.lines()

``python -m capa_app.chaos`` is the long run; ``tests/integration/test_chaos.py`` the short one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capa.config import CapaSettings, LocalWarehouseConfig
from capa.errors import CapaError
from capa.verify import TableDiff, verify_postgres_local
from capa_app.chaos.poison import (
    HOSTILE_TABLES,
    MAX_MESSAGE_BYTES,
    PoisonInjector,
    PoisonReport,
    check_poison,
)
from capa_app.stack import Stack
from capa_app.stack.base import Service, process_start_ticks, tail, wait_for
from capa_app.stack.throwaway import throwaway_settings
from capa_app.workload import DEFAULT_TABLES, Workload

logger = logging.getLogger(__name__)

#: Components a fault can hit, in the order a schedule cycles through them.
FAULT_KINDS: tuple[str, ...] = ("apply", "debezium", "kafka")
PIPELINE: tuple[str, ...] = ("kafka", "postgres", "debezium", "apply")
MARKER_TABLE = "chaos_marker"  # one row written after the workload: the quiesce marker


class ChaosError(CapaError):
    """The chaos run itself could not proceed (a component did not come back, no quiesce)."""


@dataclass(frozen=True)
class ChaosPlan:
    """What one chaos run does."""

    events: int = 4_000  # row changes the workload commits
    faults: int = 3  # kill -9 faults, every kind once per round (in random order)
    rate: float = 150.0  # workload row changes per second
    seed: int = 0
    kinds: tuple[str, ...] = FAULT_KINDS
    truncate_every: int = 0  # 1-in-N changes is a TRUNCATE (0 = none)
    max_down_s: float = 3.0  # a killed component stays down for 0..max_down_s seconds
    quiesce_timeout_s: float = 600.0
    poison_every: int = 0  # 1-in-N row changes is followed by a poison record (0 = none)


@dataclass
class ChaosReport:
    """Numbers of one run; ``ok`` means nothing lost, duplicated or different."""

    plan: ChaosPlan
    events: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    unexpected_exits: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    workload_seconds: float = 0.0
    quiesce_seconds: float = 0.0
    diffs: list[TableDiff] = field(default_factory=list)
    workload: dict[str, int] = field(default_factory=dict)
    poison: PoisonReport | None = None

    @property
    def missing(self) -> int:
        return sum(len(d.missing) for d in self.diffs)

    @property
    def extra(self) -> int:
        return sum(len(d.extra) for d in self.diffs)

    @property
    def different(self) -> int:
        return sum(len(d.different) for d in self.diffs)

    @property
    def source_rows(self) -> int:
        return sum(d.source_rows for d in self.diffs)

    @property
    def replica_rows(self) -> int:
        return sum(d.replica_rows for d in self.diffs)

    @property
    def ok(self) -> bool:
        counts_equal = all(d.source_rows == d.replica_rows for d in self.diffs)
        rows_ok = bool(self.diffs) and counts_equal and all(d.ok for d in self.diffs)
        return rows_ok and (self.poison is None or self.poison.ok)

    def fault_summary(self) -> str:
        return ", ".join(f"{kind} {self.faults[kind]}" for kind in self.plan.kinds)

    def lines(self) -> list[str]:
        """A human-readable report (one fact per line)."""
        exits = ", ".join(f"{k} {v}" for k, v in sorted(self.unexpected_exits.items())) or "none"
        out = [
            f"events (row changes committed): {self.events} {self.workload}",
            f"faults (kill -9): {sum(self.faults.values())} ({self.fault_summary()})",
            f"unexpected exits (restarted): {exits}",
            f"seconds: {self.seconds:.0f} total, {self.workload_seconds:.0f} workload, "
            f"{self.quiesce_seconds:.0f} quiesce",
            f"tables: {len(self.diffs)}, source rows {self.source_rows}, "
            f"replica rows {self.replica_rows}",
            f"lost rows (missing): {self.missing}",
            f"duplicated rows (extra): {self.extra}",
            f"different rows: {self.different}",
        ]
        out += self.poison.lines() if self.poison is not None else []
        out.append(f"result: {'OK' if self.ok else 'MISMATCH'}")
        out += [
            f"  {d.table}: {d.source_rows} vs {d.replica_rows}; missing {d.missing[:5]} "
            f"extra {d.extra[:5]} different {d.different[:5]}"
            for d in self.diffs
            if not d.ok
        ]
        return out


def chaos_settings(state_dir: Path, *, poison: bool = False) -> CapaSettings:
    """Throwaway settings: free ports, everything (lakehouse too) under ``state_dir``.

    With ``poison`` the record-size limit is the smallest allowed (1 MiB), so an oversize
    row costs little more than that."""
    base = throwaway_settings(state_dir)
    # Debezium's snapshot: the run waits for the apply job's first batch (the tables are
    # empty, so the fast initial sync would leave it nothing to apply before the faults)
    debezium = base.debezium.model_copy(
        update={"heartbeat_interval_ms": 1000, "initial_load": "debezium"}
    )
    warehouse = LocalWarehouseConfig(path=(state_dir / "lakehouse").resolve())
    update: dict[str, Any] = {"debezium": debezium, "warehouse": warehouse}
    if poison:
        update["kafka"] = base.kafka.model_copy(update={"max_message_bytes": MAX_MESSAGE_BYTES})
    return base.model_copy(update=update)


# --- killing and restarting by PID -------------------------------------------------------


def _gone(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap our own child so it does not stay a zombie
    return process_start_ticks(pid) is None


def kill9(service: Service) -> int:
    """SIGKILL the process of ``service``'s PID record; returns the PID."""
    record = service.running()
    if record is None:
        raise ChaosError(f"{service.name} is not running; cannot inject a fault")
    os.kill(record.pid, signal.SIGKILL)
    if not wait_for(lambda: _gone(record.pid), 15.0, interval=0.05):
        raise ChaosError(f"{service.name} pid {record.pid} survived SIGKILL for 15s")
    logger.info("kill -9 %s pid=%d", service.name, record.pid)
    return record.pid


class ChaosRun:
    """One run over a live stack in ``settings.state_dir`` (started and stopped here)."""

    def __init__(self, settings: CapaSettings, plan: ChaosPlan) -> None:
        self.plan = plan
        self.stack = Stack(settings)
        self.settings = self.stack.provision()  # the PostgreSQL password, as `capa up` makes it
        self.rng = random.Random(plan.seed)
        self.report = ChaosReport(plan)
        self.dsn = self.settings.postgres.dsn()
        self.lakehouse = Path(settings.warehouse.path)  # type: ignore[union-attr]
        self._workload: Workload | None = None
        self._workload_error: BaseException | None = None
        poison_rng = random.Random(plan.seed + 1)  # its own: it runs in the workload thread
        self.poison = PoisonInjector(self.settings, poison_rng) if plan.poison_every else None

    # --- lifecycle -----------------------------------------------------------------------

    def run(self) -> ChaosReport:
        started = time.monotonic()
        try:
            self.start()
            self.inject_during_workload()
            self.quiesce()
            self.verify()
        except BaseException:
            self.dump_logs()
            raise
        finally:
            self.report.seconds = time.monotonic() - started
            if self.poison is not None:
                self.poison.close()
            self.stack.down()
        return self.report

    def verify(self) -> None:
        """The oracle: every compared table row for row, then (poison mode) the dead letters."""
        source = self.settings.debezium.source_name
        if self.poison is None:
            self.report.diffs = verify_postgres_local(self.dsn, source, "public", self.lakehouse)
            return
        tables = self.poison.compared_tables()
        self.report.diffs = verify_postgres_local(
            self.dsn, source, "public", self.lakehouse, tables=tables
        )
        self.report.poison = check_poison(self.poison, self.lakehouse, self.report.diffs)

    def start(self) -> None:
        self.stack.up(["kafka", "postgres"], strict=True)
        tables = DEFAULT_TABLES + (HOSTILE_TABLES if self.poison is not None else ())
        workload = Workload(
            self.dsn,
            seed=self.plan.seed,
            truncate_every=self.plan.truncate_every,
            tables=tables,
        )
        workload.create_tables()  # before the bridge's snapshot: captured from the start
        if self.poison is not None:
            self.poison.create_tables()
        self._pg_value(
            f'CREATE TABLE IF NOT EXISTS "public"."{MARKER_TABLE}" '
            "(id bigint PRIMARY KEY, n bigint NOT NULL)"
        )
        self._workload = workload
        self.stack.up(["debezium", "apply"], strict=True)
        self.wait_snapshot_applied()

    def wait_snapshot_applied(self, timeout_s: float = 300.0) -> None:
        """Faults start on a flowing pipeline: the apply job has committed the snapshot."""
        status = self.settings.state_dir / "apply-status.json"

        def applied() -> bool:
            self.watchdog()
            try:
                return int(json.loads(status.read_text()).get("events_applied", 0)) > 0
            except (OSError, ValueError):
                return False

        if not wait_for(applied, timeout_s, interval=1.0):
            raise ChaosError(
                f"the apply job applied nothing within {timeout_s:.0f}s (see {status})"
            )

    def dump_logs(self, lines: int = 60) -> None:
        for name in PIPELINE:
            service = self.stack.service(name)
            logger.error(
                "----- %s log tail (%s) -----\n%s",
                name,
                service.log_path,
                tail(service.log_path, lines),
            )

    # --- workload + faults ---------------------------------------------------------------

    def inject_during_workload(self) -> None:
        thresholds = self.fault_thresholds()
        kinds = self.fault_kinds()
        worker = threading.Thread(target=self._run_workload, name="chaos-workload", daemon=True)
        began = time.monotonic()
        worker.start()
        for threshold, kind in zip(thresholds, kinds, strict=True):
            while worker.is_alive() and self._changes() < threshold:
                self.watchdog()
                time.sleep(0.2)
            self.inject(kind)
        while worker.is_alive():
            self.watchdog()
            worker.join(0.5)
        self.report.workload_seconds = time.monotonic() - began
        if self._workload_error is not None:
            raise ChaosError(
                f"the workload failed: {self._workload_error}"
            ) from self._workload_error
        assert self._workload is not None
        self.report.events = self._workload.stats.changes
        self.report.workload = dict(vars(self._workload.stats))

    def fault_thresholds(self) -> list[int]:
        """Random workload progress points (sorted) at which the faults fire."""
        n = self.plan.events
        return sorted(
            self.rng.randint(int(n * 0.05), int(n * 0.9)) for _ in range(self.plan.faults)
        )

    def fault_kinds(self) -> list[str]:
        """Every kind once per round, in a random order per round."""
        kinds: list[str] = []
        while len(kinds) < self.plan.faults:
            round_ = list(self.plan.kinds)
            self.rng.shuffle(round_)
            kinds += round_
        return kinds[: self.plan.faults]

    def _changes(self) -> int:
        return self._workload.stats.changes if self._workload else 0

    def _run_workload(self) -> None:
        assert self._workload is not None
        chunk = max(1, int(self.plan.rate))  # about one second of changes per connection
        began = time.monotonic()
        try:
            while self._workload.stats.changes < self.plan.events:
                self._workload.run(min(chunk, self.plan.events - self._workload.stats.changes))
                if self.poison is not None:
                    due = self._workload.stats.changes // self.plan.poison_every
                    self.poison.inject(due - self.poison.injected)
                ahead = self._workload.stats.changes / self.plan.rate - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)
        except BaseException as exc:
            self._workload_error = exc

    def inject(self, kind: str) -> None:
        self.watchdog()  # a component that died on its own is back before we kill the next
        kill9(self.stack.service(kind))
        self.report.faults[kind] += 1
        time.sleep(self.rng.uniform(0.0, self.plan.max_down_s))
        self.restart(kind)
        self.settle()

    def settle(self, seconds: float = 5.0) -> None:
        """Watch a few seconds after a restart: dependents may exit while it was down."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.watchdog()
            time.sleep(0.5)

    def restart(self, kind: str) -> None:
        if kind == "debezium":
            self.wait_slot_released()
        started = time.monotonic()
        self.stack.service(kind).start()
        logger.info("restarted %s in %.1fs", kind, time.monotonic() - started)

    def watchdog(self) -> None:
        """Restart (and count) a component that exited without being killed by us."""
        for name in PIPELINE:
            service = self.stack.service(name)
            if service.running() is None:
                logger.warning(
                    "%s exited on its own; restarting it. End of %s:\n%s",
                    name,
                    service.log_path,
                    tail(service.log_path, 30),
                )
                self.report.unexpected_exits[name] += 1
                self.restart(name)

    # --- quiesce -------------------------------------------------------------------------

    def quiesce(self) -> None:
        began = time.monotonic()
        deadline = began + self.plan.quiesce_timeout_s
        target = self.write_marker()
        self._until(
            deadline,
            "the replication slot confirms the workload's WAL",
            lambda: self.slot_confirmed(target),
        )
        settled = Counter[str]()

        def caught_up() -> bool:
            settled["zero"] = settled["zero"] + 1 if self._lag() == 0 else 0
            return settled["zero"] >= 2

        self._until(
            deadline,
            "the apply job's committed offsets reach the topic end",
            caught_up,
            interval=3.0,
        )
        self.report.quiesce_seconds = time.monotonic() - began

    def _until(self, deadline: float, what: str, check: Any, interval: float = 1.0) -> None:
        while not check():
            if time.monotonic() >= deadline:
                raise ChaosError(
                    f"no quiesce: waited {self.plan.quiesce_timeout_s:.0f}s until {what}"
                )
            self.watchdog()
            time.sleep(interval)

    def write_marker(self) -> str:
        """The WAL position after the workload, then one captured change beyond it.

        Debezium confirms the commit LSN of the last transaction it shipped, which stays
        below ``pg_current_wal_lsn()`` when the workload's last commit is the last change;
        the marker row is a change past the workload, so confirming it confirms all of it.
        """
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            conn.execute(
                f'INSERT INTO "public"."{MARKER_TABLE}" (id, n) VALUES (1, 1) '
                "ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n + 1"
            )
        assert row is not None
        return str(row[0])

    def slot_confirmed(self, target_lsn: str) -> bool:
        sql = (
            "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots "
            "WHERE slot_name = %s"
        )
        return bool(self._pg_value(sql, target_lsn, self.settings.debezium.slot_name))

    def wait_slot_released(self, timeout_s: float = 60.0) -> None:
        """After a kill the server may hold the slot a moment; the bridge needs it free."""
        sql = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s AND active"
        slot = self.settings.debezium.slot_name
        if not wait_for(lambda: self._pg_value(sql, slot) == 0, timeout_s, interval=0.2):
            raise ChaosError(
                f"replication slot {slot!r} still active {timeout_s:.0f}s after the kill"
            )

    def _pg_value(self, sql: str, *params: Any) -> Any:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(sql, params)  # type: ignore[arg-type]
            row = cur.fetchone() if cur.description else None
        return None if row is None else row[0]

    def _lag(self) -> int | None:
        from capa_app.demo.run import kafka_lag

        try:
            return kafka_lag(self.settings)
        except Exception as exc:  # broker briefly unavailable: not settled yet
            logger.info("lag check failed: %s", exc)
            return None


@contextlib.contextmanager
def chaos_state_dir(keep: bool = False) -> Iterator[Path]:
    """A temp state dir the ``postgres`` OS user can traverse; removed unless ``keep``."""
    import shutil

    from capa_app.stack.throwaway import throwaway_state_dir

    path = throwaway_state_dir("capa-chaos-")
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def run_chaos(plan: ChaosPlan, state_dir: Path | None = None) -> ChaosReport:
    """Run ``plan`` on a throwaway stack (in ``state_dir`` or a temp dir removed afterwards)."""
    if state_dir is not None:
        return ChaosRun(chaos_settings(state_dir), plan).run()
    with chaos_state_dir() as path:
        return ChaosRun(chaos_settings(path), plan).run()
