"""Throwaway stacks for tests, benchmarks and demos: temp state dirs and free ports.

with running_service(KafkaBroker(StateDirs(dir), settings.kafka)) as broker:
    ...  # healthy here; stopped (by PID) afterwards, log tail printed if start-up failed
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from capa.config import CapaSettings, KafkaConfig, ObserveConfig, PostgresConfig, load_settings
from capa_app.stack.base import Service, free_port, tail

S = TypeVar("S", bound=Service)


def throwaway_state_dir(prefix: str = "capa-tmp-") -> Path:
    """A temp dir the ``postgres`` OS user can traverse (pytest's own tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def throwaway_settings(state_dir: Path) -> CapaSettings:
    """Settings for a stack in ``state_dir`` on free loopback ports (PostgreSQL password
    generated into the state dir, as ``capa up`` does)."""
    from capa_app.stack.postgres import provision_password

    kafka = KafkaConfig.model_validate({"port": free_port(), "controller_port": free_port()})
    postgres = PostgresConfig.model_validate({"port": free_port()})
    observe = ObserveConfig.model_validate(
        {
            "bridge_metrics_port": free_port(),
            "datastream_metrics_port": free_port(),
            "apply_metrics_port": free_port(),
            "serve_port": free_port(),
        }
    )
    return provision_password(
        load_settings(state_dir=state_dir, kafka=kafka, postgres=postgres, observe=observe)
    )


def dump_log(service: Service, lines: int = 80) -> None:
    sys.stderr.write(f"\n----- {service.name} log tail ({service.log_path}) -----\n")
    sys.stderr.write(tail(service.log_path, lines) + "\n")


@contextmanager
def running_service(service: S) -> Iterator[S]:
    """Start ``service`` and wait for health; always stop it; dump its log if start-up fails."""
    try:
        service.start()
    except BaseException:
        dump_log(service)
        service.stop()
        raise
    try:
        yield service
    finally:
        service.stop()
