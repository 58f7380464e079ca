"""Fuzzing: random bytes, truncated Avro, wrong types, odd tables and huge values must give a
dead letter / DecodeError with a reason - never another exception type."""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capa.codec import encode_avro, event_to_json
from capa.errors import DecodeError
from capa.events import ChangeEvent
from connectors.base import NORMALIZERS, READERS, DeadLetter, RawRecord, Skip
from connectors.datastream.files import read_avro_file, read_json_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(
        ["__debezium_unavailable_value", "16/CB002DB0", "0000002d:00000a48:0003", "EJo=", "r", "d"]
    ),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def seed_records() -> list[tuple[str, Any]]:
    """Real records of every format, to mutate."""
    out = []
    for path in sorted((FIXTURES / "debezium_pg15_captured_here").glob("*.json")):
        for item in read_json_file(path.read_bytes(), path.name):
            if isinstance(item, RawRecord):
                out.append(("debezium-json", item.value))
    for path in (FIXTURES / "datastream_postgres_json_doc").glob("*.json"):
        out.append(("datastream-json", json.loads(path.read_text())))
    avro = (FIXTURES / "datastream_postgres_avro" / "bytearray.avro").read_bytes()
    out.extend(
        ("datastream-avro", r.value) for r in read_avro_file(avro, "x") if isinstance(r, RawRecord)
    )
    return out


SEEDS = seed_records()


def check(fmt: str, record: Any) -> None:
    """The contract: an event/skip, or DecodeError; an event must also serialise."""
    try:
        outcome = NORMALIZERS[fmt]().normalize(record)
    except DecodeError as exc:
        assert exc.reason
        return
    assert isinstance(outcome, ChangeEvent | Skip)
    if isinstance(outcome, ChangeEvent):
        json.dumps(event_to_json(outcome))
        with contextlib.suppress(DecodeError):
            encode_avro(outcome)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += paths(v, (*prefix, i))
    return found


def replaced(record: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    clone = copy.deepcopy(record)
    target = clone
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = new
    return clone


@FUZZ
@given(st.data())
def test_mutated_real_records(data: st.DataObject) -> None:
    fmt, record = data.draw(st.sampled_from(SEEDS))
    path = data.draw(st.sampled_from(paths(record)))
    new = data.draw(JSON_VALUES | st.integers(min_value=1 << 64) | st.just("x" * 100_000))
    check(fmt, replaced(record, path, new))


@FUZZ
@given(st.sampled_from(sorted(NORMALIZERS)), JSON_VALUES)
def test_random_json_records(fmt: str, record: Any) -> None:
    check(fmt, record)


@FUZZ
@given(st.sampled_from(sorted(READERS)), st.binary(max_size=300))
def test_random_bytes_files(fmt: str, data: bytes) -> None:
    normalizer = NORMALIZERS[fmt]()
    for item in READERS[fmt](data, "fuzz"):
        if isinstance(item, DeadLetter):
            assert item.reason
            continue
        with contextlib.suppress(DecodeError):
            normalizer.normalize(item.value, item.hints or None)


def test_truncated_avro_at_every_length() -> None:
    data = (FIXTURES / "datastream_postgres_avro" / "bytearray.avro").read_bytes()
    for cut in range(len(data)):
        items = list(read_avro_file(data[:cut], "cut.avro"))
        assert items, cut
        for item in items:
            if isinstance(item, DeadLetter):
                assert item.reason
            else:
                check("datastream-avro", item.value)


def test_odd_tables_and_huge_values() -> None:
    (_, insert) = next(
        s
        for s in SEEDS
        if s[0] == "debezium-json" and s[1]["value"] and s[1]["value"].get("op") == "c"
    )
    odd = replaced(insert, ("value", "source", "table"), 'wëird "table"; DROP')
    odd = replaced(odd, ("value", "after", "id"), 1 << 70)
    event = NORMALIZERS["debezium-json"]().normalize(odd)
    assert isinstance(event, ChangeEvent) and event.table == 'wëird "table"; DROP'
    try:
        encode_avro(event)
        raise AssertionError("a 70-bit integer must not encode as Avro long")
    except DecodeError as exc:
        assert "64-bit" in exc.reason
    for connector in ("mysql", None, 5):
        bad = replaced(insert, ("value", "source", "connector"), connector)
        try:
            NORMALIZERS["debezium-json"]().normalize(bad)
            raise AssertionError(connector)
        except DecodeError as exc:
            assert "not supported" in exc.reason


def test_a_decimal_of_thousands_of_digits_converts_exactly() -> None:
    """Found by test_mutated_real_records: a precise-mode decimal whose unscaled bytes hold
    over 4300 digits made the normaliser crash (Python refuses to print such an int)."""
    import base64
    from decimal import Decimal

    from capa import avro_writer
    from connectors.debezium.values import decimal_with_scale, unscaled_to_decimal

    unscaled = 7 * 10**6000 + 3
    raw = unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True)
    value = unscaled_to_decimal(raw, 3)
    assert value.as_tuple().exponent == -3 and len(value.as_tuple().digits) == 6001
    assert value.as_tuple().digits[-4:] == (0, 0, 0, 3) and value > 0
    negative = unscaled_to_decimal((-unscaled).to_bytes(len(raw), "big", signed=True), 2)
    assert negative < 0 and negative.as_tuple().exponent == -2
    assert decimal_with_scale(2)(base64.b64encode(b"\x11\x17").decode()) == Decimal("43.75")
    buf = bytearray()
    avro_writer._v_decimal(buf, value)  # the Avro writer carries it too (was the same crash)
    assert raw in bytes(buf)
