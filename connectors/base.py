"""The normaliser port: one source record in, one canonical change event (or a skip) out.

A normaliser is pure: no I/O, no clock. It maps a decoded record (a ``dict`` from JSON or
Avro) to a :class:`~capa.events.ChangeEvent`, returns :class:`Skip` for records that carry
no row change (heartbeats, transaction BEGIN/END, logical messages, tombstones), and raises
:class:`~capa.errors.DecodeError` with a reason for anything it cannot map - the caller
dead-letters that record with its original bytes.

Adapters are found through :data:`NORMALIZERS` (format name -> factory) and read their
input files through :data:`READERS` (format name -> file reader).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from capa.errors import DecodeError
from capa.events import ChangeEvent, Op, occurrence_id, stable_json


@dataclass(frozen=True, slots=True)
class Skip:
    """A record that is not a row change; counted by ``kind``, never an error."""

    kind: str  # "heartbeat", "transaction", "message", "tombstone", "schema_change"


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record as found in an input file, before normalisation."""

    file: str
    index: int
    value: Any  # the decoded record (dict / list / None)
    raw: bytes | None  # its original bytes; None = re-serialise ``value`` when needed
    hints: Mapping[str, str] = field(default_factory=dict)  # column -> type hint (Avro files)

    def raw_bytes(self) -> bytes:
        """The original bytes, or (Avro, JSON arrays) the record re-serialised as JSON."""
        if self.raw is not None:
            return self.raw
        from capa.codec import to_json_value

        try:
            return json.dumps(to_json_value(self.value)).encode()
        except (TypeError, ValueError, RecursionError):
            return repr(self.value).encode()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record (or whole file) that could not be turned into a change event."""

    file: str
    index: int | None
    reason: str
    raw: bytes

    def to_json(self) -> dict[str, Any]:
        text: str | None
        try:
            text = self.raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        return {
            "reason": self.reason,
            "file": self.file,
            "index": self.index,
            "text": text,
            "raw_base64": base64.b64encode(self.raw).decode("ascii"),
        }


Outcome = ChangeEvent | Skip

_MIN_TS_US, _MAX_TS_US = -62_135_596_800_000_000, 253_402_300_799_999_999  # years 1..9999


def checked_ts_us(value: int | None, what: str = "commit timestamp") -> int | None:
    """µs since epoch, rejected (DecodeError) outside years 1..9999."""
    if value is not None and not _MIN_TS_US <= value <= _MAX_TS_US:
        raise DecodeError(f"{what} {value} µs since epoch is outside years 1..9999")
    return value


_PLAIN_KEY_TYPES = frozenset({str, int, float, bool, type(None)})


def event_id_for(
    source: str, schema: str, table: str, position: str, op: str, key: Mapping[str, Any]
) -> str | None:
    """:func:`capa.events.compute_event_id` for JSON-native keys, without its per-call setup.

    Returns None for keys holding other types (the model then computes the id itself); the
    tests check this equals ``compute_event_id`` on every fixture.
    """
    if not _PLAIN_KEY_TYPES.issuperset(map(type, key.values())):
        return None
    ident = [source, schema, table, position, op, [[k, v] for k, v in key.items()]]
    return hashlib.blake2b(stable_json(ident).encode(), digest_size=16).hexdigest()


class SnapshotOrdinals:
    """Numbers the repeats of a keyless snapshot row, so duplicate rows stay distinct.

    The rows of one snapshot share its position, and a keyless row is named by its image
    (:func:`capa.events.identity_of`), so two equal rows of a table without a primary key
    would share an event id and collapse into one. A normaliser reads a snapshot in order,
    once per run, so the n-th repeat of (table, position, image) gets
    :func:`capa.events.occurrence_id` ``(id, n)``; a snapshot read again from its start
    numbers its rows the same way. State: one counter per keyless table while it is in a
    snapshot, dropped at its first streamed change.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str, str], tuple[str, Counter[str]]] = {}

    def number(self, event: ChangeEvent) -> ChangeEvent:
        if event.primary_key or event.op is Op.TRUNCATE:
            return event
        table = (event.source, event.schema, event.table)
        if event.op is not Op.READ:
            self._seen.pop(table, None)
            return event
        position, counts = self._seen.get(table, ("", Counter()))
        if position != event.position:
            counts = Counter()
            self._seen[table] = (event.position, counts)
        ordinal = counts[event.event_id]
        counts[event.event_id] += 1
        if ordinal == 0:
            return event
        return replace(event, event_id=occurrence_id(event.event_id, ordinal))


class Normalizer(Protocol):
    """Maps one decoded source record to a canonical event (port)."""

    origin: str

    def normalize(self, record: Any, hints: Mapping[str, str] | None = None) -> Outcome:
        """Raise :class:`DecodeError` with a reason when the record cannot be mapped."""
        ...


FileReader = Callable[[bytes, str], Iterator[RawRecord | DeadLetter]]


def normalize_one(normalizer: Normalizer, record: RawRecord) -> Outcome | DeadLetter:
    """Normalise one record; any failure becomes a :class:`DeadLetter` (never raises)."""
    try:
        return normalizer.normalize(record.value, record.hints or None)
    except DecodeError as exc:
        return DeadLetter(record.file, record.index, exc.reason, record.raw_bytes())
    except (
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        ArithmeticError,
        RecursionError,
    ) as exc:
        # A normaliser bug must not lose the record: dead-letter it, naming the error.
        reason = f"unexpected {type(exc).__name__} while normalising: {exc}"
        return DeadLetter(record.file, record.index, reason, record.raw_bytes())


def _debezium(**options: Any) -> Normalizer:
    from connectors.debezium.normalizer import DebeziumNormalizer

    return DebeziumNormalizer(**options)


def _datastream(**options: Any) -> Normalizer:
    from connectors.datastream.normalizer import DatastreamNormalizer

    return DatastreamNormalizer(**options)


def _json_reader(data: bytes, name: str) -> Iterator[RawRecord | DeadLetter]:
    from connectors.datastream.files import read_json_file

    return read_json_file(data, name)


def _avro_reader(data: bytes, name: str) -> Iterator[RawRecord | DeadLetter]:
    from connectors.datastream.files import read_avro_file

    return read_avro_file(data, name)


NORMALIZERS: dict[str, Callable[..., Normalizer]] = {
    "debezium-json": _debezium,
    "datastream-json": _datastream,
    "datastream-avro": _datastream,
}

READERS: dict[str, FileReader] = {
    "debezium-json": _json_reader,
    "datastream-json": _json_reader,
    "datastream-avro": _avro_reader,
}


def get_normalizer(format_name: str, **options: Any) -> Normalizer:
    try:
        factory = NORMALIZERS[format_name]
    except KeyError:
        known = ", ".join(sorted(NORMALIZERS))
        raise DecodeError(f"unknown input format {format_name!r}; use one of: {known}") from None
    return factory(**options)
