"""Wire formats of canonical events on Kafka.

Two framings of the same Avro body (:func:`capa.codec.encode_avro`):

* **Avro single-object encoding** (no registry): ``C3 01`` + 8-byte CRC-64-AVRO
  fingerprint + body; the default.
* **Confluent wire format** (``schema_registry_url`` set): magic byte ``0`` + 4-byte
  big-endian schema id + body; the schema is registered under ``<topic>-value``.

:class:`ChangeEventDecoder` accepts both and raises :class:`~capa.errors.DecodeError`
(with the original bytes) on anything else, so a consumer can dead-letter poison records.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Protocol

import fastavro

from capa.codec import (
    avro_schema_text,
    decode_avro,
    decode_single_object,
    encode_avro,
    encode_single_object,
)
from capa.config import KafkaConfig
from capa.errors import DecodeError
from capa.events import ChangeEvent
from connectors.kafka.registry import SchemaRegistryClient

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0


class EventEncoder(Protocol):
    """Turns a canonical event into Kafka value bytes."""

    name: str

    def encode(self, event: ChangeEvent) -> bytes: ...


class SingleObjectEncoder:
    name = "avro-single-object"

    def encode(self, event: ChangeEvent) -> bytes:
        return encode_single_object(event)


class ConfluentEncoder:
    """Confluent framing; the schema id is fetched (registered) once, on first use."""

    name = "confluent-avro"

    def __init__(self, registry: SchemaRegistryClient, subject: str) -> None:
        self.registry = registry
        self.subject = subject
        self._header: bytes | None = None

    def encode(self, event: ChangeEvent) -> bytes:
        if self._header is None:
            schema_id = self.registry.register(self.subject, avro_schema_text())
            self._header = struct.pack(">bI", CONFLUENT_MAGIC, schema_id)
        return self._header + encode_avro(event)


def subject_for(topic: str) -> str:
    """Confluent TopicNameStrategy subject of a topic's values."""
    return f"{topic}-value"


def build_encoder(config: KafkaConfig, topic: str | None = None) -> EventEncoder:
    """The encoder the configuration asks for (registry set -> Confluent framing)."""
    if config.schema_registry_url:
        registry = SchemaRegistryClient(config.schema_registry_url)
        return ConfluentEncoder(registry, subject_for(topic or config.topic))
    return SingleObjectEncoder()


def _canonical_form(schema_text: str) -> str:
    parsed = fastavro.parse_schema(json.loads(schema_text), _write_hint=False)
    return str(fastavro.schema.to_parsing_canonical_form(parsed))


class ChangeEventDecoder:
    """Kafka value bytes (either framing) -> :class:`ChangeEvent`, or :class:`DecodeError`."""

    def __init__(self, registry: SchemaRegistryClient | None = None) -> None:
        self.registry = registry
        self._accepted_ids: set[int] = set()
        self._decoders: dict[int, Callable[[bytes], ChangeEvent]] = {
            SINGLE_OBJECT_MAGIC[0]: decode_single_object,
            CONFLUENT_MAGIC: self._decode_confluent,
        }

    @classmethod
    def from_config(cls, config: KafkaConfig) -> ChangeEventDecoder:
        url = config.schema_registry_url
        return cls(SchemaRegistryClient(url) if url else None)

    def decode(self, data: bytes | None) -> ChangeEvent:
        if not data:
            raise DecodeError("empty Kafka value (tombstone?) is not a change event", raw=data)
        decoder = self._decoders.get(data[0])
        if decoder is None:
            raise DecodeError(
                f"unknown wire format: first byte 0x{data[0]:02x} is neither Confluent magic 0x00 "
                "nor Avro single-object 0xC3",
                raw=data,
            )
        try:
            return decoder(data)
        except DecodeError as exc:
            raise DecodeError(exc.reason, raw=data) from exc

    def _decode_confluent(self, data: bytes) -> ChangeEvent:
        if len(data) < 5:
            raise DecodeError(f"Confluent frame of {len(data)} bytes is shorter than its header")
        schema_id = struct.unpack(">I", data[1:5])[0]
        self._check_schema_id(schema_id)
        return decode_avro(data, 5)

    def _check_schema_id(self, schema_id: int) -> None:
        if schema_id in self._accepted_ids:
            return
        if self.registry is None:
            raise DecodeError(
                f"record is Confluent-framed (schema id {schema_id}) but no schema registry is "
                "configured; set CAPA__KAFKA__SCHEMA_REGISTRY_URL"
            )
        text = self.registry.schema(schema_id)
        if _canonical_form(text) != _canonical_form(avro_schema_text()):
            raise DecodeError(
                f"schema id {schema_id} is not capa change_event.v1; upgrade the reader"
            )
        self._accepted_ids.add(schema_id)
