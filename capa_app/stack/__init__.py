"""The local stack: Kafka (KRaft), PostgreSQL (F2), the Debezium bridge and the streaming
apply job as plain processes; with ``--profile onprem``, a Spark standalone cluster and a
running Airflow instead of the embedded parts.

No Docker: each component is a :class:`~capa_app.stack.base.Service` started from the machine's
own binaries / Maven jars, with one state directory (``settings.state_dir``) holding
``logs/``, ``data/`` and ``pids/``. ``capa up`` / ``capa status`` / ``capa down`` drive
:class:`Stack`. Components are found through :data:`COMPONENTS`, a registry from name to
factory, started in that order and stopped in reverse; :data:`PROFILES` names the components
each profile starts (``default``: the embedded stack ``make demo`` uses; ``onprem``).

    stack = Stack(load_settings())
    stack.up(["kafka", "postgres"])   # idempotent: running healthy processes are adopted
    stack.up(profile="onprem")        # kafka, postgres, spark-master/worker, airflow-*
    stack.status()                    # [{"component", "pid", "port", "health"}, ...]
    stack.down()                      # by PID only: SIGTERM/SIGINT, then SIGKILL
    stack.clean()                     # down, then delete the state (and relocated data)
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capa.config import CapaSettings
from capa.errors import ConfigError
from capa_app.stack.base import NOT_AVAILABLE, ComponentUnavailable, Service, StateDirs

logger = logging.getLogger(__name__)

ServiceFactory = Callable[[StateDirs, CapaSettings], Service]


def _kafka(state: StateDirs, settings: CapaSettings) -> Service:
    from capa_app.stack.kafka import KafkaBroker

    return KafkaBroker(state, settings.kafka)


def _postgres(state: StateDirs, settings: CapaSettings) -> Service:
    from capa_app.stack.postgres import ExternalPostgres, PostgresCluster

    if settings.postgres.managed:
        return PostgresCluster(state, settings.postgres)
    return ExternalPostgres(state, settings.postgres)


def _debezium(state: StateDirs, settings: CapaSettings) -> Service:
    from capa_app.stack.debezium import DebeziumBridge

    return DebeziumBridge(state, settings)


def _apply(state: StateDirs, settings: CapaSettings) -> Service:
    from capa_app.stack.debezium import StreamingApplyJob

    return StreamingApplyJob(state, settings)


def _gcs(state: StateDirs, settings: CapaSettings) -> Service:
    from capa_app.stack.gcs import FakeGcsServer

    return FakeGcsServer(state, settings.gcs)


def _spark_master(state: StateDirs, settings: CapaSettings) -> Service:
    from capa_app.stack.spark import SparkMaster

    return SparkMaster(state, settings.spark_cluster)


def _spark_worker(state: StateDirs, settings: CapaSettings) -> Service:
    from capa_app.stack.spark import SparkWorker

    return SparkWorker(state, settings.spark_cluster)


def _airflow(kind: str) -> ServiceFactory:
    def factory(state: StateDirs, settings: CapaSettings) -> Service:
        from capa_app.stack import airflow

        component = {
            "api-server": airflow.AirflowApiServer,
            "scheduler": airflow.AirflowScheduler,
            "dag-processor": airflow.AirflowDagProcessor,
        }[kind]
        return component(state, settings, spark_master=True)

    return factory


def _connect(state: StateDirs, settings: CapaSettings) -> Service:
    from capa_app.stack.connect import connect_worker

    return connect_worker(state, settings)


def _normalizer(state: StateDirs, settings: CapaSettings) -> Service:
    from capa_app.stack.normalizer import normalizer_service

    return normalizer_service(state, settings)


# Every component, in start order (stopped in reverse). A profile picks some of them.
COMPONENTS: dict[str, ServiceFactory] = {
    "kafka": _kafka,
    "postgres": _postgres,
    "debezium": _debezium,
    "apply": _apply,
    "gcs": _gcs,
    "connect": _connect,
    "normalizer": _normalizer,
    "spark-master": _spark_master,
    "spark-worker": _spark_worker,
    "airflow-api-server": _airflow("api-server"),
    "airflow-scheduler": _airflow("scheduler"),
    "airflow-dag-processor": _airflow("dag-processor"),
}

DEFAULT_PROFILE = "default"
# ``capa up --profile NAME``: the components each profile starts (in COMPONENTS order).
# docker-compose.yml runs the onprem profile service for service (deploy/README.md;
# tests/unit/test_onprem_compose.py checks that they agree).
PROFILES: dict[str, tuple[str, ...]] = {
    DEFAULT_PROFILE: ("kafka", "postgres", "debezium", "apply", "gcs"),
    "onprem": (
        "kafka",
        "postgres",
        "connect",
        "normalizer",
        "spark-master",
        "spark-worker",
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
    ),
}


@dataclass(frozen=True)
class Container:
    """How docker-compose.yml runs a component of the onprem profile (same name as service).

    ``image``: image and tag; ``capa:local`` is deploy/onprem/capa/Dockerfile, which holds the
    same pinned environments (.venvs/spark, .venvs/airflow) as this machine. ``program``: the
    leading tokens of the service's command, the same the process profile runs (() = the
    image's own entrypoint). tests/unit/test_onprem_compose.py checks compose against this.
    """

    image: str
    program: tuple[str, ...] = ()


CAPA_IMAGE = "capa:local"
NORMALIZER_PROGRAM = (".venvs/beam/bin/python", "-m", "connectors.debezium.normalizer_service")


def containers() -> dict[str, Container]:
    """The compose service of every onprem component (and of those the lead enables)."""
    from capa.config import KafkaConfig, PostgresConfig
    from capa_app.stack import airflow, spark

    postgres_major = PostgresConfig().bin_dir.parent.name  # /usr/lib/postgresql/<major>/bin
    return {
        "kafka": Container(f"apache/kafka:{KafkaConfig().version}"),
        "postgres": Container(f"postgres:{postgres_major}", ("postgres",)),
        "connect": Container("quay.io/debezium/connect"),
        "normalizer": Container(CAPA_IMAGE, NORMALIZER_PROGRAM),
        "spark-master": Container(CAPA_IMAGE, spark.SparkMaster.program()),
        "spark-worker": Container(CAPA_IMAGE, spark.SparkWorker.program()),
        "airflow-api-server": Container(CAPA_IMAGE, airflow.AirflowApiServer.program()),
        "airflow-scheduler": Container(CAPA_IMAGE, airflow.AirflowScheduler.program()),
        "airflow-dag-processor": Container(CAPA_IMAGE, airflow.AirflowDagProcessor.program()),
    }


# The on-prem capture path (Kafka Connect + Debezium plugins, then the normaliser service):
# components of the onprem profile, not of the embedded default.
ONPREM_COMPONENTS: dict[str, ServiceFactory] = {n: COMPONENTS[n] for n in ("connect", "normalizer")}


@dataclass(frozen=True)
class UpResult:
    component: str
    health: str
    seconds: float
    detail: str = ""


def parse_components(spec: str | Iterable[str] | None, profile: str = DEFAULT_PROFILE) -> list[str]:
    """``"kafka,postgres"`` -> registry order (None: all of ``profile``); :class:`ConfigError`
    quoting unknown names."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    if spec is None:
        names = list(PROFILES[profile])
    else:
        names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown or not names:
        raise ConfigError(
            f"unknown component(s) {unknown or names!r}; choose from {', '.join(COMPONENTS)}"
        )
    return [n for n in COMPONENTS if n in names]


class Stack:
    """All components of one state directory."""

    def __init__(self, settings: CapaSettings) -> None:
        self.settings = settings
        self.state = StateDirs(settings.state_dir)

    def provision(self) -> CapaSettings:
        """Secrets the stack creates once (the managed PostgreSQL's password) into settings."""
        from capa_app.stack.postgres import provision_password

        self.settings = provision_password(self.settings)
        return self.settings

    def service(self, name: str) -> Service:
        return COMPONENTS[name](self.state, self.settings)

    @property
    def profile_path(self) -> Path:
        return self.state.root / "profile"

    def profile(self) -> str:
        """The profile the last ``up`` started (the default profile if none)."""
        try:
            recorded = self.profile_path.read_text().strip()
        except OSError:
            return DEFAULT_PROFILE
        return recorded if recorded in PROFILES else DEFAULT_PROFILE

    def up(
        self,
        components: Iterable[str] | None = None,
        *,
        strict: bool = False,
        profile: str = DEFAULT_PROFILE,
    ) -> list[UpResult]:
        """Start the components (default: all of ``profile``) in order; an unavailable one is
        reported unless ``strict``."""
        names = parse_components(components, profile)
        self.state.create()
        self.profile_path.write_text(profile)
        if "postgres" in names:
            self.provision()
        results = []
        for name in names:
            started = time.monotonic()
            try:
                health = self.service(name).start()
                detail = ""
            except ComponentUnavailable as exc:
                if strict:
                    raise
                health, detail = NOT_AVAILABLE, str(exc)
            results.append(UpResult(name, health, time.monotonic() - started, detail))
        return results

    def status(
        self, components: Iterable[str] | None = None, profile: str | None = None
    ) -> list[dict[str, Any]]:
        """Health of the components (default: all of ``profile``, else of the last ``up``)."""
        names = parse_components(components, profile or self.profile())
        return [self.service(name).describe() for name in names]

    def down(self, components: Iterable[str] | None = None) -> list[str]:
        """Stop our processes in reverse start order (default: every component of every
        profile); returns the names that were running."""
        stopped = []
        for name in reversed(parse_components(components or list(COMPONENTS))):
            if self.service(name).stop():
                stopped.append(name)
        return stopped

    def clean(self) -> list[str]:
        """Stop everything, then delete the state dir and data kept outside it."""
        self.down()
        removed = []
        for name in COMPONENTS:
            removed += [str(path) for path in self.service(name).purge()]
        if _is_state_dir(self.state):
            shutil.rmtree(self.state.root)
            removed.append(str(self.state.root))
        return removed


def _is_state_dir(state: StateDirs) -> bool:
    """Only a directory a stack has used (and never /, $HOME or the cwd) is deleted."""
    root = state.root.resolve()
    if root in (Path("/"), Path.home().resolve(), Path.cwd().resolve()):
        return False
    return any(path.is_dir() for path in (state.logs, state.data, state.pids))
