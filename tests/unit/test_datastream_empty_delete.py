"""A Datastream delete whose payload is empty or null is kept as an event (Google's template
drops it); applying it needs the key values, so the apply step dead-letters it with the reason
while the rest of the batch applies."""

from __future__ import annotations

from pathlib import Path

import pytest

from capa.apply import apply_isolating_failures
from capa.warehouse import open_warehouse
from connectors.datastream.normalizer import DatastreamNormalizer


def record(change: str, lsn: str, payload: dict | None, deleted: bool = False) -> dict:
    return {
        "uuid": "u",
        "read_timestamp": "2025-02-11T23:06:55+00:00",
        "source_timestamp": "2025-02-11T23:06:37.151+00:00",
        "object": "public_t",
        "read_method": "postgresql-cdc",
        "stream_name": "projects/p/locations/l/streams/s",
        "sort_keys": [1739315197151, lsn],
        "source_metadata": {
            "schema": "public",
            "table": "t",
            "is_deleted": deleted,
            "change_type": change,
            "tx_id": 1,
            "lsn": lsn,
            "primary_keys": ["id"],
        },
        "payload": payload,
    }


@pytest.mark.parametrize("payload", [None, {}])
def test_empty_delete_is_kept_then_dead_lettered_by_apply(
    payload: dict | None, tmp_path: Path
) -> None:
    normalizer = DatastreamNormalizer("f2")
    insert = normalizer.normalize(record("INSERT", "16/CB002DB0", {"id": 1, "v": "a"}))
    other = normalizer.normalize(record("INSERT", "16/CB002DC0", {"id": 2, "v": "b"}))
    delete = normalizer.normalize(record("DELETE", "16/CB002DD0", payload, deleted=True))
    assert delete.op.value == "d" and delete.primary_key == ("id",) and dict(delete.key) == {}

    warehouse = open_warehouse(f"local:{tmp_path}")
    letters = apply_isolating_failures(warehouse.apply, [insert, delete, other])
    assert [letter.event for letter in letters] == [delete]
    assert "lacks the values of key column(s) ['id']" in letters[0].reason
    assert sorted(r["id"] for r in warehouse.rows("raw.f2_public_t")) == [1, 2]
