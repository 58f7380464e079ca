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

Special values (measured with Debezium 3.6.3, PostgreSQL 15) map to the saturated values of
:mod:`capa.values`: ``infinity`` dates arrive as fixed day counts, one pair for the snapshot
and one for streaming (:data:`PG_DATE_INFINITY`), ``infinity`` timestamps as PostgreSQL
JDBC's sentinel microseconds (milliseconds for ``timestamp(0..3)``), ``infinity``
timestamptz as the text ``"infinity"`` (a ``-infinity`` array item as a year past PostgreSQL's
last); real/double ``NaN``/``Infinity`` as strings.
Columns of types Debezium has no converter for (geometric types, ``tsquery``, multiranges,
``pg_lsn`` ...) arrive with ``include.unknown.datatypes=true`` as bytes holding the value's
text; with ``datatype.propagate.source.type`` the schema names their source type, and they
become text (:func:`source_text_converter`).
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
from capa.values import (
    date_from_days,
    float32_value,
    infinity_sign,
    iso_duration_text,
    saturated,
    timestamp_from_us,
)

Converter = Callable[[Any], Any]

UNAVAILABLE = "__debezium_unavailable_value"
UNAVAILABLE_B64 = base64.b64encode(UNAVAILABLE.encode()).decode()
PRECISE_WITHOUT_SCALE = (
    "precise decimal without schema: scale unknown; set decimal.handling.mode=string"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DECIMAL_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
# Debezium 3.6.3's day counts for PostgreSQL date 'infinity' / '-infinity' (measured; all far
# before year 1, where no real PostgreSQL date lies). The snapshot (and every date[] item)
# converts pgjdbc's millisecond sentinels through an overflowing date computation; streaming
# (pgoutput) shifts PostgreSQL's own INT32_MAX/INT32_MIN from its 2000 epoch to 1970 in int32,
# which wraps: +infinity becomes the LOWER number. One table for both paths (issue #20).
PG_DATE_INFINITY = {
    -622191234: 1,  # snapshot 'infinity'
    -625821272: -1,  # snapshot '-infinity'
    -2147472692: 1,  # streamed 'infinity' (INT32_MAX + 10957, wrapped)
    -2147472691: -1,  # streamed '-infinity' (INT32_MIN + 10957)
}
# pgjdbc's PGStatement.DATE_POSITIVE/NEGATIVE_INFINITY in µs: Debezium sends them as µs
# (timestamp(4..6)) or ms (timestamp(0..3)); both snapshot and streaming (measured).
PG_TIMESTAMP_INFINITY = {9223372036825200000: 1, -9223372036832400000: -1}
# PostgreSQL's earliest timestamp (4714-11-24 BC) in µs: anything lower that is not the
# -infinity sentinel is a far-future value (after year 294247) whose µs overflowed int64.
_PG_MIN_US = -210866803200000000
# PostgreSQL's last timestamptz year: a later year is no real value but pgjdbc's -infinity
# sentinel printed as a date (Debezium sends a timestamptz[] '-infinity' item as
# "+292269055-12-02T23:00:00.000000Z"; a scalar comes as "-infinity").
_PG_MAX_YEAR = 294276
_SOURCE_TYPE = "__debezium.source.column.type"


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


def to_float32(value: Any) -> float:
    """A Connect ``float`` (PostgreSQL real, SQL Server real): see capa.values.float32_value."""
    return float32_value(to_float(value))


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
    """Days since epoch -> date; ``infinity`` and dates outside 0001..9999 saturate."""
    days = to_int(value)
    if days in PG_DATE_INFINITY:
        return saturated(PG_DATE_INFINITY[days], "date")
    return date_from_days(days)


def naive_timestamp(per_second: int) -> Converter:
    """Epoch ticks -> naive datetime; ``infinity`` and years outside 1..9999 saturate."""

    def convert(value: Any) -> datetime:
        micros = to_int(value) * 1_000_000 // per_second
        if micros in PG_TIMESTAMP_INFINITY:
            return saturated(PG_TIMESTAMP_INFINITY[micros], "timestamp")
        if micros < _PG_MIN_US:
            return saturated(1, "timestamp")
        return timestamp_from_us(micros)

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


# ISO years outside 1..9999 as Debezium writes them: "+294276-12-31T...", "-4712-01-01T...",
# "0000-01-01T..." (1 BC).
_EXTENDED_YEAR = re.compile(r"^([+-])?(\d{4,})-\d\d-\d\dT")


def zoned_timestamp(value: Any) -> datetime:
    """ISO-8601 with zone -> UTC datetime; ``infinity`` and years outside 1..9999 saturate."""
    text = to_str(value)
    sign = infinity_sign(text) or _extended_year_sign(text)
    if sign:
        return saturated(sign, "timestamptz")
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


def _extended_year_sign(text: str) -> int:
    match = _EXTENDED_YEAR.match(text)
    if not match:
        return 0
    sign, year = match.group(1), int(match.group(2))
    if sign == "-" or year == 0 or year > _PG_MAX_YEAR:
        return -1
    return 1 if year > 9999 else 0


def iso_duration(value: Any) -> str:
    """MicroDuration (µs; Debezium counts a month as 30.4375 days) -> ISO-8601 duration text."""
    return iso_duration_text(to_int(value))


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
    "float": to_float32,
    "float32": to_float32,
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
    unknown = source_text_converter(field)
    if unknown is not None:
        return unknown
    if kind == "array":
        return array_of(field_converter(field.get("items") or {"type": "string"}))
    if isinstance(kind, str) and kind.lower() in PRIMITIVE:
        return PRIMITIVE[kind.lower()]
    raise DecodeError(
        f"unknown Connect type {kind!r} (logical {name!r}) for field {field.get('field')!r}"
    )


def source_type(field: Mapping[str, Any]) -> str:
    """The column's source type name (``datatype.propagate.source.type``), "" if not sent."""
    params = field.get("parameters")
    value = params.get(_SOURCE_TYPE) if isinstance(params, Mapping) else None
    return value if isinstance(value, str) else ""


def source_text_converter(field: Mapping[str, Any]) -> Converter | None:
    """For a column of a type Debezium has no converter for, the converter to its text.

    Such a column arrives (``include.unknown.datatypes=true``) as plain bytes - or an array
    of them - holding the value's text; only its propagated source type tells it from
    ``bytea``. None for every other column.
    """
    declared = source_type(field).lower()
    if not declared or declared.lstrip("_") == "bytea" or field.get("name"):
        return None
    if field.get("type") == "bytes":
        return bytes_text
    items = field.get("items")
    if field.get("type") != "array" or not isinstance(items, Mapping):
        return None
    return array_of(bytes_text) if items.get("type") == "bytes" and not items.get("name") else None


def bytes_text(value: Any) -> str:
    """Base64 bytes holding UTF-8 text (an unknown-type value) -> the text."""
    try:
        return to_bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(value, "base64 UTF-8 text of an unknown-type value") from None


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
    if source_text_converter(field) is not None:  # an unknown type, kept as its text
        declared = source_type(field).lower()
        return f"{declared[1:]}[]" if declared.startswith("_") else declared
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
    "unknown_text": bytes_text,  # a type without a Debezium converter, schemaless
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
