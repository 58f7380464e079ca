"""The canonical row text BigQuery hashes for ``capa verify`` (Python twin and SQL text).

The SQL side runs on bqemulator in tests/integration/bigquery/test_verify_bigquery.py
against every type of the workload's type zoo; here each type's Python text is pinned.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest

from capa.warehouse.bigquery.verify import canonical_text, row_hash, row_hashes_sql


@pytest.mark.parametrize(
    ("value", "bq_type", "text"),
    [
        (Decimal("12.300"), "NUMERIC", "12.3"),
        (Decimal("5.000000000"), "NUMERIC", "5"),
        (Decimal("100"), "BIGNUMERIC", "100"),
        (Decimal("-0.50"), "NUMERIC", "-0.5"),
        (1000000.0, "FLOAT", "1000000"),
        (2.5, "FLOAT64", "2.5"),
        (1e20, "FLOAT64", "1e+20"),
        (7, "INTEGER", "7"),
        (True, "BOOLEAN", "true"),
        (b"\x00\xff", "BYTES", "00ff"),
        (uuid.UUID(int=1), "STRING", "00000000-0000-0000-0000-000000000001"),
        (date(2024, 2, 29), "DATE", "2024-02-29"),
        (datetime(2024, 1, 1, 1, 2, 3), "DATETIME", "2024-01-01 01:02:03.000000"),
        (
            datetime(2024, 1, 1, 3, 2, 3, 5, tzinfo=timezone(timedelta(hours=2))),
            "TIMESTAMP",
            "2024-01-01 01:02:03.000005",
        ),
        (time(1, 2, 3, 4), "TIME", "01:02:03.000004"),
        ('{"s": "v", "k": 1}', "JSON", '{"k":1,"s":"v"}'),
        (None, "STRING", None),
    ],
)
def test_canonical_text(value, bq_type, text) -> None:
    assert canonical_text(value, bq_type) == text


def test_row_text_is_length_prefixed_in_column_order() -> None:
    columns = {"b": ("STRING", False), "a": ("INT64", False), "t": ("STRING", True)}
    row = {"a": 12, "b": None, "t": ["x|", "yz"]}
    expected = hashlib.md5(b"2:12-2:x|2:yz").hexdigest()
    assert row_hash(row, columns) == expected
    # the same values split differently give a different text
    assert row_hash({"a": 12, "b": None, "t": ["x", "|yz"]}, columns) != expected


def test_hash_sql_reads_keys_and_hashes_of_live_rows_only() -> None:
    text = row_hashes_sql(("p", "raw", "t"), ("id",), {"id": ("INT64", False), "gone": ("", False)})
    assert text.startswith("SELECT `id`, TO_HEX(MD5(CONCAT(")
    assert "'-'" in text  # a column the replica lacks hashes as NULL
    assert text.endswith("FROM `p`.`raw`.`t` WHERE NOT IFNULL(`_capa_deleted`, FALSE)")
