"""PostgreSQL 15 for source F2: a throwaway local cluster, or a check of an existing server.

The local cluster lives in ``<state>/data/postgres``, is created by ``initdb`` as the
``postgres`` OS user when capa runs as root (initdb refuses root), listens on
``127.0.0.1:<port>`` only (no Unix socket), and runs with logical decoding enabled
(``wal_level=logical``). Once healthy, database ``shop`` gets the small sample schema in
``capa_app/stack/sample_f2.sql``.

Authentication is scram-sha-256, never trust: ``pg_hba.conf`` admits loopback TCP only
(normal and replication connections, the latter for Debezium's slot). The password is
``postgres.password`` from config, else one generated once into
``<state>/secrets/postgres.password`` (mode 0600) by :func:`provision_password`, which
:func:`capa.config.load_settings` hands to every later client. A cluster made by an older
capa with trust auth gets the password and the new ``pg_hba.conf`` on its next start.

When capa runs as root and the ``postgres`` user cannot enter the state dir (a clone under
``/root``), the cluster directory moves to ``<postgres.data_root>/<hash>/postgres``
(:func:`relocated_data_dir`), recorded in ``<state>/data/postgres.location`` so restarts,
``capa down`` and ``capa clean`` find it.

With ``postgres.managed=false`` capa starts nothing and only verifies that the server at
``host:port`` can feed Debezium (logical WAL, replication slots, WAL senders).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

from capa.config import (
    CapaSettings,
    PostgresConfig,
    postgres_password_file,
    read_postgres_password,
    with_postgres_password,
)
from capa.errors import ConfigError, EnvironmentProblem
from capa_app.stack.base import (
    EXTERNAL,
    STOPPED,
    UNHEALTHY,
    ConfiguredService,
    StateDirs,
    port_open,
    spawn,
)

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


# Loopback only, password (SCRAM) only; "replication" rows admit Debezium's walsender.
PG_HBA = """\
# Written by capa (capa_app/stack/postgres.py) at every start: loopback TCP, scram-sha-256.
# TYPE  DATABASE     USER  ADDRESS        METHOD
host    all          all   127.0.0.1/32   scram-sha-256
host    all          all   ::1/128        scram-sha-256
host    replication  all   127.0.0.1/32   scram-sha-256
host    replication  all   ::1/128        scram-sha-256
"""


def connect(config: PostgresConfig, dbname: str | None = None, timeout: int = 3) -> Any:
    """A psycopg connection (autocommit) to ``dbname`` (default the configured database)."""
    import psycopg

    return psycopg.connect(config.dsn(dbname), connect_timeout=timeout, autocommit=True)


def provision_password(settings: CapaSettings) -> CapaSettings:
    """``settings`` with the managed cluster's password: from config, else the state dir's
    file, else a new random one written there once (0600 in a 0700 directory)."""
    if not settings.postgres.managed or settings.postgres.password.get_secret_value():
        return settings
    existing = read_postgres_password(settings)
    if existing is not None:
        return with_postgres_password(settings, existing)
    path = postgres_password_file(settings.state_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)  # also when it existed: it holds secrets only
    password = secrets.token_urlsafe(24)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another capa process won the race: use its password
        return with_postgres_password(settings, read_postgres_password(settings))
    with os.fdopen(fd, "w") as out:
        out.write(password)
    logger.info("generated the PostgreSQL password into %s", path)
    return with_postgres_password(settings, password)


def state_key(state_root: Path) -> str:
    """A short stable name for one state dir (its resolved path, hashed)."""
    return hashlib.sha256(str(state_root.resolve()).encode()).hexdigest()[:16]


def relocated_data_dir(state: StateDirs, config: PostgresConfig) -> Path:
    """The cluster directory outside a state dir the ``postgres`` user cannot enter."""
    return config.data_root / state_key(state.root) / "postgres"


def _is_auth_failure(exc: Exception) -> bool:
    return "password authentication failed" in str(exc)


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


def _os_user_ids() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(OS_USER)
    except KeyError:
        raise EnvironmentProblem(f"postgres: OS user {OS_USER!r} missing; {SETUP_HINT}") from None
    return entry.pw_uid, entry.pw_gid


def blocked_ancestor(path: Path, uid: int) -> Path | None:
    """The first existing directory above (or at) ``path`` that ``uid`` cannot enter."""
    for parent in _ancestors(path):
        mode = parent.stat()
        if mode.st_uid != uid and not mode.st_mode & 0o001:
            return parent
    return None


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
        self._was_trust = False

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
    def location_file(self) -> Path:
        """Names the cluster directory when it lives outside the state dir."""
        return self.state.data / "postgres.location"

    @cached_property
    def data_dir(self) -> Path:
        recorded = self._recorded_location()
        if recorded is not None:
            return recorded
        inside = (self.state.data / "postgres").resolve()
        if (inside / "PG_VERSION").exists() or not self.run_as:
            return inside
        uid, _ = _os_user_ids()
        if blocked_ancestor(inside.parent, uid) is None:
            return inside
        return relocated_data_dir(self.state, self.config).resolve()

    def _recorded_location(self) -> Path | None:
        try:
            text = self.location_file.read_text().strip()
        except FileNotFoundError:
            return None
        return Path(text) if text else None

    @property
    def relocated(self) -> bool:
        return self.data_dir != (self.state.data / "postgres").resolve()

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
        password = self.config.password.get_secret_value()
        if not password or "\n" in password or "\r" in password:
            raise ConfigError(
                "postgres: a managed cluster needs a one-line password: set "
                "CAPA__POSTGRES__PASSWORD or leave it unset so `capa up` generates one"
            )
        if self.run_as:
            self._check_os_user_reaches_data_dir()

    def _check_os_user_reaches_data_dir(self) -> None:
        uid, _ = _os_user_ids()
        blocked = blocked_ancestor(self.data_dir.parent, uid)
        if blocked is not None:
            mode = oct(blocked.stat().st_mode & 0o777)
            raise EnvironmentProblem(
                f"postgres: the {OS_USER!r} user cannot enter {blocked} (mode {mode}); "
                f"`chmod o+x {blocked}` or point CAPA__POSTGRES__DATA_ROOT (now "
                f"{self.config.data_root}) at a directory it can reach"
            )

    def prepare(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            self._was_trust = not self._hba_is_ours()
            if not self._was_trust:
                self._write_hba()
            return
        self._make_data_dir()
        self._initdb()
        self._write_hba()

    def _make_data_dir(self) -> None:
        if self.relocated:
            self.config.data_root.mkdir(mode=0o755, parents=True, exist_ok=True)
            self._make_private_dir(self.data_dir.parent)
            self.location_file.parent.mkdir(parents=True, exist_ok=True)
            self.location_file.write_text(f"{self.data_dir}\n")
            logger.info(
                "postgres data in %s (the state dir is closed to %s)", self.data_dir, OS_USER
            )
        else:
            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._make_private_dir(self.data_dir)

    def _make_private_dir(self, path: Path) -> None:
        """``path`` with mode 0700, owned by the user the server runs as."""
        path.mkdir(exist_ok=True)
        path.chmod(0o700)
        self._own(path)

    def _own(self, path: Path) -> None:
        if self.run_as:
            os.chown(path, *_os_user_ids())

    def _initdb(self) -> None:
        with self._password_file() as pwfile:
            argv = [
                str(self.config.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.user,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
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

    @contextlib.contextmanager
    def _password_file(self) -> Iterator[Path]:
        """The password in a private temp file initdb (run as ``run_as``) can read; removed
        afterwards. initdb reads its first line, so a password is one line."""
        folder = Path(tempfile.mkdtemp(prefix="capa-initdb-"))
        try:
            self._own(folder)
            path = folder / "pwfile"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(self.config.password.get_secret_value() + "\n")
            self._own(path)
            yield path
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @property
    def hba_path(self) -> Path:
        return self.data_dir / "pg_hba.conf"

    def _hba_is_ours(self) -> bool:
        return self.hba_path.read_text() == PG_HBA

    def _write_hba(self) -> None:
        self.hba_path.write_text(PG_HBA)
        self.hba_path.chmod(0o600)
        self._own(self.hba_path)

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
        except Exception as exc:
            if _is_auth_failure(exc):
                raise EnvironmentProblem(
                    f"postgres: password authentication failed for user {self.user!r} on "
                    f"{self.host}:{self.port}; the cluster in {self.data_dir} keeps the password "
                    f"it was created with ({postgres_password_file(self.state.root)} unless "
                    "CAPA__POSTGRES__PASSWORD was set): set that one, or `capa clean` to start over"
                ) from None
            return False
        return True

    def health(self) -> str:
        try:
            return super().health()
        except EnvironmentProblem:
            return UNHEALTHY

    def after_ready(self) -> None:
        if self._was_trust:
            self._secure_trust_cluster()
        create_sample_database(self.config)

    def _secure_trust_cluster(self) -> None:
        """A cluster an older capa made with trust auth: set the password, then SCRAM only."""
        from psycopg import sql

        with connect(self.config, dbname="postgres") as conn:
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(self.user),
                    sql.Literal(self.config.password.get_secret_value()),
                )
            )
            self._write_hba()
            conn.execute("SELECT pg_reload_conf()")
        self._was_trust = False
        logger.info("postgres: %s now requires scram-sha-256 (was trust)", self.data_dir)

    def purge(self) -> list[Path]:
        """Remove a relocated cluster directory (the state dir's own is the caller's)."""
        owned = self.data_dir.name == "postgres" and (
            self.data_dir.parent.name == state_key(self.state.root)
        )
        if not self.relocated or not owned:  # never delete a path someone wrote in by hand
            return []
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)
        return [self.data_dir.parent]


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
