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
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

HEADER_PREFIX = "capa.dlq."


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
