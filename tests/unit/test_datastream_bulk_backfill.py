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
from capa.warehouse.local import LocalWarehouse
from capa.warehouse.local import warehouse as local_warehouse
from connectors.datastream.backfill import BulkBackfill, backfill_table
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
    loader = BulkBackfill(warehouse)
    for generation, name in enumerate(order, start=1):
        batch = events(FILES[name])
        if not bulk or loader.load(batch, name, generation) is None:
            warehouse.apply(batch)


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
    batch = events(FILES["backfill-a"])
    BulkBackfill(LocalWarehouse(tmp_path / "lake")).load(batch, "backfill-a", 7)
    restarted = LocalWarehouse(tmp_path / "lake")  # crash before the checkpoint: read again
    BulkBackfill(restarted).load(batch, "backfill-a", 7)
    assert state(restarted) == {1: "old", 2: "old", 3: "old"}
    assert restarted.row_count(CHANGELOG) == 3


def test_a_crash_between_the_changelog_and_the_replica_commit_is_repaired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = events(FILES["backfill-a"])

    def killed(*args: Any, **kwargs: Any) -> Any:
        raise SystemExit("killed after the changelog commit")

    with monkeypatch.context() as patched:
        patched.setattr(local_warehouse, "_merge", killed)
        with pytest.raises(SystemExit):
            BulkBackfill(LocalWarehouse(tmp_path / "lake")).load(batch, "backfill-a", 7)
    first = LocalWarehouse(tmp_path / "lake")
    assert first.row_count(CHANGELOG) == 3 and state(first) == {}
    BulkBackfill(first).load(batch, "backfill-a", 7)  # the file read again after restart
    assert state(first) == {1: "old", 2: "old", 3: "old"}
    assert first.row_count(CHANGELOG) == 3


def test_keyless_and_mixed_files_stay_on_the_event_path_with_their_duplicates(
    tmp_path: Path,
) -> None:
    keyless = events([record(None, "a"), record(None, "a"), record(None, "b")])
    mixed = events([record(1, "old"), cdc(1, "new", "UPDATE", "0/100")])
    assert backfill_table(keyless) is None and backfill_table(mixed) is None
    warehouse = LocalWarehouse(tmp_path / "lake")
    assert BulkBackfill(warehouse).load(keyless, "keyless", 1) is None
    warehouse.apply(keyless)  # what the apply job does with them from Kafka
    notes = sorted(row["note"] for row in warehouse.rows("raw.f2_public_log"))
    assert notes == ["a", "a", "b"]


def test_load_reads_refuses_anything_but_snapshot_reads(tmp_path: Path) -> None:
    from capa.columnar import split_plain

    [cols], _ = split_plain(events(FILES["cdc-1"]))
    with pytest.raises(ValueError, match="snapshot reads only"):
        LocalWarehouse(tmp_path / "lake").load_reads(cols, "x")
