"""The one place confluent-kafka client settings are built (producers, consumers, admins).

Every client capa makes gets ``bootstrap.servers`` and the security settings of
:class:`~capa.config.KafkaConfig` (``security.protocol``, SASL user and password, TLS files)
from :func:`client_config`; callers add only their role's own settings (group, acks ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from capa.config import KafkaConfig


def client_config(
    config: KafkaConfig, extra: Mapping[str, Any] | None = None, *, bootstrap: str | None = None
) -> dict[str, Any]:
    """``bootstrap.servers`` (``bootstrap`` or the config's) + security + ``extra``."""
    settings: dict[str, Any] = {
        "bootstrap.servers": bootstrap or config.bootstrap,
        "security.protocol": config.security_protocol.lower(),
    }
    if config.security_protocol.startswith("SASL_"):
        assert config.sasl_password is not None  # KafkaConfig validates SASL settings
        settings["sasl.mechanism"] = config.sasl_mechanism
        settings["sasl.username"] = config.sasl_username
        settings["sasl.password"] = config.sasl_password.get_secret_value()
    if config.security_protocol in ("SSL", "SASL_SSL"):
        settings.update(_tls_settings(config))
    return {**settings, **(extra or {})}


def _tls_settings(config: KafkaConfig) -> dict[str, str]:
    files = {
        "ssl.ca.location": config.ssl_ca_location,
        "ssl.certificate.location": config.ssl_certificate_location,
        "ssl.key.location": config.ssl_key_location,
    }
    settings = {key: str(path) for key, path in files.items() if path is not None}
    if config.ssl_key_password is not None:
        settings["ssl.key.password"] = config.ssl_key_password.get_secret_value()
    return settings


def plaintext(bootstrap: str) -> KafkaConfig:
    """A config for a bare ``host:port`` string (tests, diagnostics): no security."""
    return KafkaConfig(bootstrap_servers=bootstrap)


def as_config(source: KafkaConfig | str) -> KafkaConfig:
    """``source`` itself, or a plaintext config for a ``host:port`` string."""
    return source if isinstance(source, KafkaConfig) else plaintext(source)
