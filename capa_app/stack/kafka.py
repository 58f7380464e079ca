"""A single-node Apache Kafka 4.x broker in KRaft mode, run straight from Maven jars.

The jars come from ``bash scripts/fetch_jars.sh kafka`` (``scripts/jars/kafka.pom``).
The node is both broker and controller, listens on loopback only, uses replication
factor 1 for every internal topic, and is formatted once (``StorageTool format
--standalone``). Once healthy, the canonical change topic and its dead-letter topic are
created (idempotently) with confluent-kafka's AdminClient.

With ``kafka.sasl_port`` set the broker also opens a SASL_PLAINTEXT listener (mechanism
PLAIN) on that port, its user list (a JAAS config in ``server.properties``, mode 0600)
holding ``kafka.sasl_username`` / ``kafka.sasl_password``. The PLAINTEXT listener stays for
the broker itself (inter-broker traffic); both listen on ``kafka.host`` (loopback).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from capa.config import KafkaConfig
from capa.errors import ConfigError, EnvironmentProblem
from capa_app.stack.base import JavaService, StateDirs, port_in_use, port_open
from connectors.kafka.clients import client_config
from connectors.kafka.limits import broker_properties, topic_config

logger = logging.getLogger(__name__)

FETCH_HINT = "run `bash scripts/fetch_jars.sh kafka` (or `make setup`)"

# Internal topics of a one-node cluster must not ask for more replicas than exist.
_SINGLE_NODE_SETTINGS = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "group.initial.rebalance.delay.ms": "0",
    "offsets.topic.num.partitions": "10",
    "transaction.state.log.num.partitions": "10",
    "auto.create.topics.enable": "false",
}


PLAIN_LOGIN = "org.apache.kafka.common.security.plain.PlainLoginModule"
_JAAS_USER = re.compile(r"[A-Za-z0-9_]+")


def server_properties(config: KafkaConfig, log_dir: Path) -> dict[str, str]:
    """The broker's ``server.properties`` for a loopback single-node KRaft cluster."""
    client = f"{config.host}:{config.port}"
    controller = f"{config.host}:{config.controller_port}"
    props = {
        **_SINGLE_NODE_SETTINGS,
        "listeners": f"PLAINTEXT://{client},CONTROLLER://{controller}",
        "advertised.listeners": f"PLAINTEXT://{client}",
        "controller.quorum.bootstrap.servers": controller,
        "log.dirs": str(log_dir),
        "num.partitions": str(config.partitions),
        **broker_properties(config.max_message_bytes),
    }
    if config.sasl_port is not None:
        props.update(sasl_listener_properties(config, props))
    return props


def sasl_listener_properties(config: KafkaConfig, props: dict[str, str]) -> dict[str, str]:
    """A SASL_PLAINTEXT/PLAIN listener on ``sasl_port`` whose one user is the configured one."""
    sasl = f"SASL_PLAINTEXT://{config.host}:{config.sasl_port}"
    return {
        "listeners": f"{props['listeners']},{sasl}",
        "advertised.listeners": f"{props['advertised.listeners']},{sasl}",
        "listener.security.protocol.map": (
            f"{props['listener.security.protocol.map']},SASL_PLAINTEXT:SASL_PLAINTEXT"
        ),
        "sasl.enabled.mechanisms": "PLAIN",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": plain_jaas_config(config),
    }


def plain_jaas_config(config: KafkaConfig) -> str:
    """The PLAIN login module line listing ``user_<name>="<password>"`` (JAAS quoting)."""
    user = config.sasl_username or ""
    if not _JAAS_USER.fullmatch(user) or config.sasl_password is None:
        raise ConfigError(
            f"kafka.sasl_port needs kafka.sasl_username of letters, digits or '_' (got {user!r}) "
            "and kafka.sasl_password (CAPA__KAFKA__SASL_USERNAME / CAPA__KAFKA__SASL_PASSWORD)"
        )
    password = config.sasl_password.get_secret_value()
    return f'{PLAIN_LOGIN} required user_{user}="{_jaas_quote(password)}";'


def _jaas_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def render_properties(props: dict[str, str]) -> str:
    """java.util.Properties text: backslashes, line breaks and non-ASCII escaped."""
    return "".join(f"{key}={_property_value(value)}\n" for key, value in props.items())


def _property_value(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    return "".join(c if 32 <= ord(c) < 127 else f"\\u{ord(c):04x}" for c in escaped)


class KafkaBroker(JavaService):
    """The local broker. ``bootstrap`` is what clients connect to."""

    name = "kafka"
    stop_timeout = 30.0
    config: KafkaConfig

    def __init__(self, state: StateDirs, config: KafkaConfig) -> None:
        super().__init__(state, config)

    @property
    def bootstrap(self) -> str:
        """This broker's listener for capa's clients (the SASL one if they use SASL)."""
        sasl = self.config.security_protocol == "SASL_PLAINTEXT" and self.config.sasl_port
        return f"{self.config.host}:{self.config.sasl_port if sasl else self.config.port}"

    def check_environment(self) -> None:
        self.check_java()
        if not list(self.jars_dir.glob("kafka_2.13-*.jar")):
            raise EnvironmentProblem(f"kafka: broker jars missing in {self.jars_dir}; {FETCH_HINT}")
        for port, setting in (
            (self.config.controller_port, "CONTROLLER_PORT"),
            (self.config.sasl_port, "SASL_PORT"),
        ):
            if port is not None and port_in_use(self.host, port):
                raise EnvironmentProblem(
                    f"kafka: {setting.lower().replace('_', ' ')} {port} on {self.host} is "
                    f"already in use by another process; stop it or set CAPA__KAFKA__{setting}"
                )

    def prepare(self) -> None:
        log_dir = self.home / "log"
        self.home.mkdir(parents=True, exist_ok=True)
        props = server_properties(self.config, log_dir.resolve())
        write_private(self.properties_path, render_properties(props))
        if not (log_dir / "meta.properties").exists():
            self._format()

    def _format(self) -> None:
        cluster_id = self._run_tool("random-uuid").split()[-1]
        self._run_tool("format", "--standalone", "-t", cluster_id, "-c", str(self.properties_path))
        logger.info("formatted KRaft storage %s (cluster %s)", self.home, cluster_id)

    def _run_tool(self, *args: str) -> str:
        argv = self.java("-Xmx256m", "kafka.tools.StorageTool", *args)
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise EnvironmentProblem(
                f"kafka: `StorageTool {args[0]}` failed ({detail[0][:200]}); "
                f"delete {self.home} and retry, or refetch the jars: {FETCH_HINT}"
            )
        return done.stdout.strip()

    def launch(self) -> subprocess.Popen[bytes]:
        return self.launch_main("kafka.Kafka")

    def ready(self) -> bool:
        if not port_open(self.host, self.port):
            return False
        try:
            metadata = self.admin().list_topics(timeout=5)
        except Exception:
            return False
        return bool(metadata.brokers)

    def admin(self) -> Any:
        from confluent_kafka.admin import AdminClient

        return AdminClient(client_config(self.config, {"logger": logger}, bootstrap=self.bootstrap))

    def after_ready(self) -> None:
        ensure_topics(
            self.admin(),
            {
                self.config.topic: self.config.partitions,
                self.config.dlq_topic: self.config.partitions,
            },
            max_message_bytes=self.config.max_message_bytes,
        )


def write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by its owner only (it may hold the SASL users' passwords)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def ensure_topics(
    admin: Any, topics: dict[str, int], *, max_message_bytes: int | None = None
) -> list[str]:
    """Create the missing topics (replication factor 1); returns the names created.

    With ``max_message_bytes`` the topics get capa's record-size limit as a topic config;
    without, they inherit the broker's (which :func:`server_properties` sets from it).
    """
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import NewTopic

    existing = set(admin.list_topics(timeout=10).topics)
    config = topic_config(max_message_bytes) if max_message_bytes is not None else {}
    missing = [
        NewTopic(name, parts, 1, config=config)
        for name, parts in topics.items()
        if name not in existing
    ]
    if not missing:
        return []
    for name, future in admin.create_topics(missing, request_timeout=15).items():
        try:
            future.result()
        except Exception as exc:
            error = exc.args[0] if exc.args else None
            if getattr(error, "code", lambda: None)() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise EnvironmentProblem(f"kafka: cannot create topic {name!r}: {exc}") from exc
    logger.info("created topics %s", [t.topic for t in missing])
    return [t.topic for t in missing]
