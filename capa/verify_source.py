"""Read a PostgreSQL table as canonical values, per column type (the oracle's source side).

psycopg's Python types are not the canonical values for every type, and some values it
refuses to load at all (``infinity`` dates, ranges with an ``infinity`` bound raise
``DataError``). So each type has a reader in :data:`SOURCE_TYPES`: a SQL expression over
the column (``{c}``), which for most types is PostgreSQL's own output text, and a parser
from that to the canonical value, with the special-value rules of :mod:`capa.values`.
Types without an entry are loaded by psycopg as they are (integers, text, bool, bytea, uuid).

The readers state, per type, what capa replicates (docs/type-mapping.md): e.g. ``interval``
with Debezium's 30.4375-day month, geometric types in the text form the PostgreSQL JDBC
driver gives them, ``bit(n)`` as the bytes of a little-endian bit set.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from capa.events import Json
from capa.values import iso_duration_text, out_of_range_sign, saturated

Parser = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class SourceColumn:
    """A column and its type after resolving a domain to its base type."""

    name: str
    type_name: str  # pg_type.typname of the base type ("int4", "_date", "box" ...)
    type_kind: str  # pg_type.typtype: b base, e enum, r range, m multirange, c composite
    element: str  # the element's typname for an array, else ""
    element_kind: str
    typmod: int


# --- parsers: PostgreSQL output text -> canonical value ----------------------------------


def pg_date(text: str) -> date:
    sign = out_of_range_sign(text)
    return saturated(sign, "date") if sign else date.fromisoformat(text)


def pg_timestamp(text: str) -> datetime:
    sign = out_of_range_sign(text)
    return saturated(sign, "timestamp") if sign else datetime.fromisoformat(text)


def pg_timestamptz(text: str) -> datetime:
    sign = out_of_range_sign(text)
    if sign:
        return saturated(sign, "timestamptz")
    return datetime.fromisoformat(text).astimezone(UTC)


def pg_numeric(text: str) -> Decimal | None:
    """numeric ``NaN``/``Infinity`` have no DECIMAL form: canonical NULL (see capa.values)."""
    value = Decimal(text)
    return value if value.is_finite() else None


def pg_time(text: str) -> time:
    """PostgreSQL's ``24:00:00`` is clamped to the last microsecond of the day."""
    return time.max if text.startswith("24:") else time.fromisoformat(text)


def pg_timetz(text: str) -> str:
    """timetz -> Debezium's ZonedTime text: the time of day in UTC, ``Z``, no trailing zeros."""
    parsed = time.fromisoformat(text)
    utc = datetime.combine(date(2000, 1, 1), parsed).astimezone(UTC).time()
    fraction = f".{utc.microsecond:06d}".rstrip("0") if utc.microsecond else ""
    return f"{utc:%H:%M:%S}{fraction}Z"


def pg_bits(text: str) -> bytes:
    """bit(n)/varbit -> Debezium's Bits: the bit string as a little-endian ``BitSet``."""
    number = int(text, 2) if text else 0
    return number.to_bytes((number.bit_length() + 7) // 8, "little")


def pg_interval_us(value: Any) -> str:
    return iso_duration_text(int(value))


_NUMBER = re.compile(r"-?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|Infinity|NaN|inf|nan)")


def pg_geometric(text: str) -> str:
    """box, circle, line, lseg, path, polygon -> the JDBC driver's text (Java doubles)."""
    return _NUMBER.sub(lambda m: java_double(float(m.group())), text)


def java_double(value: float) -> str:
    """``Double.toString``: ``1.0``, ``0.001``, ``1.0E7``, ``1.2345E-4``, ``NaN``."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0 or 1e-3 <= abs(value) < 1e7:
        text = repr(value)
        return text if "." in text else text + ".0"
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    shown = "".join(map(str, digits))
    mantissa = shown[0] + "." + (shown[1:] or "0")
    return f"{'-' if sign else ''}{mantissa}E{exponent + len(shown) - 1}"


def pg_point(text: str) -> Json:
    """point -> Debezium's geometry.Point struct, kept as a JSON document."""
    x, y = (float(v) for v in text.strip("()").split(","))
    wkb = base64.b64encode(struct.pack("<BIdd", 1, 1, x, y)).decode("ascii")
    return Json(json.dumps({"x": x, "y": y, "wkb": wkb, "srid": None}, separators=(",", ":")))


def _same(value: Any) -> Any:
    return value


# --- readers ------------------------------------------------------------------------------

_TEXT = "{c}::text"
# The type's output function (what pgoutput sends); ``::text`` differs for inet/cidr.
_OUTPUT = "CASE WHEN {c} IS NULL THEN NULL ELSE format('%s', {c}) END"
# Debezium's MicroDuration: a year is 12 months, a month 365.25/12 = 30.4375 days.
_INTERVAL_US = (
    "((extract(year from {c})::numeric * 12 + extract(month from {c})::numeric) "
    "* 30.4375 * 86400000000 + extract(day from {c})::numeric * 86400000000 "
    "+ (extract(epoch from {c}) - extract(epoch from date_trunc('day', {c})))::numeric "
    "* 1000000)::bigint"
)
_GEOMETRIC = ("box", "circle", "line", "lseg", "path", "polygon")

#: base type name -> (SQL over ``{c}`` giving the value to parse, parser)
SOURCE_TYPES: dict[str, tuple[str, Parser]] = {
    "date": (_TEXT, pg_date),
    "timestamp": (_TEXT, pg_timestamp),
    "timestamptz": (_TEXT, pg_timestamptz),
    "float4": (_TEXT, float),
    "float8": (_TEXT, float),
    "numeric": (_TEXT, pg_numeric),
    "money": ("{c}::numeric::text", pg_numeric),
    "time": (_TEXT, pg_time),
    "timetz": (_TEXT, pg_timetz),
    "interval": (_INTERVAL_US, pg_interval_us),
    "json": (_TEXT, Json),
    "jsonb": (_TEXT, Json),
    "bit": (_TEXT, pg_bits),
    "varbit": (_TEXT, pg_bits),
    "point": (_TEXT, pg_point),
    **{name: (_TEXT, pg_geometric) for name in _GEOMETRIC},
}
# psycopg's own value is the canonical one (or compares equal to it)
NATIVE = frozenset(
    {"int2", "int4", "int8", "oid", "bool", "text", "varchar", "bpchar", "char", "name"}
    | {"bytea", "uuid"}
)
_TEXT_KINDS = frozenset({"e", "r", "m"})  # enums, ranges, multiranges: their output text


def reader(type_name: str, type_kind: str, typmod: int = -1) -> tuple[str, Parser]:
    """The SQL expression and parser for one scalar column type."""
    if type_name == "bit" and typmod == 1:  # Debezium sends bit(1) as a boolean
        return "({c} = B'1')", _same
    if type_name in SOURCE_TYPES:
        return SOURCE_TYPES[type_name]
    if type_name in NATIVE and type_kind not in _TEXT_KINDS:
        return "{c}", _same
    return _OUTPUT, str  # every other type is replicated as its text


def column_reader(column: SourceColumn) -> tuple[str, Parser]:
    if not column.element:
        return reader(column.type_name, column.type_kind, column.typmod)
    template, parse = reader(column.element, column.element_kind)
    if template == "{c}":
        return "{c}", lambda v: None if v is None else [_item(parse, x) for x in v]
    elements = (
        "CASE WHEN {c} IS NULL THEN NULL ELSE ARRAY(SELECT CASE WHEN e IS NULL THEN NULL "
        "ELSE format('%s', e) END FROM unnest({c}) WITH ORDINALITY AS u(e, i) ORDER BY i) END"
    )
    # the elements are output text: parse them as text (an interval stays its text)
    text_parse = parse if template in (_TEXT, _OUTPUT) else str
    return elements, lambda v: None if v is None else [_item(text_parse, x) for x in v]


def _item(parse: Parser, value: Any) -> Any:
    return None if value is None else parse(value)


# --- catalogue and rows -------------------------------------------------------------------

_COLUMNS_SQL = """
    SELECT a.attname::text, bt.typname::text, bt.typtype::text,
           coalesce(et.typname::text, ''), coalesce(et.typtype::text, ''),
           CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END
      FROM pg_attribute a
      JOIN pg_type t ON t.oid = a.atttypid
      JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
      LEFT JOIN pg_type et ON et.oid = bt.typelem AND bt.typcategory = 'A'
     WHERE a.attrelid = format('%%I.%%I', %s::text, %s::text)::regclass
       AND a.attnum > 0 AND NOT a.attisdropped
     ORDER BY a.attnum
"""


def source_columns(conn: Any, schema: str, table: str) -> list[SourceColumn]:
    return [SourceColumn(*row) for row in conn.execute(_COLUMNS_SQL, [schema, table])]


def source_rows(
    conn: Any, schema: str, table: str, columns: list[SourceColumn]
) -> Iterator[dict[str, Any]]:
    """Every row of the table, each column read and parsed by its type's reader."""
    from psycopg import sql

    readers = [column_reader(c) for c in columns]
    select = sql.SQL(", ").join(
        sql.SQL(template).format(c=sql.Identifier(c.name))
        for c, (template, _) in zip(columns, readers, strict=True)
    )
    query = sql.SQL("SELECT {} FROM {}.{}").format(
        select, sql.Identifier(schema), sql.Identifier(table)
    )
    names = [c.name for c in columns]
    parsers = [parse for _, parse in readers]
    with conn.cursor(name=None) as cur:
        for row in cur.execute(query):
            yield {
                n: None if v is None else p(v) for n, p, v in zip(names, parsers, row, strict=True)
            }
