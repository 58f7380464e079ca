"""Raw-layer column types -> BigQuery types (pure; no google.cloud import).

decimal(p, s) is NUMERIC(p, s) when it fits NUMERIC (s <= 9, p - s <= 29), else
BIGNUMERIC(p, s). time -> TIME, timestamp -> DATETIME, timestamptz -> TIMESTAMP,
json -> JSON, uuid -> STRING, arrays -> REPEATED fields (BigQuery has no NULL array items:
NULL items are dropped, a known BigQuery limitation).
"""

from __future__ import annotations

from typing import Any

from capa.warehouse.types import ColumnType

_SIMPLE = {
    "bool": "BOOL",
    "int": "INT64",
    "float": "FLOAT64",
    "string": "STRING",
    "json": "JSON",
    "uuid": "STRING",
    "bytes": "BYTES",
    "timestamptz": "TIMESTAMP",
    "timestamp": "DATETIME",
    "date": "DATE",
    "time": "TIME",
}
_FROM_BQ = {
    "INTEGER": "int",
    "FLOAT": "float",
    "BOOLEAN": "bool",
    "NUMERIC": "decimal",
    "BIGNUMERIC": "decimal",
}


def bq_type(column_type: ColumnType) -> tuple[str, str, int | None, int | None]:
    """(type name, mode, precision, scale) for a SchemaField."""
    if column_type.kind == "array":
        inner, _, precision, scale = bq_type(column_type.item or ColumnType("string"))
        return inner, "REPEATED", precision, scale
    if column_type.kind == "decimal":
        numeric = column_type.scale <= 9 and column_type.precision - column_type.scale <= 29
        return (
            ("NUMERIC" if numeric else "BIGNUMERIC"),
            "NULLABLE",
            column_type.precision,
            column_type.scale,
        )
    return _SIMPLE[column_type.kind], "NULLABLE", None, None


def type_sql(column_type: ColumnType) -> str:
    name, mode, precision, scale = bq_type(column_type)
    text = f"{name}({precision}, {scale})" if precision is not None else name
    return f"ARRAY<{text}>" if mode == "REPEATED" else text


def column_type(field: Any) -> ColumnType:
    """A SchemaField -> the raw-layer type."""
    name = str(field.field_type).upper()
    kind = {v: k for k, v in _SIMPLE.items() if k not in ("json", "uuid")}.get(
        name
    ) or _FROM_BQ.get(name, "string")
    if name == "JSON":
        kind = "json"
    base = ColumnType(kind)
    if kind == "decimal":
        default = (38, 9) if name == "NUMERIC" else (76, 38)
        base = ColumnType(
            "decimal",
            field.precision or default[0],
            field.scale if field.scale is not None else default[1],
        )
    return ColumnType("array", item=base) if field.mode == "REPEATED" else base
