"""PostgreSQL 15 for source F2: a throwaway local cluster, or a check of an existing server.

The local cluster lives in ``<state>/data/postgres``, is created by ``initdb`` as the
``postgres`` OS user when capa runs as root (initdb refuses root), listens on
``127.0.0.1:<port>`` only (no Unix socket), and runs with logical decoding enabled
(``wal_level=logical``). Once healthy, database ``shop`` gets the small sample schema in
``capa_app/stack/sample_f2.sql``.

With ``postgres.managed=false`` capa starts nothing and only verifies that the server at
``host:port`` can feed Debezium (logical WAL, replication slots, WAL senders).
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from capa.config import PostgresConfig
from capa.errors import EnvironmentProblem
from capa_app.stack.base import EXTERNAL, STOPPED, ConfiguredService, StateDirs, port_open, spawn

logger = logging.getLogger(__name__)

SAMPLE_SQL = Path(__file__).with_name("sample_f2.sql")
SETUP_HINT = "run `bash scripts/setup.sh postgres` (installs postgresql-15)"
OS_USER = "postgres"

# Settings Debezium's pgoutput capture needs (see FIELD-NOTES "PostgreSQL 15").
LOGICAL_SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "10",
    "max_wal_senders": "10",
}


def server_settings(
    config: PostgresConfig, overrides: dict[str, str] | None = None
) -> dict[str, str]:
    """The ``-c`` settings of the local cluster (loopback TCP only, logical WAL)."""
    return {
        "listen_addresses": config.host,
        "port": str(config.port),
        "unix_socket_directories": "",
        "fsync": "off",  # a throwaway dev/test cluster: durability across OS crashes is moot
        **LOGICAL_SETTINGS,
        **(overrides or {}),
    }


def connect(config: PostgresConfig, dbname: str | None = None, timeout: int = 3) -> Any:
    """A psycopg connection (autocommit) to ``dbname`` (default the configured database)."""
    import psycopg

    return psycopg.connect(
        host=config.host,
        port=config.port,
        dbname=dbname or config.database,
        user=config.user,
        password=config.password.get_secret_value() or None,
        connect_timeout=timeout,
        autocommit=True,
    )


def logical_wal_problems(settings: dict[str, str]) -> list[str]:
    """What keeps a server with these ``SHOW`` values from feeding Debezium (empty = fine)."""
    problems = []
    if settings.get("wal_level") != "logical":
        problems.append(f"wal_level={settings.get('wal_level')!r} (needs 'logical')")
    for key in ("max_replication_slots", "max_wal_senders"):
        if int(settings.get(key) or 0) < 1:
            problems.append(f"{key}={settings.get(key)!r} (needs >= 1)")
    return problems


def check_logical_wal(config: PostgresConfig) -> None:
    """Raise :class:`EnvironmentProblem` unless the server at host:port has logical WAL."""
    where = f"PostgreSQL at {config.host}:{config.port}"
    try:
        with connect(config, dbname="postgres") as conn:
            shown = {
                key: conn.execute("SELECT current_setting(%s)", [key]).fetchone()[0]
                for key in LOGICAL_SETTINGS
            }
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EnvironmentProblem(
            f"{where} is not reachable ({first}); start it or fix CAPA__POSTGRES__HOST/PORT/USER"
        ) from exc
    problems = logical_wal_problems(shown)
    if problems:
        raise EnvironmentProblem(
            f"{where} cannot feed Debezium: {', '.join(problems)}; run "
            "`ALTER SYSTEM SET wal_level = logical` (and max_replication_slots/max_wal_senders) "
            "then restart the server"
        )


def _ancestors(path: Path) -> Iterator[Path]:
    for parent in [path, *path.parents]:
        if parent.exists():
            yield parent


class PostgresCluster(ConfiguredService):
    """A throwaway PostgreSQL cluster. ``dsn``/``host``/``port``/``database``/``user``."""

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: SIGTERM would wait for clients to leave
    config: PostgresConfig

    def __init__(
        self, state: StateDirs, config: PostgresConfig, overrides: dict[str, str] | None = None
    ) -> None:
        super().__init__(state, config)
        self.overrides = overrides or {}

    @property
    def database(self) -> str:
        return self.config.database

    @property
    def user(self) -> str:
        return self.config.user

    @property
    def dsn(self) -> str:
        return self.config.dsn()

    @property
    def data_dir(self) -> Path:
        return (self.state.data / "postgres").resolve()

    @property
    def marker(self) -> str:
        return str(self.data_dir)

    @property
    def run_as(self) -> str | None:
        """The OS user running initdb/postgres: ``postgres`` when we are root, else ourselves."""
        return OS_USER if os.geteuid() == 0 else None

    def check_environment(self) -> None:
        for tool in ("initdb", "postgres"):
            if not (self.config.bin_dir / tool).is_file():
                raise EnvironmentProblem(
                    f"postgres: {self.config.bin_dir / tool} not found; {SETUP_HINT} "
                    "or set CAPA__POSTGRES__BIN_DIR"
                )
        if self.run_as:
            self._check_os_user_reaches_state()

    def _check_os_user_reaches_state(self) -> None:
        try:
            uid = pwd.getpwnam(OS_USER).pw_uid
        except KeyError:
            raise EnvironmentProblem(
                f"postgres: OS user {OS_USER!r} missing; {SETUP_HINT}"
            ) from None
        for parent in _ancestors(self.data_dir.parent):
            mode = parent.stat()
            if parent.stat().st_uid != uid and not mode.st_mode & 0o001:
                raise EnvironmentProblem(
                    f"postgres: the {OS_USER!r} user cannot enter {parent} (mode "
                    f"{oct(mode.st_mode & 0o777)}); `chmod o+x {parent}` or use another state dir"
                )

    def prepare(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        if self.run_as:
            os.chown(self.data_dir, pwd.getpwnam(OS_USER).pw_uid, pwd.getpwnam(OS_USER).pw_gid)
        self._initdb()

    def _initdb(self) -> None:
        argv = [
            str(self.config.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            self.user,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-instructions",
        ]
        with self.log_path.open("ab") as log:
            done = subprocess.run(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                user=self.run_as,
                check=False,
            )
        if done.returncode != 0:
            raise EnvironmentProblem(self.failure(f"initdb failed (exit {done.returncode})"))
        logger.info("initdb %s done", self.data_dir)

    def launch(self) -> subprocess.Popen[bytes]:
        argv = [str(self.config.bin_dir / "postgres"), "-D", str(self.data_dir)]
        for key, value in server_settings(self.config, self.overrides).items():
            argv += ["-c", f"{key}={value}"]
        return spawn(argv, self.log_path, cwd=self.data_dir, user=self.run_as)

    def ready(self) -> bool:
        if not port_open(self.host, self.port):
            return False
        try:
            with connect(self.config, dbname="postgres", timeout=2) as conn:
                conn.execute("SELECT 1")
        except Exception:
            return False
        return True

    def after_ready(self) -> None:
        create_sample_database(self.config)


def create_sample_database(config: PostgresConfig) -> None:
    """Create database ``config.database`` (if missing) holding the sample F2 schema."""
    from psycopg import sql

    with connect(config, dbname="postgres") as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [config.database])
        if found.fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(config.database)))
            logger.info("created database %s", config.database)
    with connect(config) as conn:
        conn.execute(SAMPLE_SQL.read_text())


class ExternalPostgres(ConfiguredService):
    """An existing server (``postgres.managed=false``): checked, never started or stopped."""

    name = "postgres"
    config: PostgresConfig

    @property
    def dsn(self) -> str:
        return self.config.dsn()

    def start(self) -> str:
        check_logical_wal(self.config)
        return EXTERNAL

    def health(self) -> str:
        try:
            check_logical_wal(self.config)
        except EnvironmentProblem:
            return STOPPED
        return EXTERNAL

    def stop(self) -> bool:
        return False

    def describe(self) -> dict[str, Any]:
        return {"component": self.name, "pid": None, "port": self.port, "health": self.health()}
