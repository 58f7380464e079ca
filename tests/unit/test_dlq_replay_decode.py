"""connectors.replay: a dead letter's original decoded again by its origin, or a reason why not.

The originals are made the way each path makes them: the Kafka encoder's bytes (apply),
the bridge's ``{destination, key, value}`` JSON (Debezium), a Datastream record file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli_hostile_input import debezium_line

from capa.config import KafkaConfig
from capa.errors import DecodeError
from capa.events import Op
from connectors.debezium.bridge import raw_bytes
from connectors.kafka.dlq import DeadLetter
from connectors.kafka.wire import build_encoder
from connectors.replay import OriginalDecoder

CONFIG = KafkaConfig()


def decoder() -> OriginalDecoder:
    return OriginalDecoder(CONFIG, default_source="f2")


def test_a_canonical_value_from_the_apply_path_decodes() -> None:
    from test_apply_cases import event, full_row

    original = event(Op.INSERT, 7, 70, after=full_row(7, 1))
    value = build_encoder(CONFIG).encode(original)
    letter = DeadLetter("warehouse rejected raw.x: drift", value, "beam-apply", location="t/0@5")
    (decoded,) = decoder().events(letter)
    assert decoded.key == {"id": 7} and decoded.position == original.position


def test_a_debezium_record_from_the_bridge_is_normalised_again() -> None:
    record = json.loads(debezium_line(3))
    bridged = {k: json.dumps(v) if k != "destination" else v for k, v in record.items()}
    letter = DeadLetter("old bug", raw_bytes(bridged), "debezium", source="f2")
    (decoded,) = decoder().events(letter)
    assert (decoded.table, decoded.key, decoded.after) == (
        "things",
        {"id": 3},
        {"id": 3, "name": "n3"},
    )


def test_a_datastream_record_is_normalised_again(upstream_fixtures: Path) -> None:
    raw = (
        upstream_fixtures
        / "datastream_postgres_json_doc"
        / "datastream_pg_update_record.EXTRACTED.json"
    ).read_bytes()
    letter = DeadLetter("old bug", raw, "datastream", source="f3", location="gs://b/o#1")
    (decoded,) = decoder().events(letter)
    assert decoded.source == "f3" and decoded.op is Op.UPDATE


@pytest.mark.parametrize(
    ("letter", "truncated", "why"),
    [
        (DeadLetter("x", b"not avro", "beam-apply"), False, "unknown wire format"),
        (DeadLetter("x", b"\xff\xfe", "debezium"), False, "not a JSON Debezium record"),
        (
            DeadLetter("x", b'{"destination": "a.b.c", "key": null, "value": null}', "debezium"),
            False,
            "not a row change",
        ),
        (DeadLetter("x", b"{}", "somewhere"), False, "cannot be replayed"),
        (DeadLetter("x", b"", "beam-apply"), False, "no whole original"),
        (DeadLetter("x", b"\xc3\x01abc", "beam-apply"), True, "no whole original"),
    ],
    ids=["poison", "debezium-bytes", "tombstone", "unknown-origin", "empty", "truncated"],
)
def test_what_cannot_be_decoded_says_why(letter: DeadLetter, truncated: bool, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        decoder().events(letter, truncated=truncated)
