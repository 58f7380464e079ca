"""BatchDecoder: Kafka values -> plain tables column-wise, other events, dead letters; the
native decoder and the Python route must split and decode a batch identically."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from test_apply_cases import event, full_row

from capa.codec import encode_avro, encode_single_object
from capa.events import Op
from capa.native import decode_batch
from connectors.kafka.batch_decode import BatchDecoder
from connectors.kafka.wire import ChangeEventDecoder

ROUTES = {"python": None, "native": decode_batch}


@pytest.fixture(params=sorted(ROUTES))
def decoder(request: Any) -> BatchDecoder:
    return BatchDecoder(ChangeEventDecoder(), ROUTES[request.param])


def test_native_extension_is_built() -> None:
    assert decode_batch is not None, "capa_native missing: run scripts/setup.sh beam"


def test_a_mixed_batch_is_split_by_table_and_poison_is_reported(decoder) -> None:
    orders = [event(Op.INSERT, k, 10 + k, after=full_row(k, k)) for k in (1, 2, 3)]
    items = [event(Op.INSERT, k, 20 + k, after=full_row(k, k), table="items") for k in (1, 2)]
    truncate = event(Op.TRUNCATE, None, 30, table="items")
    values: list[bytes | None] = [encode_single_object(e) for e in [*orders, *items, truncate]]
    values.insert(2, b"\xc3\x01garbage")
    values.append(None)
    values.append(b"\x00" + struct.pack(">I", 7) + encode_avro(orders[0]))  # no registry here
    got = decoder.decode(values)
    (table,) = got.tables
    assert table.table == "orders" and table.indices == [0, 1, 3]
    assert table.images["name"] == ["n1", "n2", "n3"] and table.ops == ["c", "c", "c"]
    assert [i for i, _ in got.events] == [4, 5, 6]
    assert [e.op for _, e in got.events] == [Op.INSERT, Op.INSERT, Op.TRUNCATE]
    assert [i for i, _ in got.errors] == [2, 7, 8]
    assert "schema registry" in got.errors[2][1] and got.decoded == 6


def test_both_routes_agree(decoder) -> None:
    batch = [
        event(Op.INSERT, 1, 10, after=full_row(1, 1)),
        event(Op.UPDATE, 1, 11, after=full_row(1, 2), before={"id": 1}),
        event(Op.DELETE, 2, 12, before=full_row(2, 0)),
        event(Op.DELETE, 3, 13),
        event(Op.INSERT, 9, 14, after={**full_row(9, 9), "note": None, "flag": True}),
    ]
    values: list[bytes | None] = [encode_single_object(e) for e in batch]
    python = BatchDecoder(ChangeEventDecoder(), None).decode(values)
    assert decoder.decode(values) == python
    assert python.events == [] and python.tables[0].images["flag"] == [None] * 4 + [True]


def test_without_a_column_wise_warehouse_every_record_is_an_event() -> None:
    batch = [event(Op.INSERT, k, 10 + k, after=full_row(k, k)) for k in (1, 2)]
    values: list[bytes | None] = [encode_single_object(e) for e in batch] + [b"junk"]
    got = BatchDecoder(ChangeEventDecoder(), decode_batch, columns=False).decode(values)
    assert got.tables == [] and [e for _, e in got.events] == batch
    assert [i for i, _ in got.errors] == [2]
