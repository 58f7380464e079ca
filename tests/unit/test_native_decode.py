"""The native columnar decoder (``capa_native.decode_batch``, see capa/native.py) against the
pure-Python reference reader (tests/oracles/avro_reader.py): every record it takes decodes in
Python to exactly the same fields and image values (same types), every record Python rejects
falls back, a table is either taken whole or not at all, and typical plain batches are taken
whole (nothing falls back). The production single-event decoder (``decode_event``, the same
Rust reader) is checked against the same oracle here and in test_codec_roundtrip."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracles.avro_reader import _value, read_event
from test_codec_roundtrip import INT64, MAX_TS_US, MIN_TS_US, NAMES, TEXT, events, kinds

from capa.avro_writer import _long
from capa.codec import decode_single_object, encode_single_object, schema_fingerprint
from capa.errors import DecodeError
from capa.events import ChangeEvent, Column, Json, Op, SourceKind
from capa.native import decode_batch as _native

_KINDS = (SourceKind.POSTGRES, SourceKind.SQLSERVER, SourceKind.CRM)
_UPSERTS = (Op.READ, Op.INSERT, Op.UPDATE)
FP = schema_fingerprint()
FAST = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

Batch = tuple[list[tuple[Any, ...]], list[int]]


def native() -> Callable[..., Batch]:
    assert _native is not None, "capa_native missing: run scripts/setup.sh beam"
    return _native


def decode(values: Sequence[bytes | None]) -> Batch:
    return native()(list(values), FP)


# --- the oracle ----------------------------------------------------------------------------


def reference_decode(value: bytes) -> ChangeEvent:
    """The pure-Python reference reader behind the single-object header."""
    if len(value) < 10 or value[:2] != b"\xc3\x01" or value[2:10] != FP:
        raise DecodeError("not single-object framed with change_event.v1's fingerprint")
    return read_event(value[10:])


def python_decode(value: bytes | None) -> ChangeEvent | None:
    """The Python reader's event, or None where it fails (any exception: dead letter)."""
    if not value:
        return None
    try:
        return reference_decode(value)
    except Exception:
        return None


def image(event: ChangeEvent) -> Mapping[str, Any]:
    if event.op is Op.DELETE:
        return event.before or event.key
    assert event.after is not None
    return event.after


def same_typed(a: Any, b: Any) -> bool:
    """Same type and value; decimals also the same exponent and sign (as_tuple), datetimes
    the same tzinfo object and fold."""
    if type(a) is not type(b):
        return False
    if isinstance(a, Decimal):
        return a.as_tuple() == b.as_tuple()
    if isinstance(a, datetime) and (a.tzinfo is not b.tzinfo or a.fold != b.fold):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same_typed(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def triple(event: ChangeEvent) -> tuple[str, str, str]:
    return (event.source, event.schema, event.table)


def check(values: Sequence[bytes | None], got: Batch) -> list[ChangeEvent | None]:
    """Asserts the contract against the Python reader; returns the Python events."""
    tables, fallback = got
    py = [python_decode(v) for v in values]
    assert fallback == sorted(set(fallback))
    taken = [i for t in tables for i in t[7]]
    assert sorted(taken + fallback) == list(range(len(values)))  # each record exactly once
    assert [i for i, e in enumerate(py) if e is None and i not in fallback] == []
    seen: set[tuple[str, str, str]] = set()
    for row in tables:
        source, kind, database, schema, table, pk, columns, indices, *rest = row
        event_ids, positions, ops, commit_ts_us, images = rest
        assert (source, schema, table) not in seen
        seen.add((source, schema, table))
        assert indices == sorted(indices) and type(pk) is tuple and type(columns) is tuple
        assert len(event_ids) == len(positions) == len(ops) == len(commit_ts_us) == len(indices)
        assert all(len(column) == len(indices) for column in images.values())
        # a table is taken whole: every record of it that Python decodes is here
        assert [
            i for i, e in enumerate(py) if e and triple(e) == (source, schema, table)
        ] == indices
        images_of, chosen = [], []
        for row_no, i in enumerate(indices):
            e = py[i]
            assert e is not None
            chosen.append(e)
            assert (e.source, _KINDS.index(e.source_kind), e.database, e.schema, e.table) == (
                source, kind, database, schema, table,
            )  # fmt: skip
            assert e.primary_key == pk
            assert tuple((c.name, c.source_type) for c in e.columns) == columns
            assert (e.event_id, e.position, e.op.value) == (
                event_ids[row_no], positions[row_no], ops[row_no],
            )  # fmt: skip
            assert same_typed(e.commit_ts_us, commit_ts_us[row_no])
            img = image(e)
            images_of.append(img)
            assert set(img) <= set(images)
            for name, column in images.items():
                assert same_typed(img.get(name), column[row_no]), (name, img, column[row_no])
        assert list(images) == list(dict.fromkeys(n for img in images_of for n in img))
        assert_plain(chosen)
    return py


def holds_key(held: Mapping[str, Any], key: Mapping[str, Any]) -> bool:
    return all(n in held and same_typed(held[n], v) and held[n] == v for n, v in key.items())


def assert_plain(chosen: Sequence[ChangeEvent]) -> None:
    """The eligibility rules, on Python events (soundness: whatever is taken obeys them)."""
    first = chosen[0]
    assert first.primary_key
    for e in chosen:
        assert (e.primary_key, e.columns, e.source_kind, e.database) == (
            first.primary_key, first.columns, first.source_kind, first.database,
        )  # fmt: skip
        assert e.op is not Op.TRUNCATE and not e.unchanged and e.event_id
        assert sorted(e.key) == sorted(e.primary_key)
        if e.op in _UPSERTS:
            assert e.after and holds_key(e.after, e.key)
            if e.op is Op.UPDATE and e.before and all(n in e.before for n in e.primary_key):
                assert holds_key(e.before, e.key)
        elif e.before:
            assert holds_key(e.before, e.key)


# --- strategies ------------------------------------------------------------------------------

TRIPLES = [("f2", "public", "orders"), ("f2", "public", "items"), ("crm", "dbo", "orders")]


@st.composite
def mixed_batches(draw: st.DrawFn) -> list[ChangeEvent]:
    """Arbitrary events (any op, TOAST, null images...) spread over a few tables."""
    batch = draw(st.lists(events(), min_size=1, max_size=6))
    out = []
    for e in batch:
        source, schema, table = draw(st.sampled_from(TRIPLES))
        out.append(dataclasses.replace(e, source=source, schema=schema, table=table))
    return out


@st.composite
def table_shapes(draw: st.DrawFn) -> dict[str, Any]:
    columns = draw(st.dictionaries(NAMES, kinds(), min_size=1, max_size=6))
    names = sorted(columns)
    pk = tuple(draw(st.lists(st.sampled_from(names), unique=True, min_size=1, max_size=2)))
    described = draw(st.booleans())
    return {
        "columns": columns,
        "pk": pk,
        "described": tuple(Column(n, draw(TEXT)) for n in names) if described else (),
        "kind": draw(st.sampled_from(list(SourceKind))),
        "database": draw(st.one_of(st.none(), TEXT)),
    }


@st.composite
def plain_batches(draw: st.DrawFn) -> list[ChangeEvent]:
    """Typical plain events: upserts holding their key, deletes, updates with a before image."""
    shapes = [draw(table_shapes()) for _ in range(draw(st.integers(1, 3)))]
    out = []
    for seq in range(draw(st.integers(1, 8))):
        t = draw(st.integers(0, len(shapes) - 1))
        shape, (source, schema, table) = shapes[t], TRIPLES[t]
        columns: dict[str, st.SearchStrategy[Any]] = shape["columns"]
        key = {n: draw(columns[n]) for n in shape["pk"]}

        def row(
            strict: bool,
            columns: dict[str, st.SearchStrategy[Any]] = columns,
            key: dict[str, Any] = key,
        ) -> dict[str, Any]:
            values = {n: draw(st.one_of(st.none(), s)) for n, s in columns.items()}
            if not strict:  # some columns absent
                values = {n: v for n, v in values.items() if draw(st.booleans())}
            return {**values, **key}

        op = draw(st.sampled_from([Op.READ, Op.INSERT, Op.UPDATE, Op.DELETE]))
        before: dict[str, Any] | None = None
        after: dict[str, Any] | None = None
        shape_of_before = draw(st.sampled_from(["null", "empty", "row"]))
        if op is not Op.DELETE:
            after = row(draw(st.booleans()))
        if op in (Op.DELETE, Op.UPDATE) and shape_of_before != "null":
            before = {} if shape_of_before == "empty" else row(op is Op.DELETE)
            if op is Op.UPDATE:  # a partial before may lack key columns (it is no key move)
                before = {n: v for n, v in before.items() if n not in key or draw(st.booleans())}
        out.append(
            ChangeEvent(
                source,
                shape["kind"],
                shape["database"],
                schema,
                table,
                op,
                position=f"{seq:08d}",
                commit_ts_us=draw(st.one_of(st.none(), INT64)),
                primary_key=shape["pk"],
                key=key,
                before=before,
                after=after,
                columns=shape["described"],
            )
        )
    return out


def mutate(body: bytearray, data: st.DataObject) -> bytearray:
    mutation = data.draw(st.sampled_from(["flip", "cut", "extend", "magic", "fingerprint"]))
    if mutation == "flip":
        index = data.draw(st.integers(10, len(body) - 1))
        body[index] = data.draw(st.integers(0, 255))
    elif mutation == "cut":
        del body[data.draw(st.integers(0, len(body) - 1)) :]
    elif mutation == "extend":
        body += data.draw(st.binary(min_size=1, max_size=8))
    elif mutation == "magic":
        body[data.draw(st.integers(0, 1))] ^= data.draw(st.integers(1, 255))
    else:
        body[data.draw(st.integers(2, 9))] ^= data.draw(st.integers(1, 255))
    return body


# --- properties ------------------------------------------------------------------------------


@FAST
@given(plain_batches())
def test_plain_batches_are_taken_whole(batch: list[ChangeEvent]) -> None:
    values = [encode_single_object(e) for e in batch]
    tables, fallback = decode(values)
    assert fallback == []
    assert [t[:5] for t in tables] == list(
        dict.fromkeys(
            (e.source, _KINDS.index(e.source_kind), e.database, e.schema, e.table) for e in batch
        )
    )
    check(values, (tables, fallback))


@FAST
@given(mixed_batches())
def test_mixed_batches_match_the_python_reader(batch: list[ChangeEvent]) -> None:
    values: list[bytes | None] = [encode_single_object(e) for e in batch]
    check(values, decode(values))


@FAST
@given(plain_batches(), st.data())
def test_corrupted_records_fall_back_or_decode_as_python_does(
    batch: list[ChangeEvent], data: st.DataObject
) -> None:
    values: list[bytes | None] = [encode_single_object(e) for e in batch]
    indices = st.integers(0, len(values) - 1)
    for i in data.draw(st.lists(indices, unique=True, min_size=1, max_size=2)):
        value = values[i]
        assert value is not None
        values[i] = bytes(mutate(bytearray(value), data))
    check(values, decode(values))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.binary(max_size=60)), max_size=4))
def test_random_bytes_fall_back(values: list[bytes | None]) -> None:
    framed = [b"\xc3\x01" + FP + v if v and v[0] & 1 else v for v in values]
    tables, fallback = decode(framed)
    check(framed, (tables, fallback))


# --- hand-written cases: one per rule --------------------------------------------------------


def ev(
    op: Op = Op.INSERT,
    k: Any = 1,
    *,
    table: str = "orders",
    key: Mapping[str, Any] | None = None,
    before: Mapping[str, Any] | None = None,
    after: Any = "row",
    pk: tuple[str, ...] = ("id",),
    **changes: Any,
) -> ChangeEvent:
    key = {"id": k} if key is None else key
    if after == "row":
        after = None if op is Op.DELETE else {**key, "qty": 3, "name": f"n{k}", "price": 0.5}
    e = ChangeEvent(
        "f2", SourceKind.POSTGRES, "db", "public", table, op, repr(k), 7, pk, key, before, after
    )
    return dataclasses.replace(e, **changes) if changes else e


def split(batch: Sequence[ChangeEvent | bytes | None]) -> Batch:
    values = [v if v is None or isinstance(v, bytes) else encode_single_object(v) for v in batch]
    got = decode(values)
    check(values, got)
    return got


def taken(got: Batch) -> dict[str, list[int]]:
    return {t[4]: t[7] for t in got[0]}


def assert_orders_fall_back(variant: ChangeEvent | bytes) -> None:
    """The variant poisons its table ("orders"), not the other one ("items")."""
    got = split([ev(k=1), ev(k=2, table="items"), variant, ev(k=3)])
    assert taken(got) == {"items": [1]} and got[1] == [0, 2, 3]


def without_event_id(e: ChangeEvent) -> ChangeEvent:
    object.__setattr__(e, "event_id", "")  # the constructor would compute one
    return e


@pytest.mark.parametrize(
    "variant",
    [
        without_event_id(ev(k=5)),
        ev(Op.TRUNCATE, key={}, pk=(), after=None),
        ev(k=5, unchanged=("name",)),
        ev(k=5, pk=(), key={}),
        ev(k=5, pk=("id", "qty"), key={"id": 5, "qty": 3}),  # another primary key
        ev(k=5, columns=(Column("id", "int8"),)),  # another columns section
        ev(k=5, database="other"),
        ev(k=5, source_kind=SourceKind.SQLSERVER),
        ev(k=5, key={"id": 5, "qty": 3}),  # a key column outside the primary key
        ev(k=5, key={}),
        ev(k=5, after=None),
        ev(k=5, after={}),
        ev(k=5, after={"qty": 1}),  # the key is not in after
        ev(k=5, after={"id": 6}),  # another key value in after
        ev(k=5, after={"id": True}, key={"id": 1}),  # same value, another type
        ev(k=5, after={"id": 5.0}, key={"id": 5}),
        ev(Op.UPDATE, 5, before={"id": 4, "qty": 1}),  # a primary-key move
        ev(Op.DELETE, 5, before={"qty": 1}),  # before without the key
        ev(Op.DELETE, 5, before={"id": 4}),
        ev(k=float("nan"), after={"id": float("nan")}),  # NaN is never equal
        ev(k=(1.0, float("nan"))),  # nor inside an array (byte-identical encodings)
    ],
    ids=lambda v: f"{v.op.value}:{v.primary_key}:{dict(v.key)}:{v.after}:{v.before}",
)
def test_an_ineligible_record_sends_its_whole_table_to_python(variant: ChangeEvent) -> None:
    assert_orders_fall_back(variant)


def patched(e: ChangeEvent, old: bytes, new: bytes) -> bytes:
    value = encode_single_object(e)
    assert value.count(old) == 1
    return value.replace(old, new)


def test_a_repeated_key_name_is_ineligible_though_python_decodes_it() -> None:
    dup = patched(ev(k=5, key={"id": 5, "qq": 5}, after={"id": 5}), b"\x04qq", b"\x04id")
    assert reference_decode(dup).key == {"id": 5} == decode_single_object(dup).key
    assert_orders_fall_back(dup)


def test_a_long_past_64_bits_falls_back_with_its_table() -> None:
    huge = patched(ev(k=5, after={"id": 5, "big": 0}), b"\x06big\x04\x00", b"\x06big\x04" + b"\xff" * 9 + b"\x7f")  # fmt: skip
    assert reference_decode(huge).after == {"id": 5, "big": -(1 << 69)}  # Python: a big int
    with pytest.raises(DecodeError, match="past the 64-bit range"):  # production: no such long
        decode_single_object(huge)
    assert_orders_fall_back(huge)


MALFORMED = {  # (old bytes, new bytes, the record's table is known when it fails)
    "boolean byte 2": (b"\x02f\x02\x01", b"\x02f\x02\x02", True),
    "union branch 28": (b"\x02f\x02\x01", b"\x02f\x1c\x01", True),
    "union branch as 2-byte varint": (b"\x02n\x04\x06", b"\x02n\x84\x00\x06", True),
    "invalid UTF-8": (b"\x02s\x08\x06abc", b"\x02s\x08\x06\xff\xfec", True),
    "UTF-8 surrogate": (b"\x02s\x08\x06abc", b"\x02s\x08\x06\xed\xa0\x80", True),
    "invalid UTF-8 name": (b"\x02s\x08\x06abc", b"\x02\xc3\x08\x06abc", True),
    "negative length": (b"\x02s\x08\x06abc", b"\x02s\x08\x03abc", True),
    "length past the end": (b"\x02s\x08\x06abc", b"\x02s\x08\xfe\x01abc", True),
    "varint of 11 bytes": (b"\x02n\x04\x06", b"\x02n\x04" + b"\x80" * 10 + b"\x06", True),
    "op 5": (b"\x0corders\x02", b"\x0corders\x0a", True),
    "op -1": (b"\x0corders\x02", b"\x0corders\x01", True),
    "commit_ts branch 2": (b"\x025\x02\x0e", b"\x025\x04\x0e", True),
    "after branch 2": (b"\x00\x02\x08\x04id", b"\x00\x04\x08\x04id", True),
    "source_kind 3": (b"\x04f2\x00\x00\x02\x04db", b"\x04f2\x06\x00\x02\x04db", False),
    "database branch 2": (b"\x04f2\x00\x00\x02\x04db", b"\x04f2\x00\x00\x04\x04db", False),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_what_python_rejects_falls_back(name: str) -> None:
    old, new, known = MALFORMED[name]
    after = {"id": 5, "f": True, "n": 3, "s": "abc"}
    value = patched(ev(k=5, after=after), old, new)
    with pytest.raises(DecodeError):
        reference_decode(value)
    with pytest.raises(DecodeError, match=r"^not a canonical Avro change event: "):
        decode_single_object(value)
    if known:
        assert_orders_fall_back(value)
    else:
        got = split([ev(k=1), ev(k=2, table="items"), value, ev(k=3)])
        assert taken(got) == {"orders": [0, 3], "items": [1]} and got[1] == [2]


def test_a_record_failing_after_its_table_name_poisons_its_table() -> None:
    assert_orders_fall_back(encode_single_object(ev(k=5)) + b"\x00")  # bytes left over


@pytest.mark.parametrize(
    "bad",
    [None, b"", b"\xc3\x01", b"\xc3\x01" + FP, b"\xc3\x02" + FP + b"\x02", b"\x00\x00\x00\x00\x07"],
)
def test_unframed_records_fall_back_alone(bad: bytes | None) -> None:
    got = split([ev(k=1), bad, ev(k=2)])
    assert taken(got) == {"orders": [0, 2]} and got[1] == [1]


def test_another_fingerprint_falls_back_alone() -> None:
    value = encode_single_object(ev(k=5))
    other = value[:2] + bytes(8) + value[10:]
    got = split([ev(k=1), other])
    assert taken(got) == {"orders": [0]} and got[1] == [1]


def test_a_wrong_schema_version_falls_back() -> None:
    value = encode_single_object(ev(k=5))
    assert value[10] == 2  # zig-zag 1
    got = split([value[:10] + b"\x04" + value[11:], ev(k=1)])
    assert got[1] == [0] and taken(got) == {"orders": [1]}


def test_images_per_op_and_absent_columns_are_none() -> None:
    batch = [
        ev(Op.READ, 1, after={"id": 1, "qty": 2}),
        ev(Op.UPDATE, 1, before={"qty": 2}, after={"id": 1, "name": "x"}),  # partial before
        ev(Op.DELETE, 2, before={"id": 2, "qty": 9, "extra": b"\x00"}),
        ev(Op.DELETE, 3),  # no before: the key is the image
        ev(Op.DELETE, 4, before={}),
        ev(Op.UPDATE, 5, before={"id": 5}, after={"id": 5, "flag": False}),
    ]
    (table,), fallback = split(batch)
    assert fallback == [] and table[10] == ["r", "u", "d", "d", "d", "u"]
    assert table[12] == {
        "id": [1, 1, 2, 3, 4, 5],
        "qty": [2, None, 9, None, None, None],
        "name": [None, "x", None, None, None, None],
        "extra": [None, None, b"\x00", None, None, None],
        "flag": [None] * 5 + [False],
    }
    assert table[11] == [7] * 6 and table[5] == ("id",) and table[6] == ()


def test_a_composite_key_partly_in_before_is_no_key_move() -> None:
    pk = ("a", "b")
    batch = [
        ev(Op.UPDATE, 1, pk=pk, key={"a": 1, "b": "x"}, before={"a": 2},
           after={"a": 1, "b": "x", "v": 0.0}),
        ev(Op.DELETE, 2, pk=pk, key={"a": 2, "b": "y"}, columns=()),
    ]  # fmt: skip
    (table,), fallback = split(batch)
    assert fallback == [] and table[12] == {"a": [1, 2], "b": ["x", "y"], "v": [0.0, None]}


def test_negative_zero_key_matches_zero() -> None:
    (table,), fallback = split([ev(k=0.0, after={"id": -0.0})])
    assert fallback == [] and repr(table[12]["id"][0]) == "-0.0"


def test_a_repeated_name_in_an_image_keeps_the_last_value() -> None:
    value = patched(ev(k=5, after={"id": 5, "x1": 1, "qq": 2}), b"\x04qq", b"\x04x1")
    assert reference_decode(value).after == {"id": 5, "x1": 2} == decode_single_object(value).after
    (table,), fallback = split([value])
    assert fallback == [] and table[12] == {"id": [5], "x1": [2]}


RARE = {
    "d": Decimal("-12345678901234567890.0123456789"),
    "ts": datetime(2024, 2, 29, 13, 14, 15, 123456),
    "tstz": datetime(2024, 2, 29, 11, 14, 15, 123456, tzinfo=UTC),
    "dt": date(999, 1, 2),
    "t": time(23, 59, 59, 999999),
    "u": uuid.UUID(int=7),
    "j": Json('{"k": 1}'),
    "a": (1, None, (2.5, "x"), Decimal("1.5")),
    "b": b"\x00\xff",
    "s": "grüße",
    "f": True,
    "n": None,
    "big": -(1 << 63),
}


def test_every_value_kind_keeps_its_python_type() -> None:
    key = {"id": RARE["d"], "k2": RARE["u"]}
    batch = [
        ev(pk=("id", "k2"), key=key, after={**key, **RARE}),
        ev(Op.DELETE, pk=("id", "k2"), key=key),
    ]
    (table,), fallback = split(batch)
    assert fallback == []
    for name, value in RARE.items():
        assert same_typed(table[12][name][0], value), name


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\x14" + _long(86_400_000_000), "ValueError: hour must be in 0..23"),
        (b"\x14" + _long(-1), "ValueError: hour must be in 0..23"),
        (b"\x16" + _long(3) + b"xyz", "ValueError: badly formed hexadecimal UUID string"),
        (b"\x1a\x02\x1e\x00", "row value union branch byte 30 is not in change_event.v1"),
    ],
    ids=["time 24:00", "time -1 us", "uuid xyz", "array of branch 30"],
)
def test_rare_values_python_rejects_fall_back_with_their_table(raw: bytes, why: str) -> None:
    value = with_raw(ev(k=5, after={"id": 5, "v": _slot(0)}, table="items"), {_slot(0): raw})
    assert python_decode(value) is None
    with pytest.raises(DecodeError, match=f"^not a canonical Avro change event: {why}$"):
        decode_single_object(value)
    tables, fallback = decode([encode_single_object(ev(k=1)), value])
    assert [t[4] for t in tables] == ["orders"] and fallback == [1]


def test_any_iterable_and_non_bytes_items() -> None:
    value = encode_single_object(ev(k=1))
    tables, fallback = native()(iter([value, bytearray(value), 3, "x"]), FP)
    assert [t[7] for t in tables] == [[0]] and fallback == [1, 2, 3]
    assert native()((), FP) == ([], [])


def test_a_wrong_fingerprint_argument_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="8 bytes"):
        native()([], b"\x00")


def test_the_bench_shape_is_taken() -> None:
    from bench.bench_native_decode import bench_events

    for shape in ("plain", "typed"):
        values = [encode_single_object(e) for e in bench_events(shape, 50)]
        (table,), fallback = split(values)
        assert fallback == [] and len(table[7]) == 50


# --- typed values (Decimal, Timestamp, TimestampTz, Date): built natively ---------------------
# Encodings written byte by byte (any unscaled bytes, any scale, any int64), so the extremes the
# writer never produces are covered too; each is compared value-and-type (as_tuple, tzinfo
# identity) with what the Python reader gives, or must fall back where the reader raises.

_EPOCH_NAIVE = datetime(1970, 1, 1)
_DAY_US = 86_400_000_000
_I64 = (-(1 << 63), (1 << 63) - 1)
_I128 = (-(1 << 127), (1 << 127) - 1)
_CIVIL_EDGES = [
    date(1, 1, 1), date(1, 1, 2), date(1, 3, 1), date(4, 2, 29), date(100, 3, 1),
    date(400, 2, 29), date(1600, 2, 29), date(1899, 12, 31), date(1900, 2, 28),
    date(1900, 3, 1), date(1969, 12, 31), date(1970, 1, 1), date(2000, 2, 29),
    date(2000, 3, 1), date(2024, 2, 29), date(2100, 2, 28), date(2100, 3, 1),
    date(9999, 2, 28), date(9999, 12, 31),
]  # fmt: skip
_DAY_EDGES = [(d - _EPOCH_NAIVE.date()).days for d in _CIVIL_EDGES]
_US_EDGES = [d * _DAY_US for d in _DAY_EDGES] + [(_DAY_EDGES[-1] + 1) * _DAY_US, *_I64]


def _clamped(n: int) -> int:
    return min(max(n, _I64[0]), _I64[1])


def _near(edges: list[int], spread: st.SearchStrategy[int]) -> st.SearchStrategy[int]:
    return st.builds(lambda e, d: _clamped(e + d), st.sampled_from(edges), spread)


MICROS = st.one_of(
    INT64,
    st.integers(MIN_TS_US, MAX_TS_US),
    _near(_US_EDGES, st.integers(-3, 3)),
    _near(_US_EDGES, st.sampled_from([-_DAY_US, -1_000_000, 999_999, 1_000_000, _DAY_US - 1])),
)
DAYS = st.one_of(INT64, st.integers(-720_000, 2_940_000), _near(_DAY_EDGES, st.integers(-2, 2)))
# decimal.MAX_EMAX, MIN_ETINY and i64 edges: where Decimal(...) starts to raise InvalidOperation
SCALES = st.one_of(
    st.integers(-40, 40),
    INT64,
    _near([0, *_I64, 10**18, -(10**18), 999_999_999_999_999_999, -999_999_999_999_999_999,
           1_999_999_999_999_999_997, -1_999_999_999_999_999_997], st.integers(-45, 45)),
)  # fmt: skip


def _signed(n: int, pad: int = 0) -> bytes:
    """Two's complement big-endian, minimal (at least 1 byte) plus ``pad`` sign bytes."""
    size = max(1, (n.bit_length() + 8) // 8) + pad
    return n.to_bytes(size, "big", signed=True)


UNSCALED = st.one_of(
    st.binary(max_size=18),  # empty, redundant sign bytes, and past 16 bytes (a Python int)
    st.builds(_signed, st.integers(*_I128), st.integers(0, 2)),
    st.builds(
        _signed,
        st.sampled_from([0, 1, -1, 2**63, -(2**63) - 1, 10**38, -(10**38), *_I128]),
        st.integers(0, 2),
    ),
)


def _typed_raw(kind: str, payload: Any) -> bytes:
    """The row-value encoding (union branch byte + payload) of one typed value."""
    if kind == "decimal":
        unscaled, scale = payload
        return b"\x0c" + _long(len(unscaled)) + unscaled + _long(scale)
    branch = {"timestamp": b"\x0e", "timestamptz": b"\x10", "date": b"\x12", "time": b"\x14"}
    return branch[kind] + _long(payload)


TYPED_RAW = st.one_of(
    st.tuples(UNSCALED, SCALES).map(lambda p: _typed_raw("decimal", p)),
    MICROS.map(lambda n: _typed_raw("timestamp", n)),
    MICROS.map(lambda n: _typed_raw("timestamptz", n)),
    DAYS.map(lambda n: _typed_raw("date", n)),
    MICROS.map(lambda n: _typed_raw("time", n)),
    st.integers(-2, 86_400_000_001).map(lambda n: _typed_raw("time", n)),
)


def _slot(i: int) -> str:
    return f"\x00slot{i}\x00"  # a placeholder string, replaced by a raw encoding


def with_raw(event: ChangeEvent, raws: Mapping[str, bytes]) -> bytes:
    """``event`` framed, each placeholder ``raws[name]`` replaced by its raw encoding."""
    value = encode_single_object(event)
    for slot, raw in raws.items():
        encoded = b"\x08" + _long(len(slot.encode())) + slot.encode()
        assert encoded in value
        value = value.replace(encoded, raw)
    return value


@st.composite
def typed_records(draw: st.DrawFn) -> list[bytes]:
    """Records of two tables holding typed encodings (also as the key), some of them values
    the reader rejects (then the record and its table fall back)."""
    out = []
    for seq in range(draw(st.integers(1, 6))):
        raws = {_slot(i): draw(TYPED_RAW) for i in range(draw(st.integers(1, 4)))}
        slots = list(raws)
        typed_key = draw(st.booleans())
        key = {"id": slots[0] if typed_key else seq}
        after = {f"c{i}": slot for i, slot in enumerate(slots)} | key
        op = draw(st.sampled_from([Op.INSERT, Op.UPDATE, Op.DELETE]))
        table = draw(st.sampled_from(["orders", "items"]))
        if op is Op.DELETE:
            e = ev(op, table=table, key=key, before=after)
        else:
            e = ev(op, table=table, key=key, after=after)
        out.append(with_raw(e, raws))
    return out


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(typed_records())
def test_typed_values_match_the_python_reader(values: list[bytes]) -> None:
    got = decode(values)
    py = check(values, got)  # value-and-type equal, or fallen back where Python rejects
    assert [i for i, e in enumerate(py) if e is None] == [
        i for i in got[1] if py[i] is None
    ]  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(TYPED_RAW)
def test_a_typed_value_is_built_natively_exactly_as_python_does(raw: bytes) -> None:
    """One value, compared directly with the reference ``_value`` (its result or its error),
    in a batch and through ``decode_event``."""
    e = ev(k=5, after={"id": 5, "v": _slot(0)})
    start = encode_single_object(e).index(b"\x08" + _long(len(_slot(0))) + _slot(0).encode())
    value = with_raw(e, {_slot(0): raw})
    tables, fallback = decode([value])
    try:
        expected, end = _value(value, start)
    except Exception:  # OverflowError, decimal.InvalidOperation...: the record falls back
        assert (tables, fallback) == ([], [0])
        with pytest.raises(DecodeError):
            decode_single_object(value)
        return
    assert end == start + len(raw) and fallback == []
    for got in (tables[0][12]["v"][0], decode_single_object(value).after["v"]):  # type: ignore[index]
        assert same_typed(got, expected) and repr(got) == repr(expected), (raw, got, expected)


DECIMALS = [
    Decimal("0"), Decimal("-0"), Decimal("0.00"), Decimal("-0.00"), Decimal("0E+5"),
    Decimal("1.50"), Decimal("1.5"), Decimal("-1.5"), Decimal("1E+3"), Decimal("-1E-30"),
    Decimal("99999999999999999999999999999999999999"), Decimal("-1e-40"),
    Decimal(2**127 - 1), Decimal(-(2**127)), Decimal(2**127), Decimal("-12345678901234567890.0123456789"),
]  # fmt: skip
DATETIMES = [
    datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59, 999999), datetime(1969, 12, 31, 23, 59, 59, 999999),
    datetime(1970, 1, 1), datetime(2000, 2, 29, 12), datetime(1900, 3, 1), datetime(2024, 2, 29, 23, 59, 59, 1),
]  # fmt: skip


@pytest.mark.parametrize(
    "value",
    [
        *DECIMALS,
        *DATETIMES,
        *(d.replace(tzinfo=UTC) for d in DATETIMES),
        *_CIVIL_EDGES,
    ],
    ids=repr,
)
def test_typed_values_from_the_writer(value: Any) -> None:
    """What the writer gives (a negative zero comes back as zero, like in Python)."""
    e = ev(k=5, after={"id": 5, "v": value})
    (table,), fallback = split([e])
    expected = reference_decode(encode_single_object(e)).after
    assert fallback == [] and expected is not None
    got = table[12]["v"][0]
    assert same_typed(got, expected["v"]) and repr(got) == repr(expected["v"])
    if isinstance(value, datetime):
        assert got == value and got.tzinfo is value.tzinfo
    if isinstance(value, Decimal):
        assert got == value


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (_typed_raw("timestamp", MAX_TS_US + 1), "year 10000"),
        (_typed_raw("timestamptz", MIN_TS_US - 1), "year 0"),
        (_typed_raw("timestamptz", _I64[1]), "far past 9999"),
        (_typed_raw("date", 2_932_897), "10000-01-01"),
        (_typed_raw("date", -719_163), "0000-12-31"),
        (_typed_raw("date", _I64[0]), "timedelta overflow"),
        (_typed_raw("decimal", (b"\x01", -(10**18))), "exponent past MAX_EMAX"),
        (_typed_raw("decimal", (b"", _I64[0])), "exponent 2**63"),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_typed_values_python_rejects_fall_back_with_their_table(raw: bytes, why: str) -> None:
    value = with_raw(ev(k=5, after={"id": 5, "v": _slot(0)}), {_slot(0): raw})
    assert python_decode(value) is None, why
    assert_orders_fall_back(value)


@pytest.mark.parametrize(
    "unscaled",
    [
        _signed(_I128[1]),  # 16 bytes: the longest built without a Python int
        _I128[0].to_bytes(16, "big", signed=True),
        _signed(_I128[0]),  # the writer's size: 17 bytes
        b"\xff" * 16,
        b"\x00" * 16,
        _signed(_I128[1], pad=1),  # 17 bytes (a redundant sign byte)
        _signed(_I128[1] + 1),
        _signed(-(10**50)),
    ],
)
def test_decimals_past_16_bytes_are_built_natively(unscaled: bytes) -> None:
    raw = _typed_raw("decimal", (unscaled, 3))
    value = with_raw(ev(k=5, after={"id": 5, "v": _slot(0)}), {_slot(0): raw})
    (table,), fallback = decode([value])
    expected = Decimal(f"{int.from_bytes(unscaled, 'big', signed=True)}E-3")
    assert fallback == [] and same_typed(table[12]["v"][0], expected)
    assert same_typed(decode_single_object(value).after["v"], expected)  # type: ignore[index]


def test_without_the_extension_capa_encodes_and_decoding_says_how_to_build_it() -> None:
    """The extension is required to decode (no Python fallback); environments that never decode
    (Spark, Airflow) import capa.codec and encode without it."""
    code = (
        "import sys; sys.modules['capa_native'] = None\n"  # as if not installed
        "from capa.codec import decode_avro, encode_avro\n"
        "from capa.events import ChangeEvent, Op, SourceKind\n"
        "e = ChangeEvent('f2', SourceKind.POSTGRES, None, 's', 't', Op.INSERT, '1', None, (), {}, None, {'x': 1})\n"
        "body = encode_avro(e)\n"
        "decode_avro(body)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "ImportError: capa_native (native/, Rust) is not installed" in done.stderr
    assert "scripts/setup.sh beam" in done.stderr
