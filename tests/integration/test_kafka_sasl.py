"""Kafka clients with SASL: a local broker with a SASL_PLAINTEXT (PLAIN) listener, and capa's
one client builder (producer, consumer, admin) with the right and with wrong credentials."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator

import pytest
from kafka_support import make_event
from pydantic import SecretStr

from capa.config import KafkaConfig
from capa_app.stack.base import StateDirs, free_port
from capa_app.stack.kafka import KafkaBroker
from capa_app.stack.throwaway import running_service, throwaway_settings, throwaway_state_dir
from connectors.kafka.admin import ensure_topics
from connectors.kafka.consumer import ChangeEventDecoder, build_consumer, read_topic
from connectors.kafka.producer import DeliveryFailed, KafkaChangeProducer

PASSWORD = 'p4ss "w\\rd" = x'  # quotes, a backslash and spaces: JAAS and .properties quoting


@pytest.fixture(scope="module")
def sasl_broker() -> Iterator[KafkaBroker]:
    state_dir = throwaway_state_dir("capa-it-sasl-")
    base = throwaway_settings(state_dir).kafka
    config = KafkaConfig.model_validate(
        {
            **base.model_dump(),
            "sasl_port": free_port(),
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "capa_app",
            "sasl_password": PASSWORD,
        }
    )
    # Readiness and topic creation already go through the SASL listener with these users.
    with running_service(KafkaBroker(StateDirs(state_dir), config)) as broker:
        yield broker
    shutil.rmtree(state_dir, ignore_errors=True)


def with_topics(config: KafkaConfig) -> KafkaConfig:
    suffix = uuid.uuid4().hex[:8]
    topics = {"topic": f"it.sasl.{suffix}", "dlq_topic": f"it.sasl.dlq.{suffix}"}
    return config.model_copy(update=topics)


def test_broker_clients_bootstrap_from_the_sasl_listener(sasl_broker: KafkaBroker) -> None:
    config = sasl_broker.config
    assert config.bootstrap == f"127.0.0.1:{config.sasl_port}" == sasl_broker.bootstrap
    props = sasl_broker.properties_path
    assert props.stat().st_mode & 0o777 == 0o600  # it holds the user list
    assert "SASL_PLAINTEXT://127.0.0.1:" in props.read_text()


def test_produce_and_consume_with_the_right_credentials(sasl_broker: KafkaBroker) -> None:
    config = with_topics(sasl_broker.config)
    ensure_topics(config, {config.topic: 1, config.dlq_topic: 1})
    producer = KafkaChangeProducer(config)
    producer.send(make_event(5))
    producer.flush(timeout_s=30)
    producer.close()
    [message] = read_topic(config, config.topic, until=lambda m: len(m) >= 1)
    assert ChangeEventDecoder().decode(message.value()) == make_event(5)
    consumer = build_consumer(
        config, f"g-{config.topic}", [config.topic], **{"session.timeout.ms": 6000}
    )
    try:
        polled = next(m for m in iter(lambda: consumer.poll(1.0), "never") if m is not None)
    finally:
        consumer.close()
    assert polled.error() is None and polled.value() == message.value()


def test_wrong_password_fails_clearly(sasl_broker: KafkaBroker) -> None:
    config = with_topics(sasl_broker.config).model_copy(
        update={"sasl_password": SecretStr("not-" + PASSWORD), "delivery_timeout_ms": 5000}
    )
    producer = KafkaChangeProducer(config, topic="capa.changes")
    producer.send(make_event(1))
    with pytest.raises(DeliveryFailed, match=r"(?i)authentication failed"):
        producer.flush(timeout_s=15)
    producer.close()


def test_plaintext_client_is_not_let_in_on_the_sasl_port(sasl_broker: KafkaBroker) -> None:
    plain = KafkaConfig(bootstrap_servers=sasl_broker.bootstrap, delivery_timeout_ms=5000)
    producer = KafkaChangeProducer(plain, topic="capa.changes")
    producer.send(make_event(1))
    with pytest.raises(DeliveryFailed):
        producer.flush(timeout_s=15)
    producer.close()
