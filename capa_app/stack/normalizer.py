"""The on-prem normaliser service as a managed process
(``python -m connectors.debezium.normalizer_service``).

It reads Kafka Connect's Debezium topics (``normalizer.topic_pattern``) and writes the
canonical topic inside Kafka transactions (see the module's docstring). Start it after
Kafka; it waits for Connect's topics by itself (regex subscription). Health: the process
is alive and its Prometheus endpoint (``observe.normalizer_metrics_port``) answers. Logs:
``<state>/logs/normalizer.log``.

    service = NormalizerService(StateDirs(root), settings)
    service.start(); service.health(); service.stop()   # stop: SIGTERM, SIGKILL after 30 s
"""

from __future__ import annotations

from capa.config import CapaSettings
from capa_app.stack.base import StateDirs, port_open
from capa_app.stack.debezium import PythonModuleService

MODULE = "connectors.debezium.normalizer_service"


class NormalizerService(PythonModuleService):
    """Connect's Debezium topics -> ``kafka.topic``, exactly once."""

    name = "normalizer"
    module = MODULE
    stop_timeout = 30.0

    @property
    def port(self) -> int | None:
        return self.settings.observe.normalizer_metrics_port or None

    def port_setting(self) -> str:
        return "set CAPA__OBSERVE__NORMALIZER_METRICS_PORT"

    def ready(self) -> bool:
        if self.running() is None:
            return False
        return self.port is None or port_open(self.settings.observe.host, self.port)


def normalizer_service(state: StateDirs, settings: CapaSettings) -> NormalizerService:
    """Stack factory (``capa_app.stack.COMPONENTS``, onprem profile)."""
    return NormalizerService(state, settings)
