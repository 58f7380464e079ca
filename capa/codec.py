"""Codecs for :class:`~capa.events.ChangeEvent`: canonical Avro and canonical JSON.

"Shape" only: nothing here knows where bytes go (see STYLE rule 4).

* Avro: ``capa/schemas/change_event.v1.avsc``, written by :mod:`capa.avro_writer` and read
  by the native decoder (:mod:`capa.native`). On the wire, Avro single-object encoding (``C3 01`` + CRC-64-AVRO fingerprint + body) unless a schema
  registry is configured, in which case the Kafka layer uses the Confluent wire format.
* JSON: the ``capa normalize`` output line. Decimals are strings with full scale,
  timestamps ISO-8601 with µs (``Z`` for tz-aware UTC), bytes base64; ``kinds`` records
  each column's canonical kind so the line decodes back to the same typed values.
"""

from __future__ import annotations

import base64
import json
import struct
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from typing import Any

import fastavro

from capa.avro_writer import write_event
from capa.errors import DecodeError
from capa.events import ChangeEvent, Column, Json, Op, SourceKind

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_SINGLE_OBJECT_MAGIC = b"\xc3\x01"


# --- canonical kinds ---------------------------------------------------------------


def kind_of(value: Any) -> str:
    """The canonical kind name of a Python value (see :mod:`capa.events`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, Json):
        return "json"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bytes | bytearray | memoryview):
        return "bytes"
    if isinstance(value, Decimal):
        return "decimal"
    if isinstance(value, datetime):
        return "timestamptz" if value.tzinfo is not None else "timestamp"
    if isinstance(value, date):
        return "date"
    if isinstance(value, time):
        return "time"
    if isinstance(value, uuid.UUID):
        return "uuid"
    if isinstance(value, tuple | list):
        inner = {kind_of(v) for v in value} - {"null"}
        return f"array<{inner.pop() if len(inner) == 1 else 'string'}>"
    raise DecodeError(f"value {value!r} of type {type(value).__name__} has no canonical kind")


# --- JSON values ---------------------------------------------------------------------


def to_json_value(value: Any) -> Any:
    """Typed Python value -> JSON-ready value (the ``capa normalize`` representation)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):  # isoformat, not strftime: %Y does not pad years < 1000
        if value.tzinfo is not None:
            return (
                value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
            )
        return value.isoformat(timespec="microseconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, time):
        return value.strftime("%H:%M:%S.%f")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, tuple | list):
        return [to_json_value(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_json_value(v) for k, v in value.items()}
    raise TypeError(f"value {value!r} of type {type(value).__name__} is not a canonical value")


def from_json_value(value: Any, kind: str) -> Any:
    """Inverse of :func:`to_json_value`, guided by the column's canonical kind."""
    if value is None:
        return None
    try:
        return (
            _FROM_JSON[kind](value)
            if not kind.startswith("array<")
            else tuple(from_json_value(v, kind[6:-1]) for v in value)
        )
    except KeyError:
        raise DecodeError(f"unknown canonical kind {kind!r}") from None
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise DecodeError(f"value {value!r} is not a valid {kind}: {exc}") from exc


def _parse_timestamptz(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


_FROM_JSON: dict[str, Any] = {
    "null": lambda v: None,
    "bool": bool,
    "int": int,
    "float": float,
    "string": str,
    "json": Json,
    "bytes": lambda v: base64.b64decode(v, validate=True),
    "decimal": lambda v: Decimal(str(v)),
    "timestamp": lambda v: datetime.fromisoformat(v).replace(tzinfo=None),
    "timestamptz": _parse_timestamptz,
    "date": date.fromisoformat,
    "time": time.fromisoformat,
    "uuid": uuid.UUID,
}


def _row_to_json(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if row is None else {k: to_json_value(v) for k, v in row.items()}


def _row_kinds(*rows: Mapping[str, Any] | None) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for row in rows:
        for name, value in (row or {}).items():
            # null and all-null/empty arrays say nothing about the column's kind
            weak = value is None or (
                isinstance(value, tuple | list) and all(v is None for v in value)
            )
            if not weak or kinds.get(name, "null") == "null":
                kinds[name] = kind_of(value)
    return kinds


def ts_us_to_iso(ts_us: int | None) -> str | None:
    if ts_us is None:
        return None
    return to_json_value(_EPOCH + timedelta(microseconds=ts_us))


def event_to_json(event: ChangeEvent) -> dict[str, Any]:
    """The ``capa normalize`` output object for one event."""
    return {
        "event_id": event.event_id,
        "source": event.source,
        "source_kind": event.source_kind.value,
        "origin": event.origin,
        "database": event.database,
        "schema": event.schema,
        "table": event.table,
        "op": event.op.value,
        "position": event.position,
        "commit_ts": ts_us_to_iso(event.commit_ts_us),
        "commit_ts_us": event.commit_ts_us,
        "transaction_id": event.transaction_id,
        "primary_key": list(event.primary_key),
        "key": _row_to_json(event.key),
        "before": _row_to_json(event.before),
        "after": _row_to_json(event.after),
        "unchanged": list(event.unchanged),
        "columns": [{"name": c.name, "type": c.source_type} for c in event.columns],
        "kinds": _row_kinds(event.key, event.before, event.after),
    }


def event_from_json(obj: Mapping[str, Any]) -> ChangeEvent:
    """Inverse of :func:`event_to_json` (``capa apply --input``)."""
    try:
        kinds: Mapping[str, str] = obj.get("kinds") or {}

        def row(name: str) -> dict[str, Any] | None:
            image = obj.get(name)
            if image is None:
                return None
            return {k: from_json_value(v, kinds.get(k, "string")) for k, v in image.items()}

        return ChangeEvent(
            source=obj["source"],
            source_kind=SourceKind(obj.get("source_kind", "postgres")),
            database=obj.get("database"),
            schema=obj["schema"],
            table=obj["table"],
            op=Op(obj["op"]),
            position=str(obj["position"]),
            commit_ts_us=_commit_ts_from_json(obj),
            primary_key=tuple(obj.get("primary_key") or (obj.get("key") or {}).keys()),
            key=row("key") or {},
            before=row("before"),
            after=row("after"),
            columns=tuple(Column(c["name"], c.get("type", "")) for c in obj.get("columns") or ()),
            unchanged=tuple(obj.get("unchanged") or ()),
            transaction_id=obj.get("transaction_id"),
            origin=obj.get("origin", ""),
            event_id=obj.get("event_id", ""),
        )
    except DecodeError:
        raise
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise DecodeError(f"not a canonical change event: {type(exc).__name__}: {exc}") from exc


def _commit_ts_from_json(obj: Mapping[str, Any]) -> int | None:
    if obj.get("commit_ts_us") is not None:
        return int(obj["commit_ts_us"])
    text = obj.get("commit_ts")
    if text is None:
        return None
    return datetime_to_us(_parse_timestamptz(text))


def datetime_to_us(value: datetime) -> int:
    if value.tzinfo is None:
        return (value - _EPOCH_NAIVE) // timedelta(microseconds=1)
    return (value - _EPOCH) // timedelta(microseconds=1)


# --- Avro ------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def avro_schema() -> dict[str, Any]:
    """The parsed canonical Avro schema (``change_event.v1.avsc``)."""
    text = resources.files("capa.schemas").joinpath("change_event.v1.avsc").read_text()
    return fastavro.parse_schema(json.loads(text))  # type: ignore[return-value]


@lru_cache(maxsize=1)
def avro_schema_text() -> str:
    return resources.files("capa.schemas").joinpath("change_event.v1.avsc").read_text()


def encode_avro(event: ChangeEvent) -> bytes:
    """Schemaless Avro body (no framing); raises :class:`DecodeError` for unencodable values.

    capa's one Avro encoder: :mod:`capa.avro_writer`, written for ``change_event.v1`` (about
    4x faster than fastavro's generic writer, whose union resolution dominates; see
    docs/benchmarks.md). ``tests/oracles/fastavro_codec.py`` is the fastavro reference the
    property tests compare it with, byte for byte.
    """
    return write_event(event)


def decode_avro(body: bytes, start: int = 0) -> ChangeEvent:
    """Inverse of :func:`encode_avro` (of the body ``body[start:]``); raises
    :class:`DecodeError` on bad bytes, bytes left after the record included.

    capa's one Avro decoder is native: ``capa_native.decode_event`` (:mod:`capa.native`), the
    same reader as the apply job's batch decoder. The pure-Python reader and fastavro are
    reference oracles under ``tests/oracles/``.
    """
    return _native_decode()(body, start)


@lru_cache(maxsize=1)
def _native_decode() -> Any:
    from capa.native import decode_event  # on first use: capa.codec loads without the extension

    return decode_event


@lru_cache(maxsize=1)
def schema_fingerprint() -> bytes:
    """CRC-64-AVRO (Rabin) fingerprint of the canonical schema, little-endian."""
    return struct.pack(
        "<Q",
        int(
            fastavro.schema.fingerprint(
                fastavro.schema.to_parsing_canonical_form(avro_schema()), "CRC-64-AVRO"
            ),
            16,
        ),
    )


def encode_single_object(event: ChangeEvent) -> bytes:
    return _SINGLE_OBJECT_MAGIC + schema_fingerprint() + encode_avro(event)


def decode_single_object(data: bytes) -> ChangeEvent:
    if len(data) < 10 or data[:2] != _SINGLE_OBJECT_MAGIC:
        raise DecodeError("not Avro single-object encoded (missing C3 01 header)", raw=data)
    if data[2:10] != schema_fingerprint():
        raise DecodeError(
            f"Avro schema fingerprint {data[2:10].hex()} is not capa change_event.v1 "
            f"({schema_fingerprint().hex()}); upgrade the reader",
            raw=data,
        )
    return decode_avro(data, 10)
