"""A NULL or missing primary-key value is a dead letter with its reason, at every step: the
normalisers, the apply rules (``plan_table`` / ``ReplicaState``), the local warehouse's event
and column paths, the stream's batch decoder; no NULL-key row ever enters a replica, also
not on redelivery."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from test_apply_cases import event, full_row

from capa.apply import apply_isolating_failures, plan_table
from capa.codec import encode_single_object
from capa.columnar import TableColumns, applicable_tables, split_plain
from capa.errors import DecodeError
from capa.events import ChangeEvent, Op
from capa.merge_rule import ReplicaState
from capa.native import decode_batch
from capa.warehouse.local import LocalWarehouse
from connectors.crm.contract import load_contract
from connectors.crm.load import Reject, validate_record
from connectors.crm.readers import RawRecord
from connectors.datastream.normalizer import DatastreamNormalizer
from connectors.debezium.normalizer import DebeziumNormalizer
from connectors.kafka.batch_decode import BatchDecoder
from connectors.kafka.wire import ChangeEventDecoder

REPLICA = "raw.f2_public_orders"


def null_insert(lsn: int = 15) -> ChangeEvent:
    return event(Op.INSERT, None, lsn, after={**full_row(1, 5), "id": None})


def good_batch() -> list[ChangeEvent]:
    return [
        event(Op.INSERT, 1, 10, after=full_row(1, 1)),
        event(Op.INSERT, 2, 11, after=full_row(2, 2)),
        event(Op.UPDATE, 1, 12, after=full_row(1, 3)),
    ]


# --- normalisers -----------------------------------------------------------------------------


def debezium_record(key: Any, after: dict[str, Any]) -> dict[str, Any]:
    source = {"connector": "postgresql", "db": "db", "schema": "public", "table": "t"}
    value = {"op": "c", "after": after, "source": {**source, "lsn": 1, "ts_ms": 1}}
    return {"destination": "f2.public.t", "key": key, "value": value}


def test_debezium_refuses_a_null_key_value() -> None:
    normalizer = DebeziumNormalizer()
    ok = normalizer.normalize(debezium_record({"id": 1}, {"id": 1, "v": "a"}))
    assert isinstance(ok, ChangeEvent) and ok.key == {"id": 1}
    with pytest.raises(DecodeError, match=r"NULL in key column\(s\) \['id'\]"):
        normalizer.normalize(debezium_record({"id": None}, {"id": None, "v": "a"}))


def test_debezium_refuses_a_null_configured_key_value() -> None:
    normalizer = DebeziumNormalizer(primary_keys={"public.t": ["id"]})
    with pytest.raises(DecodeError, match=r"'f2.public.t'.*NULL in key column\(s\) \['id'\]"):
        normalizer.normalize(debezium_record(None, {"id": None, "v": "a"}))


def datastream_record(payload: dict[str, Any] | None, change: str = "INSERT") -> dict[str, Any]:
    meta = {
        "schema": "public",
        "table": "t",
        "is_deleted": change == "DELETE",
        "change_type": change,
        "tx_id": 1,
        "lsn": "16/CB002DB0",
        "primary_keys": ["id"],
    }
    return {
        "read_method": "postgresql-cdc",
        "source_timestamp": "2025-02-11T23:06:37.151+00:00",
        "stream_name": "projects/p/locations/l/streams/s",
        "source_metadata": meta,
        "payload": payload,
    }


def test_datastream_refuses_a_null_key_value_but_keeps_an_empty_delete() -> None:
    normalizer = DatastreamNormalizer("f2")
    assert normalizer.normalize(datastream_record({"id": 1, "v": "a"})).key == {"id": 1}
    with pytest.raises(DecodeError, match=r"insert on 'f2.public.t'.*NULL in key column"):
        normalizer.normalize(datastream_record({"id": None, "v": "a"}))
    with pytest.raises(DecodeError, match=r"delete on .*NULL in key column"):
        normalizer.normalize(datastream_record({"id": None, "v": "a"}, "DELETE"))
    kept = normalizer.normalize(datastream_record(None, "DELETE"))  # see the apply rule instead
    assert kept.op is Op.DELETE and kept.key == {}


def test_crm_rejects_a_row_without_a_key_value() -> None:
    contract = load_contract()
    fields = {"account_id": None, "name": "X", "last_modified": "2025-01-01T00:00:00Z"}
    got = validate_record(contract, RawRecord("accounts", "a.csv", 2, "raw", fields), 0)
    assert isinstance(got, Reject)
    assert "column 'account_id' is required but missing/empty" in got.reason


# --- the apply rules -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (null_insert(), r"insert on 'f2.public.orders' at position .* NULL in key column"),
        (
            dataclasses.replace(null_insert(), key={}, event_id=""),
            r"lacks the values of key column\(s\) \['id'\]",
        ),
        (event(Op.DELETE, None, 15, before={"id": None}), r"delete on .* NULL in key column"),
        (
            event(Op.UPDATE, 1, 15, after=full_row(1, 4), before={**full_row(1, 1), "id": None}),
            r"moves the row from a key with NULL values \{'id': None\}",
        ),
    ],
)
def test_plan_table_refuses_null_and_missing_key_values(bad: ChangeEvent, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        plan_table([*good_batch(), bad])
    state = ReplicaState()
    letters = apply_isolating_failures(
        lambda part: state.apply(plan_table(part)), [*good_batch(), bad]
    )
    assert [letter.event for letter in letters] == [bad]
    assert sorted(state.rows) == [(1,), (2,)]  # no None key, the rest applied


def test_keyless_tables_keep_their_own_refusal() -> None:
    keyless = dataclasses.replace(
        event(Op.INSERT, 1, 10, after=full_row(1, 1)), primary_key=(), key={}, event_id=""
    )
    with pytest.raises(DecodeError, match="has no primary key"):
        plan_table([keyless])


# --- the local warehouse: event path, column path, redelivery ----------------------------------


def test_event_path_dead_letters_only_the_null_key_event_also_on_redelivery(
    tmp_path: Path,
) -> None:
    warehouse = LocalWarehouse(tmp_path)
    batch = [*good_batch(), null_insert()]
    for _ in range(2):  # the second run is a redelivery
        letters = apply_isolating_failures(warehouse.apply, batch)
        assert [letter.event for letter in letters] == [batch[-1]]
        assert "NULL in key column(s) ['id']" in letters[0].reason
        assert sorted(r["id"] for r in warehouse.rows(REPLICA, include_deleted=True)) == [1, 2]
        assert warehouse.row_count(REPLICA + "_changelog") == 3


def test_column_path_sends_a_null_key_table_to_the_event_path(tmp_path: Path) -> None:
    batch = [*good_batch(), null_insert()]
    tables, fallback = split_plain(batch)
    assert tables == [] and fallback == [0, 1, 2, 3]
    tables, fallback = split_plain(good_batch())
    (cols,) = tables
    bad = dataclasses.replace(cols, images={**cols.images, "id": [*cols.images["id"][:-1], None]})
    assert applicable_tables([cols, bad]) == ([cols], [0, 1, 2])
    warehouse = LocalWarehouse(tmp_path)
    with pytest.raises(DecodeError, match="NULL or missing value in key column"):
        warehouse.apply_columns([bad])
    missing = dataclasses.replace(cols, images={k: v for k, v in cols.images.items() if k != "id"})
    with pytest.raises(DecodeError, match="NULL or missing value in key column"):
        warehouse.apply_columns([missing])
    assert warehouse.rows(REPLICA, include_deleted=True) == []
    warehouse.apply_columns([cols])
    assert sorted(r["id"] for r in warehouse.rows(REPLICA)) == [1, 2]


@pytest.mark.parametrize("route", ["python", "native"])
def test_the_stream_decoder_dead_letters_the_null_key_record_alone(route: str) -> None:
    native = decode_batch if route == "native" else None
    batch = [*good_batch(), null_insert(), event(Op.DELETE, None, 16, before={"id": None})]
    got = BatchDecoder(ChangeEventDecoder(), native).decode(
        [encode_single_object(e) for e in batch]
    )
    assert [i for i, _ in got.errors] == [3, 4]
    assert all("NULL in key column(s) ['id']" in reason for _, reason in got.errors)
    (table,) = got.tables  # the other records of the table still go column-wise
    assert list(table.indices) == [0, 1, 2] and None not in table.images["id"]
    assert got.events == []


def test_native_tables_with_a_null_key_are_moved_to_the_event_path() -> None:
    assert decode_batch is not None
    batch = [*good_batch(), null_insert()]
    rows, fallback = decode_batch(
        [encode_single_object(e) for e in batch], *_native_args()
    )  # the extension takes the table whole; applicable_tables sends it back
    from capa.columnar import from_native

    tables = [from_native(row) for row in rows]
    assert fallback == [] and isinstance(tables[0], TableColumns)
    assert applicable_tables(tables) == ([], [0, 1, 2, 3])


def _native_args() -> tuple[Any, ...]:
    from capa.codec import schema_fingerprint

    return (schema_fingerprint(),)


def test_normalisers_refuse_a_table_whose_raw_name_is_unusable() -> None:
    long = "t" * 240
    record = debezium_record({"id": 1}, {"id": 1, "v": "a"})
    record["value"]["source"]["table"] = long
    with pytest.raises(DecodeError, match="over the limit of 230"):
        DebeziumNormalizer().normalize(record)
    stream = datastream_record({"id": 1, "v": "a"})
    stream["source_metadata"]["table"] = long
    with pytest.raises(DecodeError, match="over the limit of 230"):
        DatastreamNormalizer("f2").normalize(stream)
