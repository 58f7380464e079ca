"""The fast initial sync on the real PostgreSQL, end to end: the bridge copies a few tables in
parallel CTID ranges inside the slot's exported snapshot (a mixed-case name, special values,
a keyless table with duplicates), then Debezium streams only the later changes from the same
slot through Kafka and the streaming apply job; ``capa verify`` is equal after each phase.
A bridge killed with SIGKILL mid-copy resumes without copying its finished ranges again.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from service_support import capture_settings, drop_capture, start_bridge

from capa.config import CapaSettings
from capa.events import Op
from capa.verify import verify_postgres_local
from capa_app.stack.base import tail, wait_for
from connectors.kafka.consumer import ChangeEventDecoder, read_topic
from connectors.pgsync.progress import StateFile, initial_sync_status, state_path

ACCOUNTS = 3000
SPECIALS = [
    (1, "infinity", "-infinity", '{"a": [1, 2]}', b"\x00\xff", [1, None, 3], "1 year 2 days", 1.5),
    (2, "2024-02-29", "2024-02-29 12:34:56.789", "null", b"", [7], "-3 hours", 2.5),
    (3, None, None, None, None, None, None, None),
    (4, "0001-01-01", "294276-12-31 23:59:59", '"quote \' here"', b"x", [None], "0", float("nan")),
]
KEYLESS = [("info", 1)] * 3 + [("warn", 2)] * 2 + [("info", None)]


@pytest.fixture()
def fast(
    capa_settings: CapaSettings, kafka: Any, postgres: Any, tmp_path: Path
) -> Iterator[dict[str, Any]]:
    suffix = uuid.uuid4().hex[:8]
    schema = f"Sync_{suffix}"
    settings = capture_settings(
        capa_settings,
        kafka,
        tmp_path,
        "sy",
        suffix,
        f"{schema}\\..*",
        initial_load="fast",
        initial_load_workers=2,
        initial_load_range_pages=4,  # many small ranges in parallel
        initial_load_log_interval_s=0.5,
    )
    debezium = settings.debezium
    procs: list[subprocess.Popen[bytes]] = []
    yield {"settings": settings, "schema": schema, "procs": procs, "tmp": tmp_path}
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    sys.stderr.write(f"\n--- bridge log tail ---\n{tail(tmp_path / 'bridge.log', 40)}\n")
    drop_capture(postgres.dsn, debezium.slot_name, debezium.publication, None, schema=schema)


def create_tables(dsn: str, schema: str, accounts: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(
            f'CREATE TABLE "{schema}"."Accounts" ("Id" bigint PRIMARY KEY, name text NOT NULL, '
            "balance numeric(12,2), opened timestamptz, flag boolean, code char(3))"
        )
        conn.execute(
            f'INSERT INTO "{schema}"."Accounts" SELECT g, $$name "$$ || g, g * 1.25, '
            "timestamptz '2026-01-01 00:00+00' + g * interval '1 minute', g % 2 = 0, "
            f"lpad((g % 1000)::text, 3, '0') FROM generate_series(1, {accounts}) g"
        )
        conn.execute(
            f'CREATE TABLE "{schema}".specials (id int PRIMARY KEY, d date, ts timestamp, '
            "j jsonb, b bytea, arr int[], iv interval, f float8, u uuid DEFAULT gen_random_uuid())"
        )
        conn.cursor().executemany(
            f'INSERT INTO "{schema}".specials (id, d, ts, j, b, arr, iv, f) '
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            SPECIALS,
        )
        conn.execute(f'CREATE TABLE "{schema}".keyless_log (level text, n integer)')
        conn.execute(f'ALTER TABLE "{schema}".keyless_log REPLICA IDENTITY FULL')
        conn.cursor().executemany(f'INSERT INTO "{schema}".keyless_log VALUES (%s, %s)', KEYLESS)
        conn.execute("ANALYZE")  # reltuples: the progress estimate


def change_tables(dsn: str, schema: str) -> None:
    """Changes after the snapshot point, ending with a marker row."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'UPDATE "{schema}"."Accounts" SET balance = balance + 1 WHERE "Id" % 7 = 0')
        conn.execute(f'DELETE FROM "{schema}"."Accounts" WHERE "Id" % 11 = 0')
        conn.execute(
            f'INSERT INTO "{schema}"."Accounts" ("Id", name) '
            "SELECT g, 'new' FROM generate_series(100001, 100050) g"
        )
        conn.execute(f"UPDATE \"{schema}\".specials SET d = '2025-01-01', f = 3.5 WHERE id = 2")
        conn.execute(f'DELETE FROM "{schema}".specials WHERE id = 3')
        one = f'SELECT ctid FROM "{schema}".keyless_log WHERE level = $$info$$ LIMIT 1'
        conn.execute(f'DELETE FROM "{schema}".keyless_log WHERE ctid = ({one})')
        conn.execute(f"UPDATE \"{schema}\".keyless_log SET n = 5 WHERE level = 'warn'")
        conn.execute(f"INSERT INTO \"{schema}\".keyless_log VALUES ('end', 0)")


def start_apply(settings: CapaSettings, tmp: Path) -> subprocess.Popen[bytes]:
    kafka = settings.kafka
    argv = [
        *(sys.executable, "-m", "beam_jobs.streaming_apply", "--bootstrap", kafka.bootstrap),
        *("--topic", kafka.topic, "--dlq_topic", kafka.dlq_topic),
        *("--warehouse", f"local:{settings.warehouse.path}"),  # type: ignore[union-attr]
        *("--consumer_group", f"sy-{uuid.uuid4().hex[:8]}", "--log_interval_s", "1"),
    ]
    with (tmp / "apply.log").open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


def sync_done(settings: CapaSettings) -> bool:
    status = initial_sync_status(settings)
    return status is not None and status["status"] == "done"


def verify(postgres: Any, settings: CapaSettings, schema: str) -> list[Any]:
    lake = settings.warehouse.path  # type: ignore[union-attr]
    return verify_postgres_local(postgres.dsn, settings.debezium.source_name, schema, lake)


def until_equal(postgres: Any, settings: CapaSettings, schema: str, job: Any, tmp: Path) -> None:
    deadline, diffs = time.monotonic() + 150, None
    while time.monotonic() < deadline and (diffs is None or not all(d.ok for d in diffs)):
        assert job.poll() is None, f"the apply job exited: {tail(tmp / 'apply.log', 40)}"
        time.sleep(2)
        diffs = verify(postgres, settings, schema)
    assert diffs is not None and all(d.ok for d in diffs), (diffs, tail(tmp / "apply.log", 30))


def test_fast_sync_then_streaming_is_equal(fast: dict[str, Any], kafka: Any, postgres: Any) -> None:
    settings, schema, tmp = fast["settings"], fast["schema"], fast["tmp"]
    create_tables(postgres.dsn, schema, ACCOUNTS)
    bridge = start_bridge(settings, tmp / "bridge.log", initial_load=None)
    fast["procs"].append(bridge)
    assert wait_for(lambda: sync_done(settings) or bridge.poll() is not None, 120)
    assert bridge.poll() is None, tail(tmp / "bridge.log", 40)

    status = initial_sync_status(settings)
    assert status is not None
    accounts = next(t for t in status["tables"] if t["table"] == f"{schema}.Accounts")
    assert accounts["rows_done"] == ACCOUNTS and accounts["ranges_total"] > 2
    assert accounts["ranges_done"] == accounts["ranges_total"] and accounts["eta_s"] == 0
    assert all(d.ok for d in verify(postgres, settings, schema))  # the bulk copy alone
    log = (tmp / "bridge.log").read_text()
    assert f"initial sync {schema}.Accounts: {ACCOUNTS}/{ACCOUNTS} rows (100%)" in log

    change_tables(postgres.dsn, schema)
    decoder = ChangeEventDecoder()
    events: list[Any] = []

    def end_seen(messages: list[Any]) -> bool:
        events[:] = [decoder.decode(m.value()) for m in messages]
        return any(e.after is not None and e.after.get("level") == "end" for e in events)

    read_topic(kafka.bootstrap, settings.kafka.topic, until=end_seen, timeout_s=90)
    assert events and not [e for e in events if e.op is Op.READ]  # streamed changes only
    job = start_apply(settings, tmp)
    fast["procs"].append(job)
    until_equal(postgres, settings, schema, job, tmp)


def test_killed_sync_resumes_without_copying_finished_ranges(
    fast: dict[str, Any], postgres: Any
) -> None:
    settings, schema, tmp = fast["settings"], fast["schema"], fast["tmp"]
    debezium = settings.debezium.model_copy(
        update={"initial_load_workers": 1, "initial_load_range_pages": 16}
    )
    settings = settings.model_copy(update={"debezium": debezium})
    create_tables(postgres.dsn, schema, 30 * ACCOUNTS)
    state_file = StateFile(state_path(settings.state_dir, debezium.engine_name))

    def some_ranges_done() -> bool:
        state = state_file.load() if state_file.path.exists() else None
        return state is not None and state.tables[f"{schema}.Accounts"].ranges[2].done

    first = start_bridge(settings, tmp / "bridge.log", initial_load=None)
    fast["procs"].append(first)
    assert wait_for(some_ranges_done, 120, interval=0.01)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    killed = state_file.load()
    assert killed is not None and killed.status == "copying"
    accounts = killed.tables[f"{schema}.Accounts"]
    finished = {r.index for r in accounts.ranges if r.done}
    assert finished and len(finished) < len(accounts.ranges)

    change_tables(postgres.dsn, schema)  # between the slot's point and the resumed snapshot
    second = start_bridge(settings, tmp / "bridge.log", initial_load=None)
    fast["procs"].append(second)
    assert wait_for(lambda: sync_done(settings) or second.poll() is not None, 120)
    log = (tmp / "bridge.log").read_text()
    unfinished = sum(not r.done for t in killed.tables.values() for r in t.ranges)
    assert f"initial sync: resuming {unfinished} unfinished range(s)" in log
    job = start_apply(settings, tmp)
    fast["procs"].append(job)
    until_equal(postgres, settings, schema, job, tmp)
