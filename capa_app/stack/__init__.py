"""The local stack: Kafka (KRaft), PostgreSQL (F2), the Debezium bridge and the streaming
apply job as plain processes.

No Docker: each component is a :class:`~capa_app.stack.base.Service` started from the machine's
own binaries / Maven jars, with one state directory (``settings.state_dir``) holding
``logs/``, ``data/`` and ``pids/``. ``capa up`` / ``capa status`` / ``capa down`` drive
:class:`Stack`. Components are found through :data:`COMPONENTS`, a registry from name to
factory, started in that order and stopped in reverse.

    stack = Stack(load_settings())
    stack.up(["kafka", "postgres"])   # idempotent: running healthy processes are adopted
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


COMPONENTS: dict[str, ServiceFactory] = {
    "kafka": _kafka,
    "postgres": _postgres,
    "debezium": _debezium,
    "apply": _apply,
    "gcs": _gcs,
}


def _connect(state: StateDirs, settings: CapaSettings) -> Service:
    from capa_app.stack.connect import connect_worker

    return connect_worker(state, settings)


def _normalizer(state: StateDirs, settings: CapaSettings) -> Service:
    from capa_app.stack.normalizer import normalizer_service

    return normalizer_service(state, settings)


# The on-prem capture path (Kafka Connect + Debezium plugins, then the normaliser service),
# in start order after "kafka" and "postgres". Not part of the embedded default: a profile
# that wants them starts these (each a Service: start() / health() / stop()).
ONPREM_COMPONENTS: dict[str, ServiceFactory] = {
    "connect": _connect,
    "normalizer": _normalizer,
}


@dataclass(frozen=True)
class UpResult:
    component: str
    health: str
    seconds: float
    detail: str = ""


def parse_components(spec: str | Iterable[str] | None) -> list[str]:
    """``"kafka,postgres"`` -> registry order; :class:`ConfigError` quoting unknown names."""
    if spec is None:
        return list(COMPONENTS)
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

    def up(
        self, components: Iterable[str] | None = None, *, strict: bool = False
    ) -> list[UpResult]:
        """Start the components in order; an unavailable one is reported unless ``strict``."""
        names = parse_components(components)
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

    def status(self, components: Iterable[str] | None = None) -> list[dict[str, Any]]:
        return [self.service(name).describe() for name in parse_components(components)]

    def down(self, components: Iterable[str] | None = None) -> list[str]:
        """Stop our processes in reverse start order; returns the names that were running."""
        stopped = []
        for name in reversed(parse_components(components)):
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
