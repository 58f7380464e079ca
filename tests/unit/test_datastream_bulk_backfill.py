"""Datastream backfill files through the bulk writer (``LocalWarehouse.load_reads``).

Backfill reads and streamed changes of the same keys, in every arrival order of the files,
end in the state the source ended in; keyless backfills stay on the event path with their
duplicate rows; a load repeated after a crash (even between its two commits) writes
nothing twice; and the replica equals what the Kafka path (``apply``) writes.
"""

from __future__ import annotations

from itertools import permutations
from pathlib import Path
from typing import Any

import pytest

from capa.events import ChangeEvent
from capa.warehouse.local import LocalWarehouse, bulk
from capa.warehouse.local import warehouse as local_warehouse
from connectors.base import RawRecord
from connectors.datastream.backfill import BulkBackfill
from connectors.datastream.normalizer import DatastreamNormalizer

pytestmark = pytest.mark.unit

REPLICA = "raw.f2_public_orders"
CHANGELOG = "raw.f2_public_orders_changelog"


def record(
    key: int | None, status: str, *, method: str = "postgresql-backfill", **meta: Any
) -> dict[str, Any]:
    payload = {"note": status} if key is None else {"id": key, "status": status}
    return {
        "read_method": method,
        "stream_name": "projects/p/locations/l/streams/f2",
        "source_timestamp": "2026-01-01T00:00:00Z",
        "source_metadata": {
            "schema": "public",
            "table": "orders" if key is not None else "log",
            "primary_keys": ["id"] if key is not None else [],
            "is_deleted": meta.get("change") == "DELETE",
            "change_type": meta.get("change", "INSERT"),
            "lsn": meta.get("lsn"),
        },
        "payload": payload,
    }


def cdc(key: int, status: str, change: str, lsn: str) -> dict[str, Any]:
    return record(key, status, method="postgresql-cdc", change=change, lsn=lsn)


def events(records: list[dict[str, Any]]) -> list[ChangeEvent]:
    normalizer = DatastreamNormalizer()
    out = [normalizer.normalize(r) for r in records]
    assert all(isinstance(e, ChangeEvent) for e in out)
    return out  # type: ignore[return-value]


def raws(records: list[dict[str, Any]], name: str = "f.jsonl") -> list[RawRecord]:
    return [RawRecord(name, i, r, None) for i, r in enumerate(records)]


def loader(warehouse: LocalWarehouse) -> BulkBackfill:
    return BulkBackfill(warehouse, DatastreamNormalizer())


# Two backfill files (the rows as read, old values) and two CDC files of the same keys.
FILES: dict[str, list[dict[str, Any]]] = {
    "backfill-a": [record(k, "old") for k in (1, 2, 3)],
    "backfill-b": [record(k, "old") for k in (4, 5, 6)],
    "cdc-1": [cdc(1, "new", "UPDATE", "0/100"), cdc(2, "old", "DELETE", "0/200")],
    "cdc-2": [
        cdc(5, "new", "UPDATE", "0/300"),
        cdc(6, "old", "DELETE", "0/400"),
        cdc(7, "new", "INSERT", "0/500"),
        cdc(1, "newer", "UPDATE", "0/600"),
    ],
}
EXPECTED = {1: "newer", 3: "old", 4: "old", 5: "new", 7: "new"}


def state(warehouse: LocalWarehouse) -> dict[int, str]:
    return {row["id"]: row["status"] for row in warehouse.rows(REPLICA)}


def deliver(warehouse: LocalWarehouse, order: tuple[str, ...], *, bulk: bool) -> None:
    """Each file as the bucket reader hands it on: backfill files to the bulk writer (or,
    ``bulk=False``, to the apply job like every file), CDC files to the apply job."""
    bulk_writer = loader(warehouse)
    for generation, name in enumerate(order, start=1):
        if not bulk or bulk_writer.load(raws(FILES[name]), name, generation) is None:
            warehouse.apply(events(FILES[name]))


@pytest.mark.parametrize("order", list(permutations(FILES)), ids="-".join)
def test_any_arrival_order_of_backfill_and_cdc_files_ends_in_the_source_state(
    tmp_path: Path, order: tuple[str, ...]
) -> None:
    warehouse = LocalWarehouse(tmp_path / "lake")
    deliver(warehouse, order, bulk=True)
    assert state(warehouse) == EXPECTED
    assert warehouse.row_count(CHANGELOG) == sum(len(f) for f in FILES.values())


def test_the_bulk_path_writes_what_the_kafka_path_writes(tmp_path: Path) -> None:
    order = ("cdc-1", "backfill-a", "backfill-b", "cdc-2")
    bulk, kafka = LocalWarehouse(tmp_path / "bulk"), LocalWarehouse(tmp_path / "kafka")
    deliver(bulk, order, bulk=True)
    deliver(kafka, order, bulk=False)

    def rows(warehouse: LocalWarehouse, table: str) -> list[tuple[Any, ...]]:
        kept = ("id", "status", "_capa_position", "_capa_op", "_capa_event_id", "_capa_deleted")
        found = warehouse.rows(table, include_deleted=True)
        return sorted(tuple(r[c] for c in kept) for r in found)

    assert rows(bulk, REPLICA) == rows(kafka, REPLICA)
    assert rows(bulk, CHANGELOG) == rows(kafka, CHANGELOG)


def test_a_load_repeated_after_a_restart_writes_nothing_twice(tmp_path: Path) -> None:
    batch = raws(FILES["backfill-a"])
    loader(LocalWarehouse(tmp_path / "lake")).load(batch, "backfill-a", 7)
    restarted = LocalWarehouse(tmp_path / "lake")  # crash before the checkpoint: read again
    loader(restarted).load(batch, "backfill-a", 7)
    assert state(restarted) == {1: "old", 2: "old", 3: "old"}
    assert restarted.row_count(CHANGELOG) == 3


def test_a_crash_between_the_changelog_and_the_replica_commit_is_repaired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = raws(FILES["backfill-a"])

    def killed(*args: Any, **kwargs: Any) -> Any:
        raise SystemExit("killed after the changelog commit")

    with monkeypatch.context() as patched:
        patched.setattr(local_warehouse, "_merge", killed)
        with pytest.raises(SystemExit):
            loader(LocalWarehouse(tmp_path / "lake")).load(batch, "backfill-a", 7)
    first = LocalWarehouse(tmp_path / "lake")
    assert first.row_count(CHANGELOG) == 3 and state(first) == {}
    loader(first).load(batch, "backfill-a", 7)  # the file read again after restart
    assert state(first) == {1: "old", 2: "old", 3: "old"}
    assert first.row_count(CHANGELOG) == 3


def test_a_streamed_commit_between_plan_and_merge_conflicts_and_is_replanned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The apply job (another writer) commits a change of key 1 after the load planned
    against the replica and before its merge: the merge's commit conflicts, the load plans
    again and its stale read of key 1 is a no-op (no second row, no old value)."""
    warehouse = LocalWarehouse(tmp_path / "lake")
    loader(warehouse).load(raws([record(9, "old")]), "first", 1)  # the replica exists
    apply_job = LocalWarehouse(tmp_path / "lake")
    real = bulk.written
    fired: list[str] = []

    def stream_commits_first(table: Any, load_id: str) -> bool:
        if not fired:
            fired.append(load_id)
            apply_job.apply(events([cdc(1, "new", "UPDATE", "0/100")]))
        return real(table, load_id)

    monkeypatch.setattr(bulk, "written", stream_commits_first)
    loader(warehouse).load(raws([record(1, "old"), record(2, "old")]), "second", 1)
    assert fired
    assert sorted((r["id"], r["status"]) for r in warehouse.rows(REPLICA)) == [
        (1, "new"),
        (2, "old"),
        (9, "old"),
    ]


def test_a_file_the_warehouse_refuses_goes_to_kafka_where_it_is_dead_lettered(
    tmp_path: Path,
) -> None:
    warehouse = LocalWarehouse(tmp_path / "lake")
    warehouse.apply(events([cdc(1, "new", "INSERT", "0/100")]))
    drifted = {**record(2, "old"), "payload": {"id": 2, "status": 12.5}}  # text -> number
    assert loader(warehouse).load(raws([drifted]), "drift", 1) is None
    with pytest.raises(Exception, match="status"):  # the event path refuses it with a reason
        warehouse.apply(events([drifted]))
    assert state(warehouse) == {1: "new"}


def test_keyless_and_mixed_files_stay_on_the_event_path_with_their_duplicates(
    tmp_path: Path,
) -> None:
    keyless = [record(None, "a"), record(None, "a"), record(None, "b")]
    warehouse = LocalWarehouse(tmp_path / "lake")
    bulk_writer = loader(warehouse)
    assert bulk_writer.load(raws(keyless), "keyless", 1) is None
    warehouse.apply(events(keyless))  # what the apply job does with them from Kafka
    notes = sorted(row["note"] for row in warehouse.rows("raw.f2_public_log"))
    assert notes == ["a", "a", "b"]
    mixed = [record(1, "old"), cdc(1, "new", "UPDATE", "0/100")]
    null_key = [record(1, "old"), {**record(2, "old"), "payload": {"id": None, "status": "x"}}]
    other_table = [
        record(1, "old"),
        {
            **record(2, "old"),
            "source_metadata": {**record(2, "old")["source_metadata"], "table": "other"},
        },
    ]
    for batch in (mixed, null_key, other_table):
        assert bulk_writer.load(raws(batch), "file", 1) is None
    assert warehouse.row_count(REPLICA) == 0


# --- the column-wise normaliser equals the record-by-record one ---------------------------------

AVRO_SCHEMA = {
    "type": "record",
    "name": "backfill",
    "fields": [
        {"name": "read_method", "type": "string"},
        {"name": "stream_name", "type": "string"},
        {"name": "source_timestamp", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {
            "name": "source_metadata",
            "type": {
                "type": "record",
                "name": "source_metadata",
                "fields": [
                    {"name": "schema", "type": "string"},
                    {"name": "table", "type": "string"},
                    {"name": "lsn", "type": ["null", "string"]},
                    {"name": "primary_keys", "type": {"type": "array", "items": "string"}},
                ],
            },
        },
        {
            "name": "payload",
            "type": {
                "type": "record",
                "name": "payload",
                "fields": [
                    {"name": "id", "type": "long"},
                    {"name": "region", "type": "string"},
                    {
                        "name": "amount",
                        "type": [
                            "null",
                            {
                                "type": "bytes",
                                "logicalType": "decimal",
                                "precision": 12,
                                "scale": 2,
                            },
                        ],
                    },
                    {
                        "name": "at",
                        "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}],
                    },
                    {"name": "day", "type": ["null", {"type": "int", "logicalType": "date"}]},
                    {"name": "doc", "type": ["null", {"type": "string", "logicalType": "json"}]},
                    {"name": "ratio", "type": ["null", "float"]},
                    {"name": "blob", "type": ["null", "bytes"]},
                    {"name": "tags", "type": ["null", {"type": "array", "items": "string"}]},
                ],
            },
        },
    ],
}


def avro_backfill(n: int) -> bytes:
    import io
    from datetime import UTC, date, datetime
    from decimal import Decimal

    import fastavro

    def rows() -> Any:
        for i in range(n):
            yield {
                "read_method": "postgresql-backfill",
                "stream_name": "projects/p/locations/l/streams/f2",
                "source_timestamp": datetime(2026, 1, 1, tzinfo=UTC),
                "source_metadata": {
                    "schema": "public",
                    "table": "orders",
                    "lsn": None if i % 3 else "1/A0",
                    "primary_keys": ["id", "region"],
                },
                "payload": {
                    "id": i // 2,
                    "region": "eu" if i % 2 else "us",
                    "amount": None if i % 5 == 0 else Decimal(i * 101).scaleb(-2),
                    "at": datetime(2026, 1, 1, tzinfo=UTC),
                    "day": date(2026, 1, 1 + i % 28),
                    "doc": '{"a": [1, 2]}',
                    "ratio": 0.1 * i,
                    "blob": bytes([i % 256]),
                    "tags": ["x", str(i)] if i % 4 else None,
                },
            }

    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(AVRO_SCHEMA), rows())
    return buf.getvalue()


def test_backfill_columns_equal_the_events_of_the_record_by_record_normaliser() -> None:
    from capa.columnar import split_plain
    from connectors.datastream.files import read_avro_file

    records = list(read_avro_file(avro_backfill(40), "f.avro"))
    normalizer = DatastreamNormalizer()
    cols = normalizer.backfill_columns(records)
    per_record = [normalizer.normalize(r.value, r.hints) for r in records]
    [expected], rest = split_plain(per_record)  # type: ignore[arg-type]
    assert cols is not None and not rest
    assert cols == expected
    assert len(set(cols.positions)) == 2  # with and without an LSN


def test_load_reads_refuses_anything_but_snapshot_reads(tmp_path: Path) -> None:
    from capa.columnar import split_plain

    [cols], _ = split_plain(events(FILES["cdc-1"]))
    with pytest.raises(ValueError, match="snapshot reads only"):
        LocalWarehouse(tmp_path / "lake").load_reads(cols, "x")
