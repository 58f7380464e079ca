"""The managed PostgreSQL's authentication and placement, against real clusters.

* scram-sha-256 with a password that has spaces, quotes, backslashes and ``=``: capa's own
  connect, its DSN (psycopg's conninfo builder) and the Debezium bridge all get in; a wrong
  password and no password are refused; ``pg_hba.conf`` admits loopback only.
* A state dir the ``postgres`` OS user cannot enter (a clone under /root): the cluster lives
  under ``postgres.data_root`` instead, is found again on restart and removed by clean.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr
from service_support import drop_capture, start_bridge

from capa.config import CapaSettings, load_settings, postgres_password_file
from capa.errors import EnvironmentProblem
from capa.events import Op
from capa_app.stack import Stack
from capa_app.stack.base import StateDirs, tail
from capa_app.stack.kafka import KafkaBroker, ensure_topics
from capa_app.stack.postgres import PostgresCluster, connect, relocated_data_dir
from capa_app.stack.throwaway import running_service, throwaway_settings, throwaway_state_dir
from connectors.kafka.consumer import ChangeEventDecoder, read_topic

AWKWARD_PASSWORD = "we ird'\"\\pa ss= word"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the postgres OS user matters as root")


@pytest.fixture(scope="module")
def awkward() -> Iterator[PostgresCluster]:
    """A cluster whose password needs every kind of conninfo quoting."""
    state_dir = throwaway_state_dir("capa-it-pw-")
    settings = throwaway_settings(state_dir)
    config = settings.postgres.model_copy(update={"password": SecretStr(AWKWARD_PASSWORD)})
    with running_service(PostgresCluster(StateDirs(state_dir), config)) as cluster:
        yield cluster
    shutil.rmtree(state_dir, ignore_errors=True)


def test_awkward_password_works_through_capa_connect_and_dsn(awkward: PostgresCluster) -> None:
    with connect(awkward.config) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("shop",)
    with psycopg.connect(awkward.config.dsn("postgres")) as conn:
        stored = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", [awkward.user]
        ).fetchone()
    assert stored is not None and stored[0].startswith("SCRAM-SHA-256$")


@pytest.mark.parametrize("password", ["wrong", ""])
def test_wrong_or_missing_password_is_refused(awkward: PostgresCluster, password: str) -> None:
    config = awkward.config.model_copy(update={"password": SecretStr(password)})
    with pytest.raises(psycopg.OperationalError, match="password"):
        connect(config).close()


def test_hba_admits_loopback_with_scram_only(awkward: PostgresCluster) -> None:
    with connect(awkward.config) as conn:
        rules = conn.execute(
            "SELECT type, database, address, auth_method FROM pg_hba_file_rules ORDER BY line_number"
        ).fetchall()
    assert {(kind, method) for kind, _, _, method in rules} == {("host", "scram-sha-256")}
    assert {address for *_, address, _ in rules} == {"127.0.0.1", "::1"}
    assert {tuple(dbs) for _, dbs, _, _ in rules} == {("all",), ("replication",)}


def test_debezium_bridge_captures_with_the_awkward_password(
    awkward: PostgresCluster, kafka: KafkaBroker, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    table = f"pw_{suffix}"
    state = tmp_path / "state"
    state.mkdir()
    topics = {"topic": f"it.pw.{suffix}", "dlq_topic": f"it.pw.dlq.{suffix}"}
    base = load_settings(state_dir=state)
    settings = base.model_copy(
        update={
            "kafka": kafka.config.model_copy(update=topics),
            "postgres": awkward.config,
            "debezium": base.debezium.model_copy(
                update={
                    "source_name": f"pw{suffix}",
                    "engine_name": f"capa-pw-{suffix}",
                    "slot_name": f"capa_pw_{suffix}",
                    "publication": f"capa_pw_{suffix}",
                    "table_include_list": f"public.{table}",
                }
            ),
        }
    )
    ensure_topics(kafka.admin(), {topics["topic"]: 1, topics["dlq_topic"]: 1})
    with connect(awkward.config) as conn:
        conn.execute(f'CREATE TABLE "public"."{table}" (id int PRIMARY KEY, name text)')
        conn.execute(f'INSERT INTO "public"."{table}" VALUES (1, %s)', [AWKWARD_PASSWORD])
    log = tmp_path / "bridge.log"
    proc = start_bridge(settings, log)
    try:
        messages = read_topic(  # JVM start + snapshot: as slow as test_bridge's on a busy box
            kafka.bootstrap, topics["topic"], until=lambda m: len(m) >= 1, timeout_s=150
        )
        events = [ChangeEventDecoder().decode(m.value()) for m in messages]
        assert [(e.op, e.after) for e in events] == [
            (Op.READ, {"id": 1, "name": AWKWARD_PASSWORD})
        ], tail(log, 40)
    finally:
        proc.terminate()
        proc.wait(90)
    assert AWKWARD_PASSWORD not in log.read_text()  # the secret is never logged
    drop_capture(awkward.dsn, settings.debezium.slot_name, settings.debezium.publication, table)


# --- a state dir the postgres user cannot enter ------------------------------------------


@pytest.fixture()
def closed_state() -> Iterator[tuple[CapaSettings, Path]]:
    """Settings whose state dir sits in a 0700 root-owned directory (like /root/capa/.state),
    with ``postgres.data_root`` in a directory the postgres user can reach."""
    outer = throwaway_state_dir("capa-it-closed-")
    closed = outer / "root-home"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)
    settings = throwaway_settings(closed / "clone" / ".state")
    postgres = settings.postgres.model_copy(update={"data_root": outer / "var-lib-capa"})
    yield settings.model_copy(update={"postgres": postgres}), outer
    Stack(settings).down()
    shutil.rmtree(outer, ignore_errors=True)


@as_root
def test_state_dir_closed_to_postgres_keeps_the_cluster_under_data_root(
    closed_state: tuple[CapaSettings, Path],
) -> None:
    settings, _ = closed_state
    state = StateDirs(settings.state_dir)
    expected = relocated_data_dir(state, settings.postgres).resolve()
    cluster = PostgresCluster(state, settings.postgres)
    with running_service(cluster):
        assert cluster.data_dir == expected
        with connect(settings.postgres) as conn:
            assert conn.execute("SELECT current_setting('data_directory')").fetchone() == (
                str(expected),
            )
    assert (expected.parent.stat().st_mode & 0o777, expected.stat().st_mode & 0o777) == (
        0o700,
        0o700,
    )
    assert (state.data / "postgres.location").read_text().strip() == str(expected)

    stack = Stack(load_settings(state_dir=settings.state_dir, postgres=settings.postgres))
    assert stack.settings.postgres.password == settings.postgres.password  # from the state file
    stack.up(["postgres"])  # a restart finds the recorded cluster and its password
    assert stack.status(["postgres"])[0]["health"] == "healthy"
    removed = stack.clean()
    assert str(expected.parent) in removed and str(settings.state_dir) in removed
    assert not expected.parent.exists() and not settings.state_dir.exists()


@as_root
def test_data_root_closed_to_postgres_too_is_a_clear_error(
    closed_state: tuple[CapaSettings, Path],
) -> None:
    settings, outer = closed_state
    postgres = settings.postgres.model_copy(update={"data_root": outer / "root-home" / "lib"})
    cluster = PostgresCluster(StateDirs(settings.state_dir), postgres)
    with pytest.raises(EnvironmentProblem, match=r"cannot enter .*root-home.*DATA_ROOT"):
        cluster.start()
    assert cluster.running() is None


def test_generated_password_file_is_what_the_cluster_accepts(postgres: PostgresCluster) -> None:
    password = postgres_password_file(postgres.state.root).read_text()
    assert password == postgres.config.password.get_secret_value()
    config = postgres.config.model_copy(update={"password": SecretStr(password)})
    with connect(config) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_trust_cluster_made_by_an_older_capa_requires_the_password_after_start() -> None:
    state_dir = throwaway_state_dir("capa-it-trust-")
    settings = throwaway_settings(state_dir)
    cluster = PostgresCluster(StateDirs(state_dir).create(), settings.postgres)
    cluster.data_dir.mkdir(mode=0o700, parents=True)
    if cluster.run_as:
        shutil.chown(cluster.data_dir, cluster.run_as, cluster.run_as)
    initdb = [str(settings.postgres.bin_dir / "initdb"), "-D", str(cluster.data_dir)]
    subprocess.run(
        [*initdb, "-U", "postgres", "--auth=trust", "--no-instructions"],
        cwd=cluster.data_dir,
        user=cluster.run_as,
        capture_output=True,
        check=True,
    )
    try:
        with running_service(cluster):
            no_password = settings.postgres.model_copy(update={"password": SecretStr("")})
            with pytest.raises(psycopg.OperationalError, match="password"):
                connect(no_password).close()
            with connect(settings.postgres) as conn:
                methods = conn.execute("SELECT DISTINCT auth_method FROM pg_hba_file_rules")
                assert methods.fetchall() == [("scram-sha-256",)]
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
