"""Column types of the CRM contract: a registry from type name to a parser factory.

A parser turns one extract value (text from CSV, or a JSON scalar from NDJSON) into a
canonical value (see :mod:`capa.events`) or raises :class:`ValueError` whose message
quotes the bad value and names the expected form. Empty text is NULL.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

Parser = Callable[[Any], Any]

_TYPE_SPEC = re.compile(r"^\s*([a-z_]+)\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?\s*$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _parse_string(value: Any) -> str:
    if isinstance(value, dict | list):
        raise ValueError(f"{value!r} is not a scalar string")
    return _text(value)


def _parse_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not an integer")
    if isinstance(value, int):
        return value
    text = _text(value).strip()
    if not re.fullmatch(r"[+-]?\d+", text):
        raise ValueError(f"{value!r} is not an integer")
    return int(text)


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false)")


def _parse_date(value: Any) -> date:
    text = _text(value).strip()
    try:
        if len(text) != 10:
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def _parse_timestamp(value: Any) -> datetime:
    """ISO-8601 -> tz-aware UTC datetime; a naive value is taken as UTC."""
    text = _text(value).strip()
    try:
        if len(text) < 10:
            raise ValueError(text)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{value!r} is not a timestamp (ISO-8601, e.g. 2024-05-01T12:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _parse_email(value: Any) -> str:
    text = _text(value).strip()
    if not _EMAIL.match(text):
        raise ValueError(f"{value!r} is not an email address")
    return text.lower()


def _decimal_parser(precision: int, scale: int) -> Parser:
    def parse(value: Any) -> Decimal:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a decimal")
        try:
            number = Decimal(_text(value).strip())
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a decimal({precision},{scale})") from None
        if not number.is_finite():
            raise ValueError(f"{value!r} is not a finite decimal")
        quantized = number.quantize(Decimal(1).scaleb(-scale))
        if quantized != number:
            raise ValueError(f"{value!r} has more than {scale} decimal places")
        if len(quantized.as_tuple().digits) > precision:
            raise ValueError(f"{value!r} does not fit decimal({precision},{scale})")
        return quantized

    return parse


def _fixed(parser: Parser) -> Callable[..., Parser]:
    def factory(*params: int) -> Parser:
        if params:
            raise ValueError("takes no parameters")
        return parser

    return factory


def _decimal_factory(*params: int) -> Parser:
    if len(params) != 2 or params[1] > params[0]:
        raise ValueError("needs decimal(precision,scale) with scale <= precision")
    return _decimal_parser(params[0], params[1])


TYPES: dict[str, Callable[..., Parser]] = {
    "string": _fixed(_parse_string),
    "int": _fixed(_parse_int),
    "bool": _fixed(_parse_bool),
    "date": _fixed(_parse_date),
    "timestamp": _fixed(_parse_timestamp),
    "email": _fixed(_parse_email),
    "decimal": _decimal_factory,
}


def parser_for(type_spec: str) -> Parser:
    """``"decimal(12,2)"`` -> its parser; :class:`ValueError` naming the known types if unknown."""
    match = _TYPE_SPEC.match(type_spec)
    if not match or match.group(1) not in TYPES:
        raise ValueError(f"unknown column type {type_spec!r}; use one of {sorted(TYPES)}")
    params = tuple(int(g) for g in match.groups()[1:] if g is not None)
    try:
        return TYPES[match.group(1)](*params)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"column type {type_spec!r}: {exc}") from None


def source_type(type_spec: str) -> str:
    """Normalised type text for :class:`capa.events.Column` (``decimal(12,2)``)."""
    return re.sub(r"\s+", "", type_spec)
