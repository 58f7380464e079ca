"""Consumer-side helpers: a configured confluent-kafka consumer and event decoding.

:func:`read_change_events` turns polled messages into canonical events, sending any
record that does not decode to the caller as a :class:`DeadLetter` instead of raising.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from capa.config import KafkaConfig
from capa.errors import DecodeError, ServiceUnavailable
from capa.events import ChangeEvent
from connectors.kafka.clients import as_config, client_config
from connectors.kafka.dlq import DeadLetter, dead_letter_from_message
from connectors.kafka.limits import consumer_settings
from connectors.kafka.wire import ChangeEventDecoder

logger = logging.getLogger(__name__)


def build_consumer(
    config: KafkaConfig, group_id: str, topics: Iterable[str], **overrides: Any
) -> Any:
    """A subscribed consumer: manual commits, earliest reset, read_committed, fetches sized
    for capa's largest record (:mod:`connectors.kafka.limits`)."""
    from confluent_kafka import Consumer

    settings = client_config(
        config,
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            **consumer_settings(config.max_message_bytes),
            **overrides,
        },
    )
    consumer = Consumer(settings)
    consumer.subscribe(list(topics))
    return consumer


@dataclass(frozen=True)
class Consumed:
    """One decoded record: the event or the dead letter, plus where it was read."""

    topic: str
    partition: int
    offset: int
    event: ChangeEvent | None = None
    dead_letter: DeadLetter | None = None


def decode_message(decoder: ChangeEventDecoder, msg: Any) -> Consumed:
    """A polled message -> :class:`Consumed` (poison records become dead letters)."""
    where = {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()}
    try:
        return Consumed(**where, event=decoder.decode(msg.value()))
    except DecodeError as exc:
        letter = DeadLetter(
            reason=exc.reason,
            raw=msg.value(),
            origin="kafka-consumer",
            location=f"{where['topic']}/{where['partition']}@{where['offset']}",
        )
        return Consumed(**where, dead_letter=letter)


def read_change_events(
    consumer: Any,
    decoder: ChangeEventDecoder,
    *,
    max_messages: int = 500,
    timeout_s: float = 1.0,
) -> list[Consumed]:
    """One ``consume`` call's worth of decoded records (partition EOF markers skipped)."""
    from confluent_kafka import KafkaError

    out: list[Consumed] = []
    for msg in consumer.consume(max_messages, timeout_s):
        error = msg.error()
        if error is None:
            out.append(decode_message(decoder, msg))
        elif error.code() != KafkaError._PARTITION_EOF:
            raise ServiceUnavailable(f"Kafka consume failed: {error.str()}")
    return out


def iter_change_events(
    config: KafkaConfig, group_id: str, *, topic: str | None = None, idle_polls: int = 5
) -> Iterator[Consumed]:
    """Everything currently on ``topic`` (stops after ``idle_polls`` empty polls)."""
    consumer = build_consumer(config, group_id, [topic or config.topic])
    decoder = ChangeEventDecoder.from_config(config)
    idle = 0
    try:
        while idle < idle_polls:
            batch = read_change_events(consumer, decoder)
            idle = 0 if batch else idle + 1
            yield from batch
    finally:
        consumer.close()


def read_dead_letters(messages: Iterable[Any]) -> list[DeadLetter]:
    """Polled DLQ messages -> :class:`DeadLetter` records."""
    return [dead_letter_from_message(m.value(), m.headers()) for m in messages if m.error() is None]


def read_topic(
    source: KafkaConfig | str,
    topic: str,
    *,
    until: Any = None,
    timeout_s: float = 60.0,
    client_settings: dict[str, Any] | None = None,
    max_message_bytes: int | None = None,
) -> list[Any]:
    """All messages of ``topic`` from the beginning (no consumer group: partitions assigned).

    ``source`` is a :class:`KafkaConfig` (bootstrap and security) or a plaintext
    ``host:port``. Reads until ``until(messages)`` is true, or (without ``until``) until
    every partition is at its end offset, or ``timeout_s`` passes. Used by tests and
    diagnostics.
    """
    import time

    from confluent_kafka import Consumer, TopicPartition

    config = as_config(source)
    settings = {
        "group.id": "capa-read-topic",
        "enable.auto.commit": False,
        **consumer_settings(max_message_bytes or config.max_message_bytes),
        **(client_settings or {}),
    }
    consumer = Consumer(client_config(config, settings))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        messages: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = [m for m in consumer.consume(500, 0.5) if m.error() is None]
            messages.extend(batch)
            if until is not None and until(messages):
                break
            if until is None and not batch and _at_end(consumer, topic, partitions, messages):
                break
        return messages
    finally:
        consumer.close()


def _at_end(consumer: Any, topic: str, partitions: Any, messages: list[Any]) -> bool:
    from confluent_kafka import TopicPartition

    seen: dict[int, int] = {}
    for msg in messages:
        seen[msg.partition()] = max(seen.get(msg.partition(), -1), msg.offset())
    for partition in partitions:
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)
        if high > 0 and seen.get(partition, -1) < high - 1:
            return False
    return True
