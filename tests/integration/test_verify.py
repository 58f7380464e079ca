"""``capa verify`` (the oracle) against a real PostgreSQL and a real local Delta replica.

The replica is built through the real apply path (``capa apply`` on canonical events made
from the source rows); then the source is changed behind the replica's back and verify
must name each kind of mismatch and exit non-zero.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from capa.codec import event_to_json
from capa.events import ChangeEvent, raw_table_name
from capa.position import pg_position
from capa.verify import pg_tables, verify_postgres_local
from capa_app.workload import ACCOUNTS, TYPEZOO, Workload


@pytest.fixture()
def schema(postgres: Any) -> str:
    name = f"vf_{uuid.uuid4().hex[:8]}"
    workload = Workload(postgres.dsn, seed=3, schema=name, tables=(TYPEZOO, ACCOUNTS))
    workload.create_tables()
    workload.run(changes=400)
    return name


def snapshot_events(dsn: str, schema: str) -> list[ChangeEvent]:
    """Snapshot-read events of every row, typed as the Debezium normaliser types them."""
    from capa.verify import _pg_connect

    events = []
    with _pg_connect(dsn) as conn:
        lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        for table, pk, _columns in pg_tables(dsn, schema):
            cur = conn.cursor(row_factory=psycopg.rows.dict_row)
            for row in cur.execute(
                psycopg.sql.SQL("SELECT * FROM {}.{}").format(
                    psycopg.sql.Identifier(schema), psycopg.sql.Identifier(table)
                )
            ):
                events.append(
                    ChangeEvent(
                        source="f2",
                        source_kind="postgres",
                        database="shop",
                        schema=schema,
                        table=table,
                        op="r",
                        position=pg_position(lsn, snapshot=True),
                        commit_ts_us=None,
                        primary_key=pk,
                        key={k: row[k] for k in pk},
                        before=None,
                        after=_typed(row),
                    )
                )
    return events


def _typed(row: dict[str, Any]) -> dict[str, Any]:
    from capa.events import Json

    return {
        k: Json(v) if k == "c_jsonb" and v is not None else (tuple(v) if isinstance(v, list) else v)
        for k, v in row.items()
    }


def capa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "capa_app.cli", *args], capture_output=True, text=True, check=False
    )


def test_verify_passes_on_equal_replica_and_names_every_mismatch(
    postgres: Any, schema: str, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(
        "".join(json.dumps(event_to_json(e)) + "\n" for e in snapshot_events(postgres.dsn, schema))
    )
    lakehouse = tmp_path / "lake"
    applied = capa("apply", "--input", str(events), "--warehouse", f"local:{lakehouse}")
    assert applied.returncode == 0, applied.stderr

    verify = (
        "verify",
        "--dsn",
        postgres.dsn,
        "--source",
        "f2",
        "--schema",
        schema,
        "--warehouse",
        f"local:{lakehouse}",
    )
    ok = capa(*verify)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert all(
        d.ok and d.source_rows > 0
        for d in verify_postgres_local(postgres.dsn, "f2", schema, lakehouse)
    )

    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        ids = [
            r[0] for r in conn.execute(f'SELECT id FROM "{schema}".wl_typezoo ORDER BY id LIMIT 2')
        ]
        conn.execute(
            f'UPDATE "{schema}".wl_typezoo SET c_numeric_38_9 = c_numeric_38_9 + 0.000000001 WHERE id = %s',
            [ids[0]],
        )
        conn.execute(f'DELETE FROM "{schema}".wl_typezoo WHERE id = %s', [ids[1]])
        conn.execute(
            f'INSERT INTO "{schema}".wl_accounts (id, owner, balance) VALUES (999999, %s, 1.00)',
            ["x"],
        )

    bad = capa(*verify)
    assert bad.returncode == 4, bad.stdout + bad.stderr
    diffs = {d.table: d for d in verify_postgres_local(postgres.dsn, "f2", schema, lakehouse)}
    zoo = diffs["raw." + raw_table_name("f2", schema, "wl_typezoo")]
    assert zoo.different == [(ids[0],)] and zoo.extra == [(ids[1],)]
    assert diffs["raw." + raw_table_name("f2", schema, "wl_accounts")].missing == [(999999,)]
    assert "NO" in bad.stdout
