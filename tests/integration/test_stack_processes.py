"""The local stack against real processes: fixtures, capa up/status/down, bad environments."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from capa.config import CapaSettings
from capa.errors import EnvironmentProblem
from capa_app.stack import Stack
from capa_app.stack.base import StateDirs, process_start_ticks
from capa_app.stack.kafka import KafkaBroker, ensure_topics
from capa_app.stack.postgres import PostgresCluster, check_logical_wal, connect
from capa_app.stack.throwaway import running_service, throwaway_settings, throwaway_state_dir


def capa_cli(
    settings: CapaSettings, *args: str, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    """Run the real ``capa`` CLI in a subprocess configured for ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPA_")}
    env.update(
        {
            "CAPA__STATE_DIR": str(settings.state_dir),
            "CAPA__KAFKA__PORT": str(settings.kafka.port),
            "CAPA__KAFKA__CONTROLLER_PORT": str(settings.kafka.controller_port),
            "CAPA__POSTGRES__PORT": str(settings.postgres.port),
            "CAPA__POSTGRES__PASSWORD": settings.postgres.password.get_secret_value(),
            **extra_env,
        }
    )
    argv = [sys.executable, "-m", "capa_app.cli", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180, check=False)


def status_rows(stdout: str) -> dict[str, list[str]]:
    lines = [line.split() for line in stdout.splitlines()[2:] if line.strip()]
    return {cells[0]: cells[1:] for cells in lines}


@pytest.fixture()
def own_settings() -> Iterator[CapaSettings]:
    state_dir = throwaway_state_dir("capa-it-own-")
    settings = throwaway_settings(state_dir)
    yield settings
    Stack(settings).down()
    shutil.rmtree(state_dir, ignore_errors=True)


# --- the shared fixtures ------------------------------------------------------------


def test_kafka_fixture_round_trips_a_record(kafka: KafkaBroker) -> None:
    from confluent_kafka import Consumer, Producer

    topic = f"it-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka.admin(), {topic: 1})
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    producer.produce(topic, key=b"k", value=b"hello")
    assert producer.flush(15) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap,
            "group.id": topic,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    try:
        message = next(m for m in iter(lambda: consumer.poll(1.0), "never") if m is not None)
    finally:
        consumer.close()
    assert (message.error(), message.key(), message.value()) == (None, b"k", b"hello")


def test_kafka_fixture_created_canonical_and_dlq_topics(kafka: KafkaBroker) -> None:
    topics = kafka.admin().list_topics(timeout=10).topics
    for name in (kafka.config.topic, kafka.config.dlq_topic):
        assert len(topics[name].partitions) == kafka.config.partitions


def test_postgres_fixture_is_ready_for_logical_decoding(postgres: PostgresCluster) -> None:
    check_logical_wal(postgres.config)  # raises if not
    with connect(postgres.config) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == "shop"
        amount = conn.execute('SELECT sum("amount") FROM "orders"').fetchone()[0]
        slot = f"it_{uuid.uuid4().hex[:8]}"
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [slot])
        conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
    assert str(amount) == "2043.84"


def test_postgres_listens_on_loopback_only(postgres: PostgresCluster) -> None:
    with connect(postgres.config) as conn:
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('listen_addresses', 'unix_socket_directories', 'wal_level')"
            ).fetchall()
        )
    assert settings == {
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": "",
        "wal_level": "logical",
    }


# --- capa up / status / down ------------------------------------------------------------


def test_up_status_down_lifecycle_and_up_twice_is_harmless(own_settings: CapaSettings) -> None:
    first = capa_cli(own_settings, "up", "--only", "kafka,postgres")
    assert first.returncode == 0, first.stderr
    rows = status_rows(first.stdout)
    assert rows["kafka"][1:] == [str(own_settings.kafka.port), "healthy"]
    assert rows["postgres"][1:] == [str(own_settings.postgres.port), "healthy"]
    pids = {name: int(rows[name][0]) for name in ("kafka", "postgres")}

    again = capa_cli(own_settings, "up", "--only", "kafka,postgres")
    assert again.returncode == 0, again.stderr
    assert {n: int(r[0]) for n, r in status_rows(again.stdout).items()} == pids

    status = capa_cli(own_settings, "status")
    assert status_rows(status.stdout)["debezium"][0] == "-"  # not asked for: no process

    down = capa_cli(own_settings, "down")
    assert down.returncode == 0, down.stderr
    assert all(process_start_ticks(pid) is None for pid in pids.values())
    after = status_rows(capa_cli(own_settings, "status").stdout)
    assert [after["kafka"][-1], after["postgres"][-1]] == ["stopped", "stopped"]


def test_down_leaves_foreign_processes_alone(own_settings: CapaSettings) -> None:
    foreign = subprocess.Popen(["sleep", "60"])
    try:
        state = StateDirs(own_settings.state_dir).create()
        # A PID file naming someone else's process (e.g. a recycled PID) must not be obeyed.
        (state.pids / "kafka.json").write_text(
            f'{{"pid": {foreign.pid}, "marker": "x", "port": 1, "start_ticks": 1}}'
        )
        down = capa_cli(own_settings, "down")
        assert down.returncode == 0, down.stderr
        assert foreign.poll() is None
    finally:
        foreign.kill()
        foreign.wait()


# --- bad environments: one line naming the problem and the fix ---------------------


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("capa: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.mark.parametrize("component", ["kafka", "postgres"])
def test_port_in_use_is_one_line_error(own_settings: CapaSettings, component: str) -> None:
    port = getattr(own_settings, component).port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        line = one_line_error(capa_cli(own_settings, "up", "--only", component))
    assert f"port {port}" in line and "already in use" in line
    assert f"CAPA__{component.upper()}__PORT" in line


def test_postgres_without_logical_wal_is_detected(own_settings: CapaSettings) -> None:
    replica_only = PostgresCluster(
        StateDirs(own_settings.state_dir), own_settings.postgres, overrides={"wal_level": "replica"}
    )
    with running_service(replica_only):
        with pytest.raises(EnvironmentProblem, match="wal_level='replica'"):
            check_logical_wal(own_settings.postgres)
        line = one_line_error(
            capa_cli(own_settings, "up", "--only", "postgres", CAPA__POSTGRES__MANAGED="false")
        )
        assert "wal_level='replica'" in line and "ALTER SYSTEM SET wal_level = logical" in line


def test_existing_postgres_with_logical_wal_is_accepted(postgres: PostgresCluster) -> None:
    settings = throwaway_settings(throwaway_state_dir("capa-it-ext-"))
    settings = settings.model_copy(
        update={"postgres": postgres.config.model_copy(update={"managed": False})}
    )
    result = capa_cli(settings, "up", "--only", "postgres", CAPA__POSTGRES__MANAGED="false")
    assert result.returncode == 0, result.stderr
    assert status_rows(result.stdout)["postgres"] == ["-", str(postgres.port), "external"]
    shutil.rmtree(settings.state_dir, ignore_errors=True)


def test_unreachable_existing_postgres_is_one_line_error(own_settings: CapaSettings) -> None:
    line = one_line_error(
        capa_cli(own_settings, "up", "--only", "postgres", CAPA__POSTGRES__MANAGED="false")
    )
    assert f"127.0.0.1:{own_settings.postgres.port} is not reachable" in line


def test_kafka_without_java_is_one_line_error(own_settings: CapaSettings) -> None:
    line = one_line_error(capa_cli(own_settings, "up", "--only", "kafka", PATH="/nonexistent"))
    assert "`java` not found" in line and "openjdk-17" in line


def test_kafka_without_jars_is_one_line_error(own_settings: CapaSettings, tmp_path: Path) -> None:
    result = capa_cli(own_settings, "up", "--only", "kafka", CAPA__KAFKA__JARS_DIR=str(tmp_path))
    line = one_line_error(result)
    assert "jars missing" in line and "scripts/fetch_jars.sh kafka" in line


def test_postgres_without_initdb_is_one_line_error(
    own_settings: CapaSettings, tmp_path: Path
) -> None:
    result = capa_cli(
        own_settings, "up", "--only", "postgres", CAPA__POSTGRES__BIN_DIR=str(tmp_path)
    )
    line = one_line_error(result)
    assert "initdb not found" in line and "scripts/setup.sh postgres" in line
