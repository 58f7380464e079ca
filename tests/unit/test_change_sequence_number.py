"""capa.position.change_sequence_number: sorts exactly as positions do, under BigQuery's rule.

``bigquery_order`` is BigQuery's documented comparison of ``_CHANGE_SEQUENCE_NUMBER``
values, written here independently: split on '/', at most 4 sections of at most 16 hex
digits, compared section by section as unsigned integers.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capa.errors import DecodeError
from capa.position import batch_position, change_sequence_number, mssql_position, pg_position

_SECTION = re.compile(r"^[0-9A-Fa-f]{1,16}$")


def bigquery_order(csn: str) -> tuple[int, ...]:
    sections = csn.split("/")
    assert 1 <= len(sections) <= 4, csn
    assert all(_SECTION.match(s) for s in sections), csn
    return tuple(int(s, 16) for s in sections)


def sign(a: object, b: object) -> int:
    return (a > b) - (a < b)  # type: ignore[operator]


def _mssql_lsn(n: int) -> str:
    return f"{n >> 48:08x}:{(n >> 16) & 0xFFFFFFFF:08x}:{n & 0xFFFF:04x}"


pg_positions = st.builds(pg_position, st.integers(0, (1 << 64) - 1), snapshot=st.booleans())
mssql_positions = st.builds(
    mssql_position,
    st.integers(0, (1 << 80) - 1).map(_mssql_lsn),
    st.one_of(st.none(), st.integers(0, (1 << 80) - 1).map(_mssql_lsn)),
    st.integers(0, (1 << 32) - 1),
)


@given(st.tuples(pg_positions, pg_positions) | st.tuples(mssql_positions, mssql_positions))
def test_mapping_sorts_exactly_as_positions(pair: tuple[str, str]) -> None:
    a, b = pair
    assert sign(
        bigquery_order(change_sequence_number(a)), bigquery_order(change_sequence_number(b))
    ) == sign(a, b)


@given(st.lists(pg_positions, min_size=2, max_size=30))
def test_sorting_by_mapping_equals_sorting_by_position(positions: list[str]) -> None:
    by_csn = sorted(positions, key=lambda p: bigquery_order(change_sequence_number(p)))
    assert by_csn == sorted(positions)


def test_documented_examples() -> None:
    assert change_sequence_number(pg_position("16/CB002DB0", snapshot=False)) == (
        "00000016cb002db0/1"
    )
    assert change_sequence_number(pg_position("16/CB002DB0", snapshot=True)) == (
        "00000016cb002db0/0"
    )


def test_mssql_uses_three_sections() -> None:
    position = mssql_position("0000002d:00000a48:0003", "0000002d:00000a48:0002", 1)
    csn = change_sequence_number(position)
    assert csn.split("/") == [
        position.replace(".", "")[0:16],
        position.replace(".", "")[16:32],
        position.replace(".", "")[32:48],
    ]


@pytest.mark.parametrize(
    "position",
    [batch_position(1, "crm-sample-0001", 3), "", "0" * 65, "00000016CB002DB0.1"],
)
def test_unmappable_positions_are_refused(position: str) -> None:
    with pytest.raises(DecodeError, match="position"):
        change_sequence_number(position)
