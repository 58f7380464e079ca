"""Kafka wire formats, the schema-registry client and dead-letter headers (no broker)."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from kafka_support import free_port, make_event, registry_fixture  # noqa: F401 - the 'registry' fixture

from capa.codec import avro_schema_text, encode_avro
from capa.config import KafkaConfig
from capa.errors import ConfigError, DecodeError, ServiceUnavailable
from capa.events import Op
from connectors.kafka.dlq import DeadLetter, dead_letter_from_message
from connectors.kafka.producer import DeliveryFailed, KafkaChangeProducer
from connectors.kafka.registry import SchemaRegistryClient
from connectors.kafka.wire import (
    ChangeEventDecoder,
    ConfluentEncoder,
    SingleObjectEncoder,
    build_encoder,
    subject_for,
)

# --- tests ---------------------------------------------------------------------------


def test_single_object_round_trip_keeps_typed_values() -> None:
    event = make_event()
    data = SingleObjectEncoder().encode(event)
    assert data[:2] == b"\xc3\x01"
    assert ChangeEventDecoder().decode(data) == event


def test_confluent_frame_registers_once_and_round_trips(registry: Any) -> None:
    url, handler = registry
    encoder = ConfluentEncoder(SchemaRegistryClient(url), subject_for("capa.changes"))
    first, second = encoder.encode(make_event(1)), encoder.encode(make_event(2, Op.DELETE))
    assert first[0] == 0
    schema_id = struct.unpack(">I", first[1:5])[0]
    assert handler.subjects == {"capa.changes-value": schema_id}
    assert handler.calls == ["POST /subjects/capa.changes-value/versions"]
    decoder = ChangeEventDecoder(SchemaRegistryClient(url))
    assert decoder.decode(first) == make_event(1)
    assert decoder.decode(second).op is Op.DELETE
    assert handler.calls[-1] == f"GET /schemas/ids/{schema_id}"


def test_build_encoder_follows_config(registry: Any) -> None:
    url, _ = registry
    assert isinstance(build_encoder(KafkaConfig()), SingleObjectEncoder)
    encoder = build_encoder(KafkaConfig(schema_registry_url=url), "t1")
    assert isinstance(encoder, ConfluentEncoder) and encoder.subject == "t1-value"


def test_decoder_rejects_a_foreign_registry_schema(registry: Any) -> None:
    url, _ = registry
    client = SchemaRegistryClient(url)
    foreign = json.dumps(
        {"type": "record", "name": "Other", "fields": [{"name": "x", "type": "int"}]}
    )
    foreign_id = client.register("other-value", foreign)
    data = struct.pack(">bI", 0, foreign_id) + encode_avro(make_event())
    with pytest.raises(DecodeError, match=r"is not capa change_event\.v1") as info:
        ChangeEventDecoder(client).decode(data)
    assert info.value.raw == data


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty Kafka value"),
        (b'{"op": "c"}', "unknown wire format: first byte 0x7b"),
        (b"\xc3\x01" + b"\x00" * 8 + b"xx", "fingerprint"),
        (b"\x00\x00\x00", "shorter than its header"),
        (b"\x00\x00\x00\x00\x07" + b"garbage", "no schema registry is configured"),
    ],
)
def test_decoder_turns_poison_into_decode_error_with_raw_bytes(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason) as info:
        ChangeEventDecoder().decode(data)
    assert info.value.raw == data


def test_truncated_single_object_body_is_a_decode_error() -> None:
    data = SingleObjectEncoder().encode(make_event())[:-7]
    with pytest.raises(DecodeError, match="not a canonical Avro change event"):
        ChangeEventDecoder().decode(data)


def test_registry_errors_are_classified(registry: Any) -> None:
    url, _ = registry
    with pytest.raises(ConfigError, match="404"):
        SchemaRegistryClient(url).schema(999)
    with pytest.raises(ServiceUnavailable, match="not reachable"):
        SchemaRegistryClient(f"http://127.0.0.1:{free_port()}", timeout_s=2).schema(1)
    with pytest.raises(ConfigError, match="must start with http"):
        SchemaRegistryClient("localhost:8081")


def test_dead_letter_headers_round_trip() -> None:
    letter = DeadLetter(
        reason="bad avro",
        raw=b"\x01\x02",
        origin="datastream",
        source="f3",
        location="gs://b/p/o.avro#7",
        extra={"object_generation": "7"},
    )
    headers = letter.headers()
    names = [name for name, _ in headers]
    assert "capa.dlq.reason" in names and "capa.dlq.ts" in names
    assert "capa.dlq.truncated" not in names
    assert dead_letter_from_message(letter.raw, headers) == letter
    assert ("capa.dlq.truncated", b"true") in letter.headers(truncated=True)


def test_flush_raises_delivery_failed_when_no_broker_acks() -> None:
    config = KafkaConfig(port=free_port(), delivery_timeout_ms=1500)
    producer = KafkaChangeProducer(
        config, client_settings={"socket.connection.setup.timeout.ms": 1000, "log_level": 0}
    )
    producer.send(make_event())
    with pytest.raises(DeliveryFailed, match="did not acknowledge 1 record"):
        producer.flush(timeout_s=10)
    producer.flush(timeout_s=1)  # failures are reported once, then the queue is empty


def test_decoder_accepts_schema_text_reformatted_by_the_registry(registry: Any) -> None:
    url, _ = registry
    pretty = json.dumps(json.loads(avro_schema_text()), indent=4)
    schema_id = SchemaRegistryClient(url).register("x-value", pretty)
    data = struct.pack(">bI", 0, schema_id) + encode_avro(make_event())
    assert ChangeEventDecoder(SchemaRegistryClient(url)).decode(data) == make_event()
