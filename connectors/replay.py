"""Dead letters back into change events: the original bytes decoded again, by their origin.

A dead letter (:mod:`connectors.kafka.dlq`) keeps the bytes exactly as its path received
them, so replaying one means running that path's own decoding again, now that the cause
is fixed:

===================================  ===========================================================
origin                               original bytes -> events
===================================  ===========================================================
``beam-apply``, ``kafka-consumer``   a canonical Kafka value: :class:`ChangeEventDecoder`
``debezium``                         the bridge's ``{destination, key, value}`` record: the
                                     Debezium normaliser
``datastream``                       a Datastream JSON record / line, or the Avro file (the
                                     ``record_index`` header picks the record): the Datastream
                                     normaliser
===================================  ===========================================================

Every failure is a :class:`~capa.errors.DecodeError` with the reason (the letter stays).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from capa.config import KafkaConfig
from capa.errors import DecodeError
from capa.events import ChangeEvent
from connectors.base import DeadLetter as FileDeadLetter
from connectors.base import RawRecord, Skip, get_normalizer, normalize_one
from connectors.kafka.dlq import DeadLetter
from connectors.kafka.wire import ChangeEventDecoder

_AVRO_MAGIC = b"Obj\x01"


@dataclass
class OriginalDecoder:
    """Decodes dead letters' originals; one decoder / normaliser per kind, made on first use."""

    kafka: KafkaConfig
    default_source: str | None = None

    def __post_init__(self) -> None:
        self._wire: ChangeEventDecoder | None = None
        self._normalizers: dict[tuple[str, str | None], Any] = {}

    def events(self, letter: DeadLetter, *, truncated: bool = False) -> list[ChangeEvent]:
        """The change events ``letter`` holds; :class:`DecodeError` with the reason if none.

        ``truncated``: the DLQ kept only the first bytes (header ``capa.dlq.truncated``)."""
        if truncated or not letter.raw:
            raise DecodeError("the dead letter holds no whole original (it was cut or empty)")
        decode = ORIGINS.get(letter.origin)
        if decode is None:
            known = ", ".join(sorted(ORIGINS))
            raise DecodeError(f"origin {letter.origin!r} cannot be replayed; replayable: {known}")
        return decode(self, letter)

    def wire(self) -> ChangeEventDecoder:
        if self._wire is None:
            self._wire = ChangeEventDecoder.from_config(self.kafka)
        return self._wire

    def normalizer(self, fmt: str, source: str | None) -> Any:
        key = (fmt, source or self.default_source)
        if key not in self._normalizers:
            self._normalizers[key] = get_normalizer(fmt, source=key[1])
        return self._normalizers[key]


def _canonical(decoder: OriginalDecoder, letter: DeadLetter) -> list[ChangeEvent]:
    return [decoder.wire().decode(letter.raw)]


def _debezium(decoder: OriginalDecoder, letter: DeadLetter) -> list[ChangeEvent]:
    raw = letter.raw or b""
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"the original is not a JSON Debezium record: {exc}") from None
    item = RawRecord(letter.location or "dlq", 0, record, raw)
    return [_outcome(normalize_one(decoder.normalizer("debezium-json", letter.source), item))]


def _datastream(decoder: OriginalDecoder, letter: DeadLetter) -> list[ChangeEvent]:
    raw, name = letter.raw or b"", letter.location or "dlq"
    avro = raw.startswith(_AVRO_MAGIC)
    fmt = "datastream-avro" if avro else "datastream-json"
    from connectors.base import READERS

    items = list(READERS[fmt](raw, name))
    wanted = letter.extra.get("record_index")
    if avro and wanted is not None:  # the whole file was kept: take the record it names
        items = [i for i in items if i.index == int(wanted)]
    if not items:
        raise DecodeError("the original holds no Datastream record")
    normalizer = decoder.normalizer(fmt, letter.source)
    return [
        _outcome(i if isinstance(i, FileDeadLetter) else normalize_one(normalizer, i))
        for i in items
    ]


def _outcome(outcome: Any) -> ChangeEvent:
    if isinstance(outcome, FileDeadLetter):
        raise DecodeError(outcome.reason)
    if isinstance(outcome, Skip):
        raise DecodeError(f"the original is not a row change ({outcome.kind}); nothing to apply")
    return outcome  # type: ignore[no-any-return]


ORIGINS: dict[str, Callable[[OriginalDecoder, DeadLetter], list[ChangeEvent]]] = {
    "beam-apply": _canonical,
    "kafka-consumer": _canonical,
    "debezium": _debezium,
    "datastream": _datastream,
}
