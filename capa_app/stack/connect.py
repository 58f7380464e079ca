"""The on-prem Kafka Connect worker (distributed mode) with the Debezium connector plugins.

Run from Kafka's own jars (``bash scripts/fetch_jars.sh connect``: connect-runtime,
connect-json, connect-transforms at the broker's version) with one plugin folder per
Debezium connector on ``plugin.path`` (``fetch_jars.sh debezium-postgres
debezium-sqlserver``). The worker keeps its connector configs, source offsets and statuses
in three compacted topics on the capa broker (``connect.config_topic`` ...), answers its
REST API on ``connect.host:connect.port`` (loopback) and logs to ``<state>/logs/connect.log``.

Once healthy, the connectors named in ``connect.connectors`` are registered from
``deploy/onprem/connect/<name>.json`` - the same files docker-compose registers - with
``PUT /connectors/<name>/config``. The files name compose's hosts; :func:`connector_config`
substitutes this machine's (database host, port, user, name; the schema-history broker)
at registration. Passwords never travel in the REST call: the files read them with
``${dir:/run/secrets:<name>}`` and the worker's DirectoryConfigProvider is pointed at
``<state>/data/connect/secrets`` (mode 0700), where :meth:`ConnectWorker.prepare` writes
``capa_postgres_password`` (mode 0600); that path replaces ``/run/secrets`` here.

Health: ``GET /`` answers (the worker joined its group) and every registered connector
and task reports RUNNING (``GET /connectors/<name>/status``).

    worker = ConnectWorker(StateDirs(root), settings)
    worker.start()                        # idempotent; registers the connectors
    worker.connector_status("postgres-f2")  # {"connector": {"state": "RUNNING"}, "tasks": [...]}
    worker.validate(config)               # PUT /connector-plugins/<class>/config/validate
    worker.stop()                         # by PID (SIGTERM, SIGKILL after the timeout)
"""

from __future__ import annotations

import json
import logging
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from capa.config import CapaSettings
from capa.errors import ConfigError, EnvironmentProblem, TransientError
from capa.retry import RetryPolicy, call
from capa_app.stack.base import JARS_ROOT, JavaService, StateDirs, port_open, wait_for
from capa_app.stack.kafka import render_properties, write_private

logger = logging.getLogger(__name__)

CONNECTORS_DIR = JARS_ROOT.parent.parent / "deploy" / "onprem" / "connect"
PLUGINS = ("debezium-postgres", "debezium-sqlserver")
FETCH_HINT = "run `bash scripts/fetch_jars.sh connect debezium-postgres debezium-sqlserver`"
SECRETS_IN_FILES = "/run/secrets"  # where the connector files (compose) read their secrets
POSTGRES_SECRET = "capa_postgres_password"
RUNNING = "RUNNING"
# Connect answers 409 while its group rebalances (e.g. a restarted worker waiting for the
# killed one's session to expire) and 500/503 when its herder did not finish in time.
BUSY_STATUSES = frozenset({409, 500, 503})
# How long a write waits out a rebalance. Connect's own REST timeout is 90 s.
REST_WRITE_TIMEOUT_S = 100.0
REGISTER_POLICY = RetryPolicy(
    retry_on=TransientError, first_wait_s=1.0, max_wait_s=10.0, patience_s=240.0
)


class ConnectBusy(TransientError):
    """The worker is up but cannot answer yet (rebalance in progress, herder timed out)."""


def worker_properties(settings: CapaSettings, plugin_root: Path, secrets: Path) -> dict[str, str]:
    """``connect-distributed.properties`` of the local worker.

    ``plugin_root`` holds one folder per plugin (jars directly on ``plugin.path`` would each
    be loaded as a plugin of their own, without their dependencies).
    """
    connect, kafka = settings.connect, settings.kafka
    props = {
        "bootstrap.servers": kafka.bootstrap,
        "group.id": connect.group_id,
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "config.storage.topic": connect.config_topic,
        "offset.storage.topic": connect.offset_topic,
        "status.storage.topic": connect.status_topic,
        "config.storage.replication.factor": "1",
        "offset.storage.replication.factor": "1",
        "status.storage.replication.factor": "1",
        "offset.storage.partitions": "5",
        "status.storage.partitions": "1",
        "offset.flush.interval.ms": str(connect.offset_flush_interval_ms),
        "listeners": f"http://{connect.host}:{connect.port}",
        "rest.advertised.host.name": connect.host,
        "rest.advertised.port": str(connect.port),
        "plugin.path": str(plugin_root.resolve()),
        "plugin.discovery": "hybrid_warn",
        "config.providers": "dir",
        "config.providers.dir.class": (
            "org.apache.kafka.common.config.provider.DirectoryConfigProvider"
        ),
        "config.providers.dir.param.allowed.paths": str(secrets.resolve()),
        # a worker killed -9 rejoins quickly; its tasks move within this time
        "scheduled.rebalance.max.delay.ms": "5000",
    }
    if connect.exactly_once_source:
        props["exactly.once.source.support"] = "enabled"
    return props


def load_connector_file(name: str, directory: Path | None = None) -> dict[str, str]:
    """``<directory>/<name>.json`` (default deploy/onprem/connect) as a flat config."""
    path = (directory or CONNECTORS_DIR) / f"{name}.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"connect: cannot read connector config {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"connect: {path} is not a JSON object of connector settings")
    return {str(k): str(v) for k, v in raw.items()}


def connector_config(
    raw: Mapping[str, str], settings: CapaSettings, secrets: Path
) -> dict[str, str]:
    """A compose connector config pointed at this machine's services.

    The database host, port, user and database of PostgreSQL connectors come from
    ``settings.postgres``; Kafka bootstrap settings from ``settings.kafka``; the secrets
    directory ``/run/secrets`` becomes ``secrets``. Everything else stays as written.
    """
    config = {k: v.replace(SECRETS_IN_FILES, str(secrets.resolve())) for k, v in raw.items()}
    config.pop("name", None)
    if config.get("connector.class", "").endswith(".PostgresConnector"):
        pg = settings.postgres
        config.update(
            {
                "database.hostname": pg.host,
                "database.port": str(pg.port),
                "database.user": pg.user,
                "database.dbname": pg.database,
            }
        )
    for key in list(config):
        if key.endswith("kafka.bootstrap.servers"):
            config[key] = settings.kafka.bootstrap
    return config


class ConnectWorker(JavaService):
    """The Connect worker process; ``url`` is its REST API."""

    name = "connect"
    properties_name = "connect-distributed.properties"
    stop_timeout = 30.0
    start_timeout = 120.0

    def __init__(self, state: StateDirs, settings: CapaSettings) -> None:
        super().__init__(state, settings.connect)
        self.settings = settings

    # --- layout ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def secrets_dir(self) -> Path:
        return self.home / "secrets"

    @property
    def plugin_dirs(self) -> list[Path]:
        return list(self.config.plugin_dirs or [JARS_ROOT / p for p in PLUGINS])

    @property
    def plugins_root(self) -> Path:
        return self.home / "plugins"

    def link_plugins(self) -> None:
        """``<home>/plugins/<folder>`` -> each plugin folder (the worker's plugin.path)."""
        self.plugins_root.mkdir(parents=True, exist_ok=True)
        for link in self.plugins_root.iterdir():
            link.unlink()
        for folder in self.plugin_dirs:
            (self.plugins_root / folder.name).symlink_to(folder.resolve(), target_is_directory=True)

    # --- lifecycle hooks -------------------------------------------------------------

    def check_environment(self) -> None:
        self.check_java()
        if not list(self.jars_dir.glob("connect-runtime-*.jar")):
            raise EnvironmentProblem(
                f"connect: worker jars missing in {self.jars_dir}; {FETCH_HINT}"
            )
        for folder in self.plugin_dirs:
            if not list(folder.glob("debezium-connector-*.jar")):
                raise EnvironmentProblem(f"connect: plugin folder {folder} is empty; {FETCH_HINT}")

    def prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.secrets_dir.mkdir(mode=0o700, exist_ok=True)
        self.secrets_dir.chmod(0o700)
        write_private(
            self.secrets_dir / POSTGRES_SECRET,
            self.settings.postgres.password.get_secret_value(),
        )
        self.link_plugins()
        props = worker_properties(self.settings, self.plugins_root, self.secrets_dir)
        write_private(self.properties_path, render_properties(props))

    def launch(self) -> subprocess.Popen[bytes]:
        log4j = self.home / "log4j2.properties"  # for the parts that log through log4j's API
        log4j.write_text(LOG4J2)
        return self.launch_main(
            "org.apache.kafka.connect.cli.ConnectDistributed",
            "-XX:+UseSerialGC",
            f"-Dlog4j2.configurationFile={log4j.resolve()}",
        )

    def ready(self) -> bool:
        if not port_open(self.host, self.port):
            return False
        try:
            info = self.request("GET", "/")
        except (EnvironmentProblem, ConnectBusy):
            return False
        return isinstance(info, dict) and "version" in info

    def after_ready(self) -> None:
        for name in self.config.connectors:
            self.register(name)
        for name in self.config.connectors:
            self.wait_running(name)

    def health(self) -> str:
        state = super().health()
        if state != "healthy":
            return state
        return (
            "healthy"
            if all(self.connector_running(n) for n in self.config.connectors)
            else "unhealthy"
        )

    # --- REST ------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        """One REST call; the decoded JSON answer. :class:`EnvironmentProblem` on failure."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        request.add_header("Accept", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            message = f"connect: {method} {path} answered {exc.code}: {detail}"
            if exc.code in BUSY_STATUSES:
                raise ConnectBusy(message) from exc
            raise EnvironmentProblem(message) from exc
        except TimeoutError as exc:
            raise ConnectBusy(f"connect: {method} {path} timed out after {timeout:.0f}s") from exc
        except (OSError, urllib.error.URLError) as exc:
            if isinstance(getattr(exc, "reason", None), TimeoutError):
                raise ConnectBusy(f"connect: {method} {path} timed out") from exc
            raise EnvironmentProblem(f"connect: {method} {path} failed: {exc}") from exc
        return json.loads(text) if text else None

    def register(self, name: str, overrides: Mapping[str, str] | None = None) -> dict[str, Any]:
        """PUT the connector file ``name`` (substituted, :func:`connector_config`), with
        ``overrides`` on top (e.g. another slot or table list)."""
        config = {**self.resolved_config(name), **(overrides or {})}
        path = f"/connectors/{name}/config"
        try:
            answer = call(
                lambda: self.request("PUT", path, config, timeout=REST_WRITE_TIMEOUT_S),
                REGISTER_POLICY,
                f"connect: register {name}",
            )
        except ConnectBusy as exc:
            raise EnvironmentProblem(f"{exc} (still busy after retries)") from exc
        logger.info("registered connector %s", name)
        return dict(answer or {})

    def resolved_config(self, name: str) -> dict[str, str]:
        raw = load_connector_file(name, self.config.connectors_dir)
        return connector_config(raw, self.settings, self.secrets_dir)

    def validate(self, config: Mapping[str, str]) -> dict[str, Any]:
        """Connect's own validation of ``config`` (``PUT .../config/validate``)."""
        plugin = config["connector.class"].rsplit(".", 1)[-1]
        answer = self.request(
            "PUT", f"/connector-plugins/{plugin}/config/validate", dict(config), timeout=120
        )
        return dict(answer)

    def connector_status(self, name: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/connectors/{name}/status"))

    def connector_running(self, name: str) -> bool:
        try:
            status = self.connector_status(name)
        except (EnvironmentProblem, ConnectBusy):
            return False
        tasks = status.get("tasks") or []
        return (
            status.get("connector", {}).get("state") == RUNNING
            and bool(tasks)
            and all(t.get("state") == RUNNING for t in tasks)
        )

    def wait_running(self, name: str, timeout: float = 90.0) -> None:
        if not wait_for(lambda: self.connector_running(name), timeout, interval=0.5):
            try:
                detail = json.dumps(self.connector_status(name))[:800]
            except (EnvironmentProblem, ConnectBusy) as exc:
                detail = str(exc)
            raise EnvironmentProblem(f"connect: connector {name} is not RUNNING: {detail}")

    def delete(self, name: str) -> None:
        self.request("DELETE", f"/connectors/{name}")


def connect_worker(state: StateDirs, settings: CapaSettings) -> ConnectWorker:
    """Stack factory (``capa_app.stack.COMPONENTS``, onprem profile)."""
    return ConnectWorker(state, settings)


# connect-runtime 4.x logs through the log4j2 API (plus slf4j-simple for slf4j callers):
# INFO to stdout (the worker log), the chatty client configs at WARN.
LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = %d{ISO8601} %-5p %c{1}: %m%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
logger.clients.name = org.apache.kafka.clients
logger.clients.level = warn
logger.config.name = org.apache.kafka.common.config
logger.config.level = warn
"""
