"""A replication slot dropped behind capa's back (issue #23 item 6): a clear error, no gap.

Real PostgreSQL 15 + the bridge as a process (embedded Debezium 3.6.3). Measured before the
fix: with Debezium offsets, Debezium refuses to stream from a missing or re-made slot, but
only with its own advice ("Reconfigure the connector to use a snapshot mode when needed");
after the fast initial sync, before Debezium has written an offset, it silently made a new
slot (``snapshot.mode=no_data``) and the rows written meanwhile never arrived. The bridge
must stop with :class:`capa.errors.SlotLost` naming the slot, the resume LSN and the
re-sync, exit non-zero, and leave no new slot behind.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from service_support import capture_settings, drop_capture, start_bridge

from capa.config import CapaSettings
from capa.position import parse_pg_lsn
from capa_app.stack.base import tail, wait_for
from connectors.debezium.engine import offsets_file
from connectors.kafka.consumer import ChangeEventDecoder, read_topic
from connectors.pgsync.progress import initial_sync_status


@dataclass
class Capture:
    settings: CapaSettings
    dsn: str
    table: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def slot(self) -> str:
        return self.settings.debezium.slot_name

    def start(self, initial_load: str = "debezium") -> None:
        self.proc = start_bridge(self.settings, self.log, initial_load=initial_load)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(90)

    def exit_code(self) -> int:
        """The bridge's exit code once it stops by itself (it must not hang or loop)."""
        assert self.proc is not None
        return self.proc.wait(240)

    def insert(self, *ids: int) -> int:
        """Insert rows; the WAL position after them."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for row_id in ids:
                conn.execute(f'INSERT INTO public."{self.table}" VALUES (%s)', (row_id,))
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        return parse_pg_lsn(row[0])

    def confirmed_past(self, lsn: int) -> bool:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                (self.slot,),
            ).fetchone()
        return row is not None and row[0] is not None and parse_pg_lsn(row[0]) >= lsn

    def slot_exists(self) -> bool:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return (
                conn.execute(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)
                ).fetchone()
                is not None
            )

    def drop_slot(self) -> None:
        """``pg_drop_replication_slot``; while streaming, its walsender is ended first (the
        engine may take the slot back in between: try again)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:

            def dropped() -> bool:
                conn.execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                    "WHERE slot_name = %s AND active_pid IS NOT NULL",
                    (self.slot,),
                )
                try:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (self.slot,))
                except psycopg.errors.ObjectInUse:
                    return False
                return True

            assert wait_for(dropped, 60, interval=0.05)

    def ids(self) -> list[int]:
        kafka = self.settings.kafka
        decoder = ChangeEventDecoder()
        events = [decoder.decode(m.value()) for m in read_topic(kafka.bootstrap, kafka.topic)]
        return sorted(int(e.key["id"]) for e in events if e.table == self.table)

    def wait_ids(self, count: int) -> None:
        kafka = self.settings.kafka
        read_topic(kafka.bootstrap, kafka.topic, until=lambda m: len(m) >= count, timeout_s=150)


@pytest.fixture()
def capture(
    capa_settings: CapaSettings, kafka: Any, postgres: Any, tmp_path: Path
) -> Iterator[Capture]:
    suffix = uuid.uuid4().hex[:8]
    table = f"slot_{suffix}"
    settings = capture_settings(
        capa_settings, kafka, tmp_path, "sl", suffix, f"public.{table}", partitions=1
    )
    debezium = settings.debezium
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE public."{table}" (id int PRIMARY KEY)')
    run = Capture(settings, postgres.dsn, table, tmp_path / "bridge.log")
    yield run
    if run.proc is not None and run.proc.poll() is None:
        run.proc.kill()
        run.proc.wait(30)
    sys.stderr.write(f"\n----- bridge log tail ({run.log}) -----\n{tail(run.log, 40)}\n")
    drop_capture(postgres.dsn, debezium.slot_name, debezium.publication, table)


def _assert_slot_lost(capture: Capture, resume: str) -> None:
    assert capture.exit_code() != 0
    log = capture.log.read_text()
    told = [ln for ln in log.splitlines() if f"replication slot '{capture.slot}'" in ln]
    assert told, tail(capture.log, 30)
    assert resume in told[-1] and "re-sync the tables" in told[-1], told[-1]
    assert str(offsets_file(capture.settings)) in told[-1]
    assert not capture.slot_exists(), "a new slot was made: changes would be skipped silently"


def test_a_slot_dropped_while_the_bridge_is_stopped_stops_it_at_start(capture: Capture) -> None:
    capture.insert(1)
    capture.start()
    capture.wait_ids(1)
    streamed = capture.insert(2)
    assert wait_for(lambda: capture.confirmed_past(streamed), 120)  # offsets are on disk
    assert capture.stop() == 0
    capture.insert(3)
    capture.start()  # a healthy restart passes the check and streams on
    capture.wait_ids(3)
    streamed = capture.insert(4)
    assert wait_for(lambda: capture.confirmed_past(streamed), 120)
    assert capture.stop() == 0
    capture.drop_slot()
    capture.insert(5)  # written while no slot holds the changes
    capture.start()
    _assert_slot_lost(capture, "(Debezium offsets)")
    assert capture.ids() == [1, 2, 3, 4]


def test_a_slot_dropped_after_the_fast_initial_sync_is_not_made_again(capture: Capture) -> None:
    """The initial sync finished, the bridge stopped before Debezium wrote an offset (here:
    the offsets removed, as after a stop right behind the sync), the slot is dropped: the
    sync's position is the resume point."""
    capture.insert(1, 2)
    capture.start("fast")

    def synced() -> bool:
        status = initial_sync_status(capture.settings)
        return status is not None and status["status"] == "done"

    assert wait_for(lambda: synced() or capture.proc.poll() is not None, 180)  # type: ignore[union-attr]
    assert capture.stop() == 0
    offsets_file(capture.settings).unlink(missing_ok=True)
    capture.drop_slot()
    capture.insert(3)
    capture.start("fast")
    _assert_slot_lost(capture, "(initial sync)")


def test_a_slot_dropped_while_streaming_stops_the_bridge_clearly(capture: Capture) -> None:
    capture.insert(1)
    capture.start()
    capture.wait_ids(1)
    streamed = capture.insert(2)
    assert wait_for(lambda: capture.confirmed_past(streamed), 120)
    capture.drop_slot()
    capture.insert(3)
    _assert_slot_lost(capture, "(Debezium offsets)")
    assert "capture stopped" in capture.log.read_text()
