"""Debezium column values -> canonical typed values (see :mod:`capa.events`).

Three ways to learn a column's type, best first:

1. **Connect schema** (``converter.schemas.enable=true``): every field carries its Connect
   type and logical name (``io.debezium.time.MicroTimestamp``, ``...connect.data.Decimal``
   with its ``scale`` parameter ...). :func:`schema_converters` builds one converter per field.
2. **Column hints** (schemaless JSON plus ``column_types`` configured on the normaliser):
   a hint name from :data:`HINT_CONVERTERS` per column, e.g. ``"decimal(2)"`` or
   ``"timestamptz"``.
3. **Nothing**: JSON-native values are kept (ints, floats, strings, bools; lists become
   tuples). A ``{"scale", "value"}`` object is self-describing (VariableScaleDecimal) and is
   decoded; any other object becomes a :class:`~capa.events.Json` document. A precise
   decimal (base64 unscaled bytes) is indistinguishable from text here, so it stays a
   string: run Debezium with ``decimal.handling.mode=string`` or give a hint.

Every converter raises :class:`~capa.errors.DecodeError` (quoting the value) on bad input.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, InvalidOperation
from typing import Any

from capa.errors import DecodeError
from capa.events import Json

Converter = Callable[[Any], Any]

UNAVAILABLE = "__debezium_unavailable_value"
UNAVAILABLE_B64 = base64.b64encode(UNAVAILABLE.encode()).decode()
PRECISE_WITHOUT_SCALE = (
    "precise decimal without schema: scale unknown; set decimal.handling.mode=string"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_EPOCH_DATE = date(1970, 1, 1)
_DECIMAL_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_MAX_DAYS = 3_000_000  # beyond year 9999 -> not representable as a Python date


def _bad(value: Any, what: str) -> DecodeError:
    shown = repr(value)
    shown = shown if len(shown) <= 200 else shown[:200] + "..."
    return DecodeError(f"value {shown} is not a valid {what}")


# --- primitive checks -------------------------------------------------------------------


def to_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit() and len(value) < 40:
        return int(value)  # doc examples quote numbers ("1580390884335")
    raise _bad(value, "integer")


def to_float(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if value in ("NaN", "Infinity", "-Infinity"):
        return float(value)
    raise _bad(value, "floating-point number")


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _bad(value, "boolean")


def to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _bad(value, "string")


def to_bytes(value: Any) -> bytes:
    if not isinstance(value, str):
        raise _bad(value, "base64 bytes string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(value, "base64 bytes string") from None


# --- decimals ---------------------------------------------------------------------------


_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)


def unscaled_to_decimal(raw: bytes, scale: int) -> Decimal:
    """The decimal of big-endian two's-complement ``raw`` digits at ``scale``, exactly, however
    long (no text step: Python refuses to print ints of over 4300 digits)."""
    unscaled = int.from_bytes(raw, "big", signed=True)
    return Decimal(unscaled).scaleb(-scale, context=_EXACT)


# PostgreSQL scales are -1000..1000; Debezium reports numeric(p, -s) with the raw 11-bit
# typmod field, i.e. scale 2048 - s, and sends the value with that many trailing zeros.
_PG_SCALE_LIMIT = 1000
_PG_TYPMOD_SCALE = 2048
_WIDE = Context(prec=2 * _PG_TYPMOD_SCALE)


def true_scale(scale: int) -> int:
    """Debezium's Decimal ``scale`` parameter -> the column's real scale (negative allowed)."""
    return scale - _PG_TYPMOD_SCALE if scale > _PG_SCALE_LIMIT else scale


def decimal_with_scale(scale: int) -> Converter:
    """Precise (base64 unscaled) with a known scale; also accepts string/double modes."""
    if not -_PG_TYPMOD_SCALE <= scale <= 2 * _PG_TYPMOD_SCALE:
        raise DecodeError(f"decimal scale {scale} is outside any source's range")
    convert = _decimal_with_scale(scale)
    if true_scale(scale) == scale:
        return convert
    exponent = Decimal(1).scaleb(-true_scale(scale))  # numeric(p,-3): 12000 -> 1.2E+4

    def negative_scale(value: Any) -> Decimal:
        decoded = convert(value)
        result = decoded.quantize(exponent, context=_WIDE)
        if result != decoded:
            raise _bad(value, f"decimal with scale {true_scale(scale)} (digits would be lost)")
        return result

    return negative_scale


def _decimal_with_scale(scale: int) -> Converter:

    def convert(value: Any) -> Decimal:
        if isinstance(value, str):
            if "." in value or (scale == 0 and _DECIMAL_TEXT.match(value)):
                return text_decimal(value)
            return unscaled_to_decimal(to_bytes(value), scale)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        raise _bad(value, f"decimal with scale {scale}")

    return convert


def text_decimal(value: Any) -> Decimal:
    if isinstance(value, str) and _DECIMAL_TEXT.match(value.strip()):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            pass
    raise _bad(value, "decimal string")


def decimal_unknown_scale(value: Any) -> Decimal:
    """A decimal column whose scale is unknown: only string mode can be decoded."""
    if isinstance(value, str) and _DECIMAL_TEXT.match(value.strip()):
        return text_decimal(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if isinstance(value, dict):
        return variable_scale_decimal(value)
    raise DecodeError(f"{PRECISE_WITHOUT_SCALE} (value {value!r})")


def variable_scale_decimal(value: Any) -> Decimal:
    if not isinstance(value, dict) or set(value) != {"scale", "value"}:
        raise _bad(value, "VariableScaleDecimal {scale, value}")
    scale = to_int(value["scale"])
    if not -1000 <= scale <= 1000:
        raise _bad(value, "VariableScaleDecimal (scale out of range)")
    return unscaled_to_decimal(to_bytes(value["value"]), scale)


# --- time -------------------------------------------------------------------------------


def _scaled_delta(value: Any, per_second: int) -> timedelta:
    number = to_int(value)
    try:
        return timedelta(microseconds=number * 1_000_000 // per_second)
    except OverflowError:
        raise _bad(value, "time value (out of range)") from None


def epoch_date(value: Any) -> date:
    days = to_int(value)
    if not -_MAX_DAYS < days < _MAX_DAYS:
        raise _bad(value, "date (days since epoch out of range)")
    try:
        return _EPOCH_DATE + timedelta(days=days)
    except OverflowError:
        raise _bad(value, "date (days since epoch out of range)") from None


def naive_timestamp(per_second: int) -> Converter:
    def convert(value: Any) -> datetime:
        try:
            return _EPOCH_NAIVE + _scaled_delta(value, per_second)
        except OverflowError:
            raise _bad(value, "timestamp (out of range)") from None

    return convert


def time_of_day(per_second: int) -> Converter:
    def convert(value: Any) -> time:
        delta = _scaled_delta(value, per_second)
        if not timedelta(0) <= delta <= timedelta(days=1):
            raise _bad(value, "time of day")
        if delta == timedelta(days=1):  # PostgreSQL allows 24:00:00
            delta -= timedelta(microseconds=1)
        return (datetime.min + delta).time()

    return convert


def zoned_timestamp(value: Any) -> datetime:
    text = to_str(value)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _bad(value, "ISO-8601 timestamp with zone") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise _bad(value, "ISO-8601 timestamp with zone (out of range)") from None


def iso_duration(value: Any) -> str:
    """MicroDuration (µs; Debezium counts a month as 30.4375 days) -> ISO-8601 duration text."""
    micros = to_int(value)
    sign, micros = ("-", -micros) if micros < 0 else ("", micros)
    days, rest = divmod(micros, 86_400_000_000)
    hours, rest = divmod(rest, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    seconds, frac = divmod(rest, 1_000_000)
    sec = f"{seconds}.{frac:06d}".rstrip("0").rstrip(".") if frac else str(seconds)
    return f"{sign}P{days}DT{hours}H{minutes}M{sec}S"


def to_uuid(value: Any) -> uuid.UUID:
    try:
        return uuid.UUID(to_str(value))
    except ValueError:
        raise _bad(value, "UUID") from None


def to_json_doc(value: Any) -> Json:
    if isinstance(value, str):
        return Json(value)
    return Json(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


# --- Connect schemas ---------------------------------------------------------------------

LOGICAL: dict[str, Converter] = {
    "io.debezium.time.Date": epoch_date,
    "org.apache.kafka.connect.data.Date": epoch_date,
    "io.debezium.time.Time": time_of_day(1_000),
    "org.apache.kafka.connect.data.Time": time_of_day(1_000),
    "io.debezium.time.MicroTime": time_of_day(1_000_000),
    "io.debezium.time.NanoTime": time_of_day(1_000_000_000),
    "io.debezium.time.Timestamp": naive_timestamp(1_000),
    "org.apache.kafka.connect.data.Timestamp": naive_timestamp(1_000),
    "io.debezium.time.MicroTimestamp": naive_timestamp(1_000_000),
    "io.debezium.time.NanoTimestamp": naive_timestamp(1_000_000_000),
    "io.debezium.time.ZonedTimestamp": zoned_timestamp,
    "io.debezium.time.ZonedTime": to_str,
    "io.debezium.time.MicroDuration": iso_duration,
    "io.debezium.time.Interval": to_str,
    "io.debezium.time.Year": to_int,
    "io.debezium.data.Uuid": to_uuid,
    "io.debezium.data.Json": to_json_doc,
    "io.debezium.data.Xml": to_str,
    "io.debezium.data.Enum": to_str,
    "io.debezium.data.EnumSet": to_str,
    "io.debezium.data.Bits": to_bytes,
    "io.debezium.data.VariableScaleDecimal": variable_scale_decimal,
}

PRIMITIVE: dict[str, Converter] = {
    "int8": to_int,
    "int16": to_int,
    "int32": to_int,
    "int64": to_int,
    "float": to_float,
    "float32": to_float,
    "double": to_float,
    "float64": to_float,
    "boolean": to_bool,
    "string": to_str,
    "bytes": to_bytes,
    "struct": to_json_doc,
    "map": to_json_doc,
}


def field_converter(field: Mapping[str, Any]) -> Converter:
    """The converter for one Connect schema field (raises DecodeError if unknown)."""
    if not isinstance(field, Mapping):
        raise DecodeError(f"Connect schema field {field!r} is not an object")
    name = field.get("name") if isinstance(field.get("name"), str) else None
    if name == "org.apache.kafka.connect.data.Decimal":
        return decimal_with_scale(_decimal_scale(field))
    if name in LOGICAL:
        return LOGICAL[name]
    kind = field.get("type")
    if kind == "array":
        return array_of(field_converter(field.get("items") or {"type": "string"}))
    if isinstance(kind, str) and kind.lower() in PRIMITIVE:
        return PRIMITIVE[kind.lower()]
    raise DecodeError(
        f"unknown Connect type {kind!r} (logical {name!r}) for field {field.get('field')!r}"
    )


def _decimal_scale(field: Mapping[str, Any]) -> int:
    params = field.get("parameters") or {}
    try:
        return int(params["scale"])
    except (KeyError, TypeError, ValueError):
        raise DecodeError(
            f"Decimal field {field.get('field')!r} has no integer scale parameter"
        ) from None


def array_of(item: Converter) -> Converter:
    def convert(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _bad(value, "array")
        return tuple(None if v is None else item(v) for v in value)

    return convert


def schema_converters(struct: Mapping[str, Any] | None) -> dict[str, Converter]:
    """Field name -> converter for a Connect ``struct`` schema (``before``/``after``)."""
    if not struct:
        return {}
    fields = struct.get("fields")
    if not isinstance(fields, list):
        raise DecodeError(f"Connect struct schema {struct.get('name')!r} has no field list")
    return {str(f.get("field")): field_converter(f) for f in fields if isinstance(f, Mapping)}


def schema_type_name(field: Mapping[str, Any]) -> str:
    """A readable source-type label for :class:`~capa.events.Column`."""
    name, kind = field.get("name"), str(field.get("type", ""))
    if name == "org.apache.kafka.connect.data.Decimal":
        params = field.get("parameters")
        params = params if isinstance(params, dict) else {}
        precision = params.get("connect.decimal.precision", "")
        scale = params.get("scale", "")
        scale = true_scale(int(scale)) if str(scale).isdigit() else scale
        return f"decimal({precision},{scale})" if precision else f"decimal(,{scale})"
    return f"{kind}:{name}" if name else kind


# --- schemaless ----------------------------------------------------------------------------


def native_value(value: Any) -> Any:
    """A schemaless JSON value -> canonical value (see module docstring, case 3)."""
    if isinstance(value, dict):
        if len(value) == 2 and "scale" in value and "value" in value:
            return variable_scale_decimal(value)
        return to_json_doc(value)
    if isinstance(value, list):
        return tuple(native_value(v) for v in value)
    return value


HINT_CONVERTERS: dict[str, Converter] = {
    "decimal": decimal_unknown_scale,
    "date": epoch_date,
    "time": time_of_day(1_000_000),
    "timestamp": naive_timestamp(1_000_000),
    "timestamp_ms": naive_timestamp(1_000),
    "timestamp_ns": naive_timestamp(1_000_000_000),
    "timestamptz": zoned_timestamp,
    "uuid": to_uuid,
    "json": to_json_doc,
    "bytes": to_bytes,
    "interval": iso_duration,
    "string": to_str,
}
_HINT_DECIMAL = re.compile(r"^(?:decimal|numeric)\((?:\d+\s*,\s*)?(\d+)\)$")


def hint_converter(hint: str) -> Converter:
    """``"decimal(2)"``/``"numeric(12,2)"``/``"timestamptz"``... -> converter."""
    text = hint.strip().lower()
    match = _HINT_DECIMAL.match(text)
    if match:
        return decimal_with_scale(int(match.group(1)))
    if text == "numeric":
        text = "decimal"
    try:
        return HINT_CONVERTERS[text]
    except KeyError:
        known = ", ".join(sorted(HINT_CONVERTERS))
        raise DecodeError(
            f"unknown column type hint {hint!r}; use decimal(S) or one of: {known}"
        ) from None
