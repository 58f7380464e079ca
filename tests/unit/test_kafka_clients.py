"""The one Kafka client builder and the local broker's SASL listener settings (no broker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from capa.config import KafkaConfig, load_settings
from capa.errors import ConfigError
from capa_app.stack.kafka import plain_jaas_config, render_properties, server_properties
from connectors.kafka.clients import client_config

SASL = {
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_username": "capa",
    "sasl_password": "s3cret",
    "ssl_ca_location": "/etc/ca.pem",
    "bootstrap_servers": "broker:9093",
}


def test_default_clients_are_plaintext_to_the_local_broker() -> None:
    assert client_config(KafkaConfig(), {"group.id": "g"}) == {
        "bootstrap.servers": "127.0.0.1:19092",
        "security.protocol": "plaintext",
        "group.id": "g",
    }


def test_sasl_and_tls_settings_reach_every_client() -> None:
    settings = client_config(KafkaConfig.model_validate(SASL), {"acks": "all"})
    assert settings == {
        "bootstrap.servers": "broker:9093",
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "capa",
        "sasl.password": "s3cret",
        "ssl.ca.location": "/etc/ca.pem",
        "acks": "all",
    }
    assert "s3cret" not in repr(KafkaConfig.model_validate(SASL))


def test_sasl_without_credentials_is_a_config_error_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CAPA__KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("CAPA__KAFKA__SASL_MECHANISM", "PLAIN")
    with pytest.raises(ConfigError, match=r"kafka\.sasl_username, kafka\.sasl_password"):
        load_settings()
    monkeypatch.setenv("CAPA__KAFKA__SASL_USERNAME", "capa")
    monkeypatch.setenv("CAPA__KAFKA__SASL_PASSWORD", "pw")
    assert client_config(load_settings().kafka)["sasl.password"] == "pw"


def test_local_broker_sasl_listener_and_its_user(tmp_path: Path) -> None:
    config = KafkaConfig.model_validate(
        {
            "port": 1111,
            "controller_port": 2222,
            "sasl_port": 3333,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "capa",
            "sasl_password": 'a "b\\c',
        }
    )
    props = server_properties(config, tmp_path)
    assert props["listeners"] == (
        "PLAINTEXT://127.0.0.1:1111,CONTROLLER://127.0.0.1:2222,SASL_PLAINTEXT://127.0.0.1:3333"
    )
    assert props["advertised.listeners"].endswith(",SASL_PLAINTEXT://127.0.0.1:3333")
    assert props["listener.security.protocol.map"].endswith(",SASL_PLAINTEXT:SASL_PLAINTEXT")
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert props["listener.name.sasl_plaintext.plain.sasl.jaas.config"] == (
        'org.apache.kafka.common.security.plain.PlainLoginModule required user_capa="a \\"b\\\\c";'
    )
    assert config.bootstrap == "127.0.0.1:3333"
    plain = config.model_copy(update={"security_protocol": "PLAINTEXT"})
    assert plain.bootstrap == "127.0.0.1:1111"  # the default stack keeps its listener
    assert "sasl.enabled.mechanisms" not in server_properties(KafkaConfig(), tmp_path)


def test_properties_text_escapes_what_java_would_unescape() -> None:
    assert render_properties({"a": "1", "b.c": "x"}) == "a=1\nb.c=x\n"
    assert render_properties({"k": 'q"\\z\nü'}) == 'k=q"\\\\z\\n\\u00fc\n'


def test_broker_user_names_must_be_plain_words() -> None:
    config = KafkaConfig.model_validate({"sasl_username": "a b", "sasl_password": "x"})
    with pytest.raises(ConfigError, match="'a b'"):
        plain_jaas_config(config)
