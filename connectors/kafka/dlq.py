"""Dead-letter records: the original bytes as the value, the why and where in headers.

Header names (all values UTF-8 text):

=====================  ==============================================================
``capa.dlq.reason``    why the record could not become a change event
``capa.dlq.origin``    path that rejected it: debezium, datastream, apply ...
``capa.dlq.source``    configured source name (f2, f3 ...), if known
``capa.dlq.location``  where the bytes came from (``gs://b/o#gen``, a Debezium topic ...)
``capa.dlq.ts``        UTC time the record was dead-lettered (ISO-8601)
``capa.dlq.size``      size of the original bytes
``capa.dlq.truncated`` ``true`` when the value holds only the first bytes (huge file)
=====================  ==============================================================

An event too large for Kafka (:func:`oversize_letter`) also carries ``capa.dlq.table``
(``schema.table``), ``capa.dlq.key`` (the primary key as JSON, cut to 1 KiB),
``capa.dlq.position``, ``capa.dlq.event_id``, ``capa.dlq.op`` and
``capa.dlq.event_size`` (the encoded size that was over the limit); its value is the
start of the original input record, never the whole payload.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from capa.events import ChangeEvent, key_items, stable_json

HEADER_PREFIX = "capa.dlq."
KEY_HEADER_MAX = 1024  # a dead letter must stay small whatever the key holds


@dataclass(frozen=True)
class DeadLetter:
    """One rejected input, kept with its original bytes."""

    reason: str
    raw: bytes | None
    origin: str
    source: str | None = None
    location: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def headers(self, *, truncated: bool = False) -> list[tuple[str, bytes]]:
        fields = {
            "reason": self.reason,
            "origin": self.origin,
            "source": self.source,
            "location": self.location,
            "ts": datetime.now(UTC).isoformat(),
            "size": str(len(self.raw or b"")),
            "truncated": "true" if truncated else None,
            **self.extra,
        }
        return [(HEADER_PREFIX + k, v.encode()) for k, v in fields.items() if v is not None]

    def kafka_key(self) -> bytes | None:
        return self.location.encode() if self.location else None


def dead_letter_from_message(
    value: bytes | None, headers: Iterable[tuple[str, bytes | None]] | None
) -> DeadLetter:
    """Rebuild a :class:`DeadLetter` from a consumed DLQ record (value + headers)."""
    found = {
        k[len(HEADER_PREFIX) :]: (v or b"").decode("utf-8", "replace")
        for k, v in (headers or [])
        if k.startswith(HEADER_PREFIX)
    }
    core = {name: found.pop(name, None) for name in ("reason", "origin", "source", "location")}
    for transient in ("ts", "size", "truncated"):
        found.pop(transient, None)
    return DeadLetter(
        reason=core["reason"] or "",
        raw=value,
        origin=core["origin"] or "",
        source=core["source"],
        location=core["location"],
        extra=found,
    )


@dataclass(frozen=True)
class Provenance:
    """Where an event came from: what its dead letter says should Kafka not take the event."""

    location: str | None = None
    raw: Callable[[], bytes] | None = None  # the original input record, built only if needed
    extra: Mapping[str, str] = field(default_factory=dict)


def oversize_letter(
    event: ChangeEvent, size: int, reason: str, provenance: Provenance | None, encoded: bytes
) -> DeadLetter:
    """The dead letter of an event Kafka cannot take: table, key and position, not the payload.

    The value is the original input (``provenance.raw``, else the encoded event); the
    producer cuts it to ``dlq_max_value_bytes``.
    """
    where = provenance or Provenance()
    key = stable_json(key_items(event.key))
    extra = {
        "table": f"{event.schema}.{event.table}",
        "key": key[:KEY_HEADER_MAX],
        "position": event.position,
        "event_id": event.event_id,
        "op": event.op.value,
        "event_size": str(size),
        **({"key_truncated": "true"} if len(key) > KEY_HEADER_MAX else {}),
        **where.extra,
    }
    raw = where.raw() if where.raw is not None else encoded
    origin = event.origin or "kafka-producer"
    return DeadLetter(reason, raw, origin, event.source, where.location, extra)
