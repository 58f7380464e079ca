"""Datastream backfill files through the bulk writer, with real files in fake-gcs-server and
a real Kafka broker: CDC files go to Kafka and are applied as the apply job does; a pure
keyed backfill file is written by the bucket reader itself (``backfill_writer=auto`` with
the local warehouse); a keyless backfill goes to Kafka with its duplicate rows. CDC arrives
before the backfill file of the same keys, and the reader "crashes" after writing but before
its checkpoint: the replica ends in the source's state and nothing is written twice.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_datastream_reader import Setup, datastream_record, jsonl

from capa.config import CapaSettings, LocalWarehouseConfig
from capa.warehouse.local import LocalWarehouse

REPLICA = "raw.f3_public_orders"


def backfill(pk: int | None, status: str) -> dict[str, Any]:
    record = datastream_record(pk or 0, "INSERT", "0/0", status)
    meta = record["source_metadata"]
    meta.update(lsn=None, change_type=None, tx_id=None)
    record.update(read_method="postgresql-backfill", sort_keys=[1762367011393, "", 0])
    if pk is None:  # a table without a primary key
        meta.update(table="audit", primary_keys=[])
        record["payload"] = {"note": status}
    return record


@pytest.fixture()
def bucket(
    fresh_bucket: Any, kafka: Any, capa_settings: CapaSettings, tmp_path: Path
) -> Iterator[Setup]:
    made = Setup(fresh_bucket, kafka, capa_settings, tmp_path)
    made.settings = made.settings.model_copy(
        update={"warehouse": LocalWarehouseConfig(path=tmp_path / "lake")}
    )
    yield made
    for producer in made.producers:
        producer.close()


def apply_topic(setup: Setup, warehouse: LocalWarehouse) -> None:
    """What the streaming apply job does with the topic (apply is idempotent)."""
    warehouse.apply(setup.all_events())


def test_backfill_bulk_written_by_the_reader_interleaves_with_cdc_and_survives_a_crash(
    bucket: Setup, fake_gcs: Any, tmp_path: Path
) -> None:
    setup = bucket
    warehouse = LocalWarehouse(tmp_path / "lake")
    checkpoint = Path(setup.settings.datastream.checkpoint_path or "")

    # 1. CDC of keys 1 and 2 arrives (and is applied) before their backfill file
    setup.upload(
        "public_orders/2025/11/05/18/23/a1_postgresql-cdc_0_0.jsonl",
        jsonl(
            [
                datastream_record(1, "UPDATE", "BD/B0000010", "paid"),
                datastream_record(2, "DELETE", "BD/B0000020", "new"),
            ]
        ),
    )
    first = setup.reader(fake_gcs.client()).poll_once()
    assert [o.status for o in first.outcomes] == ["produced"]
    apply_topic(setup, warehouse)
    shutil.copy(checkpoint, tmp_path / "before-backfill.json")

    # 2. the backfill (old values of 1, 2, 3) and a keyless backfill with a duplicate row
    setup.upload(
        "public_orders/2025/11/05/18/24/b2_postgresql-backfill_0_0.jsonl",
        jsonl([backfill(1, "new"), backfill(2, "new"), backfill(3, "new")]),
    )
    setup.upload(
        "public_audit/2025/11/05/18/24/c3_postgresql-backfill_0_0.jsonl",
        jsonl([backfill(None, "a"), backfill(None, "a"), backfill(None, "b")]),
    )
    second = setup.reader(fake_gcs.client()).poll_once()
    statuses = {o.ref.name.rsplit("/", 1)[-1]: o.status for o in second.outcomes}
    assert statuses == {
        "b2_postgresql-backfill_0_0.jsonl": "bulk-loaded",
        "c3_postgresql-backfill_0_0.jsonl": "produced",
    }
    assert second.events == 6
    assert {r["id"]: r["status"] for r in warehouse.rows(REPLICA)} == {1: "paid", 3: "new"}
    apply_topic(setup, warehouse)  # the keyless reads (and the CDC again: no-ops)

    # 3. a later change of a backfilled key
    setup.upload(
        "public_orders/2025/11/05/18/25/d4_postgresql-cdc_0_0.jsonl",
        jsonl([datastream_record(3, "UPDATE", "BD/C0000000", "shipped")]),
    )
    setup.reader(fake_gcs.client()).poll_once()
    apply_topic(setup, warehouse)
    expected = {1: "paid", 3: "shipped"}
    assert {r["id"]: r["status"] for r in warehouse.rows(REPLICA)} == expected
    assert sorted(r["note"] for r in warehouse.rows("raw.f3_public_audit")) == ["a", "a", "b"]
    logged = warehouse.row_count(f"{REPLICA}_changelog")
    assert logged == 2 + 3 + 1

    # 4. a crash after the writes but before their checkpoint: everything is read again
    shutil.copy(tmp_path / "before-backfill.json", checkpoint)
    again = setup.reader(fake_gcs.client()).poll_once()
    assert {o.status for o in again.outcomes} == {"bulk-loaded", "produced"}
    apply_topic(setup, warehouse)
    assert {r["id"]: r["status"] for r in warehouse.rows(REPLICA)} == expected
    assert sorted(r["note"] for r in warehouse.rows("raw.f3_public_audit")) == ["a", "a", "b"]
    assert warehouse.row_count(f"{REPLICA}_changelog") == logged
