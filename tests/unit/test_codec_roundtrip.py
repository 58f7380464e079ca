"""Property tests: canonical JSON and Avro codecs round-trip arbitrary events exactly; the
production Avro codec (the hand-written writer, the native reader) gives the same bytes and
events as the reference oracles (fastavro, the pure-Python reader) under tests/oracles."""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracles.avro_reader import read_event
from oracles.fastavro_codec import decode_avro_generic, encode_avro_generic

from capa.codec import (
    decode_avro,
    decode_single_object,
    encode_avro,
    encode_single_object,
    event_from_json,
    event_to_json,
)
from capa.errors import DecodeError
from capa.events import ChangeEvent, Column, Json, Op, SourceKind

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
NAMES = st.text(st.characters(whitelist_categories=("Ll", "Lu", "Nd")), min_size=1, max_size=8)
INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
MIN_TS_US, MAX_TS_US = -62_135_596_800_000_000, 253_402_300_799_999_999  # years 1..9999

SCALARS: dict[str, st.SearchStrategy[Any]] = {
    "bool": st.booleans(),
    "int": INT64,
    "float": st.floats(allow_nan=False),
    "string": TEXT,
    "bytes": st.binary(max_size=20),
    "decimal": st.decimals(allow_nan=False, allow_infinity=False).filter(
        lambda d: abs(d.adjusted()) < 60
    ),
    "timestamp": st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
    "timestamptz": st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)).map(
        lambda d: d.replace(tzinfo=UTC)
    ),
    "date": st.dates(),
    "time": st.times(),
    "uuid": st.uuids(),
    "json": st.builds(Json, TEXT),
}


@st.composite
def kinds(draw: st.DrawFn) -> st.SearchStrategy[Any]:
    name = draw(st.sampled_from(sorted(SCALARS)))
    if draw(st.booleans()):
        return st.lists(st.one_of(st.none(), SCALARS[name]), max_size=4).map(tuple)
    return SCALARS[name]


@st.composite
def events(draw: st.DrawFn) -> ChangeEvent:
    columns = draw(st.dictionaries(NAMES, kinds(), min_size=1, max_size=6))

    def row() -> dict[str, Any] | None:
        if draw(st.booleans()):
            return None
        return {c: draw(st.one_of(st.none(), strategy)) for c, strategy in columns.items()}

    key_cols = draw(st.lists(st.sampled_from(sorted(columns)), unique=True, max_size=2))
    return ChangeEvent(
        source=draw(NAMES),
        source_kind=draw(st.sampled_from(list(SourceKind))),
        database=draw(st.one_of(st.none(), TEXT)),
        schema=draw(TEXT),
        table=draw(TEXT),
        op=draw(st.sampled_from(list(Op))),
        position=draw(TEXT),
        commit_ts_us=draw(st.one_of(st.none(), st.integers(MIN_TS_US, MAX_TS_US))),
        primary_key=tuple(key_cols),
        key={c: draw(columns[c]) for c in key_cols},
        before=row(),
        after=row(),
        columns=tuple(Column(c, draw(TEXT)) for c in columns if draw(st.booleans())),
        unchanged=tuple(draw(st.lists(TEXT, max_size=2))),
        transaction_id=draw(st.one_of(st.none(), TEXT)),
        origin=draw(st.sampled_from(["debezium", "datastream", "crm-batch"])),
    )


FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(events())
def test_avro_round_trip_and_same_bytes_as_fastavro(event: ChangeEvent) -> None:
    body = encode_avro(event)
    assert body == encode_avro_generic(event)
    assert decode_avro(body) == event
    assert decode_avro_generic(body) == event
    assert read_event(body) == event
    assert decode_single_object(encode_single_object(event)) == event


@FAST
@given(events())
def test_json_round_trip(event: ChangeEvent) -> None:
    assert event_from_json(event_to_json(event)) == event


def test_typed_values_keep_their_types() -> None:
    after = {
        "d": Decimal("12345678901234567890.0123456789"),
        "ts": datetime(2024, 2, 29, 13, 14, 15, 123456),
        "tstz": datetime(2024, 2, 29, 11, 14, 15, 123456, tzinfo=UTC),
        "dt": date(999, 1, 2),
        "t": time(23, 59, 59, 999999),
        "u": uuid.UUID(int=7),
        "j": Json('{"k": 1}'),
        "a": (1, None, 3),
    }
    event = ChangeEvent(
        "f2", SourceKind.POSTGRES, None, "s", "t", Op.INSERT, "1", None, (), {}, None, after
    )
    for decoded in (decode_avro(encode_avro(event)), event_from_json(event_to_json(event))):
        assert decoded.after == after
        assert {k: type(v) for k, v in decoded.after.items()} == {
            k: type(v) for k, v in after.items()
        }
        assert str(decoded.after["d"]) == "12345678901234567890.0123456789"


@pytest.mark.parametrize("bad", [1 << 64, Decimal("NaN"), object()])
def test_unencodable_values_raise_decode_error(bad: Any) -> None:
    event = ChangeEvent(
        "f2", SourceKind.POSTGRES, None, "s", "t", Op.INSERT, "1", None, (), {}, None, {"x": bad}
    )
    with pytest.raises(DecodeError):
        encode_avro(event)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decoding_random_bytes_raises_only_decode_error(data: bytes) -> None:
    for decode in (decode_avro, decode_avro_generic, read_event, decode_single_object):
        with contextlib.suppress(DecodeError):
            decode(data)


@FAST
@given(events(), st.data())
def test_corrupted_bodies_decode_as_fastavro_does_or_fail_cleanly(
    event: ChangeEvent, data: st.DataObject
) -> None:
    """Flip, cut or extend a valid body: the hand-written reader either returns exactly what
    fastavro returns, or raises DecodeError (it is stricter: trailing bytes are an error)."""
    body = bytearray(encode_avro(event))
    mutation = data.draw(st.sampled_from(["flip", "cut", "extend"]))
    if mutation == "flip":
        index = data.draw(st.integers(0, len(body) - 1))
        body[index] = data.draw(st.integers(0, 255))
    elif mutation == "cut":
        del body[data.draw(st.integers(0, len(body) - 1)) :]
    else:
        body += data.draw(st.binary(min_size=1, max_size=8))
    try:
        ours = decode_avro(bytes(body))
    except DecodeError:
        return
    assert ours == decode_avro_generic(bytes(body))


def _outside_int64(event: ChangeEvent) -> bool:
    values = [event.commit_ts_us]
    for row in (event.key, event.before or {}, event.after or {}):
        for value in row.values():
            values.extend(value if isinstance(value, tuple) else (value,))
    return any(type(v) is int and not -(1 << 63) <= v < 1 << 63 for v in values)


@FAST
@given(events(), st.data())
def test_corrupted_bodies_decode_as_the_python_reader_does(
    event: ChangeEvent, data: st.DataObject
) -> None:
    """Flip, cut or extend a valid body: the native decoder and the pure-Python reference
    reader accept the same bodies with equal events, except a long past 64 bits (which Python
    returns as a big int and the native decoder rejects)."""
    body = bytearray(encode_avro(event))
    for _ in range(data.draw(st.integers(1, 3))):
        index = data.draw(st.integers(0, len(body) - 1))
        body[index] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del body[data.draw(st.integers(0, len(body) - 1)) :]
    try:
        expected = read_event(bytes(body))
    except DecodeError:
        with pytest.raises(DecodeError, match=r"^not a canonical Avro change event: "):
            decode_avro(bytes(body))
        return
    if _outside_int64(expected):
        with pytest.raises(DecodeError, match="64-bit range"):
            decode_avro(bytes(body))
        return
    assert decode_avro(bytes(body)) == expected


def test_trailing_bytes_are_rejected() -> None:
    event = ChangeEvent(
        "f2", SourceKind.POSTGRES, None, "s", "t", Op.INSERT, "1", None, (), {}, None, {"x": 1}
    )
    with pytest.raises(DecodeError, match="bytes left after the record"):
        decode_avro(encode_avro(event) + b"\x00")


def _varint(value: int) -> bytes:
    n, out = (value << 1) ^ (value >> 63), bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes([*out, n])


def test_decimal_exponent_beyond_python_limits_is_a_decode_error() -> None:
    """A decimal scale no int32 can hold, hand-encoded as a long varint: Decimal() itself
    raises InvalidOperation, which must surface as DecodeError (dead letter), not escape."""
    event = ChangeEvent(
        "f2",
        SourceKind.POSTGRES,
        None,
        "s",
        "t",
        Op.INSERT,
        "1",
        None,
        (),
        {},
        None,
        {"d": Decimal("1.5")},
    )
    body = encode_avro(event)
    decimal = b"\x0c\x02\x0f" + _varint(1)  # branch Decimal, unscaled 15, scale 1
    assert body.count(decimal) == 1 and decode_avro(body).after == {"d": Decimal("1.5")}
    for scale in (-(10**18), 2**62):  # beyond MAX_EMAX, below MIN_ETINY
        bad = body.replace(decimal, b"\x0c\x02\x0f" + _varint(scale))
        with pytest.raises(DecodeError):
            decode_avro(bad)
