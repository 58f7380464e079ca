"""Column types of the raw layer, independent of any warehouse (pure; no pyarrow here).

A :class:`ColumnType` is inferred from a column's canonical values (see
:func:`capa.codec.kind_of`) and, when known, the source's own type name
(``Column.source_type``). Each adapter maps it to its own type system
(``capa.warehouse.local.arrow_types`` for Arrow/Delta, ``capa.warehouse.bigquery.types``).

Widening rules (what happens when a batch brings a wider type than the table has):

* integers are always stored as 64-bit, so int -> bigint needs nothing;
* strings are unbounded, so varchar(n) growth needs nothing;
* int -> decimal(p, s) with ``p - s >= 19``, int -> double, float -> double;
* decimal(p1, s1) -> decimal(p2, s2) when ``s2 >= s1`` and ``p2 - s2 >= p1 - s1``;
* date -> timestamp;
* anything else raises :class:`~capa.errors.SchemaDriftError` (terminal: dead-letter).

Decimals: a declared ``numeric(p,s)``/``decimal(p,s)`` with ``p <= 38`` maps to
decimal(p, s). An unconstrained numeric (no declared precision, or ``p > 38``) maps to
decimal(38, max(9, largest scale seen, trailing zeros ignored)); a later value whose scale
does not fit raises SchemaDriftError (declare the column ``numeric(p,s)`` at the source, or
re-create the table). Values are rescaled exactly; a value that would lose digits is drift too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from capa.codec import kind_of
from capa.errors import SchemaDriftError

MAX_DECIMAL_PRECISION = 38
DEFAULT_DECIMAL_SCALE = 9
_DECLARED_DECIMAL = re.compile(
    r"^\s*(?:numeric|decimal|number)\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)", re.I
)
_INT_TYPES = {"int": "int", "bool": "bool"}


@dataclass(frozen=True, slots=True)
class ColumnType:
    """A raw-layer column type: a canonical kind plus decimal precision/scale or array item."""

    kind: str  # bool int float string json bytes decimal timestamp timestamptz date time uuid array
    precision: int = 0
    scale: int = 0
    item: ColumnType | None = None

    def __str__(self) -> str:
        if self.kind == "decimal":
            return f"decimal({self.precision},{self.scale})"
        if self.kind == "array":
            return f"array<{self.item}>"
        return self.kind


def declared_decimal(source_type: str) -> tuple[int, int] | None:
    """``"numeric(12,2)"`` -> (12, 2); None when no usable precision is declared."""
    match = _DECLARED_DECIMAL.match(source_type or "")
    if not match:
        return None
    precision, scale = int(match.group(1)), int(match.group(2) or 0)
    if precision > MAX_DECIMAL_PRECISION or scale > precision:
        return None
    return precision, scale


def decimal_scale(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    return max(-exponent, 0) if isinstance(exponent, int) else 0


def significant_scale(value: Decimal) -> int:
    """Digits after the point once trailing zeros are dropped (exact: no context rounding).

    ``Decimal("12000.000")`` -> 0, ``Decimal("1.50")`` -> 1. PostgreSQL ``numeric(p, -s)``
    reaches Debezium as scale ``2048 - s`` (its typmod bits), i.e. thousands of zeros.
    """
    _, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        return 0
    zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    return max(-(exponent + zeros), 0) if any(digits) else 0


def type_of_values(values: Iterable[Any], source_type: str = "") -> ColumnType | None:
    """The column type for a column's values; None if every value is NULL."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    kind = _kind_family(kind_of(present[0]))
    if kind == "decimal":
        return _decimal_type(present, source_type)
    if kind == "array":
        # No non-NULL item (only empty or all-NULL arrays): the item type is unknown (None),
        # which fits any array type; a new column of it is stored as array<string>.
        return ColumnType("array", item=type_of_values(x for v in present for x in v))
    return ColumnType(kind)


def _kind_family(kind: str) -> str:
    return "array" if kind.startswith("array<") else kind


def _decimal_type(values: list[Any], source_type: str) -> ColumnType:
    declared = declared_decimal(source_type)
    if declared:
        return ColumnType("decimal", *declared)
    scale = max(
        [DEFAULT_DECIMAL_SCALE, *(significant_scale(v) for v in values if isinstance(v, Decimal))]
    )
    return ColumnType("decimal", MAX_DECIMAL_PRECISION, min(scale, MAX_DECIMAL_PRECISION))


def infer_types(
    rows: Iterable[Mapping[str, Any]], source_types: Mapping[str, str]
) -> dict[str, ColumnType | None]:
    """Column name -> type over all rows (None for all-NULL columns of unknown type)."""
    values: dict[str, list[Any]] = {}
    for row in rows:
        for name, value in row.items():
            values.setdefault(name, []).append(value)
    return infer_column_types(values, source_types)


def infer_column_types(
    columns: Mapping[str, Sequence[Any]], source_types: Mapping[str, str]
) -> dict[str, ColumnType | None]:
    """Column name -> type over column-wise values (as :func:`infer_types`, without rows)."""
    return {
        name: _merge_all(vals, source_types.get(name, ""), name) for name, vals in columns.items()
    }


# Classes whose canonical kind does not depend on the value (one sample tells the kind).
_VALUE_DEPENDENT = (tuple, list, datetime)
_NONE = type(None)


def _merge_all(values: Sequence[Any], source_type: str, name: str) -> ColumnType | None:
    classes = set(map(type, values)) - {_NONE}
    if not classes:
        return None
    if len(classes) == 1:
        (cls,) = classes
        if cls is Decimal and declared_decimal(source_type):
            return ColumnType("decimal", *declared_decimal(source_type))  # type: ignore[misc]
        if cls is not Decimal and not issubclass(cls, _VALUE_DEPENDENT):
            sample = next(v for v in values if v is not None)
            return ColumnType(_kind_family(kind_of(sample)))
    return _merge_by_kind(values, name, source_type)


def _merge_by_kind(values: Sequence[Any], name: str, source_type: str) -> ColumnType | None:
    by_class: dict[type, list[Any]] = {}
    for value in values:
        if value is not None:
            by_class.setdefault(type(value), []).append(value)
    by_kind: dict[str, list[Any]] = {}
    for cls, group in by_class.items():
        if cls in _VALUE_DEPENDENT:  # kind depends on the value (items, tzinfo)
            for value in group:
                by_kind.setdefault(_kind_family(kind_of(value)), []).append(value)
        else:
            by_kind.setdefault(_kind_family(kind_of(group[0])), []).extend(group)
    result: ColumnType | None = None
    for group in by_kind.values():
        found = type_of_values(group, source_type)
        if found is not None:
            result = found if result is None else widen(result, found, column=name)
    return result


def widen(current: ColumnType, incoming: ColumnType, *, column: str) -> ColumnType:
    """The type holding both ``current`` and ``incoming``; SchemaDriftError if none may be used."""
    if current == incoming or fits(incoming, current):
        return current
    if fits(current, incoming):
        return incoming
    raise SchemaDriftError(
        f"column {column!r} changed type from {current} to {incoming}, which cannot be applied "
        "automatically; migrate the raw table (or add a new column) and replay the events"
    )


def fits(narrow: ColumnType, wide: ColumnType) -> bool:
    """True if every value of ``narrow`` converts exactly to ``wide``."""
    if narrow == wide:
        return True
    rule = _FITS.get((narrow.kind, wide.kind))
    return bool(rule and rule(narrow, wide))


def _decimal_fits(narrow: ColumnType, wide: ColumnType) -> bool:
    return (
        wide.scale >= narrow.scale
        and wide.precision - wide.scale >= narrow.precision - narrow.scale
    )


def _array_fits(narrow: ColumnType, wide: ColumnType) -> bool:
    if narrow.item is None:  # only empty or all-NULL arrays: they fit any array type
        return True
    return wide.item is not None and fits(narrow.item, wide.item)


_FITS: dict[tuple[str, str], Any] = {
    ("int", "decimal"): lambda n, w: w.precision - w.scale >= 19,
    ("int", "float"): lambda n, w: True,
    ("decimal", "decimal"): _decimal_fits,
    ("date", "timestamp"): lambda n, w: True,
    ("array", "array"): _array_fits,
    # Kinds stored as plain strings (see arrow_types): reading a table back yields "string".
    ("json", "string"): lambda n, w: True,
    ("uuid", "string"): lambda n, w: True,
    ("time", "string"): lambda n, w: True,
}


def check_decimal_fits(value: Decimal, target: ColumnType, *, column: str) -> None:
    """SchemaDriftError if ``value`` cannot be stored exactly in decimal(p, s)."""
    scale = significant_scale(value)
    integer_digits = len(str(abs(int(value)))) if abs(value) >= 1 else 0
    if scale > target.scale or integer_digits > target.precision - target.scale:
        raise SchemaDriftError(
            f"value {value} of column {column!r} does not fit {target}; declare a wider "
            "numeric(p,s) at the source or migrate the raw table"
        )
