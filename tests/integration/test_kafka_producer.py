"""KafkaChangeProducer against the real broker: keys, both wire formats, dead letters."""

from __future__ import annotations

import os
import uuid
from collections import defaultdict
from dataclasses import replace
from typing import Any

from confluent_kafka.admin import NewTopic
from kafka_support import make_event, registry_fixture  # noqa: F401 - the 'registry' fixture

from capa.config import KafkaConfig
from capa.events import Op
from capa_app.stack.kafka import ensure_topics
from connectors.kafka.consumer import ChangeEventDecoder, read_topic
from connectors.kafka.dlq import DeadLetter, dead_letter_from_message
from connectors.kafka.producer import KafkaChangeProducer
from connectors.kafka.registry import SchemaRegistryClient


def fresh_topics(kafka: Any) -> KafkaConfig:
    suffix = uuid.uuid4().hex[:10]
    config = kafka.config.model_copy(
        update={"topic": f"it.changes.{suffix}", "dlq_topic": f"it.dlq.{suffix}"}
    )
    ensure_topics(kafka.admin(), {config.topic: 3, config.dlq_topic: 1})
    return config


def test_events_are_keyed_by_row_and_decode_back(kafka: Any) -> None:
    config = fresh_topics(kafka)
    events = [make_event(pk, op) for pk in range(1, 21) for op in (Op.INSERT, Op.UPDATE)]
    producer = KafkaChangeProducer(config)
    for event in events:
        producer.send(event)
    producer.flush()
    producer.close()
    messages = read_topic(config.bootstrap, config.topic, until=lambda m: len(m) >= len(events))
    decoder = ChangeEventDecoder()
    assert sorted(decoder.decode(m.value()).event_id for m in messages) == sorted(
        e.event_id for e in events
    )
    partitions_by_key: dict[bytes, set[int]] = defaultdict(set)
    for msg in messages:
        assert msg.key() == decoder.decode(msg.value()).kafka_key()
        partitions_by_key[msg.key()].add(msg.partition())
    assert len(partitions_by_key) == 20
    assert all(len(p) == 1 for p in partitions_by_key.values())  # one row -> one partition
    assert len({p for ps in partitions_by_key.values() for p in ps}) > 1  # spread over the topic


def test_confluent_wire_format_with_a_registry(kafka: Any, registry: Any) -> None:
    url, handler = registry
    config = fresh_topics(kafka).model_copy(update={"schema_registry_url": url})
    producer = KafkaChangeProducer(config)
    producer.send(make_event(7))
    producer.flush()
    producer.close()
    [msg] = read_topic(config.bootstrap, config.topic, until=lambda m: len(m) >= 1)
    assert msg.value()[0] == 0
    assert handler.subjects == {f"{config.topic}-value": int.from_bytes(msg.value()[1:5], "big")}
    assert ChangeEventDecoder(SchemaRegistryClient(url)).decode(msg.value()) == make_event(7)


def test_dead_letters_carry_original_bytes_and_reason(kafka: Any) -> None:
    config = fresh_topics(kafka).model_copy(update={"dlq_max_value_bytes": 1000})
    producer = KafkaChangeProducer(config)
    small = DeadLetter("bad json", b"{oops", "debezium", source="f2", location="f2.public.orders")
    big = DeadLetter("corrupt file", bytes(range(256)) * 8, "datastream", location="gs://b/o#1")
    producer.send_dead_letter(small)
    producer.send_dead_letter(big)
    producer.flush()
    producer.close()
    messages = read_topic(config.bootstrap, config.dlq_topic, until=lambda m: len(m) >= 2)
    first, second = (dead_letter_from_message(m.value(), m.headers()) for m in messages)
    assert first == small
    assert messages[0].key() == b"f2.public.orders"
    assert second.reason == "corrupt file" and second.raw == big.raw[:1000]
    headers = dict(messages[1].headers())
    assert headers["capa.dlq.truncated"] == b"true"
    assert headers["capa.dlq.size"] == b"2048"


# --- large records (capa issue #19) -------------------------------------------------------


def big_event(pk: int, value_bytes: int) -> Any:
    """An event whose row holds ``value_bytes`` of random hex (lz4 barely shrinks it)."""
    event = make_event(pk)
    after = dict(event.after or {}, doc=os.urandom(value_bytes // 2).hex())
    return replace(event, after=after, event_id="")


def dead_letters(config: KafkaConfig, count: int) -> list[Any]:
    messages = read_topic(config.bootstrap, config.dlq_topic, until=lambda m: len(m) >= count)
    return messages


def test_an_event_over_the_limit_is_a_dead_letter_and_the_rest_is_produced(kafka: Any) -> None:
    config = fresh_topics(kafka).model_copy(update={"max_message_bytes": 1024 * 1024})
    producer = KafkaChangeProducer(config)
    big = big_event(2, 2 * 1024 * 1024)  # the 2 MB row of the issue
    assert [producer.send(e) for e in (make_event(1), big, make_event(3))] == [True, False, True]
    producer.flush()  # no exception: the batch completes
    producer.close()
    events = read_topic(config.bootstrap, config.topic, until=lambda m: len(m) >= 2)
    assert sorted(ChangeEventDecoder().decode(m.value()).key["id"] for m in events) == [1, 3]
    [message] = dead_letters(config, 1)
    letter = dead_letter_from_message(message.value(), message.headers())
    headers = dict(message.headers())
    assert "over kafka.max_message_bytes=1048576" in letter.reason
    assert letter.extra["table"] == "public.orders" and letter.extra["key"] == '[["id",2]]'
    assert letter.extra["position"] == big.position
    assert int(letter.extra["event_size"]) > 2 * 1024 * 1024
    assert len(message.value()) == config.dlq_max_value_bytes  # the start, not the payload
    assert headers["capa.dlq.truncated"] == b"true"


def test_an_event_the_broker_refuses_as_too_large_becomes_a_dead_letter(kafka: Any) -> None:
    """The topic is set lower than capa's limit (someone else created it): Kafka refuses
    the record on delivery; the producer dead-letters it with Kafka's reason and flush
    returns normally instead of retrying the batch for ever."""
    suffix = uuid.uuid4().hex[:10]
    config = kafka.config.model_copy(
        update={"topic": f"it.small.{suffix}", "dlq_topic": f"it.small.dlq.{suffix}"}
    )
    small_topic = NewTopic(config.topic, 1, 1, config={"max.message.bytes": "1048576"})
    admin = kafka.admin()
    for future in admin.create_topics([small_topic]).values():
        future.result()
    ensure_topics(kafka.admin(), {config.dlq_topic: 1})
    producer = KafkaChangeProducer(config)
    big = big_event(2, 4 * 1024 * 1024)  # under capa's 16 MiB, over the topic's 1 MiB
    assert [producer.send(e) for e in (make_event(1), big, make_event(3))] == [True] * 3
    producer.flush()
    assert producer.oversized == 1
    producer.send(make_event(4))  # the producer is still usable afterwards
    producer.flush()
    producer.close()
    events = read_topic(config.bootstrap, config.topic, until=lambda m: len(m) >= 3)
    assert sorted(ChangeEventDecoder().decode(m.value()).key["id"] for m in events) == [1, 3, 4]
    [message] = dead_letters(config, 1)
    letter = dead_letter_from_message(message.value(), message.headers())
    assert "Kafka refused the event" in letter.reason and "too large" in letter.reason.lower()
    assert letter.extra["key"] == '[["id",2]]' and letter.extra["position"] == big.position
