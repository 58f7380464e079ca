"""End to end: PostgreSQL -> Debezium bridge -> canonical topic -> streaming apply -> replica.

A random workload of 10k+ changes (inserts, updates, deletes in small transactions) runs
while both processes stream; at quiesce the replica equals the source table: same row
count and the same md5 per row over a canonical text computed on both sides.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from service_support import bridge_environment, start_bridge

from capa.config import CapaSettings
from capa.warehouse import open_warehouse
from capa_app.stack.base import tail, wait_for
from capa_app.stack.kafka import ensure_topics

ROOT = Path(__file__).resolve().parents[2]
CHANGES = 10_500


def spawn(argv: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture()
def e2e(capa_settings: CapaSettings, kafka: Any, postgres: Any, tmp_path: Path) -> Iterator[Any]:
    suffix = uuid.uuid4().hex[:8]
    table, source = f"e2e_{suffix}", f"e2e{suffix}"
    state = tmp_path / "state"
    state.mkdir()
    kafka_config = kafka.config.model_copy(
        update={"topic": f"it.e2e.{suffix}", "dlq_topic": f"it.e2e.dlq.{suffix}"}
    )
    debezium = capa_settings.debezium.model_copy(
        update={
            "source_name": source,
            "engine_name": f"capa-e2e-{suffix}",
            "slot_name": f"capa_e2e_{suffix}",
            "publication": f"capa_e2e_{suffix}",
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
            f'CREATE TABLE "public"."{table}" (id bigint PRIMARY KEY, name text NOT NULL, '
            "qty integer, price numeric(12,2))"
        )
    env = bridge_environment(settings)
    warehouse = tmp_path / "wh"
    procs = [
        start_bridge(settings, tmp_path / "bridge.log"),
        spawn(
            [
                sys.executable,
                "-m",
                "beam_jobs.streaming_apply",
                "--bootstrap",
                kafka.bootstrap,
                "--topic",
                kafka_config.topic,
                "--dlq_topic",
                kafka_config.dlq_topic,
                "--warehouse",
                f"local:{warehouse}",
                "--consumer_group",
                f"e2e-{suffix}",
                "--status_file",
                str(tmp_path / "status.json"),
                "--log_interval_s",
                "5",
            ],
            env,
            tmp_path / "apply.log",
            ROOT,
        ),
    ]
    yield {
        "dsn": postgres.dsn,
        "table": table,
        "replica": f"raw.{source}_public_{table}",
        "warehouse": warehouse,
        "procs": procs,
    }
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    for name in ("bridge.log", "apply.log"):
        sys.stderr.write(f"\n----- {name} tail -----\n{tail(tmp_path / name, 40)}\n")
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        slot = debezium.slot_name
        wait_for(lambda: _slot_inactive(conn, slot), timeout=30)
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = %s AND NOT active",
            (slot,),
        )
        conn.execute(f'DROP PUBLICATION IF EXISTS "{debezium.publication}"')
        conn.execute(f'DROP TABLE IF EXISTS "public"."{table}"')


def _slot_inactive(conn: Any, slot: str) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s AND active", (slot,)
    ).fetchone()
    return row is not None and row[0] == 0


def run_workload(dsn: str, table: str, changes: int, seed: int) -> None:
    """Random inserts/updates/deletes in transactions of up to 50 statements."""
    rng = random.Random(seed)
    alive: list[int] = []
    next_id = 1
    done = 0
    q = f'"public"."{table}"'
    with psycopg.connect(dsn) as conn:
        while done < changes:
            with conn.transaction(), conn.cursor() as cur:
                for _ in range(rng.randint(1, 50)):
                    roll = rng.random()
                    if not alive or roll < 0.4:
                        cur.execute(
                            f"INSERT INTO {q} VALUES (%s, %s, %s, %s)",
                            (
                                next_id,
                                f"n{next_id}",
                                rng.randint(0, 99),
                                Decimal(rng.randint(0, 99_999)) / 100,
                            ),
                        )
                        alive.append(next_id)
                        next_id += 1
                    elif roll < 0.85:
                        cur.execute(
                            f"UPDATE {q} SET qty = %s, price = %s, name = %s WHERE id = %s",
                            (
                                rng.randint(0, 99),
                                Decimal(rng.randint(0, 99_999)) / 100,
                                f"u{done}",
                                rng.choice(alive),
                            ),
                        )
                    else:
                        victim = alive.pop(rng.randrange(len(alive)))
                        cur.execute(f"DELETE FROM {q} WHERE id = %s", (victim,))
                    done += 1


def canonical(id_: Any, name: Any, qty: Any, price: Any) -> str:
    text = f"{int(id_)}|{name}|{'' if qty is None else int(qty)}|{Decimal(str(price)):.2f}"
    return hashlib.md5(text.encode()).hexdigest()


def source_checksums(dsn: str, table: str) -> dict[int, str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(f'SELECT id, name, qty, price FROM "public"."{table}"').fetchall()
    return {int(r[0]): canonical(*r) for r in rows}


def replica_checksums(warehouse: Path, table: str) -> dict[int, str]:
    try:
        rows = open_warehouse(f"local:{warehouse}").rows(table)
    except Exception:
        return {}
    return {int(r["id"]): canonical(r["id"], r["name"], r["qty"], r["price"]) for r in rows}


def test_random_workload_replicates_exactly(e2e: dict[str, Any]) -> None:
    run_workload(e2e["dsn"], e2e["table"], CHANGES, seed=42)
    expected = source_checksums(e2e["dsn"], e2e["table"])
    assert len(expected) > 1000

    replica: dict[int, str] = {}
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and replica != expected:
        for proc in e2e["procs"]:
            assert proc.poll() is None, f"a pipeline process exited with {proc.returncode}"
        time.sleep(3)
        replica = replica_checksums(e2e["warehouse"], e2e["replica"])

    assert len(replica) == len(expected)
    mismatched = [k for k in expected if replica.get(k) != expected[k]]
    assert not mismatched, f"{len(mismatched)} rows differ, e.g. ids {mismatched[:5]}"
