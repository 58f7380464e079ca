"""``capa resync`` on the real stack: PostgreSQL, the embedded Debezium bridge, Kafka and the
streaming apply job. A replicated table is made to diverge in the replica (rows lost, a row
changed, a stray row); it is then re-synced with Debezium's incremental snapshot while a
writer updates, deletes and inserts its rows and another table keeps streaming. At the end
``capa verify`` is equal for both tables and the changelog holds every source change made
during the resync.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from service_support import bridge_environment, capture_settings, drop_capture, start_bridge

from capa.config import CapaSettings
from capa.errors import ServiceUnavailable
from capa.events import ChangeEvent, Op, SourceKind, raw_table_name
from capa.verify import verify_postgres_local
from capa.warehouse.base import RAW_NAMESPACE
from capa.warehouse.local.warehouse import LocalWarehouse
from capa_app.commands.resync import resync
from capa_app.stack.base import tail, wait_for
from connectors.debezium.signals import slot_active
from connectors.pgsync.progress import initial_sync_status

ITEMS = 3000
STRAY_ID = 999_999


@pytest.fixture()
def stack(
    capa_settings: CapaSettings, kafka: Any, postgres: Any, tmp_path: Path
) -> Iterator[dict[str, Any]]:
    suffix = uuid.uuid4().hex[:8]
    schema = f"rs_{suffix}"
    settings = capture_settings(
        capa_settings,
        kafka,
        tmp_path,
        "rs",
        suffix,
        f"{schema}\\..*",
        signal_table=f"{schema}.capa_signal",
        incremental_snapshot_chunk_size=250,  # a dozen watermark windows
        initial_load="fast",
        initial_load_workers=2,
    )
    debezium = settings.debezium
    procs: list[subprocess.Popen[bytes]] = []
    yield {"settings": settings, "schema": schema, "procs": procs, "tmp": tmp_path}
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    sys.stderr.write(f"\n--- bridge log tail ---\n{tail(tmp_path / 'bridge.log', 30)}\n")
    drop_capture(postgres.dsn, debezium.slot_name, debezium.publication, None, schema=schema)


def create_tables(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(
            f'CREATE TABLE "{schema}".items (id int PRIMARY KEY, name text, qty int NOT NULL)'
        )
        conn.execute(
            f"INSERT INTO \"{schema}\".items SELECT g, 'item ' || g, g % 97 "
            f"FROM generate_series(1, {ITEMS}) g"
        )
        conn.execute(f'CREATE TABLE "{schema}".other (id int PRIMARY KEY, note text)')
        conn.execute("ANALYZE")


def diverge(settings: CapaSettings, schema: str) -> None:
    """Break the replica of ``items``: 20 rows lost, one changed, one stray row."""
    from deltalake import DeltaTable

    lake = LocalWarehouse(settings.warehouse.path)  # type: ignore[union-attr]
    name = raw_table_name(settings.debezium.source_name, schema, "items")
    replica = DeltaTable(str(lake.table_path(RAW_NAMESPACE, name)))
    replica.delete('"id" <= 20')
    replica.update(predicate='"id" = 30', updates={'"name"': "'wrong'"})
    stray = ChangeEvent(
        source=settings.debezium.source_name,
        source_kind=SourceKind.POSTGRES,
        database="shop",
        schema=schema,
        table="items",
        op=Op.INSERT,
        position="0000000000000001.1",
        commit_ts_us=0,
        primary_key=("id",),
        key={"id": STRAY_ID},
        before=None,
        after={"id": STRAY_ID, "name": "stray", "qty": 1},
    )
    lake.apply([stray])
    lake.close()


class Writer(threading.Thread):
    """Updates, deletes and inserts rows of ``items`` (and inserts into ``other``) until
    stopped; remembers every change it made to ``items``."""

    def __init__(self, dsn: str, schema: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.schema = dsn, schema
        self.stop = threading.Event()
        self.changes: list[tuple[str, int, str | None]] = []  # (op, id, name after)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                n, rng = 0, random.Random(7)
                while not self.stop.is_set():
                    n += 1
                    self._change(conn, rng.randint(1, ITEMS + 200), n, rng.random())
                    conn.execute(f'INSERT INTO "{self.schema}".other VALUES (%s, %s)', (n, "x"))
                    self.stop.wait(0.005)  # paced: the 2 shared cores also run the pipeline
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def _change(self, conn: Any, key: int, n: int, dice: float) -> None:
        items = f'"{self.schema}".items'
        if dice < 0.6:
            row = conn.execute(
                f"UPDATE {items} SET name = %s, qty = qty + 1 WHERE id = %s RETURNING id",
                (f"upd {n}", key),
            ).fetchone()
            if row:
                self.changes.append(("u", key, f"upd {n}"))
        elif dice < 0.85:
            if conn.execute(f"DELETE FROM {items} WHERE id = %s RETURNING id", (key,)).fetchone():
                self.changes.append(("d", key, None))
        else:
            inserted = conn.execute(
                f"INSERT INTO {items} VALUES (%s, %s, 0) ON CONFLICT DO NOTHING RETURNING id",
                (key, f"ins {n}"),
            ).fetchone()
            if inserted:
                self.changes.append(("c", key, f"ins {n}"))


def start_apply(settings: CapaSettings, tmp: Path, group: str) -> subprocess.Popen[bytes]:
    kafka = settings.kafka
    argv = [
        *(sys.executable, "-m", "beam_jobs.streaming_apply", "--bootstrap", kafka.bootstrap),
        *("--topic", kafka.topic, "--dlq_topic", kafka.dlq_topic),
        *("--warehouse", f"local:{settings.warehouse.path}"),  # type: ignore[union-attr]
        *("--consumer_group", group, "--log_interval_s", "1"),
    ]
    with (tmp / "apply.log").open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


def verify(postgres: Any, settings: CapaSettings, schema: str) -> list[Any]:
    lake = settings.warehouse.path  # type: ignore[union-attr]
    return verify_postgres_local(postgres.dsn, settings.debezium.source_name, schema, lake)


def equal(postgres: Any, settings: CapaSettings, schema: str, job: Any, tmp: Path) -> bool:
    assert job.poll() is None, f"the apply job exited: {tail(tmp / 'apply.log', 40)}"
    diffs = [d for d in verify(postgres, settings, schema) if d.table.endswith(("items", "other"))]
    return len(diffs) == 2 and all(d.ok for d in diffs)


def changelog(settings: CapaSettings, schema: str) -> list[dict[str, Any]]:
    lake = LocalWarehouse(settings.warehouse.path)  # type: ignore[union-attr]
    name = raw_table_name(settings.debezium.source_name, schema, "items")
    try:
        return lake.rows(f"{RAW_NAMESPACE}.{name}_changelog", include_deleted=True)
    finally:
        lake.close()


def test_resync_repairs_a_table_while_it_changes(
    stack: dict[str, Any], postgres: Any, kafka: Any
) -> None:
    settings, schema, tmp = stack["settings"], stack["schema"], stack["tmp"]
    create_tables(postgres.dsn, schema)
    with pytest.raises(ServiceUnavailable, match="no running capture"):
        resync(settings, [f"{schema}.items"])
    bridge = start_bridge(settings, tmp / "bridge.log", initial_load=None)
    stack["procs"].append(bridge)
    status = lambda: initial_sync_status(settings) or {}  # noqa: E731
    assert wait_for(lambda: status().get("status") == "done" or bridge.poll() is not None, 120)
    assert bridge.poll() is None, tail(tmp / "bridge.log", 40)
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:  # Debezium streams
        assert wait_for(lambda: slot_active(conn, settings.debezium.slot_name), 60)
    cli = subprocess.run(
        [sys.executable, "-m", "capa_app.cli", "resync", f"{schema}.nope"],
        env=bridge_environment(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 1 and "unknown table" in cli.stderr + cli.stdout, cli

    diverge(settings, schema)
    group = f"rs-{uuid.uuid4().hex[:8]}"
    job = start_apply(settings, tmp, group)
    stack["procs"].append(job)
    items = next(d for d in verify(postgres, settings, schema) if d.table.endswith("items"))
    assert sorted(items.missing) == [(i,) for i in range(1, 21)]
    assert items.extra == [(STRAY_ID,)] and items.different == [(30,)]

    writer = Writer(postgres.dsn, schema)
    writer.start()
    assert wait_for(lambda: len(writer.changes) > 50 or writer.error is not None, 60)
    before = len(writer.changes)
    try:
        code = resync(settings, [f"{schema}.items"], timeout_s=120, apply_group=group)
    finally:
        writer.stop.set()
        writer.join(30)
    assert writer.error is None, writer.error
    assert code == 0
    assert len(writer.changes) - before >= 20  # changes interleaved with the snapshot's chunks
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:  # a last change to both
        conn.execute(f"UPDATE \"{schema}\".items SET name = 'last' WHERE id = 1500")
        conn.execute(f"INSERT INTO \"{schema}\".other VALUES (-1, 'end')")
    if not wait_for(lambda: equal(postgres, settings, schema, job, tmp), 120, interval=1):
        diffs = verify(postgres, settings, schema)
        pytest.fail(
            f"not equal: {[(d.table, d.missing[:5], d.extra[:5], d.different[:5]) for d in diffs]}"
        )

    log = changelog(settings, schema)
    seen = {(r["_capa_op"], r["id"], r.get("name")) for r in log}
    lost = [
        c
        for c in writer.changes
        if (c[0], c[1], c[2]) not in seen and (c[0] != "d" or ("d", c[1], None) not in seen)
    ]
    assert not lost, lost[:10]
    initial = min(r["_capa_position"] for r in log if r["_capa_op"] == "r")  # the fast sync
    reads = {r["id"] for r in log if r["_capa_op"] == "r" and r["_capa_position"] > initial}
    assert len(reads) > ITEMS // 3  # the resync re-read the table
    assert any(r["_capa_op"] == "d" and r["id"] == STRAY_ID for r in log)  # swept
