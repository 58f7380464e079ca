"""``infinity``/``-infinity`` as Debezium 3.6.3 really sends them (PostgreSQL 15, measured
2026-12-08 with the project's bridge settings), snapshot AND streaming, -> the saturated
canonical values of docs/type-mapping.md (issue #20: a streamed date 'infinity' was 0001-01-01).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pytest

from capa.values import (
    DATE_MAX,
    DATE_MIN,
    TIMESTAMP_MAX,
    TIMESTAMP_MIN,
    TIMESTAMPTZ_MAX,
    TIMESTAMPTZ_MIN,
)
from connectors.debezium.values import field_converter, hint_converter

DATE = {"type": "int32", "name": "io.debezium.time.Date"}
MICRO_TS = {"type": "int64", "name": "io.debezium.time.MicroTimestamp"}  # timestamp(4..6)
MILLI_TS = {"type": "int64", "name": "io.debezium.time.Timestamp"}  # timestamp(0..3)
ZONED = {"type": "string", "name": "io.debezium.time.ZonedTimestamp"}


def _array(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": item}


# (Connect field, value Debezium sent, canonical value)
MEASURED = [
    pytest.param(DATE, -622191234, DATE_MAX, id="date infinity, snapshot"),
    pytest.param(DATE, -625821272, DATE_MIN, id="date -infinity, snapshot"),
    pytest.param(DATE, -2147472692, DATE_MAX, id="date infinity, streamed"),
    pytest.param(DATE, -2147472691, DATE_MIN, id="date -infinity, streamed"),
    pytest.param(MICRO_TS, 9223372036825200000, TIMESTAMP_MAX, id="timestamp infinity"),
    pytest.param(MICRO_TS, -9223372036832400000, TIMESTAMP_MIN, id="timestamp -infinity"),
    pytest.param(MILLI_TS, 9223372036825200, TIMESTAMP_MAX, id="timestamp(3) infinity"),
    pytest.param(MILLI_TS, -9223372036832400, TIMESTAMP_MIN, id="timestamp(3) -infinity"),
    pytest.param(ZONED, "infinity", TIMESTAMPTZ_MAX, id="timestamptz infinity"),
    pytest.param(ZONED, "-infinity", TIMESTAMPTZ_MIN, id="timestamptz -infinity"),
    pytest.param(
        _array(DATE),
        [-622191234, -625821272, 18262],
        (DATE_MAX, DATE_MIN, date(2020, 1, 1)),
        id="date[] (same items snapshot and streamed)",
    ),
    pytest.param(
        _array(MICRO_TS),
        [9223372036825200000, -9223372036832400000],
        (TIMESTAMP_MAX, TIMESTAMP_MIN),
        id="timestamp[]",
    ),
    pytest.param(
        _array(ZONED),
        ["infinity", "+292269055-12-02T23:00:00.000000Z"],
        (TIMESTAMPTZ_MAX, TIMESTAMPTZ_MIN),
        id="timestamptz[] (-infinity item as a year past PostgreSQL's last)",
    ),
]


@pytest.mark.parametrize(("field", "sent", "canonical"), MEASURED)
def test_debezium_infinity_sentinels_map_to_the_documented_values(
    field: dict[str, Any], sent: Any, canonical: Any
) -> None:
    assert field_converter(field)(sent) == canonical


def test_schemaless_hints_share_the_same_sentinels() -> None:
    assert hint_converter("date")(-2147472692) == DATE_MAX
    assert hint_converter("date")(-2147472691) == DATE_MIN
    assert hint_converter("timestamp_ms")(-9223372036832400) == TIMESTAMP_MIN


def test_values_next_to_the_sentinels_are_ordinary() -> None:
    """Only the exact sentinels are infinities: neighbours keep the saturation rules."""
    assert field_converter(DATE)(2932896) == DATE_MAX  # 9999-12-31 + 1 day saturates
    assert field_converter(DATE)(-2147472693) == DATE_MIN  # before year 1
    assert field_converter(MILLI_TS)(253402300799999) == datetime(9999, 12, 31, 23, 59, 59, 999000)
    assert field_converter(ZONED)("+294276-12-31T23:59:59.999999Z") == TIMESTAMPTZ_MAX
