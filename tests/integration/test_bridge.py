"""The Debezium bridge as a real process: PostgreSQL -> embedded Debezium -> canonical Kafka.

Each test uses its own table, publication, slot, engine name, state dir and topics, so it
shares the session's PostgreSQL and Kafka with other tests without interference.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from service_support import drop_capture, start_bridge

from capa.config import CapaSettings
from capa.events import ChangeEvent, Json, Op
from capa.position import parse_pg_lsn, pg_lsn_text
from capa.warehouse import open_warehouse
from capa_app.stack.base import tail, wait_for
from capa_app.stack.kafka import ensure_topics
from connectors.kafka.consumer import ChangeEventDecoder, read_topic
from connectors.kafka.dlq import dead_letter_from_message


@dataclass
class BridgeRun:
    settings: CapaSettings
    table: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = start_bridge(self.settings, self.log)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(90)

    def events(self, until: Any, timeout_s: float = 150) -> list[ChangeEvent]:
        kafka = self.settings.kafka
        messages = read_topic(kafka.bootstrap, kafka.topic, until=until, timeout_s=timeout_s)
        decoder = ChangeEventDecoder()
        return [decoder.decode(m.value()) for m in messages]


@pytest.fixture()
def bridge(
    capa_settings: CapaSettings, kafka: Any, postgres: Any, tmp_path: Path
) -> Iterator[BridgeRun]:
    suffix = uuid.uuid4().hex[:8]
    table = f"bridge_{suffix}"
    state = tmp_path / "state"
    state.mkdir()
    kafka_config = kafka.config.model_copy(
        update={"topic": f"it.bridge.{suffix}", "dlq_topic": f"it.bridge.dlq.{suffix}"}
    )
    debezium = capa_settings.debezium.model_copy(
        update={
            "source_name": f"it{suffix}",
            "engine_name": f"capa-it-{suffix}",
            "slot_name": f"capa_it_{suffix}",
            "publication": f"capa_it_{suffix}",
            "table_include_list": f"public.{table}",
            "heartbeat_interval_ms": 1000,
        }
    )
    settings = capa_settings.model_copy(
        update={"state_dir": state, "kafka": kafka_config, "debezium": debezium}
    )
    ensure_topics(kafka.admin(), {kafka_config.topic: 3, kafka_config.dlq_topic: 1})
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(
            f'CREATE TABLE "public"."{table}" (id bigserial PRIMARY KEY, name text NOT NULL, '
            "price numeric(12,4), created timestamptz, day date, doc jsonb)"
        )
    run = BridgeRun(settings, table, tmp_path / "bridge.log")
    yield run
    if run.proc is not None and run.proc.poll() is None:
        run.proc.kill()
        run.proc.wait(30)
    sys.stderr.write(f"\n----- bridge log tail ({run.log}) -----\n{tail(run.log, 60)}\n")
    drop_capture(postgres.dsn, debezium.slot_name, debezium.publication, table)


def _insert(dsn: str, table: str, names: list[str]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in names:
            conn.execute(
                f'INSERT INTO "public"."{table}" (name, price, created, day, doc) '
                "VALUES (%s, 12.34, '2024-02-29 11:14:15.123456+00', '2024-02-29', "
                """'{"k": [1, 2]}')""",
                (name,),
            )


def _row_events(events: list[ChangeEvent], table: str) -> list[ChangeEvent]:
    return [e for e in events if e.table == table]


def test_bridge_streams_typed_changes_in_order(bridge: BridgeRun, postgres: Any) -> None:
    _insert(postgres.dsn, bridge.table, ["snap-1", "snap-2"])  # before start: snapshot reads
    bridge.start()
    bridge.events(until=lambda m: len(m) >= 2)
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(
            f'INSERT INTO "public"."{bridge.table}" (name, price) VALUES (%s, %s)',
            ("new", Decimal("99.5000")),
        )
        conn.execute(f'UPDATE "public"."{bridge.table}" SET name = %s WHERE id = 1', ("renamed",))
        conn.execute(f'DELETE FROM "public"."{bridge.table}" WHERE id = 2')
    events = _row_events(bridge.events(until=lambda m: len(m) >= 5), bridge.table)
    events.sort(key=lambda e: (e.position, e.key["id"]))  # partitions interleave; source order
    assert [(e.op, e.key["id"]) for e in events] == [
        (Op.READ, 1),
        (Op.READ, 2),
        (Op.INSERT, 3),
        (Op.UPDATE, 1),
        (Op.DELETE, 2),
    ]
    snap = events[0]
    assert snap.source == bridge.settings.debezium.source_name and snap.origin == "debezium"
    assert snap.after is not None
    assert snap.after["name"] == "snap-1"
    assert snap.after["day"] == date(2024, 2, 29)
    assert isinstance(snap.after["created"], datetime) and snap.after["created"].tzinfo
    assert snap.after["doc"] == Json('{"k": [1, 2]}')
    assert snap.after["price"] == Decimal("12.3400")
    assert str(snap.after["price"]) == "12.3400"  # numeric(12,4): scale kept
    assert events[2].after is not None and events[2].after["price"] == Decimal("99.5")
    assert events[4].before is not None and events[4].before["id"] == 2 and events[4].after is None
    streamed = [e.position for e in events[2:]]
    assert streamed == sorted(streamed) and len(set(streamed)) == 3
    assert max(e.position for e in events[:2]) < streamed[0]
    assert bridge.terminate() == 0  # SIGTERM: clean close


def _write_until(dsn: str, table: str, stop: threading.Event, written: list[int]) -> None:
    """Insert one row per transaction until ``stop`` is set; ``written`` collects the ids."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            row = conn.execute(
                f'INSERT INTO "public"."{table}" (name, price) VALUES (%s, 1.5) RETURNING id',
                (f"row-{len(written)}",),
            ).fetchone()
            assert row is not None
            written.append(int(row[0]))
            stop.wait(0.005)


def test_kill_9_mid_stream_loses_nothing(bridge: BridgeRun, postgres: Any) -> None:
    stop, written = threading.Event(), []
    writer = threading.Thread(target=_write_until, args=(postgres.dsn, bridge.table, stop, written))
    _insert(postgres.dsn, bridge.table, ["before-start"])
    written.append(1)
    bridge.start()
    bridge.events(until=lambda m: len(m) >= 1)  # snapshot done
    writer.start()
    try:
        bridge.events(until=lambda m: len(m) >= 100)  # the bridge is streaming ...
        bridge.kill9()  # ... and dies mid-stream without any cleanup
        at_kill = len(written)
        wait_for(lambda: len(written) >= at_kill + 100, timeout=60)  # rows it has not seen
    finally:
        stop.set()
        writer.join()
    bridge.start()
    total = len(written)
    events = _row_events(
        bridge.events(until=lambda m: len({x.key() for x in m}) >= total), bridge.table
    )
    ids = [e.key["id"] for e in events if e.op in (Op.READ, Op.INSERT)]  # snapshot or stream
    assert set(ids) == set(written)  # nothing missing
    by_id: dict[str, ChangeEvent] = {}
    for event in events:  # redelivered duplicates are recognisable and identical
        assert by_id.setdefault(event.event_id, event) == event
    insert_ids: dict[int, set[str]] = {}
    for event in by_id.values():
        if event.op is Op.INSERT:
            insert_ids.setdefault(event.key["id"], set()).add(event.event_id)
    assert all(len(ids) == 1 for ids in insert_ids.values())  # one change, one event_id
    assert bridge.terminate() == 0


# --- large rows (capa issue #19) -----------------------------------------------------------

MIB = 1024 * 1024


def _insert_returning_lsn(dsn: str, table: str, name: str) -> int:
    """Insert one row (its own transaction); returns the WAL position after its commit."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'INSERT INTO "public"."{table}" (name) VALUES (%s)', (name,))
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return parse_pg_lsn(row[0])


def _slot_confirmed_past(dsn: str, slot: str, lsn: int) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots "
            "WHERE slot_name = %s",
            (pg_lsn_text(lsn), slot),
        ).fetchone()
    return bool(row and row[0])


def test_a_20_mb_row_is_a_dead_letter_and_capture_moves_past_it(
    bridge: BridgeRun, postgres: Any, tmp_path: Path
) -> None:
    """Rows of 20 MB (over the 16 MiB default limit) and 10 MB (under it) between normal
    rows: the normal rows and the 10 MB row arrive whole on the canonical topic (and apply
    to a local replica), the 20 MB row is a dead letter with table, key and position, the
    slot's confirmed_flush_lsn moves past it and the bridge keeps running."""
    dsn, table = postgres.dsn, bridge.table
    _insert(dsn, table, ["before-start"])  # id 1, snapshot read
    bridge.start()
    bridge.events(until=lambda m: len(m) >= 1)
    _insert(dsn, table, ["before"])  # id 2
    huge, large = os.urandom(10 * MIB).hex(), os.urandom(5 * MIB).hex()  # 20 MiB and 10 MiB
    after_huge = _insert_returning_lsn(dsn, table, huge)  # id 3
    _insert_returning_lsn(dsn, table, large)  # id 4
    _insert(dsn, table, ["after"])  # id 5
    events = _row_events(bridge.events(until=lambda m: len(m) >= 4), table)
    by_id = {e.key["id"]: e for e in events}
    assert sorted(by_id) == [1, 2, 4, 5]
    assert by_id[2].after is not None and by_id[2].after["name"] == "before"
    assert by_id[5].after is not None and by_id[5].after["name"] == "after"
    assert by_id[4].after is not None and by_id[4].after["name"] == large  # 10 MiB, whole
    warehouse = open_warehouse(f"local:{tmp_path / 'lake'}")
    warehouse.apply(events)  # what the apply job does with them, minus Beam
    replica = {r["id"]: r for r in warehouse.rows(f"raw.{events[0].table_id}")}
    assert sorted(replica) == [1, 2, 4, 5] and replica[4]["name"] == large

    kafka = bridge.settings.kafka
    [message] = read_topic(kafka.bootstrap, kafka.dlq_topic, until=lambda m: len(m) >= 1)
    letter = dead_letter_from_message(message.value(), message.headers())
    assert f"over kafka.max_message_bytes={16 * MIB}" in letter.reason
    assert letter.origin == "debezium" and letter.source == bridge.settings.debezium.source_name
    assert letter.extra["table"] == f"public.{table}" and letter.extra["key"] == '[["id",3]]'
    assert letter.extra["op"] == "c" and int(letter.extra["event_size"]) > 20 * MIB
    huge_lsn = int(letter.extra["position"].split(".")[0], 16)
    assert by_id[2].position < letter.extra["position"] < by_id[4].position  # source order
    assert len(message.value()) == kafka.dlq_max_value_bytes  # the record's start, cut
    assert dict(message.headers())["capa.dlq.truncated"] == b"true"
    assert int(dict(message.headers())["capa.dlq.size"]) > 20 * MIB  # the original's size

    slot = bridge.settings.debezium.slot_name
    assert huge_lsn < after_huge
    assert wait_for(lambda: _slot_confirmed_past(dsn, slot, after_huge), timeout=60)
    assert bridge.proc is not None and bridge.proc.poll() is None  # still running
    assert bridge.terminate() == 0
