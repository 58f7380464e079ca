"""cdc mode: the exact rows and pseudo-columns the BigQuery adapter sends, replayed through a
local reference of BigQuery's documented CDC semantics, equal the sequential replica.

``bigquery_apply`` is written from BigQuery's documentation, independently of capa's apply
code: rows carry ``_CHANGE_TYPE`` (UPSERT or DELETE) and ``_CHANGE_SEQUENCE_NUMBER``; per
primary key the row with the greatest sequence number wins (sections compared as integers;
on a tie the later write wins); UPSERT replaces the whole row, DELETE removes it. The
reference is deliberately strict: it forgets a deleted key, so an older UPSERT arriving
after a DELETE would resurrect the row (the adapter must never rely on BigQuery
remembering deletes).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_apply_cases import (
    event,
    full_row,
    histories,
    normalise,
    sequential_replica,
    shuffled_batches,
)

from capa.apply import plan_table
from capa.events import ChangeEvent, Op
from capa.warehouse.base import META_POSITION
from capa.warehouse.bigquery.cdc import history_need, replica_rows
from capa.warehouse.bigquery.changelog import changelog_rows
from capa.warehouse.bigquery.write_api import (
    CHANGE_SEQUENCE_NUMBER,
    CHANGE_TYPE,
    Field,
    encode_rows,
    row_descriptor,
)

COLUMNS = ("id", "name", "amount", "doc")
NOW = datetime(2026, 12, 7, tzinfo=UTC)
_SECTION = re.compile(r"^[0-9A-Fa-f]{1,16}$")


def bigquery_order(csn: str) -> tuple[int, ...]:
    sections = csn.split("/")
    assert 1 <= len(sections) <= 4 and all(_SECTION.match(s) for s in sections), csn
    return tuple(int(s, 16) for s in sections)


def check_documented_rules(row: dict[str, Any], key: str = "id") -> None:
    assert row[CHANGE_TYPE] in ("UPSERT", "DELETE")
    bigquery_order(row[CHANGE_SEQUENCE_NUMBER])
    assert row.get(key) is not None  # the primary key is always present


def bigquery_apply(rows: list[dict[str, Any]], key: str = "id") -> dict[Any, dict[str, Any]]:
    """The table BigQuery holds after applying CDC ``rows`` (primary key column ``key``)."""
    table: dict[Any, tuple[tuple[int, ...], dict[str, Any]]] = {}
    for row in rows:
        check_documented_rules(row, key)
        order = bigquery_order(row[CHANGE_SEQUENCE_NUMBER])
        current = table.get(row[key])
        if current is not None and current[0] > order:
            continue
        if row[CHANGE_TYPE] == "DELETE":
            table.pop(row[key], None)
        else:
            table[row[key]] = (order, row)
    return {k: row for k, (_, row) in table.items()}


def send(batches: list[list[ChangeEvent]]) -> list[dict[str, Any]]:
    """What the adapter does per batch, with the changelog table as a list."""
    changelog: list[dict[str, Any]] = []
    sent: list[dict[str, Any]] = []
    watermark = None
    for batch in batches:
        plan = plan_table(batch, watermark)
        changelog += changelog_rows(plan, COLUMNS, NOW)
        need = history_need(plan)
        history = [
            r
            for r in changelog
            if (r.get("id"),) in need.keys
            or (need.truncate_position is not None and r[META_POSITION] < need.truncate_position)
        ]
        sent += replica_rows(plan, history, COLUMNS, NOW, primary_key=("id",))
        watermark = plan.truncate_position or watermark
    return sent


@settings(max_examples=150, deadline=None)
@given(histories(toast=True), st.integers(0, 10**6))
def test_in_order_delivery_with_toast_equals_the_source(events, seed) -> None:
    batches = shuffled_batches(events, seed, shuffle=False)
    replica = bigquery_apply(send(batches))
    assert normalise(list(replica.values())) == sequential_replica(events)


@settings(max_examples=150, deadline=None)
@given(histories(), st.integers(0, 10**6))
def test_any_order_and_redelivery_equals_the_source(events, seed) -> None:
    replica = bigquery_apply(send(shuffled_batches(events, seed)))
    assert normalise(list(replica.values())) == sequential_replica(events)


def test_toast_value_comes_from_an_earlier_batch() -> None:
    first = [event(Op.INSERT, 1, 10, after=full_row(1, 1))]
    toast = [event(Op.UPDATE, 1, 12, after={"id": 1, "name": "x"}, unchanged=("doc",))]
    rows = send([first, toast])
    assert [r["doc"] for r in rows] == ["doc1", "doc1"]
    assert [r[CHANGE_TYPE] for r in rows] == ["UPSERT", "UPSERT"]


def test_truncate_sends_deletes_at_its_own_sequence_number() -> None:
    batches = [
        [
            event(Op.INSERT, 1, 10, after=full_row(1, 1)),
            event(Op.INSERT, 2, 11, after=full_row(2, 2)),
        ],
        [event(Op.TRUNCATE, None, 20), event(Op.INSERT, 2, 25, after=full_row(2, 3))],
    ]
    rows = send(batches)
    deletes = [r for r in rows if r[CHANGE_TYPE] == "DELETE"]
    assert sorted(r["id"] for r in deletes) == [1, 2]
    assert {r[CHANGE_SEQUENCE_NUMBER] for r in deletes} == {"0000000000000014/1"}
    assert set(bigquery_apply(rows)) == {2}


def test_deletes_are_tombstone_upserts() -> None:
    rows = send(
        [[event(Op.INSERT, 1, 10, after=full_row(1, 1)), event(Op.DELETE, 1, 11, before={"id": 1})]]
    )
    assert [(r[CHANGE_TYPE], r["_capa_deleted"]) for r in rows] == [("UPSERT", True)]


def test_rows_encode_to_the_declared_protobuf_fields() -> None:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fields = (
        Field("id", "INTEGER"),
        Field("amount", "NUMERIC"),
        Field("_capa_commit_ts", "TIMESTAMP"),
        Field("tags", "STRING", repeated=True),
        Field(CHANGE_TYPE, "STRING"),
        Field(CHANGE_SEQUENCE_NUMBER, "STRING"),
    )
    row = {
        "id": 7,
        "amount": __import__("decimal").Decimal("1.50"),
        "_capa_commit_ts": datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=UTC),
        "tags": ("a", None, "b"),
        CHANGE_TYPE: "UPSERT",
        CHANGE_SEQUENCE_NUMBER: "00000016cb002db0/1",
    }
    [payload] = encode_rows(fields, [row])
    file = descriptor_pb2.FileDescriptorProto(name="check.proto", package="check")
    file.message_type.add().CopyFrom(row_descriptor(fields))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    message = message_factory.GetMessageClass(pool.FindMessageTypeByName("check.CapaRow"))()
    message.ParseFromString(payload)
    assert (message.id, message.amount, message._capa_commit_ts) == (7, "1.50", 1_000_005)
    assert list(message.tags) == ["a", "b"]  # BigQuery arrays hold no NULLs
    assert getattr(message, CHANGE_TYPE) == "UPSERT"
    assert getattr(message, CHANGE_SEQUENCE_NUMBER) == "00000016cb002db0/1"
