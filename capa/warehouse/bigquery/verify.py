"""Per-row hashes computed inside BigQuery, and their Python twin for the source rows.

``capa verify --warehouse bigquery:...`` must not download replicas. BigQuery therefore
computes, per live replica row, the key and ``TO_HEX(MD5(<canonical row text>))``; the
source side computes the same hash from its own rows with :func:`row_hash`. The canonical
text is defined once per BigQuery column type, as SQL (:func:`canonical_sql`) and as Python
(:func:`canonical_text`) side by side, so the two cannot drift apart unnoticed
(tests/unit/test_bigquery_verify.py checks each type on both sides):

=============  ===========================================  ================================
BigQuery type  SQL                                          Python (source value)
=============  ===========================================  ================================
INT64          ``CAST(c AS STRING)``                        ``str(int)``
NUMERIC, BIG-  trailing fractional zeros and dot trimmed    ``Decimal.normalize()`` as ``f``
NUMERIC        (``12.300`` -> ``12.3``, ``5.0`` -> ``5``)
FLOAT64        ``CAST(c AS STRING)``, trimmed the same way  ``repr(float)``, trimmed
               unless it has an exponent
BOOL           ``true`` / ``false``                         same
STRING         the value                                    ``str(v)`` (UUIDs, enums)
BYTES          ``TO_HEX(c)``                                ``bytes.hex()``
DATE           ``YYYY-MM-DD``                               ``isoformat()``
DATETIME       ``%Y-%m-%d %H:%M:%E6S``                      ``%Y-%m-%d %H:%M:%S.%f``
TIMESTAMP      same, in UTC                                 same, converted to UTC
TIME           ``%H:%M:%E6S``                               ``%H:%M:%S.%f``
JSON           ``TO_JSON_STRING(c)``                        compact JSON, keys sorted
REPEATED       items' texts, each length-prefixed, joined;  same; NULL = empty (BigQuery has
               an empty array                               no NULL arrays)
=============  ===========================================  ================================

A row's text is each column's text (columns in name order) as ``<length>:<text>``, or ``-``
for NULL, concatenated: unambiguous whatever the values hold.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from capa.keyless import ROW_HASH
from capa.warehouse import sql
from capa.warehouse.base import META_DELETED

_LEGACY = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}
_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%E6S"
_TIME_FORMAT = "%H:%M:%E6S"


def standard_type(field_type: str) -> str:
    name = str(field_type).upper()
    return _LEGACY.get(name, name)


def canonical_sql(expression: str, bq_type: str) -> str:
    """SQL text of one (non-repeated) value of ``bq_type``; NULL stays NULL."""
    kind = standard_type(bq_type)
    if kind in ("NUMERIC", "BIGNUMERIC", "FLOAT64"):
        text = f"CAST({expression} AS STRING)"
        return (
            f"IF(STRPOS({text}, '.') > 0 AND STRPOS(LOWER({text}), 'e') = 0, "
            f"RTRIM(RTRIM({text}, '0'), '.'), {text})"
        )
    if kind == "STRING":
        return expression
    if kind == "BYTES":
        return f"TO_HEX({expression})"
    if kind == "DATETIME":
        return f"FORMAT_DATETIME('{_DATETIME_FORMAT}', {expression})"
    if kind == "TIMESTAMP":
        return f"FORMAT_TIMESTAMP('{_DATETIME_FORMAT}', {expression}, 'UTC')"
    if kind == "TIME":
        return f"FORMAT_TIME('{_TIME_FORMAT}', {expression})"
    if kind == "JSON":
        return f"TO_JSON_STRING({expression})"
    return f"CAST({expression} AS STRING)"  # INT64, BOOL, DATE


def column_sql(column: str, bq_type: str, repeated: bool) -> str:
    """One column's length-prefixed part of the row text."""
    d = sql.dialect("bigquery")
    if repeated:
        item = _prefixed(canonical_sql("x", bq_type))
        return (
            f"ARRAY_TO_STRING(ARRAY(SELECT {item} FROM UNNEST({d.ident(column)}) AS x "
            "WITH OFFSET o ORDER BY o), '')"
        )
    return f"IFNULL({_prefixed(canonical_sql(d.ident(column), bq_type))}, '-')"


def _prefixed(text: str) -> str:
    return f"CONCAT(CAST(LENGTH({text}) AS STRING), ':', {text})"


def row_hashes_sql(
    table: Sequence[str], primary_key: Sequence[str], columns: Mapping[str, tuple[str, bool]]
) -> str:
    """Key columns and ``_capa_row_hash`` of every live row of ``table`` (no key columns
    for a keyless table: its rows are compared as a multiset of hashes).

    ``columns``: source column -> (BigQuery type, repeated); a column the replica lacks
    has type ``""`` and counts as NULL, so such rows differ from the source.
    """
    d = sql.dialect("bigquery")
    parts = [
        column_sql(name, kind, repeated) if kind else "'-'"
        for name, (kind, repeated) in sorted(columns.items())
    ]
    text = ", ".join([*parts, "''"])  # CONCAT needs one argument even for no columns
    selected = [*(d.ident(k) for k in primary_key), f"TO_HEX(MD5(CONCAT({text}))) AS {ROW_HASH}"]
    return (
        f"SELECT {', '.join(selected)} "
        f"FROM {d.table(table)} WHERE NOT IFNULL({d.ident(META_DELETED)}, FALSE)"
    )


def canonical_text(value: Any, bq_type: str) -> str | None:
    """Python twin of :func:`canonical_sql` for a source value."""
    if value is None:
        return None
    kind = standard_type(bq_type)
    if kind in ("NUMERIC", "BIGNUMERIC"):
        number = value if isinstance(value, Decimal) else Decimal(str(value))
        return _trim(format(number.normalize(), "f"))
    if kind == "FLOAT64":
        return _trim(repr(float(value)))
    if kind == "BOOL":
        return "true" if value else "false"
    if kind == "BYTES":
        return bytes(value).hex()
    if kind in ("DATETIME", "TIMESTAMP"):
        if kind == "TIMESTAMP" and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if kind == "TIME":
        return value.strftime("%H:%M:%S.%f") if isinstance(value, time) else str(value)
    if kind == "DATE":
        return value.isoformat() if isinstance(value, date | datetime) else str(value)
    if kind == "JSON":
        parsed = json.loads(value) if isinstance(value, str | bytes) else value
        return json.dumps(parsed, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return str(value)


def _trim(text: str) -> str:
    if "." in text and "e" not in text.lower():
        text = text.rstrip("0").rstrip(".")
    return text


def row_hash(row: Mapping[str, Any], columns: Mapping[str, tuple[str, bool]]) -> str:
    """The hash :func:`row_hashes_sql` computes, for a source row."""
    parts = []
    for name, (kind, repeated) in sorted(columns.items()):
        value = row.get(name)
        if not kind:
            parts.append("-")
        elif repeated:
            texts = [canonical_text(v, kind) for v in value or () if v is not None]
            parts.append("".join(f"{len(t)}:{t}" for t in texts if t is not None))
        else:
            text = canonical_text(value, kind)
            parts.append("-" if text is None else f"{len(text)}:{text}")
    return hashlib.md5("".join(parts).encode(), usedforsecurity=False).hexdigest()
