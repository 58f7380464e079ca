"""Raw-layer column types <-> Arrow types, and Python values -> Arrow arrays (Delta).

==============  =============================  =========================================
canonical kind  Arrow / Delta type             note
==============  =============================  =========================================
bool            bool
int             int64                          every source int width (no int->bigint drift)
float           float64
string          string                         varchar growth needs nothing
json            string                         the document text
uuid            string                         canonical 8-4-4-4-12 text
bytes           binary
decimal         decimal128(p, s)               see :mod:`capa.warehouse.types`
timestamptz     timestamp[us, UTC]
timestamp       timestamp[us] (timestamp_ntz)
date            date32
time            string ``HH:MM:SS.ffffff``     Delta has no TIME type (time64 is rejected)
array<k>        list<k>
==============  =============================  =========================================
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import time
from decimal import Context, Decimal
from typing import Any

import pyarrow as pa

from capa.errors import SchemaDriftError
from capa.events import Json
from capa.warehouse.types import MAX_DECIMAL_PRECISION, ColumnType, check_decimal_fits

_WIDE = Context(prec=80)  # rescaling a decimal(38, s) value must not hit the 28-digit default
_SIMPLE: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int": pa.int64(),
    "float": pa.float64(),
    "string": pa.string(),
    "json": pa.string(),
    "uuid": pa.string(),
    "time": pa.string(),
    "bytes": pa.binary(),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "timestamp": pa.timestamp("us"),
    "date": pa.date32(),
}


def arrow_type(column_type: ColumnType) -> pa.DataType:
    if column_type.kind == "decimal":
        return pa.decimal128(column_type.precision, column_type.scale)
    if column_type.kind == "array":
        return pa.list_(arrow_type(column_type.item or ColumnType("string")))
    return _SIMPLE[column_type.kind]


def column_type(data_type: pa.DataType) -> ColumnType:
    """The raw-layer type of an existing Arrow column (inverse of :func:`arrow_type`)."""
    if pa.types.is_decimal(data_type):
        return ColumnType("decimal", data_type.precision, data_type.scale)
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return ColumnType("array", item=column_type(data_type.value_type))
    if pa.types.is_timestamp(data_type):
        return ColumnType("timestamptz" if data_type.tz else "timestamp")
    for kind in ("bool", "int", "float", "bytes", "date"):
        if data_type.equals(_SIMPLE[kind]):
            return ColumnType(kind)
    if pa.types.is_integer(data_type):
        return ColumnType("int")
    if pa.types.is_floating(data_type):
        return ColumnType("float")
    return ColumnType("string")  # string, large_string: json/uuid/time are strings too


def _to_text(value: Any) -> str:
    if isinstance(value, time):
        return value.strftime("%H:%M:%S.%f")
    if isinstance(value, uuid.UUID | Json):
        return str(value)
    return value if isinstance(value, str) else str(value)


def _converter(target: ColumnType, column: str) -> Callable[[Any], Any]:
    if target.kind in ("string", "json", "uuid", "time"):
        return _to_text
    if target.kind == "decimal":
        return lambda v: _to_decimal(v, target, column)
    if target.kind == "float":
        return float
    if target.kind == "array" and target.item is not None:
        inner = _converter(target.item, column)
        return lambda v: [None if x is None else inner(x) for x in v]
    return lambda v: v


def _to_decimal(value: Any, target: ColumnType, column: str) -> Decimal:
    value = Decimal(value) if not isinstance(value, Decimal) else value
    check_decimal_fits(value, target, column=column)
    return value.quantize(Decimal(1).scaleb(-target.scale), context=_WIDE)


# Kinds whose per-value converter is the identity: Arrow converts (and validates) them as is.
_IDENTITY_KINDS = frozenset({"bool", "int", "bytes", "timestamptz", "timestamp", "date"})
# Kinds Arrow converts exactly like the per-value converter when every value has one of these
# classes (Arrow rescales decimals exactly and rejects any value that would lose digits).
_FAST_CLASSES: dict[str, frozenset[type]] = {
    "float": frozenset({float, int}),
    "decimal": frozenset({Decimal, int}),
    "string": frozenset({str, Json}),
    "json": frozenset({str, Json}),
    "uuid": frozenset({str}),
    "time": frozenset({str}),
}
_NONE = type(None)


def _converts_natively(values: Sequence[Any], target: ColumnType) -> bool:
    if target.kind in _IDENTITY_KINDS:
        return True
    if target.kind == "array":
        return target.item is not None and target.item.kind in _IDENTITY_KINDS
    allowed = _FAST_CLASSES.get(target.kind)
    if allowed is None or not set(map(type, values)) - {_NONE} <= allowed:
        return False
    return target.kind != "decimal" or _short_decimals(values)


def _short_decimals(values: Sequence[Any]) -> bool:
    """pyarrow turns a Decimal of about 150+ coefficient digits into 0 without an error
    (PostgreSQL ``numeric(p,-s)`` arrives from Debezium with ~2000 trailing zeros): such
    values take the checked per-value path."""
    return all(
        len(v.as_tuple().digits) <= MAX_DECIMAL_PRECISION for v in values if type(v) is Decimal
    )


def to_arrow(values: Sequence[Any], target: ColumnType, column: str) -> pa.Array:
    """Python canonical values -> an Arrow array of the column's type (SchemaDriftError if not).

    Column-wise: when Arrow's own conversion gives exactly what the per-value converter
    would, the whole list goes to Arrow in one call; any value Arrow rejects (a decimal that
    does not fit, a float that is not exact) re-runs the per-value path for its error.
    """
    data_type = arrow_type(target)
    if _converts_natively(values, target):
        try:
            return pa.array(values, type=data_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            pass  # the per-value path below raises the precise error (or converts)
    convert = _converter(target, column)
    try:
        return pa.array([None if v is None else convert(v) for v in values], type=data_type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise SchemaDriftError(
            f"column {column!r} holds a value that is not a {target} ({exc}); "
            "migrate the raw table or fix the source column"
        ) from exc
