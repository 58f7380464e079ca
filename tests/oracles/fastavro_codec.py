"""Reference oracle: ``change_event.v1`` through fastavro's generic writer and reader.

capa's production codec is :mod:`capa.avro_writer` (encode) and the native decoder
(``capa_native.decode_event``, decode). This module is the independent implementation the
property tests compare them with (same bytes, same events); the benchmarks use its encoder as
the baseline of the hand-written one. It was ``capa.codec``'s ``encode_avro_generic`` /
``decode_avro_generic`` until 2026-12-07.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import fastavro

from capa.codec import avro_schema, datetime_to_us
from capa.errors import DecodeError
from capa.events import ChangeEvent, Column, FrozenRow, Json, Op, SourceKind

SCHEMA_VERSION = 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_EPOCH_DATE = date(1970, 1, 1)


def _avro_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | bytes):
        return value
    if isinstance(value, Json):
        return ("io.capa.v1.JsonDoc", {"json": str(value)})
    if isinstance(value, str):
        return value
    if isinstance(value, Decimal):
        sign, digits, exponent = value.as_tuple()
        if not isinstance(exponent, int):
            raise DecodeError(f"decimal {value!r} is not finite; NaN/Infinity cannot be carried")
        unscaled = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
        scale = max(-exponent, 0)
        if exponent > 0:
            unscaled *= 10**exponent
        size = max(1, (unscaled.bit_length() + 8) // 8)
        return (
            "io.capa.v1.Decimal",
            {
                "decimal_unscaled": unscaled.to_bytes(size, "big", signed=True),
                "decimal_scale": scale,
            },
        )
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            return ("io.capa.v1.TimestampTz", {"tstz_micros": datetime_to_us(value)})
        return ("io.capa.v1.Timestamp", {"ts_micros": datetime_to_us(value)})
    if isinstance(value, date):
        return ("io.capa.v1.Date", {"date_days": (value - _EPOCH_DATE).days})
    if isinstance(value, time):
        micros = (
            (value.hour * 60 + value.minute) * 60 + value.second
        ) * 1_000_000 + value.microsecond
        return ("io.capa.v1.Time", {"time_micros": micros})
    if isinstance(value, uuid.UUID):
        return ("io.capa.v1.Uuid", {"uuid": str(value)})
    if isinstance(value, tuple | list):
        return ("io.capa.v1.Array", {"items": [_avro_value(v) for v in value]})
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise DecodeError(f"value {value!r} of type {type(value).__name__} cannot be Avro-encoded")


def _from_avro_value(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    if "decimal_unscaled" in value:
        unscaled = int.from_bytes(value["decimal_unscaled"], "big", signed=True)
        return Decimal(f"{unscaled}E-{value['decimal_scale']}")
    if "tstz_micros" in value:
        return _EPOCH + timedelta(microseconds=value["tstz_micros"])
    if "ts_micros" in value:
        return _EPOCH_NAIVE + timedelta(microseconds=value["ts_micros"])
    if "date_days" in value:
        return _EPOCH_DATE + timedelta(days=value["date_days"])
    if "time_micros" in value:
        seconds, micros = divmod(value["time_micros"], 1_000_000)
        minutes, second = divmod(seconds, 60)
        hour, minute = divmod(minutes, 60)
        return time(hour, minute, second, micros)
    if "uuid" in value:
        return uuid.UUID(value["uuid"])
    if "json" in value:
        return Json(value["json"])
    if "items" in value:
        return tuple(_from_avro_value(v) for v in value["items"])
    raise DecodeError(f"unknown Avro value record {sorted(value)}")


def _avro_row(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if row is None else {k: _avro_value(v) for k, v in row.items()}


def _py_row(row: Mapping[str, Any] | None) -> FrozenRow | None:
    return None if row is None else FrozenRow({k: _from_avro_value(v) for k, v in row.items()})


def event_to_avro_record(event: ChangeEvent) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "event_id": event.event_id,
        "source": event.source,
        "source_kind": event.source_kind.value,
        "origin": event.origin,
        "database": event.database,
        "schema": event.schema,
        "table": event.table,
        "op": event.op.value,
        "position": event.position,
        "commit_ts_us": event.commit_ts_us,
        "transaction_id": event.transaction_id,
        "primary_key": list(event.primary_key),
        "columns": [{"name": c.name, "source_type": c.source_type} for c in event.columns],
        "key": _avro_row(event.key),
        "before": _avro_row(event.before),
        "after": _avro_row(event.after),
        "unchanged": list(event.unchanged),
    }


def event_from_avro_record(rec: Mapping[str, Any]) -> ChangeEvent:
    return ChangeEvent(
        source=rec["source"],
        source_kind=SourceKind(rec["source_kind"]),
        database=rec["database"],
        schema=rec["schema"],
        table=rec["table"],
        op=Op(rec["op"]),
        position=rec["position"],
        commit_ts_us=rec["commit_ts_us"],
        primary_key=tuple(rec["primary_key"]),
        key=_py_row(rec["key"]) or FrozenRow(),
        before=_py_row(rec["before"]),
        after=_py_row(rec["after"]),
        columns=tuple(Column(c["name"], c["source_type"]) for c in rec["columns"]),
        unchanged=tuple(rec["unchanged"]),
        transaction_id=rec["transaction_id"],
        origin=rec["origin"],
        event_id=rec["event_id"],
    )


def encode_avro_generic(event: ChangeEvent) -> bytes:
    """The body of :func:`capa.codec.encode_avro`, through fastavro."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, avro_schema(), event_to_avro_record(event))
    return buf.getvalue()


def decode_avro_generic(body: bytes) -> ChangeEvent:
    """The event of :func:`capa.codec.decode_avro`, through fastavro."""
    try:
        rec = fastavro.schemaless_reader(io.BytesIO(body), avro_schema(), None)
        return event_from_avro_record(rec)  # type: ignore[arg-type]
    except DecodeError:
        raise
    except Exception as exc:  # fastavro raises many types on corrupt input
        raise DecodeError(
            f"not a canonical Avro change event: {type(exc).__name__}: {exc}"
        ) from exc
