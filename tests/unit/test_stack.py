"""capa_app.stack without services: generated configs, PID handling, registry, env flattening."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capa.config import KafkaConfig, PostgresConfig, load_settings
from capa.errors import ConfigError
from capa_app.stack import PROFILES, Stack, parse_components
from capa_app.stack.base import (
    PidRecord,
    StateDirs,
    is_our_process,
    port_in_use,
    process_cpu_seconds,
    process_start_ticks,
    stop_pid,
)
from capa_app.stack.debezium import DebeziumBridge, settings_env
from capa_app.stack.kafka import render_properties, server_properties
from capa_app.stack.postgres import logical_wal_problems, server_settings


def test_kafka_properties_single_node_kraft_on_loopback(tmp_path: Path) -> None:
    config = KafkaConfig.model_validate({"port": 1111, "controller_port": 2222, "partitions": 4})
    props = server_properties(config, tmp_path)
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:1111,CONTROLLER://127.0.0.1:2222"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:1111"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:2222"
    replication = {k: v for k, v in props.items() if k.endswith("replication.factor")}
    assert set(replication.values()) == {"1"} and len(replication) >= 3
    assert props["num.partitions"] == "4"
    assert render_properties({"a": "1", "b.c": "x"}) == "a=1\nb.c=x\n"


def test_postgres_settings_are_logical_and_loopback() -> None:
    config = PostgresConfig.model_validate({"port": 5555})
    settings = server_settings(config)
    assert settings["listen_addresses"] == "127.0.0.1" and settings["port"] == "5555"
    assert settings["wal_level"] == "logical" and settings["unix_socket_directories"] == ""
    assert server_settings(config, {"wal_level": "replica"})["wal_level"] == "replica"


@pytest.mark.parametrize(
    ("shown", "problems"),
    [
        ({"wal_level": "logical", "max_replication_slots": "10", "max_wal_senders": "10"}, []),
        (
            {"wal_level": "replica", "max_replication_slots": "10", "max_wal_senders": "10"},
            ["wal_level='replica' (needs 'logical')"],
        ),
        (
            {"wal_level": "logical", "max_replication_slots": "0", "max_wal_senders": "0"},
            ["max_replication_slots='0' (needs >= 1)", "max_wal_senders='0' (needs >= 1)"],
        ),
    ],
)
def test_logical_wal_problems(shown: dict[str, str], problems: list[str]) -> None:
    assert logical_wal_problems(shown) == problems


def test_parse_components_keeps_registry_order_and_quotes_unknown_names() -> None:
    assert parse_components(None) == list(PROFILES["default"])
    assert parse_components("postgres, kafka") == ["kafka", "postgres"]
    with pytest.raises(ConfigError, match=r"\['kafak'\]"):
        parse_components("kafak,postgres")


def test_the_onprem_profile_runs_a_spark_cluster_and_airflow_but_not_the_embedded_parts() -> None:
    onprem = parse_components(None, "onprem")
    assert onprem[:2] == ["kafka", "postgres"]
    assert onprem.index("spark-master") < onprem.index("spark-worker")
    assert {"airflow-api-server", "airflow-scheduler", "airflow-dag-processor"} <= set(onprem)
    assert not {"debezium", "apply", "gcs"} & set(onprem)
    assert parse_components("spark-worker,kafka", "onprem") == ["kafka", "spark-worker"]
    with pytest.raises(ConfigError, match="unknown profile 'cloud'"):
        parse_components(None, "cloud")


def test_pid_record_round_trips() -> None:
    record = PidRecord(pid=42, marker="/x/server.properties", port=9, start_ticks=77)
    assert PidRecord.from_json(record.to_json()) == record


def test_our_process_is_recognised_and_a_recycled_pid_is_not() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        ticks = process_start_ticks(proc.pid)
        assert ticks is not None
        assert is_our_process(PidRecord(proc.pid, "sleep", start_ticks=ticks))
        assert not is_our_process(PidRecord(proc.pid, "sleep", start_ticks=ticks + 1))
        assert not is_our_process(PidRecord(proc.pid, "java kafka.Kafka"))  # marker fallback
    finally:
        proc.kill()
        proc.wait()
    assert process_start_ticks(proc.pid) is None


def test_stop_pid_escalates_to_sigkill_when_the_signal_is_ignored() -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print(1, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline()  # handler installed
    assert stop_pid(proc.pid, signal.SIGTERM, timeout=0.5) is True
    assert process_start_ticks(proc.pid) is None  # gone (and reaped by stop_pid)


def test_stop_pid_polite_signal_is_enough_for_a_normal_process() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    assert stop_pid(proc.pid, signal.SIGTERM, timeout=5) is False
    assert process_start_ticks(proc.pid) is None


def test_port_in_use_sees_a_listener() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert port_in_use("127.0.0.1", sock.getsockname()[1])


def test_stale_pid_file_is_dropped(tmp_path: Path) -> None:
    stack = Stack(load_settings(state_dir=tmp_path))
    kafka = stack.service("kafka")
    StateDirs(tmp_path).create()
    kafka.pid_path.write_text(PidRecord(pid=2**22 + 7, marker="x", start_ticks=1).to_json())
    assert kafka.running() is None and not kafka.pid_path.exists()
    assert [row["health"] for row in stack.status(["kafka", "postgres"])] == ["stopped"] * 2
    assert stack.down() == []


def test_status_follows_the_profile_of_the_last_up_and_down_stops_every_profile(
    tmp_path: Path,
) -> None:
    stack = Stack(load_settings(state_dir=tmp_path))
    assert [row["component"] for row in stack.status()] == list(PROFILES["default"])
    StateDirs(tmp_path).create()
    stack.profile_path.write_text("onprem")  # what `capa up --profile onprem` records
    assert [row["component"] for row in stack.status()] == list(PROFILES["onprem"])
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    worker = stack.service("spark-worker")
    record = PidRecord(sleeper.pid, "sleep", start_ticks=process_start_ticks(sleeper.pid))
    worker.pid_path.write_text(record.to_json())
    try:
        assert stack.down() == ["spark-worker"]  # by its PID record, whatever the profile
        assert process_start_ticks(sleeper.pid) is None  # stopped (and reaped)
    finally:
        sleeper.kill()


def test_settings_env_round_trips_through_capa_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(
        state_dir=tmp_path / "st",
        postgres=PostgresConfig.model_validate({"port": 6543, "password": "s3cret"}),
    )
    env = settings_env(settings)
    assert env["CAPA__POSTGRES__PORT"] == "6543" and env["CAPA__POSTGRES__PASSWORD"] == "s3cret"
    assert env["CAPA__STATE_DIR"] == str((tmp_path / "st").resolve())
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert settings_env(load_settings()) == env


def test_bridge_child_env_carries_settings_and_jvm_opts(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path)
    env = DebeziumBridge(StateDirs(tmp_path), settings).child_env()
    assert env["PYDBZ_JVM_OPTS"] == settings.debezium.jvm_opts
    assert env["CAPA__KAFKA__TOPIC"] == settings.kafka.topic


def test_demo_fails_at_once_when_the_apply_job_is_gone(tmp_path: Path) -> None:
    """Found running the demo: a dead apply job left the demo printing "N event(s) not yet
    applied" until a 300 s timeout; it now stops with the end of the job's log."""
    from capa.errors import ServiceFailed
    from capa_app.demo.run import Demo, DemoOptions

    settings = load_settings(state_dir=tmp_path)
    demo = Demo(settings, DemoOptions())
    log = demo.stack.service("apply").log_path
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("starting\nRuntimeError: Broker: Not coordinator\n")
    with pytest.raises(ServiceFailed, match="Not coordinator"):
        demo.wait_caught_up(timeout=60)


def test_process_cpu_seconds_counts_a_busy_child_and_none_once_it_is_gone() -> None:
    busy = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    proc = subprocess.Popen([sys.executable, "-c", busy + "\ntime.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while (process_cpu_seconds(proc.pid) or 0) < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (process_cpu_seconds(proc.pid) or 0) >= 0.25
    finally:
        proc.kill()
        proc.wait()
    assert process_cpu_seconds(proc.pid) is None


# --- PostgreSQL password and DSN --------------------------------------------------------

AWKWARD_PASSWORD = "we ird'\"\\pa ss= word"


def test_dsn_is_built_by_libpq_rules_so_any_password_survives() -> None:
    from psycopg.conninfo import conninfo_to_dict

    config = PostgresConfig.model_validate({"port": 6543, "password": AWKWARD_PASSWORD})
    parsed = conninfo_to_dict(config.dsn())
    assert parsed == {
        "host": "127.0.0.1",
        "port": "6543",
        "dbname": "shop",
        "user": "postgres",
        "password": AWKWARD_PASSWORD,
    }
    assert conninfo_to_dict(config.dsn("postgres"))["dbname"] == "postgres"
    assert "password" not in conninfo_to_dict(PostgresConfig().dsn())
    assert AWKWARD_PASSWORD not in repr(config)  # SecretStr: never in logs or reprs


def test_generated_password_is_private_created_once_and_read_by_every_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from capa.config import postgres_password_file
    from capa_app.stack.postgres import provision_password

    state = tmp_path / "state"
    assert load_settings(state_dir=state).postgres.password.get_secret_value() == ""
    first = provision_password(load_settings(state_dir=state)).postgres.password
    path = postgres_password_file(state)
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert len(first.get_secret_value()) >= 24
    again = provision_password(load_settings(state_dir=state)).postgres.password
    assert again == first  # reused on restart, never regenerated
    assert load_settings(state_dir=state).postgres.password == first  # plain clients see it
    monkeypatch.setenv("CAPA__POSTGRES__PASSWORD", "from-env")
    assert load_settings(state_dir=state).postgres.password.get_secret_value() == "from-env"


def test_an_external_server_never_gets_the_generated_password(tmp_path: Path) -> None:
    from capa_app.stack.postgres import provision_password

    provision_password(load_settings(state_dir=tmp_path))
    external = PostgresConfig.model_validate({"managed": False})
    settings = load_settings(state_dir=tmp_path, postgres=external)
    assert settings.postgres.password.get_secret_value() == ""
    assert provision_password(settings) == settings


# --- one environment convention ---------------------------------------------------------


def test_env_setting_prefers_the_capa_name_and_still_reads_a_deprecated_one(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from capa.config import env_setting

    assert env_setting("CAPA__DAGS__X", "dflt", deprecated="CAPA_X") == "dflt"
    monkeypatch.setenv("CAPA_X", "old")
    assert env_setting("CAPA__DAGS__X", "dflt", deprecated="CAPA_X") == "old"
    assert "CAPA_X is deprecated; set CAPA__DAGS__X" in caplog.text
    monkeypatch.setenv("CAPA__DAGS__X", "new")
    assert env_setting("CAPA__DAGS__X", "dflt", deprecated="CAPA_X") == "new"


def test_spark_and_log_settings_follow_the_capa_convention(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CAPA__SPARK__MASTER", "local[1]")
    monkeypatch.setenv("CAPA__SPARK__JARS_DIR", "/opt/delta")
    monkeypatch.setenv("CAPA__LOG_LEVEL", "DEBUG")
    settings = load_settings()
    assert (settings.spark.master, settings.spark.jars_dir) == ("local[1]", Path("/opt/delta"))
    assert settings.log_level == "DEBUG"


def test_capa_code_reads_no_env_variable_outside_the_convention() -> None:
    """Every os.environ / getenv read in capa's packages names a CAPA__ setting, CAPA_CONFIG
    (which file the settings come from) or a third-party variable."""
    import re

    root = Path(__file__).resolve().parents[2]
    allowed_third_party = {"STORAGE_EMULATOR_HOST", "PYDBZ_JVM_OPTS", "SPARK_LOCAL_IP"}
    # PATH: the on-prem DAG profile puts the spark env first for spark-submit
    allowed_third_party |= {"PYSPARK_PYTHON", "PATH"}
    # OpenLineage's own switch (capa/lineage.py: no client at all when it is set)
    allowed_third_party |= {"OPENLINEAGE_DISABLED"}
    read = re.compile(r"""(?:environ(?:\.get|\.setdefault)?[\[(]|getenv\()\s*f?["']([A-Z_]+)""")
    found = set()
    for package in ("capa", "capa_app", "connectors", "beam_jobs", "spark_jobs", "dags"):
        for path in (root / package).rglob("*.py"):
            found |= set(read.findall(path.read_text()))
    stray = {
        name
        for name in found
        if name not in allowed_third_party
        and name != "CAPA_CONFIG"
        and not name.startswith("CAPA__")
    }
    assert stray == set()
