"""A table without a primary key, end to end: real PostgreSQL -> Debezium bridge -> canonical
Kafka topic -> ``capa apply`` (local Delta replica) -> ``capa verify`` (multiset comparison).

The table holds duplicate rows from the start (so Debezium's snapshot carries equal rows at
one position), more duplicates are streamed, and with ``REPLICA IDENTITY FULL`` updates and
deletes of single duplicates (by ``ctid``) and of all of them replicate; redelivering the
whole stream changes nothing. Also recorded: what PostgreSQL does to an UPDATE of a keyless
table with the default replica identity once capa's publication includes it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from service_support import ROOT, bridge_environment, drop_capture, start_bridge

from capa.codec import event_to_json
from capa.config import CapaSettings
from capa.events import ChangeEvent, Op, raw_table_name
from capa.keyless import ROW_ID
from capa.verify import verify_postgres_local
from capa.warehouse.local import LocalWarehouse
from capa_app.stack.base import tail, wait_for
from capa_app.stack.kafka import ensure_topics
from connectors.kafka.consumer import ChangeEventDecoder, read_topic

SEED_ROWS = [("info", "boot", 1)] * 3 + [("warn", "disk", 2)] * 2 + [("info", "tick", None)]


@pytest.fixture()
def capture(
    capa_settings: CapaSettings, kafka: Any, postgres: Any, tmp_path: Path
) -> Iterator[dict[str, Any]]:
    create = "CREATE TABLE {q} (level text, msg text, n integer)"
    with captured(capa_settings, kafka, postgres, tmp_path, [create], SEED_ROWS) as found:
        yield found


@contextmanager
def captured(
    capa_settings: CapaSettings,
    kafka: Any,
    postgres: Any,
    tmp_path: Path,
    create: list[str],
    rows: list[tuple[Any, ...]],
) -> Iterator[dict[str, Any]]:
    """A table made by the ``create`` statements (``{q}``: its quoted name) holding ``rows``,
    captured by a running bridge; everything is dropped afterwards."""
    suffix = uuid.uuid4().hex[:8]
    schema, table = f"kl_{suffix}", "app_log"
    state = tmp_path / "state"
    state.mkdir()
    kafka_config = kafka.config.model_copy(
        update={"topic": f"it.keyless.{suffix}", "dlq_topic": f"it.keyless.dlq.{suffix}"}
    )
    debezium = capa_settings.debezium.model_copy(
        update={
            "source_name": f"kl{suffix}",
            "engine_name": f"capa-kl-{suffix}",
            "slot_name": f"capa_kl_{suffix}",
            "publication": f"capa_kl_{suffix}",
            "table_include_list": f"{schema}.{table}",
            "heartbeat_interval_ms": 1000,
        }
    )
    settings = capa_settings.model_copy(
        update={"state_dir": state, "kafka": kafka_config, "debezium": debezium}
    )
    ensure_topics(kafka.admin(), {kafka_config.topic: 3, kafka_config.dlq_topic: 1})
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        for statement in create:
            conn.execute(statement.format(q=f'"{schema}"."{table}"'))
        values = ", ".join(["%s"] * len(rows[0]))
        conn.cursor().executemany(f'INSERT INTO "{schema}"."{table}" VALUES ({values})', rows)
    log = tmp_path / "bridge.log"
    proc = start_bridge(settings, log)
    try:
        yield {"settings": settings, "schema": schema, "table": table, "proc": proc, "log": log}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        sys.stderr.write(f"\n----- bridge log tail ({log}) -----\n{tail(log, 60)}\n")
        drop_capture(postgres.dsn, debezium.slot_name, debezium.publication, None, schema=schema)


def events_until(settings: CapaSettings, done: Any) -> list[ChangeEvent]:
    decoder = ChangeEventDecoder()
    found: list[ChangeEvent] = []

    def enough(messages: list[Any]) -> bool:
        found[:] = [decoder.decode(m.value()) for m in messages]
        return done(found)

    read_topic(settings.kafka.bootstrap, settings.kafka.topic, until=enough, timeout_s=150)
    return found


def capa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "capa_app.cli", *args], capture_output=True, text=True, check=False
    )


def apply_file(path: Path, events: list[ChangeEvent], lakehouse: Path) -> None:
    path.write_text("".join(json.dumps(event_to_json(e)) + "\n" for e in events))
    applied = capa("apply", "--input", str(path), "--warehouse", f"local:{lakehouse}")
    assert applied.returncode == 0, applied.stdout + applied.stderr


def change_the_table(dsn: str, q: str) -> None:
    """More duplicates; an UPDATE PostgreSQL refuses; then with REPLICA IDENTITY FULL
    updates and deletes of one duplicate (by ctid) and of all of them; an end marker."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.cursor().executemany(
            f"INSERT INTO {q} VALUES (%s, %s, %s)",
            [("info", "tick", None)] * 4 + [("debug", f"m{n % 5}", n % 5) for n in range(40)],
        )
        # PostgreSQL itself refuses this while the table is in the publication without a
        # replica identity: the operator must set REPLICA IDENTITY FULL (docs/architecture.md)
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="replica identity"):
            conn.execute(f"UPDATE {q} SET n = 9 WHERE msg = 'boot'")
        conn.execute(f"ALTER TABLE {q} REPLICA IDENTITY FULL")
        one_boot = f"SELECT ctid FROM {q} WHERE msg = 'boot' LIMIT 1"
        conn.execute(f"UPDATE {q} SET n = 7 WHERE ctid = ({one_boot})")  # one of 3 duplicates
        conn.execute(f"DELETE FROM {q} WHERE ctid = ({one_boot})")  # another one
        conn.execute(f"UPDATE {q} SET level = 'info' WHERE msg = 'm3'")  # all 8 duplicates
        conn.execute(f"DELETE FROM {q} WHERE msg = 'disk'")  # both duplicates
        conn.execute(f"INSERT INTO {q} VALUES ('end', 'end', 0)")


EXPECTED_ROWS = len(SEED_ROWS) + 44 - 1 - 2 + 1


def test_keyless_table_with_duplicates_replicates_and_verifies_as_a_multiset(
    capture: dict[str, Any], postgres: Any, tmp_path: Path
) -> None:
    settings, schema, table = capture["settings"], capture["schema"], capture["table"]
    q = f'"{schema}"."{table}"'
    snapshot = events_until(settings, lambda found: len(found) >= len(SEED_ROWS))
    assert [e.op for e in snapshot] == [Op.READ] * len(SEED_ROWS)
    assert len({e.position for e in snapshot}) == 1  # one snapshot position ...
    assert len({e.event_id for e in snapshot}) == len(SEED_ROWS)  # ... and no id shared

    change_the_table(postgres.dsn, q)
    events = events_until(
        settings,
        lambda found: any(e.after is not None and e.after.get("msg") == "end" for e in found),
    )
    ops = [e.op for e in events]
    assert ops.count(Op.UPDATE) == 1 + 8 and ops.count(Op.DELETE) == 1 + 2
    assert all(e.before is not None for e in events if e.op in (Op.UPDATE, Op.DELETE))

    lakehouse = tmp_path / "lake"
    apply_file(tmp_path / "first.jsonl", events[: len(events) // 2], lakehouse)
    apply_file(tmp_path / "all.jsonl", events, lakehouse)  # redelivers the first half
    apply_file(tmp_path / "again.jsonl", events, lakehouse)  # and everything again
    verify = ("verify", "--dsn", postgres.dsn, "--source", settings.debezium.source_name)
    where = ("--schema", schema, "--warehouse", f"local:{lakehouse}")
    ok = capa(*verify, *where)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (diff,) = verify_postgres_local(postgres.dsn, settings.debezium.source_name, schema, lakehouse)
    assert diff.ok and diff.source_rows == diff.replica_rows == EXPECTED_ROWS

    with psycopg.connect(postgres.dsn, autocommit=True) as conn:  # one duplicate more
        conn.execute(f"INSERT INTO {q} VALUES ('info', 'tick', NULL)")
    bad = capa(*verify, *where)
    assert bad.returncode == 4, bad.stdout + bad.stderr
    (diff,) = verify_postgres_local(postgres.dsn, settings.debezium.source_name, schema, lakehouse)
    assert len(diff.missing) == 1 and not diff.extra and not diff.different
    assert capture["proc"].poll() is None  # the bridge kept streaming throughout
    lines = capture["log"].read_text().splitlines()
    told = [line for line in lines if "captured tables without a primary key" in line]
    assert len(told) == 1 and f"{schema}.{table} (REPLICA IDENTITY DEFAULT)" in told[0], told


def test_keyless_table_streams_through_the_apply_job(
    capture: dict[str, Any], kafka: Any, postgres: Any, tmp_path: Path
) -> None:
    """The same changes through the streaming apply job (native decode, merge-on-read), as the
    pipeline e2e test runs it: the replica converges to the source multiset, no dead letter."""
    settings, schema, table = capture["settings"], capture["schema"], capture["table"]
    events_until(settings, lambda found: len(found) >= len(SEED_ROWS))  # publication made
    change_the_table(postgres.dsn, f'"{schema}"."{table}"')
    lakehouse, status, log = tmp_path / "wh", tmp_path / "status.json", tmp_path / "apply.log"
    argv = [
        *(sys.executable, "-m", "beam_jobs.streaming_apply", "--bootstrap", kafka.bootstrap),
        *("--topic", settings.kafka.topic, "--dlq_topic", settings.kafka.dlq_topic),
        *("--warehouse", f"local:{lakehouse}", "--consumer_group", f"kl-{uuid.uuid4().hex[:8]}"),
        *("--status_file", str(status), "--log_interval_s", "1"),
    ]
    with log.open("ab") as out:
        job = subprocess.Popen(
            argv, cwd=ROOT, env=bridge_environment(settings), stdout=out, stderr=subprocess.STDOUT
        )
    source = settings.debezium.source_name
    try:
        deadline, diff = time.monotonic() + 150, None
        while time.monotonic() < deadline and (diff is None or not diff.ok):
            assert job.poll() is None, f"the apply job exited: {tail(log, 40)}"
            time.sleep(2)
            (diff,) = verify_postgres_local(postgres.dsn, source, schema, lakehouse)
        assert diff is not None and diff.ok, (diff, tail(log, 40))
        assert diff.replica_rows == EXPECTED_ROWS
        wait_for(
            lambda: status.exists() and json.loads(status.read_text()).get("events_applied"), 30
        )
        assert json.loads(status.read_text())["dead_letters"] == 0
    finally:
        job.kill()
        job.wait(30)


# --- a unique index but no primary key ---------------------------------------------------

INDEXED_ROWS = [(n, f"c{n}", "seed") for n in range(1, 6)]


@pytest.fixture()
def indexed(
    capa_settings: CapaSettings, kafka: Any, postgres: Any, tmp_path: Path
) -> Iterator[dict[str, Any]]:
    create = [
        "CREATE TABLE {q} (id integer, code text NOT NULL, note text)",
        "CREATE UNIQUE INDEX app_log_code ON {q} (code)",
    ]
    with captured(capa_settings, kafka, postgres, tmp_path, create, INDEXED_ROWS) as found:
        yield found


def test_a_unique_index_without_primary_key_keys_the_replica(
    indexed: dict[str, Any], postgres: Any, tmp_path: Path
) -> None:
    """Debezium keys the events of a table with a unique index and no primary key by the
    index columns; with ``REPLICA IDENTITY USING INDEX`` an update, an update that changes
    the index value (a delete and a create) and a delete replicate, redelivery included, and
    the replica, keyed on the index, ends equal to the source (docs/architecture.md,
    "Keyless tables")."""
    settings, schema, table = indexed["settings"], indexed["schema"], indexed["table"]
    q = f'"{schema}"."{table}"'
    snapshot = events_until(settings, lambda found: len(found) >= len(INDEXED_ROWS))
    assert {(e.op, e.primary_key) for e in snapshot} == {(Op.READ, ("code",))}
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        # the default identity of a table without a primary key is none: PostgreSQL refuses
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="replica identity"):
            conn.execute(f"UPDATE {q} SET note = 'x' WHERE code = 'c1'")
        conn.execute(f"ALTER TABLE {q} REPLICA IDENTITY USING INDEX app_log_code")
        conn.execute(f"UPDATE {q} SET note = 'changed' WHERE code = 'c1'")
        conn.execute(f"UPDATE {q} SET code = 'c9', note = 'moved' WHERE code = 'c2'")
        conn.execute(f"DELETE FROM {q} WHERE code = 'c3'")
        conn.execute(f"INSERT INTO {q} VALUES (6, 'end', 'end')")
    events = events_until(
        settings,
        lambda found: any(e.after is not None and e.after.get("code") == "end" for e in found),
    )
    streamed = [e for e in events if e.op is not Op.READ]  # 3 partitions: not in order
    assert all(e.primary_key == ("code",) for e in streamed)
    assert sorted((e.op.value, e.key["code"]) for e in streamed) == [
        ("c", "c9"),  # the update that changed the index value: a delete and a create
        ("c", "end"),
        ("d", "c2"),
        ("d", "c3"),
        ("u", "c1"),
    ]
    # a delete carries the old index value (pgoutput sends an update's old key only when the
    # key changes, and Debezium turns that update into a delete and a create)
    assert all(e.before and e.before.get("code") for e in streamed if e.op is Op.DELETE)

    lakehouse = tmp_path / "lake"
    apply_file(tmp_path / "all.jsonl", events, lakehouse)
    apply_file(tmp_path / "again.jsonl", events[2:], lakehouse)  # a redelivery
    source = settings.debezium.source_name
    (diff,) = verify_postgres_local(postgres.dsn, source, schema, lakehouse)
    assert diff.ok and diff.source_rows == diff.replica_rows == len(INDEXED_ROWS), diff
    replica = LocalWarehouse(lakehouse).rows(f"raw.{raw_table_name(source, schema, table)}")
    assert sorted(r["code"] for r in replica) == ["c1", "c4", "c5", "c9", "end"]
    assert not any(ROW_ID in r for r in replica)  # keyed on the index, not a multiset
    told = [ln for ln in indexed["log"].read_text().splitlines() if "USING INDEX" in ln]
    assert len(told) == 1 and f'"{table}" REPLICA IDENTITY USING INDEX "app_log_code"' in told[0]
