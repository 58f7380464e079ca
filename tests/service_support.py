"""Helpers shared by integration tests that drive real services as subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from capa_app.stack.base import wait_for

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_BIN = ROOT / ".venvs" / "airflow" / "bin"


# --- the Debezium bridge ------------------------------------------------------------------


def bridge_environment(settings: Any) -> dict[str, str]:
    """The environment of a bridge process configured by ``settings`` (no stray CAPA_ vars)."""
    from capa_app.stack.debezium import settings_env

    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPA_")}
    env.update(settings_env(settings))
    env["PYTHONPATH"] = str(ROOT)
    return env


def start_bridge(
    settings: Any, log: Path, *, initial_load: str | None = "debezium"
) -> subprocess.Popen[bytes]:
    """``python -m connectors.debezium.bridge`` for ``settings``, output appended to ``log``.

    ``initial_load`` overrides ``debezium.initial_load``: these tests read Debezium's own
    snapshot from Kafka unless they ask for the fast sync ("fast") or keep ``settings`` (None).
    """
    if initial_load is not None:
        debezium = settings.debezium.model_copy(update={"initial_load": initial_load})
        settings = settings.model_copy(update={"debezium": debezium})
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "connectors.debezium.bridge"],
            cwd=settings.state_dir,
            env=bridge_environment(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def capture_settings(
    capa_settings: Any,
    kafka: Any,
    tmp_path: Path,
    tag: str,
    suffix: str,
    include: str,
    *,
    partitions: int = 3,
    **debezium: Any,
) -> Any:
    """Settings of a capture of the test's own: topics ``it.<tag>[.dlq].<suffix>`` (created),
    source ``<tag><suffix>``, engine, slot and publication named after ``tag`` and ``suffix``,
    ``table_include_list`` ``include``, 1 s heartbeats plus ``debezium`` overrides; state in
    ``tmp_path/state`` and a local warehouse in ``tmp_path/wh``."""
    from capa.config import LocalWarehouseConfig
    from capa_app.stack.kafka import ensure_topics

    kafka_config = kafka.config.model_copy(
        update={"topic": f"it.{tag}.{suffix}", "dlq_topic": f"it.{tag}.dlq.{suffix}"}
    )
    names = {
        "source_name": f"{tag}{suffix}",
        "engine_name": f"capa-{tag}-{suffix}",
        "slot_name": f"capa_{tag}_{suffix}",
        "publication": f"capa_{tag}_{suffix}",
        "table_include_list": include,
        "heartbeat_interval_ms": 1000,
    }
    state = tmp_path / "state"
    state.mkdir()
    ensure_topics(kafka.admin(), {kafka_config.topic: partitions, kafka_config.dlq_topic: 1})
    return capa_settings.model_copy(
        update={
            "state_dir": state,
            "kafka": kafka_config,
            "debezium": capa_settings.debezium.model_copy(update={**names, **debezium}),
            "warehouse": LocalWarehouseConfig(path=tmp_path / "wh"),
        }
    )


# --- PostgreSQL logical replication ------------------------------------------------------


def slot_inactive(conn: psycopg.Connection[Any], slot: str) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s AND active", (slot,)
    ).fetchone()
    return row is not None and row[0] == 0


def drop_capture(
    dsn: str, slot: str, publication: str, table: str | None, *, schema: str | None = None
) -> None:
    """Drop a test's replication slot (once the bridge has let go), publication and table
    (``public.<table>``) or whole ``schema``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        wait_for(lambda: slot_inactive(conn, slot), timeout=30)
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = %s AND NOT active",
            (slot,),
        )
        conn.execute(f'DROP PUBLICATION IF EXISTS "{publication}"')
        if table is not None:
            conn.execute(f'DROP TABLE IF EXISTS "public"."{table}"')
        if schema is not None:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# --- Airflow (its own environment, as a subprocess) ------------------------------------------


def airflow_environment(home: Path, **extra: str) -> dict[str, str]:
    """Environment for ``.venvs/airflow/bin/airflow`` with a fresh SQLite home and capa's DAGs."""
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        # Airflow's DAG processor and task runner put the dags folder on sys.path (so the DAG
        # files import capa_dags); a bare DagBag in a test script does not.
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "dags"), os.environ.get("PYTHONPATH", str(ROOT))]
        ),
        **extra,
    }
    env.pop("VIRTUAL_ENV", None)
    run_checked([str(AIRFLOW_BIN / "airflow"), "db", "migrate"], env, home)
    return env


def run_checked(
    cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; fail the test with its output tail if it exits non-zero."""
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited {proc.returncode}\n"
            f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


# --- Spark consumption tables ------------------------------------------------------------

MODELS = ["customer_orders", "customer_360", "sales_daily", "customer_features"]


def read_model(consumption: Path, model: str) -> Any:
    """A consumption table as a pandas frame sorted by the model's key."""
    from deltalake import DeltaTable

    from spark_jobs.project import load_project

    key = list(load_project().models[model].header.key)
    frame = DeltaTable(str(consumption / model)).to_pandas()
    return frame.sort_values(key).reset_index(drop=True)


def assert_same_tables(left: Path, right: Path) -> None:
    """Every model's table under ``left`` equals the one under ``right`` (row order aside)."""
    import pandas as pd

    for model in MODELS:
        pd.testing.assert_frame_equal(
            read_model(left, model), read_model(right, model), check_like=True, obj=model
        )
