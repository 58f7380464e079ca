"""Large records (capa issue #19): the size policy, oversize dead letters and bounded gunzip.

The Kafka round trips (a real broker refusing a record, the bridge and the bucket reader
moving past one) are in tests/integration (test_kafka_producer.py, test_bridge.py,
gcs/test_datastream_reader.py).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kafka_support import make_event

from capa.config import KafkaConfig, load_settings
from capa.errors import ConfigError
from capa_app.stack.base import free_port
from capa_app.stack.kafka import server_properties
from connectors.datastream.files import gunzip_bounded, maybe_gunzip, read_json_file
from connectors.kafka.dlq import (
    KEY_HEADER_MAX,
    Provenance,
    dead_letter_from_message,
    oversize_letter,
)
from connectors.kafka.limits import (
    FRAMING_HEADROOM,
    consumer_settings,
    producer_settings,
    topic_config,
)
from connectors.kafka.producer import KafkaChangeProducer

MiB = 1024 * 1024


def big_event(value_bytes: int, pk: int = 7) -> object:
    event = make_event(pk)
    assert event.after is not None
    after = dict(event.after, doc=os.urandom(value_bytes // 2).hex())
    return replace(event, after=after, event_id="")


# --- one limit, sized onto every piece ------------------------------------------------------


def test_every_kafka_piece_is_sized_from_the_one_setting(tmp_path: Path) -> None:
    config = KafkaConfig(max_message_bytes=20 * MiB)
    wire = 20 * MiB + FRAMING_HEADROOM
    broker = server_properties(config, tmp_path)
    assert broker["message.max.bytes"] == str(wire)
    assert topic_config(config.max_message_bytes) == {"max.message.bytes": str(wire)}
    assert producer_settings(config.max_message_bytes) == {"message.max.bytes": wire}
    consumer = consumer_settings(config.max_message_bytes)
    assert consumer["max.partition.fetch.bytes"] == wire
    assert consumer["fetch.max.bytes"] >= wire
    assert consumer["receive.message.max.bytes"] > consumer["fetch.max.bytes"] + 512


def test_the_default_limit_is_16_mib_and_dead_letters_fit_under_it() -> None:
    config = KafkaConfig()
    assert config.max_message_bytes == 16 * MiB
    assert config.dlq_max_value_bytes < 1_000_000 < config.max_message_bytes


def test_a_dead_letter_cap_at_or_above_the_limit_is_refused() -> None:
    with pytest.raises(ConfigError, match="dlq_max_value_bytes=2097152 must be below"):
        load_settings(kafka={"max_message_bytes": 2 * MiB, "dlq_max_value_bytes": 2 * MiB})


# --- the producer's check happens before produce ---------------------------------------------

QUIET = {"log_level": 0}  # no broker here: librdkafka would log every refused connect


def test_an_event_over_the_limit_is_dead_lettered_not_produced() -> None:
    config = KafkaConfig(port=free_port(), max_message_bytes=MiB)
    producer = KafkaChangeProducer(config, client_settings=QUIET)
    assert producer.send(make_event(1)) is True
    assert producer.send(big_event(2 * MiB)) is False  # no exception out of produce()
    assert (producer.sent, producer.oversized, producer.dead_lettered) == (1, 1, 1)


def test_an_event_the_client_refuses_in_produce_is_dead_lettered_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """librdkafka's own check (here set below capa's limit) raises MSG_SIZE_TOO_LARGE from
    produce(); the producer turns that into a dead letter with Kafka's reason."""
    config = KafkaConfig(port=free_port())  # capa's limit: 16 MiB
    producer = KafkaChangeProducer(
        config, client_settings={"message.max.bytes": 1_000_000, **QUIET}
    )
    with caplog.at_level(logging.WARNING, logger="connectors.kafka.producer"):
        assert producer.send(big_event(2 * MiB)) is False
    assert (producer.sent, producer.oversized, producer.dead_lettered) == (0, 1, 1)
    assert "Kafka producer refused the event" in caplog.text
    assert "too large" in caplog.text.lower()


def test_an_oversize_letter_names_table_key_position_and_sizes_not_the_payload() -> None:
    event = big_event(3 * MiB)
    original = json.dumps({"value": "x" * (3 * MiB)}).encode()
    where = Provenance("f2.public.orders", lambda: original, {"record_index": "4"})
    letter = oversize_letter(event, 3 * MiB + 99, "too large", where, b"encoded")
    assert letter.raw == original and letter.location == "f2.public.orders"
    assert letter.origin == "debezium" and letter.source == "f2"
    assert letter.extra["table"] == "public.orders"
    assert json.loads(letter.extra["key"]) == [["id", 7]]
    assert letter.extra["position"] == event.position
    assert letter.extra["event_id"] == event.event_id
    assert letter.extra["event_size"] == str(3 * MiB + 99)
    assert letter.extra["record_index"] == "4"
    headers = dict(letter.headers(truncated=True))
    assert headers["capa.dlq.size"] == str(len(original)).encode()
    assert headers["capa.dlq.truncated"] == b"true"
    assert dead_letter_from_message(original[:10], letter.headers()).extra == letter.extra


def test_an_oversize_letter_without_provenance_carries_the_encoded_event() -> None:
    letter = oversize_letter(make_event(), 10, "too large", None, b"encoded")
    assert letter.raw == b"encoded" and letter.location is None


def test_a_huge_key_is_cut_in_the_header() -> None:
    event = replace(make_event(), key={"id": "k" * 5000}, event_id="")
    letter = oversize_letter(event, 1, "too large", None, b"")
    assert len(letter.extra["key"]) == KEY_HEADER_MAX
    assert letter.extra["key_truncated"] == "true"


# --- Datastream gzip: bounded, never truncated ------------------------------------------------


def bomb(tmp_path: Path, inflated: int) -> bytes:
    """A real gzip file written to disk: ``inflated`` zero bytes in a few KiB."""
    path = tmp_path / "bomb.jsonl.gz"
    with gzip.open(path, "wb", compresslevel=9) as handle:
        chunk = b"\0" * MiB
        for _ in range(inflated // MiB):
            handle.write(chunk)
    return path.read_bytes()


def test_a_gzip_bomb_is_a_dead_letter_for_the_file(tmp_path: Path) -> None:
    data = bomb(tmp_path, 64 * MiB)
    assert len(data) < MiB  # a small file ...
    letter = maybe_gunzip(data, "public_orders/bomb.jsonl.gz", 4 * MiB)  # ... inflating 64 MiB
    assert not isinstance(letter, bytes)
    assert letter.file == "public_orders/bomb.jsonl.gz" and letter.index is None
    assert "inflates to more than 4194304 bytes" in letter.reason
    assert letter.raw == data  # the file as found, not a truncated inflation


def test_a_bomb_in_a_later_member_is_caught_too(tmp_path: Path) -> None:
    small = gzip.compress(b'{"a": 1}\n')
    data = small + bomb(tmp_path, 8 * MiB)
    assert isinstance(maybe_gunzip(data, "two-members.jsonl.gz", 4 * MiB), bytes) is False
    assert gunzip_bounded(data, 9 * MiB).startswith(b'{"a": 1}\n')


def test_members_under_the_limit_are_read_whole_and_in_order() -> None:
    lines = [json.dumps({"n": n}).encode() + b"\n" for n in range(3)]
    data = b"".join(gzip.compress(line) for line in lines) + b"\0\0\0"  # zero padding at the end
    assert gunzip_bounded(data, len(b"".join(lines))) == b"".join(lines)  # exactly at the limit
    records = list(read_json_file(data, "three.jsonl.gz"))
    assert [r.value for r in records] == [{"n": 0}, {"n": 1}, {"n": 2}]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (gzip.compress(b"x" * 1000)[:-12], EOFError),  # cut before the end marker
        (gzip.compress(b"x") + b"trailing", OSError),  # junk after a member
        (b"\x1f\x8b\x08\x00garbage", (EOFError, zlib.error)),
        (gzip.compress(b"x" * 1000)[:-4] + b"\0\0\0\1", zlib.error),  # wrong length trailer
    ],
)
def test_corrupt_gzip_is_an_error_not_a_partial_read(data: bytes, error: Any) -> None:
    with pytest.raises(error):
        gunzip_bounded(data, MiB)
    letter = maybe_gunzip(data, "bad.jsonl.gz", MiB)
    assert not isinstance(letter, bytes) and letter.reason.startswith("corrupt gzip file")


# --- the apply job's reader takes the same setting --------------------------------------------


def test_the_apply_readers_fetches_are_sized_from_capas_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from beam_jobs.kafka_io import ReadFromKafkaPartitions

    monkeypatch.setenv("CAPA__KAFKA__MAX_MESSAGE_BYTES", str(32 * MiB))
    configured = ReadFromKafkaPartitions("127.0.0.1:1", "t", "g")  # built where the job starts
    assert configured.consumer_settings == consumer_settings(32 * MiB)
    explicit = ReadFromKafkaPartitions("127.0.0.1:1", "t", "g", max_message_bytes=2 * MiB)
    assert explicit.consumer_settings["max.partition.fetch.bytes"] == 2 * MiB + FRAMING_HEADROOM
