"""Datastream (Avro) special values: the same canonical values as the Debezium path.

GENERATED records, not captured: no Datastream runs here, and Datastream's documentation
(unified types: DATE is an Avro ``date``, TIMESTAMP a ``timestamp-micros``, DOUBLE/FLOAT
IEEE numbers) does not say which number it writes for PostgreSQL ``infinity``. The file is
written in the shape of the vendored real Datastream file
(tests/fixtures/datastream_postgres_avro/, its writer schema) with numbers outside the
range a Python date holds. fastavro's own date reader fails on those (and with it the rest
of the file), so capa reads temporal payload fields as numbers and saturates them by sign,
as it does for Debezium (capa.values). Floats carry NaN/Infinity natively.
"""

from __future__ import annotations

import io
import math
from datetime import UTC, datetime
from typing import Any

import fastavro

from capa.values import (
    DATE_MAX,
    DATE_MIN,
    TIMESTAMP_MAX,
    TIMESTAMP_MIN,
    TIMESTAMPTZ_MAX,
    TIMESTAMPTZ_MIN,
    comparable,
)
from connectors.base import RawRecord
from connectors.datastream.files import read_avro_file
from connectors.datastream.normalizer import DatastreamNormalizer
from connectors.debezium.values import PG_TIMESTAMP_INFINITY


def _nullable(kind: Any) -> list[Any]:
    return ["null", kind]


SCHEMA = {
    "type": "record",
    "name": "public_special",
    "fields": [
        {"name": "read_method", "type": "string"},
        {"name": "stream_name", "type": "string"},
        {
            "name": "source_metadata",
            "type": {
                "type": "record",
                "name": "source_metadata",
                "fields": [
                    {"name": "schema", "type": "string"},
                    {"name": "table", "type": "string"},
                    {"name": "is_deleted", "type": _nullable("boolean")},
                    {"name": "change_type", "type": _nullable("string")},
                    {"name": "lsn", "type": _nullable("string")},
                    {
                        "name": "primary_keys",
                        "type": _nullable({"type": "array", "items": "string"}),
                    },
                ],
            },
        },
        {
            "name": "payload",
            "type": {
                "type": "record",
                "name": "payload",
                "fields": [
                    {"name": "id", "type": _nullable("int")},
                    {"name": "c_date", "type": _nullable({"type": "int", "logicalType": "date"})},
                    {
                        "name": "c_ts",
                        "type": _nullable(
                            {"type": "long", "logicalType": "local-timestamp-micros"}
                        ),
                    },
                    {
                        "name": "c_tstz",
                        "type": _nullable({"type": "long", "logicalType": "timestamp-micros"}),
                    },
                    {"name": "c_double", "type": _nullable("double")},
                    {"name": "c_real", "type": _nullable("float")},
                ],
            },
        },
    ],
}
# Out-of-range numbers: PostgreSQL's own date/timestamp limits and the JDBC sentinels
# (Datastream's choice is undocumented, so both kinds are covered).
TS_POS = max(PG_TIMESTAMP_INFINITY)
ROWS = [
    (1, 2_147_483_647, TS_POS, TS_POS, math.nan, math.inf),
    (2, -2_147_483_648, -TS_POS, -TS_POS, -math.inf, -math.inf),
    (3, 999_999_999, 9_223_372_036_854_775_807, 9_223_372_036_854_775_807, math.inf, math.nan),
    (4, 19_000, 1_700_000_000_000_000, 1_700_000_000_000_000, 0.5, 0.1),
]


def _file() -> bytes:
    records = [
        {
            "read_method": "postgresql-cdc",
            "stream_name": "projects/p/locations/l/streams/f2",
            "source_metadata": {
                "schema": "public",
                "table": "special",
                "is_deleted": False,
                "change_type": "INSERT",
                "lsn": f"0/{16 + i:X}",
                "primary_keys": ["id"],
            },
            "payload": dict(
                zip(("id", "c_date", "c_ts", "c_tstz", "c_double", "c_real"), row, strict=False)
            ),
        }
        for i, row in enumerate(ROWS)
    ]
    buf = io.BytesIO()
    # fastavro writes a logical-typed field's plain number as it is
    fastavro.writer(buf, fastavro.parse_schema(SCHEMA), records)
    return buf.getvalue()


def _events() -> dict[int, dict[str, Any]]:
    normalizer = DatastreamNormalizer(source="f2")
    out = {}
    for raw in read_avro_file(_file(), "special.avro"):
        assert isinstance(raw, RawRecord), raw
        event = normalizer.normalize(raw.value, raw.hints)
        out[event.key["id"]] = dict(event.after)  # type: ignore[union-attr,arg-type]
    return out


def test_datastream_out_of_range_temporals_saturate() -> None:
    rows = _events()
    assert [rows[i]["c_date"] for i in (1, 2, 3)] == [DATE_MAX, DATE_MIN, DATE_MAX]
    assert [rows[i]["c_ts"] for i in (1, 2, 3)] == [TIMESTAMP_MAX, TIMESTAMP_MIN, TIMESTAMP_MAX]
    assert [rows[i]["c_tstz"] for i in (1, 2, 3)] == [
        TIMESTAMPTZ_MAX,
        TIMESTAMPTZ_MIN,
        TIMESTAMPTZ_MAX,
    ]
    assert rows[4]["c_tstz"] == datetime.fromtimestamp(1_700_000_000, UTC)


def test_datastream_float_specials_are_kept() -> None:
    rows = _events()
    assert comparable(rows[1]["c_double"]) == "NaN" and rows[1]["c_real"] == math.inf
    assert rows[2]["c_double"] == -math.inf and math.isnan(rows[3]["c_real"])
    assert rows[4]["c_real"] == 0.1  # the float32 as its shortest text, as from Debezium
