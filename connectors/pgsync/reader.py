"""Reading one CTID range of a table inside an imported snapshot, as Arrow.

Measured on this machine (1M-row ``pgbench_accounts``, docs/benchmarks.md): the ADBC
PostgreSQL driver (binary COPY parsed to Arrow in C++) took 2.0 s where psycopg's binary
``COPY`` parsed row by row into Arrow took 10.1 s (a bare binary COPY: 1.4 s); so ranges
are read through ADBC.

Columns of the plain types in :data:`FAST` are cast to their raw-layer Arrow type as they
come. Every other column is read with the oracle's reader (:mod:`capa.verify_source`: the
SQL expression and parser that state what capa replicates for the type, special values
included) and converted value by value, so both paths give the values the streaming path
gives.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from capa.verify_source import Parser, SourceColumn, column_reader
from capa.warehouse.local.arrow_types import arrow_type, to_arrow
from capa.warehouse.types import ColumnType, infer_column_types
from connectors.pgsync.ranges import PageRange

#: base types read natively (no parser): typname -> raw-layer type
FAST: dict[str, ColumnType] = {
    **dict.fromkeys(("int2", "int4", "int8"), ColumnType("int")),
    **dict.fromkeys(("text", "varchar", "bpchar", "name"), ColumnType("string")),
    "bool": ColumnType("bool"),
}
_UUID_TEXT = "{c}::text"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    name: str
    expression: str  # SQL over the quoted column
    fast: ColumnType | None  # the type of a FAST column; None: parse each value
    parse: Parser | None
    source_type: str  # "numeric(p,s)" for a declared numeric (decides its decimal type)


def _adbc_reader(column: SourceColumn) -> tuple[str, Parser]:
    """:func:`column_reader`, with uuid and "char" read as text (ADBC gives them as
    binary, where psycopg gave Python values)."""
    if column.type_name == "uuid" and not column.element:
        return _UUID_TEXT, uuid.UUID
    if column.element == "uuid":
        return (
            "{c}::text[]",
            lambda v: None if v is None else [None if x is None else uuid.UUID(x) for x in v],
        )
    if column.type_name == "char" and not column.element:
        return "{c}::text", str
    return column_reader(column)


def declared_numeric(column: SourceColumn) -> str:
    if column.type_name != "numeric" or column.element or column.typmod < 4:
        return ""
    typmod = column.typmod - 4
    return f"numeric({(typmod >> 16) & 0xFFFF},{typmod & 0xFFFF})"


def column_specs(columns: Sequence[SourceColumn]) -> list[ColumnSpec]:
    specs = []
    for column in columns:
        quoted = quote_ident(column.name)
        fast = FAST.get(column.type_name) if not column.element else None
        if fast is not None and column.type_kind == "b":
            specs.append(ColumnSpec(column.name, quoted, fast, None, ""))
            continue
        template, parse = _adbc_reader(column)
        specs.append(
            ColumnSpec(
                column.name,
                template.format(c=quoted),
                None,
                parse,
                declared_numeric(column),
            )
        )
    return specs


def range_query(schema: str, table: str, specs: Sequence[ColumnSpec], part: PageRange) -> str:
    select = ", ".join(f"{s.expression} AS {quote_ident(s.name)}" for s in specs)
    source = f"{quote_ident(schema)}.{quote_ident(table)}"
    return f"SELECT {select} FROM {source} WHERE {part.predicate()}"


def typed_columns(
    data: pa.Table, specs: Sequence[ColumnSpec]
) -> tuple[pa.Table, dict[str, ColumnType | None]]:
    """The raw rows of a range -> (Arrow columns of raw-layer types, their column types).

    A parsed column that is NULL in every row of the range has type None (not created yet,
    as on the streaming path); it is left out of the returned table.
    """
    out = data.select([])  # keeps the row count when no column is typed yet
    types: dict[str, ColumnType | None] = {}
    for spec in specs:
        column = data[spec.name]
        if spec.fast is not None:
            types[spec.name] = spec.fast
            out = out.append_column(spec.name, column.cast(arrow_type(spec.fast)))
            continue
        assert spec.parse is not None
        parse = spec.parse
        values: list[Any] = [None if v is None else parse(v) for v in _plain(column).to_pylist()]
        found = infer_column_types({spec.name: values}, {spec.name: spec.source_type})
        types[spec.name] = found[spec.name]
        if found[spec.name] is not None:
            array = to_arrow(values, found[spec.name], spec.name)  # type: ignore[arg-type]
            out = out.append_column(spec.name, array)
    return out, types


def _plain(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Extension columns (ADBC's opaque PostgreSQL types) as their storage."""
    if isinstance(column.type, pa.ExtensionType):
        return pa.chunked_array([c.storage for c in column.chunks], type=column.type.storage_type)
    return column


def canonical_rows(data: pa.Table, specs: Sequence[ColumnSpec]) -> list[dict[str, Any]]:
    """The rows as canonical values (the keyless path builds change events from them)."""
    columns = {}
    for spec in specs:
        values = _plain(data[spec.name]).to_pylist()
        parse = spec.parse
        columns[spec.name] = (
            values if parse is None else [None if v is None else parse(v) for v in values]
        )
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]
