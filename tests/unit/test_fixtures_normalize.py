"""Every file under tests/fixtures through the normalisers (Python API).

Each record must become a canonical event, a counted skip, or a dead letter with a reason;
the expected counts per file are listed here, and the real captured records are checked
field by field.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path

import pytest
from oracles.fastavro_codec import encode_avro_generic

from capa.codec import decode_avro, encode_avro, event_from_json, event_to_json
from capa.events import ChangeEvent, Json, Op, SourceKind, compute_event_id
from capa.position import pg_position
from connectors.base import READERS, DeadLetter, RawRecord, Skip, get_normalizer, normalize_one
from connectors.debezium.values import PRECISE_WITHOUT_SCALE

# file -> (events, skipped, dead letters)
EXPECTED: dict[str, tuple[int, int, int]] = {
    "datastream_postgres_avro/bytearray.avro": (1, 0, 0),
    "datastream_postgres_avro/bytearray.records.DERIVED.jsonl": (1, 0, 0),
    "datastream_postgres_avro/bytearray.writer_schema.DERIVED.json": (
        0,
        0,
        1,
    ),  # a schema, not a record
    "datastream_postgres_json_doc/cloudevent_with_datastream_pg_update.json": (1, 0, 0),
    "datastream_postgres_json_doc/datastream_pg_update_record.EXTRACTED.json": (1, 0, 0),
    "debezium_pg15_captured_here/pg_delete_replica_identity_default.json": (1, 0, 0),
    "debezium_pg15_captured_here/pg_delete_replica_identity_full.json": (1, 0, 0),
    "debezium_pg15_captured_here/pg_heartbeat.json": (0, 1, 0),
    "debezium_pg15_captured_here/pg_insert.json": (1, 0, 0),
    "debezium_pg15_captured_here/pg_insert_after_add_column.json": (1, 0, 0),
    "debezium_pg15_captured_here/pg_logical_message.json": (0, 1, 0),
    "debezium_pg15_captured_here/pg_pk_update_delete_tombstone_create.json": (2, 1, 0),
    "debezium_pg15_captured_here/pg_snapshot_read_first.json": (1, 0, 0),
    "debezium_pg15_captured_here/pg_snapshot_read_last.json": (1, 0, 0),
    "debezium_pg15_captured_here/pg_tombstone.json": (0, 1, 0),
    "debezium_pg15_captured_here/pg_truncate.json": (1, 0, 0),
    "debezium_pg15_captured_here/pg_tx_begin.json": (0, 1, 0),
    "debezium_pg15_captured_here/pg_tx_end.json": (0, 1, 0),
    "debezium_pg15_captured_here/pg_tx_two_tables_with_begin_end.json": (3, 2, 0),
    "debezium_pg15_captured_here/pg_typezoo_decimal_double.json": (1, 0, 0),
    "debezium_pg15_captured_here/pg_typezoo_decimal_string.json": (1, 0, 0),
    "debezium_pg15_captured_here/pg_typezoo_schemas_enabled_precise.json": (1, 0, 0),
    "debezium_pg15_captured_here/pg_update_decimal_double.json": (1, 0, 0),
    "debezium_pg15_captured_here/pg_update_decimal_string.json": (1, 0, 0),
    "debezium_pg15_captured_here/pg_update_replica_identity_default.json": (1, 0, 0),
    "debezium_pg15_captured_here/pg_update_replica_identity_full.json": (1, 0, 0),
    "debezium_pg15_captured_here/pg_update_schemas_enabled_precise.json": (1, 0, 0),
    "debezium_pg15_captured_here/sqlserver_example.json": (1, 0, 0),
    "debezium_pg15_captured_here/sqlserver_example_schemas_enabled.json": (1, 0, 0),
    "debezium_postgres_docs/key_customers.json.adoc": (0, 0, 1),  # trailing comma
    "debezium_postgres_docs/value_create_with_schema.json.adoc": (1, 0, 0),
    "debezium_postgres_docs/value_delete.json.adoc": (0, 0, 1),  # "schema": { ... }
    "debezium_postgres_docs/value_truncate.json.adoc": (0, 0, 1),  # "schema": { ... }
    "debezium_postgres_docs/value_update.json.adoc": (0, 0, 1),  # { ... } and trailing comma
    # the DELETE has before=null, after=null and no record key: the row is unknown
    "debezium_postgres_flink/debezium-postgres-data-replica-identity.txt": (15, 0, 1),
    "debezium_postgres_flink/debezium-postgres-data-schema-exclude.txt": (16, 0, 0),
    "debezium_sqlserver_2x_capture_doc/dbzsqlserver.debezium.dbo.customers.json-with-schema.jsonl": (
        2,
        0,
        0,
    ),
    "debezium_sqlserver_docs/key_customers.json.adoc": (0, 0, 1),  # a record key, not a value
    "debezium_sqlserver_docs/schema_change_topic_key.json.adoc": (0, 0, 1),  # a record key
    "debezium_sqlserver_docs/schema_change_topic_message.json.adoc": (0, 0, 1),  # { ... }
    "debezium_sqlserver_docs/transaction_boundary_events.json.adoc": (0, 2, 0),
    "debezium_sqlserver_docs/value_create_with_schema.json.adoc": (1, 0, 0),
    "debezium_sqlserver_docs/value_delete.json.adoc": (0, 0, 1),  # { ... } and stray "},"
    "debezium_sqlserver_docs/value_update.json.adoc": (0, 0, 1),  # { ... }
    "debezium_sqlserver_docs/value_with_transaction_block.json.adoc": (0, 0, 1),  # "..."
    "debezium_sqlserver_playground/server1.dbo.customers.avro-json.jsonl": (5, 0, 0),
}
DOC_FILES = {"SOURCE.txt", "README.md"}


def format_of(path: Path) -> str:
    if path.suffix == ".avro":
        return "datastream-avro"
    return "datastream-json" if path.parent.name.startswith("datastream") else "debezium-json"


def outcomes(path: Path, **options: object) -> list[ChangeEvent | Skip | DeadLetter]:
    fmt = format_of(path)
    normalizer = get_normalizer(fmt, **options)
    return [
        item if isinstance(item, DeadLetter) else normalize_one(normalizer, item)
        for item in READERS[fmt](path.read_bytes(), str(path))
    ]


def events(path: Path, **options: object) -> list[ChangeEvent]:
    return [o for o in outcomes(path, **options) if isinstance(o, ChangeEvent)]


def one(path: Path, **options: object) -> ChangeEvent:
    (event,) = events(path, **options)
    return event


def test_every_fixture_file_is_listed(upstream_fixtures: Path) -> None:
    found = {
        str(p.relative_to(upstream_fixtures))
        for p in upstream_fixtures.rglob("*")
        if p.is_file() and p.name not in DOC_FILES
    }
    assert found == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_file_normalises(upstream_fixtures: Path, name: str) -> None:
    results = outcomes(upstream_fixtures / name)
    counts = (
        sum(isinstance(o, ChangeEvent) for o in results),
        sum(isinstance(o, Skip) for o in results),
        sum(isinstance(o, DeadLetter) for o in results),
    )
    assert counts == EXPECTED[name]
    for outcome in results:
        if isinstance(outcome, DeadLetter):
            assert outcome.reason and outcome.raw and outcome.file.endswith(name)
        if isinstance(outcome, ChangeEvent):
            assert outcome.event_id == compute_event_id(outcome)
            assert event_from_json(event_to_json(outcome)) == outcome
            body = encode_avro(outcome)
            assert body == encode_avro_generic(outcome)
            assert decode_avro(body) == outcome


# --- captured PostgreSQL records, field by field ------------------------------------------------


def pg(shared: Path, name: str) -> Path:
    return shared / "debezium_pg15_captured_here" / name


def test_pg_insert(upstream_fixtures: Path) -> None:
    event = one(pg(upstream_fixtures, "pg_insert.json"))
    assert (event.source, event.source_kind, event.database) == ("f2", SourceKind.POSTGRES, "shop")
    assert (event.schema, event.table, event.op) == ("public", "orders", Op.INSERT)
    assert event.position == pg_position(26424584, snapshot=False) == "0000000001933508.1"
    assert event.key == {"id": 10} and event.primary_key == ("id",)
    assert event.commit_ts_us == 1795489122983002
    assert event.transaction_id == "734"
    assert event.before is None and event.after is not None
    # schemaless precise decimal: indistinguishable from text, kept as given (see values.py)
    assert event.after["amount"] == "EJo=" and event.after["payload"] == '{"x": [1, 2, 3]}'


def test_pg_insert_with_column_hints_decodes_precise_decimal(upstream_fixtures: Path) -> None:
    hints = {
        "public.orders": {"amount": "numeric(12,2)", "updated_at": "timestamptz", "payload": "json"}
    }
    event = one(pg(upstream_fixtures, "pg_insert.json"), column_types=hints)
    assert event.after is not None
    assert event.after["amount"] == Decimal("42.50")
    assert event.after["updated_at"] == datetime(2025, 6, 1, 10, tzinfo=UTC)
    assert isinstance(event.after["payload"], Json)


def test_pg_precise_decimal_without_scale_is_dead_lettered(upstream_fixtures: Path) -> None:
    (letter,) = outcomes(
        pg(upstream_fixtures, "pg_insert.json"), column_types={"orders": {"amount": "numeric"}}
    )
    assert isinstance(letter, DeadLetter)
    assert PRECISE_WITHOUT_SCALE in letter.reason and "amount" in letter.reason
    assert b'"EJo="' in letter.raw


def test_decimal_with_an_impossible_scale_is_dead_lettered() -> None:
    """Found by the fuzz test: a Connect Decimal schema whose scale no database allows used to
    escape as decimal.InvalidOperation instead of a dead letter with a reason."""
    decimal_field = {
        "type": "bytes",
        "optional": True,
        "field": "amount",
        "name": "org.apache.kafka.connect.data.Decimal",
        "parameters": {"scale": "99999999"},
    }
    value = {
        "schema": {
            "type": "struct",
            "name": "f2.public.t.Envelope",
            "fields": [
                {
                    "type": "struct",
                    "optional": True,
                    "field": "after",
                    "name": "f2.public.t.Value",
                    "fields": [{"type": "int32", "optional": False, "field": "id"}, decimal_field],
                },
            ],
        },
        "payload": {
            "op": "c",
            "after": {"id": 1, "amount": "EJo="},
            "source": {
                "connector": "postgresql",
                "db": "db",
                "schema": "public",
                "table": "t",
                "lsn": 1,
                "ts_ms": 1,
                "txId": 1,
            },
        },
    }
    record = {"destination": "f2.public.t", "key": {"id": 1}, "value": value}
    letter = normalize_one(get_normalizer("debezium-json"), RawRecord("test", 0, record, None))
    assert isinstance(letter, DeadLetter)
    assert "decimal scale 99999999" in letter.reason


def test_pg_snapshot_reads_use_snapshot_phase(upstream_fixtures: Path) -> None:
    first = one(pg(upstream_fixtures, "pg_snapshot_read_first.json"))
    last = one(pg(upstream_fixtures, "pg_snapshot_read_last.json"))
    assert first.op is Op.READ and first.position == "00000000019334a8.0"
    assert last.op is Op.READ and last.position.endswith(".0") and last.table == "order_items"


def test_pg_delete_default_replica_identity_before_holds_key(upstream_fixtures: Path) -> None:
    event = one(pg(upstream_fixtures, "pg_delete_replica_identity_default.json"))
    assert event.op is Op.DELETE and event.key == {"id": 1} and event.after is None
    assert event.before == {"id": 1, "order_id": None, "sku": None, "qty": None, "price": None}


def test_pg_update_default_replica_identity_has_no_before(upstream_fixtures: Path) -> None:
    event = one(pg(upstream_fixtures, "pg_update_replica_identity_default.json"))
    assert event.op is Op.UPDATE and event.before is None and event.key == {"id": 1}


def test_pg_pk_update_is_delete_then_create_at_one_lsn(upstream_fixtures: Path) -> None:
    results = outcomes(pg(upstream_fixtures, "pg_pk_update_delete_tombstone_create.json"))
    delete, tombstone, create = results
    assert isinstance(delete, ChangeEvent) and isinstance(create, ChangeEvent)
    assert tombstone == Skip("tombstone")
    assert (delete.op, delete.key, create.op, create.key) == (
        Op.DELETE,
        {"id": 10},
        Op.INSERT,
        {"id": 11},
    )
    assert delete.position == create.position and delete.event_id != create.event_id


def test_pg_truncate(upstream_fixtures: Path) -> None:
    event = one(pg(upstream_fixtures, "pg_truncate.json"))
    assert event.op is Op.TRUNCATE and event.key == {} and event.primary_key == ()
    assert event.table == "order_items" and event.before is None and event.after is None


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("pg_heartbeat.json", "heartbeat"),
        ("pg_logical_message.json", "message"),
        ("pg_tombstone.json", "tombstone"),
        ("pg_tx_begin.json", "transaction"),
        ("pg_tx_end.json", "transaction"),
    ],
)
def test_pg_non_change_records_are_skipped(upstream_fixtures: Path, name: str, kind: str) -> None:
    assert outcomes(pg(upstream_fixtures, name)) == [Skip(kind)]


def test_pg_decimal_modes(upstream_fixtures: Path) -> None:
    string = one(pg(upstream_fixtures, "pg_update_decimal_string.json"))
    double = one(pg(upstream_fixtures, "pg_update_decimal_double.json"))
    precise = one(pg(upstream_fixtures, "pg_update_schemas_enabled_precise.json"))
    assert string.after is not None and string.after["amount"] == "1234567890.14"  # no schema: text
    assert double.after is not None and double.after["amount"] == 1234567890.15
    assert precise.after is not None and precise.after["amount"] == Decimal("1234567890.13")
    assert precise.before is not None and precise.before["amount"] == Decimal("1234567890.12")
    assert precise.key == {"id": 2}
    hinted = one(
        pg(upstream_fixtures, "pg_update_decimal_string.json"),
        column_types={"orders": {"amount": "decimal"}},
    )
    assert hinted.after is not None and hinted.after["amount"] == Decimal("1234567890.14")


def test_pg_typezoo_with_schema_is_fully_typed(upstream_fixtures: Path) -> None:
    event = one(pg(upstream_fixtures, "pg_typezoo_schemas_enabled_precise.json"))
    row = event.after
    assert row is not None
    assert row["n_unconstrained"] == Decimal("3.14159265358979323846")
    assert row["n_38_10"] == Decimal("12345678901234567890.0123456789")
    assert str(row["n_38_10"]) == "12345678901234567890.0123456789"  # full scale kept
    assert row["m"] == Decimal("12.34")
    assert row["u"] == uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    assert row["by"] == b"\xde\xad\xbe\xef"
    assert row["dt"] == date(2024, 2, 29)
    assert row["t"] == time(13, 14, 15, 123456)
    assert row["ttz"] == "11:14:15Z"
    assert row["ts"] == datetime(2024, 2, 29, 13, 14, 15, 123456)
    assert row["tstz"] == datetime(2024, 2, 29, 11, 14, 15, 123456, tzinfo=UTC)
    assert row["iv"] == "P1DT2H3M4S"
    assert isinstance(row["j"], Json) and row["jb"] == '{"k": [1, 2]}'
    assert row["ia"] == (1, 2, 3) and row["ta"] == ("a", "b")
    assert (row["r"], row["d"], row["b"], row["ch"]) == (1.5, 2.25, True, "xy ")
    assert ("n_38_10", "decimal(38,10)") in [(c.name, c.source_type) for c in event.columns]
    line = event_to_json(event)
    assert line["after"]["tstz"] == "2024-02-29T11:14:15.123456Z"
    assert line["after"]["n_38_10"] == "12345678901234567890.0123456789"
    assert line["after"]["by"] == "3q2+7w=="


def test_pg_schemaless_typezoo_keeps_json_native_values(upstream_fixtures: Path) -> None:
    row = one(pg(upstream_fixtures, "pg_typezoo_decimal_string.json")).after
    assert row is not None
    assert row["n_38_10"] == "12345678901234567890.0123456789" and row["dt"] == 19782
    assert row["ia"] == (1, 2, 3)


def test_toast_placeholder_goes_to_unchanged(upstream_fixtures: Path) -> None:
    import json

    record = json.loads(pg(upstream_fixtures, "pg_update_replica_identity_full.json").read_text())
    record["value"]["after"]["payload"] = "__debezium_unavailable_value"
    event = get_normalizer("debezium-json").normalize(record)
    assert isinstance(event, ChangeEvent) and event.after is not None
    assert event.unchanged == ("payload",) and "payload" not in event.after
    assert decode_avro(encode_avro(event)) == event


# --- SQL Server ------------------------------------------------------------------------------


def test_sqlserver_example_with_schema(upstream_fixtures: Path) -> None:
    event = one(pg(upstream_fixtures, "sqlserver_example_schemas_enabled.json"))
    assert event.source_kind is SourceKind.SQLSERVER and (event.schema, event.table) == (
        "dbo",
        "orders",
    )
    assert event.position == "0000002d00000a480003.0000002d00000a480002.00000002"
    assert event.after is not None and event.before is not None
    assert event.after["amount"] == Decimal("43.75") and event.before["amount"] == Decimal("42.50")
    assert event.after["updated_at"] == datetime(2025, 6, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert event.after["created"] == datetime(2025, 6, 1, 12, 0, 0, 123456)  # ns truncated to µs
    assert event.key == {"id": 42}


def test_sqlserver_2x_capture_positions_order_by_commit_then_change(
    upstream_fixtures: Path,
) -> None:
    path = upstream_fixtures / "debezium_sqlserver_2x_capture_doc"
    created, updated = events(next(path.glob("*.jsonl")), primary_keys={"dbo.customers": ["id"]})
    assert (created.op, updated.op) == (Op.INSERT, Op.UPDATE)
    assert created.position == "0000002b000005570005.0000002b000005570003.00000001"
    assert created.position < updated.position
    assert created.key == updated.key == {"id": 1005}


def test_sqlserver_playground_avro_json_unions(upstream_fixtures: Path) -> None:
    path = (
        upstream_fixtures
        / "debezium_sqlserver_playground"
        / "server1.dbo.customers.avro-json.jsonl"
    )
    results = events(path, primary_keys={"customers": ["id"]})
    assert [e.op for e in results] == [Op.READ] * 4 + [Op.INSERT]
    assert results[0].after == {
        "id": 1001,
        "first_name": "Sally",
        "last_name": "Thomas",
        "email": "sally.thomas@acme.com",
    }
    assert results[0].position == "00000025000004480003.00000000000000000000.00000000"
    assert results[4].position == "00000025000005180005.00000025000005180003.00000001"
    assert results[4].commit_ts_us == 1571914677337000 and results[0].source == "server1"


def test_sqlserver_doc_create_with_quoted_serial(upstream_fixtures: Path) -> None:
    event = one(
        upstream_fixtures / "debezium_sqlserver_docs" / "value_create_with_schema.json.adoc"
    )
    assert event.source == "server1" and event.position.endswith(".00000001")


# --- Flink (Debezium 1.2, schemaless, no record keys) ------------------------------------------


def test_flink_stream_without_keys(upstream_fixtures: Path) -> None:
    path = (
        upstream_fixtures / "debezium_postgres_flink" / "debezium-postgres-data-schema-exclude.txt"
    )
    keyed = events(path, primary_keys={"inventory.products": ["id"]})
    assert [e.op.value for e in keyed] == ["r"] * 9 + ["u", "u", "c", "c", "u", "u", "d"]
    assert all(e.position.endswith(".0") for e in keyed[:9])
    assert keyed[-1].key == {"id": 111} and keyed[-1].before is not None
    unkeyed = events(path)
    assert all(e.key == {} and e.primary_key == () for e in unkeyed)  # key unknown: none invented


def test_flink_delete_without_image_or_key_is_dead_lettered(upstream_fixtures: Path) -> None:
    path = (
        upstream_fixtures
        / "debezium_postgres_flink"
        / "debezium-postgres-data-replica-identity.txt"
    )
    letter = outcomes(path)[-1]
    assert isinstance(letter, DeadLetter) and letter.index == 15
    assert "no before image and no record key" in letter.reason


# --- Datastream ------------------------------------------------------------------------------


def test_datastream_avro_record(upstream_fixtures: Path) -> None:
    event = one(upstream_fixtures / "datastream_postgres_avro" / "bytearray.avro")
    assert (event.schema, event.table, event.op) == ("public", "source_table", Op.INSERT)
    assert event.position == pg_position("16/CB002DB0", snapshot=False) == "00000016cb002db0.1"
    assert event.primary_key == () and event.key == {}
    assert event.after is not None and event.after["binary_content"] == b"\xde\xad\xbe\xef"
    assert event.commit_ts_us == 1739315197151000 and event.transaction_id == "363552"
    assert event.source == "cvandermerwe-test-stream"
    derived = one(
        upstream_fixtures / "datastream_postgres_avro" / "bytearray.records.DERIVED.jsonl"
    )
    assert derived == event  # the derived JSON (with __bytes_hex__) gives the same event


def test_datastream_cloudevent_and_extracted_agree(upstream_fixtures: Path) -> None:
    folder = upstream_fixtures / "datastream_postgres_json_doc"
    wrapped = one(folder / "cloudevent_with_datastream_pg_update.json", source="mage")
    bare = one(folder / "datastream_pg_update_record.EXTRACTED.json", source="mage")
    assert wrapped == bare
    assert (wrapped.op, wrapped.key, wrapped.position) == (
        Op.UPDATE,
        {"id": 15204},
        "000000bda0007310.1",
    )
    assert wrapped.after is not None and isinstance(wrapped.after["variables"], Json)


def test_datastream_and_debezium_agree_on_the_same_change(upstream_fixtures: Path) -> None:
    cases = (
        Path(__file__).resolve().parents[1]
        / "cases"
        / "datastream"
        / "same_changes_as_debezium_captured.jsonl"
    )
    datastream = events(cases, source="f2")
    names = [
        "pg_snapshot_read_first.json",
        "pg_insert.json",
        "pg_delete_replica_identity_full.json",
    ]
    debezium = [one(pg(upstream_fixtures, n)) for n in names]
    for ds, dbz in zip(datastream, debezium, strict=True):
        assert (ds.position, ds.op, ds.key, ds.table, ds.transaction_id) == (
            dbz.position,
            dbz.op,
            dbz.key,
            dbz.table,
            dbz.transaction_id,
        )
        assert ds.event_id == dbz.event_id and ds.origin != dbz.origin
