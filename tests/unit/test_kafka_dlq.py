"""Dead letters that cannot be written: bounded retries, then a loud transient error.

A real confluent-kafka producer pointed at a closed port (short delivery timeouts), no mock.
"""

from __future__ import annotations

import threading

import pytest
from kafka_support import free_port, make_event

from capa.config import KafkaConfig
from capa.errors import TransientError
from connectors.kafka.dlq import DeadLetter
from connectors.kafka.producer import (
    DeadLetterDeliveryFailed,
    DeliveryFailed,
    KafkaChangeProducer,
    flush_with_retry,
)

LETTER = DeadLetter("bad json", b"{oops", "debezium", source="f2", location="f2.public.orders")


def closed_port_producer(**limits: float) -> KafkaChangeProducer:
    config = KafkaConfig.model_validate(
        {"port": free_port(), "delivery_timeout_ms": 500, "dlq_topic": "dead", **limits}
    )
    # log_level 0: librdkafka would print every refused connect, also after the test
    quiet = {"socket.connection.setup.timeout.ms": 1000, "log_level": 0}
    return KafkaChangeProducer(config, client_settings=quiet)


def test_dead_letters_give_up_after_the_configured_attempts() -> None:
    producer = closed_port_producer(dlq_retry_attempts=3, dlq_retry_timeout_s=600)
    resent: list[int] = []

    def resend() -> None:
        resent.append(1)
        producer.send_dead_letter(LETTER)

    producer.send_dead_letter(LETTER)
    with pytest.raises(DeadLetterDeliveryFailed, match=r"'dead' .* after 3 attempt") as caught:
        flush_with_retry(producer, resend)
    assert isinstance(caught.value, TransientError)  # retry later; the caller committed nothing
    assert "CAPA__KAFKA__DLQ_RETRY_ATTEMPTS" in str(caught.value)
    assert len(resent) == 2  # first try + 2 retries, each with the batch queued again


def test_dead_letters_give_up_when_the_time_budget_is_spent() -> None:
    producer = closed_port_producer(dlq_retry_attempts=1000, dlq_retry_timeout_s=0.1)
    producer.send_dead_letter(LETTER)
    with pytest.raises(DeadLetterDeliveryFailed, match="after 1 attempt"):
        flush_with_retry(producer, lambda: producer.send_dead_letter(LETTER))


def test_change_events_alone_keep_retrying_until_the_caller_stops() -> None:
    producer = closed_port_producer(dlq_retry_attempts=1, dlq_retry_timeout_s=0.1)
    stop = threading.Event()
    attempts: list[int] = []

    def resend() -> None:
        attempts.append(1)
        if len(attempts) == 3:
            stop.set()  # the source offset was never committed; stopping is safe
        producer.send(make_event())

    producer.send(make_event())
    with pytest.raises(DeliveryFailed) as caught:
        flush_with_retry(producer, resend, stop=stop)
    assert not isinstance(caught.value, DeadLetterDeliveryFailed)
    assert len(attempts) == 3  # past the dead-letter budget: events are not given up on
