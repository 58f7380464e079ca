"""``capa verify --warehouse bigquery:...`` against a real PostgreSQL and bqemulator.

The replica is built through the BigQuery adapter from snapshot events of the source rows
(every column type of the workload's type zoo); BigQuery computes the row hashes, and
verify must pass, then name each kind of mismatch after the source changes behind the
replica's back, exactly as the local verify does (tests/integration/test_verify.py).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from capa.events import raw_table_name
from capa.verify import verify_postgres_bigquery
from capa.warehouse import open_warehouse
from capa_app.workload import ACCOUNTS, TYPEZOO, Workload

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from test_verify import snapshot_events  # noqa: E402


@pytest.fixture()
def schema(postgres: Any) -> str:
    name = f"vb_{uuid.uuid4().hex[:8]}"
    workload = Workload(postgres.dsn, seed=5, schema=name, tables=(TYPEZOO, ACCOUNTS))
    workload.create_tables()
    workload.run(changes=300)
    return name


def _spec(config: Any, dataset: str) -> str:
    return (
        f"bigquery:{config.project}@{config.api_endpoint}?write_api_endpoint="
        f"{config.write_api_endpoint}&raw_dataset={dataset}&apply_mode=merge&merge_interval_s=0"
    )


def _verify_cli(dsn: str, schema: str, spec: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "capa_app.cli", "verify", "--dsn", dsn, "--source", "f2"]
    return subprocess.run(
        [*command, "--schema", schema, "--warehouse", spec],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )


def test_verify_in_bigquery_passes_then_names_every_mismatch(
    postgres: Any, schema: str, bqemulator: Any
) -> None:
    dataset = f"raw_{schema}"
    warehouse = open_warehouse(_spec(bqemulator, dataset))
    warehouse.apply(snapshot_events(postgres.dsn, schema))
    statements: list[str] = []
    query = warehouse._client.query
    warehouse._client.query = lambda s, **kw: statements.append(s) or query(s, **kw)

    diffs = verify_postgres_bigquery(postgres.dsn, "f2", schema, warehouse)
    assert all(d.ok and d.source_rows > 0 for d in diffs), diffs
    # only keys and hashes leave BigQuery: one hashing query per table, no SELECT *
    assert len(statements) == len(diffs)
    assert all("MD5" in s and "SELECT *" not in s for s in statements)
    ok = _verify_cli(postgres.dsn, schema, _spec(bqemulator, dataset))
    assert ok.returncode == 0, ok.stdout + ok.stderr

    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        ids = [
            r[0] for r in conn.execute(f'SELECT id FROM "{schema}".wl_typezoo ORDER BY id LIMIT 2')
        ]
        conn.execute(
            f'UPDATE "{schema}".wl_typezoo SET c_numeric_38_9 = c_numeric_38_9 + 0.000000001 '
            "WHERE id = %s",
            [ids[0]],
        )
        conn.execute(f'DELETE FROM "{schema}".wl_typezoo WHERE id = %s', [ids[1]])
        conn.execute(
            f'INSERT INTO "{schema}".wl_accounts (id, owner, balance) VALUES (999999, %s, 1.00)',
            ["x"],
        )
    diffs_after = {
        d.table: d for d in verify_postgres_bigquery(postgres.dsn, "f2", schema, warehouse)
    }
    zoo = diffs_after["raw." + raw_table_name("f2", schema, "wl_typezoo")]
    assert zoo.different == [(ids[0],)] and zoo.extra == [(ids[1],)] and not zoo.missing
    assert diffs_after["raw." + raw_table_name("f2", schema, "wl_accounts")].missing == [(999999,)]
    bad = _verify_cli(postgres.dsn, schema, _spec(bqemulator, dataset))
    assert bad.returncode == 4 and "NO" in bad.stdout, bad.stdout + bad.stderr
