"""A single-node Apache Kafka 4.x broker in KRaft mode, run straight from Maven jars.

The jars come from ``bash scripts/fetch_jars.sh kafka`` (``scripts/jars/kafka.pom``).
The node is both broker and controller, listens on loopback only, uses replication
factor 1 for every internal topic, and is formatted once (``StorageTool format
--standalone``). Once healthy, the canonical change topic and its dead-letter topic are
created (idempotently) with confluent-kafka's AdminClient.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import capa
from capa.config import KafkaConfig
from capa.errors import EnvironmentProblem
from capa_app.stack.base import ConfiguredService, StateDirs, port_in_use, port_open, spawn
from connectors.kafka.limits import broker_properties, topic_config

logger = logging.getLogger(__name__)

REPO_ROOT = Path(capa.__file__).resolve().parent.parent
DEFAULT_JARS_DIR = REPO_ROOT / ".cache" / "jars" / "kafka"
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


def server_properties(config: KafkaConfig, log_dir: Path) -> dict[str, str]:
    """The broker's ``server.properties`` for a loopback single-node KRaft cluster."""
    client = f"{config.host}:{config.port}"
    controller = f"{config.host}:{config.controller_port}"
    return {
        **_SINGLE_NODE_SETTINGS,
        "listeners": f"PLAINTEXT://{client},CONTROLLER://{controller}",
        "advertised.listeners": f"PLAINTEXT://{client}",
        "controller.quorum.bootstrap.servers": controller,
        "log.dirs": str(log_dir),
        "num.partitions": str(config.partitions),
        **broker_properties(config.max_message_bytes),
    }


def render_properties(props: dict[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in props.items())


class KafkaBroker(ConfiguredService):
    """The local broker. ``bootstrap`` is what clients connect to."""

    name = "kafka"
    stop_timeout = 30.0
    config: KafkaConfig

    def __init__(self, state: StateDirs, config: KafkaConfig) -> None:
        super().__init__(state, config)

    @property
    def bootstrap(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    @property
    def home(self) -> Path:
        return self.state.data / "kafka"

    @property
    def properties_path(self) -> Path:
        return (self.home / "server.properties").resolve()

    @property
    def marker(self) -> str:
        return str(self.properties_path)

    @property
    def jars_dir(self) -> Path:
        return self.config.jars_dir or DEFAULT_JARS_DIR

    def check_environment(self) -> None:
        if shutil.which("java") is None:
            raise EnvironmentProblem(
                "kafka: `java` not found on PATH; install a JDK 17 "
                "(apt-get install openjdk-17-jdk-headless)"
            )
        if not list(self.jars_dir.glob("kafka_2.13-*.jar")):
            raise EnvironmentProblem(f"kafka: broker jars missing in {self.jars_dir}; {FETCH_HINT}")
        if port_in_use(self.host, self.config.controller_port):
            raise EnvironmentProblem(
                f"kafka: controller port {self.config.controller_port} on {self.host} is already "
                "in use by another process; stop it or set CAPA__KAFKA__CONTROLLER_PORT"
            )

    def _java(self, *args: str) -> list[str]:
        return ["java", "-cp", f"{self.jars_dir}/*", *args]

    def prepare(self) -> None:
        log_dir = self.home / "log"
        self.home.mkdir(parents=True, exist_ok=True)
        props = server_properties(self.config, log_dir.resolve())
        self.properties_path.write_text(render_properties(props))
        if not (log_dir / "meta.properties").exists():
            self._format()

    def _format(self) -> None:
        cluster_id = self._run_tool("random-uuid").split()[-1]
        self._run_tool("format", "--standalone", "-t", cluster_id, "-c", str(self.properties_path))
        logger.info("formatted KRaft storage %s (cluster %s)", self.home, cluster_id)

    def _run_tool(self, *args: str) -> str:
        argv = self._java("-Xmx256m", "kafka.tools.StorageTool", *args)
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise EnvironmentProblem(
                f"kafka: `StorageTool {args[0]}` failed ({detail[0][:200]}); "
                f"delete {self.home} and retry, or refetch the jars: {FETCH_HINT}"
            )
        return done.stdout.strip()

    def launch(self) -> subprocess.Popen[bytes]:
        argv = self._java(
            *self.config.heap.split(),
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "kafka.Kafka",
            str(self.properties_path),
        )
        return spawn(argv, self.log_path, cwd=self.home)

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

        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap, "logger": logger}
        return AdminClient(config)

    def after_ready(self) -> None:
        ensure_topics(
            self.admin(),
            {
                self.config.topic: self.config.partitions,
                self.config.dlq_topic: self.config.partitions,
            },
            max_message_bytes=self.config.max_message_bytes,
        )


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
