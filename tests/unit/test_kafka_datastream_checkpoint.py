"""Datastream reader pieces that need no services: the checkpoint file, GCS notification
parsing (payloads shaped like real Cloud Storage Pub/Sub notifications), file-type routing."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path

import pytest

from capa.errors import ConfigError, DecodeError
from connectors.datastream.checkpoint import FileCheckpoint, minute_of, table_dir
from connectors.datastream.reader import ObjectRef, parse_gcs_notification, reader_for

PREFIX = "streams/f3"
A1 = f"{PREFIX}/public_orders/2025/02/11/23/06/a1.avro"
A2 = f"{PREFIX}/public_orders/2025/02/11/23/07/a2.avro"
A_LATE = f"{PREFIX}/public_orders/2025/02/12/03/00/a3.jsonl"
B1 = f"{PREFIX}/public_items/2025/02/11/23/06/b1.jsonl.gz"


def test_checkpoint_survives_restart_and_tracks_generations(tmp_path: Path) -> None:
    path = tmp_path / "cp" / "f3.json"
    checkpoint = FileCheckpoint(path, PREFIX)
    checkpoint.mark_done(A1, 11)
    reloaded = FileCheckpoint(path, PREFIX)
    assert reloaded.is_done(A1, 11)
    assert not reloaded.is_done(A1, 12)  # a new generation of the object is new data
    assert not reloaded.is_done(A2, 11)
    assert json.loads(path.read_text())["processed"] == {A1: 11}
    assert [p.name for p in path.parent.iterdir()] == ["f3.json"]  # no temp files left


def test_compaction_folds_old_names_into_a_per_table_watermark(tmp_path: Path) -> None:
    checkpoint = FileCheckpoint(tmp_path / "cp.json", PREFIX)
    for name, gen in ((A1, 1), (A2, 2), (A_LATE, 3), (B1, 4)):
        checkpoint.mark_done(name, gen)
    assert checkpoint.compact(timedelta(minutes=120)) == 2  # A1, A2 are >2h before A_LATE
    reloaded = FileCheckpoint(tmp_path / "cp.json", PREFIX)
    assert reloaded.watermarks == {f"{PREFIX}/public_orders/": A2}
    assert set(reloaded.processed) == {A_LATE, B1}  # B1 is the newest of its own table
    assert reloaded.is_done(A1, 1) and reloaded.is_done(A2, 2)
    assert not reloaded.is_done(A1, 999)  # a new generation under the watermark: a late file
    assert reloaded.start_offset(f"{PREFIX}/public_orders/") == A2
    assert not reloaded.is_done(f"{PREFIX}/public_orders/2025/02/12/02/59/late.avro", 5)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "cp.json"
    path.write_text('{"processed": ')
    with pytest.raises(ConfigError, match="unreadable"):
        FileCheckpoint(path)
    path.write_text('{"version": 7}')
    with pytest.raises(ConfigError, match="unknown layout/version 7"):
        FileCheckpoint(path)


def test_path_helpers() -> None:
    assert table_dir(A1, PREFIX) == f"{PREFIX}/public_orders/"
    assert table_dir("public_orders/2025/02/11/23/06/x.avro", "") == "public_orders/"
    assert minute_of(A1) is not None and minute_of(A1).hour == 23  # type: ignore[union-attr]
    assert minute_of(f"{PREFIX}/public_orders/x.avro") is None


# --- GCS notifications ------------------------------------------------------------------

OBJECT_RESOURCE = {
    "kind": "storage#object",
    "id": f"dsbucket/{A1}/1739315215396000",
    "selfLink": f"https://www.googleapis.com/storage/v1/b/dsbucket/o/{A1.replace('/', '%2F')}",
    "name": A1,
    "bucket": "dsbucket",
    "generation": "1739315215396000",
    "metageneration": "1",
    "contentType": "application/octet-stream",
    "timeCreated": "2025-02-11T23:06:55.396Z",
    "updated": "2025-02-11T23:06:55.396Z",
    "storageClass": "STANDARD",
    "size": "2271",
    "md5Hash": "Hf6EI1l3ifhoGdeRTTxIRA==",
    "crc32c": "Q3jvFw==",
    "etag": "CKCBy9zfxYsDEAE=",
}
ATTRIBUTES = {
    "bucketId": "dsbucket",
    "eventTime": "2025-02-11T23:06:55.396Z",
    "eventType": "OBJECT_FINALIZE",
    "notificationConfig": "projects/_/buckets/dsbucket/notificationConfigs/3",
    "objectGeneration": "1739315215396000",
    "objectId": A1,
    "payloadFormat": "JSON_API_V1",
}
EXPECTED = ObjectRef("dsbucket", A1, 1739315215396000)


def push_envelope(attributes: dict[str, str], data: bytes) -> dict[str, object]:
    return {
        "message": {
            "attributes": attributes,
            "data": base64.b64encode(data).decode(),
            "messageId": "13719519263467285",
            "message_id": "13719519263467285",
            "publishTime": "2025-02-11T23:06:55.612Z",
            "publish_time": "2025-02-11T23:06:55.612Z",
        },
        "subscription": "projects/capa-prod/subscriptions/datastream-f3",
    }


def test_push_envelope_with_json_api_payload() -> None:
    message = push_envelope(ATTRIBUTES, json.dumps(OBJECT_RESOURCE).encode())
    assert parse_gcs_notification(message) == EXPECTED
    assert EXPECTED.uri == f"gs://dsbucket/{A1}#1739315215396000"


def test_pulled_message_without_payload() -> None:
    attributes = dict(ATTRIBUTES, payloadFormat="NONE")
    assert parse_gcs_notification({"attributes": attributes, "data": b""}) == EXPECTED


def test_eventarc_object_resource() -> None:
    assert parse_gcs_notification(OBJECT_RESOURCE) == EXPECTED


@pytest.mark.parametrize(
    "event_type", ["OBJECT_DELETE", "OBJECT_METADATA_UPDATE", "OBJECT_ARCHIVE"]
)
def test_non_finalize_events_are_ignored(event_type: str) -> None:
    attributes = dict(ATTRIBUTES, eventType=event_type)
    assert parse_gcs_notification(push_envelope(attributes, b"{}")) is None


def test_notification_without_object_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="lacks bucket/object/generation"):
        parse_gcs_notification({"attributes": {"eventType": "OBJECT_FINALIZE"}, "data": b"{}"})
    with pytest.raises(DecodeError, match="not JSON"):
        parse_gcs_notification({"attributes": {}, "data": base64.b64encode(b"{oops").decode()})


def test_file_reader_by_extension() -> None:
    assert reader_for(A1) is not reader_for(B1)
    assert reader_for(B1) is reader_for(A_LATE)
    with pytest.raises(ConfigError, match="no known extension"):
        reader_for(f"{PREFIX}/public_orders/2025/02/11/23/06/readme.txt")


# --- late files below the watermark (the audit) ---------------------------------------------

ORDERS = f"{PREFIX}/public_orders/"
OLD = f"{PREFIX}/public_orders/2025/02/11/20/00/old.avro"  # sorts below A1 and A2


def _sealed(tmp_path: Path) -> FileCheckpoint:
    """A1 and A2 read and folded into the watermark (A2) by A_LATE, 4 hours newer."""
    checkpoint = FileCheckpoint(tmp_path / "cp.json", PREFIX)
    for name, gen in ((A1, 100), (A2, 200), (A_LATE, 300)):
        checkpoint.mark_done(name, gen)
    assert checkpoint.compact(timedelta(minutes=120)) == 2
    return checkpoint


def test_audit_tells_a_file_that_arrived_under_the_watermark_from_the_folded_ones(
    tmp_path: Path,
) -> None:
    checkpoint = _sealed(tmp_path)
    # the watermark names A2; A1 and A2 are folded, so they are no late files
    assert checkpoint.audit(ORDERS, [(A1, 100)]) == []
    assert checkpoint.audits[ORDERS] == {"sealed_generation": 200, "folded": {}}
    assert checkpoint.is_done(A1, 100) and checkpoint.is_done(A2, 200)
    # OLD arrives after the audit (a newer generation) under a name below the watermark
    assert checkpoint.is_late(OLD, 400) and not checkpoint.is_done(OLD, 400)
    reloaded = FileCheckpoint(tmp_path / "cp.json", PREFIX)
    assert reloaded.audit(ORDERS, [(A1, 100), (OLD, 400)]) == [(OLD, 400)]
    assert reloaded.late == {OLD: 400}
    assert not reloaded.is_done(OLD, 400) and reloaded.is_late(OLD, 400)  # owed: not read yet
    assert FileCheckpoint(tmp_path / "cp.json", PREFIX).late == {OLD: 400}  # survives a crash
    reloaded.mark_done(OLD, 400)
    assert reloaded.late == {} and reloaded.is_done(OLD, 400) and not reloaded.is_late(OLD, 400)
    assert reloaded.audit(ORDERS, [(A1, 100), (OLD, 400)]) == []  # found once
    gone = f"{PREFIX}/public_orders/2025/02/11/19/00/gone.avro"
    assert reloaded.audit(ORDERS, [(gone, 500)]) == [(gone, 500)]
    reloaded.forget_late(gone)  # deleted from the bucket before it was read: owed no more
    assert FileCheckpoint(tmp_path / "cp.json", PREFIX).late == {}


def test_a_file_older_than_the_last_audit_counts_as_sealed_and_new_watermarks_start_audited(
    tmp_path: Path,
) -> None:
    checkpoint = _sealed(tmp_path)
    # before any audit, the new watermark seals nothing: every unknown file below it is late
    assert checkpoint.audits[ORDERS] == {"sealed_generation": 0, "folded": {A1: 100, A2: 200}}
    assert checkpoint.audit(ORDERS, [(A1, 100), (OLD, 50)]) == [(OLD, 50)]
    # a checkpoint written before audits existed: the first audit only takes its baseline
    legacy = tmp_path / "legacy.json"
    legacy.write_text(
        json.dumps({"version": 1, "processed": {}, "watermarks": {ORDERS: A2}}), "utf-8"
    )
    old = FileCheckpoint(legacy, PREFIX)
    assert not old.is_late(OLD, 10**9) and old.is_done(OLD, 10**9)
    assert old.audit(ORDERS, [(A1, 100), (OLD, 400)]) == []
    assert old.is_late(OLD, 401) and not old.is_late(OLD, 400)
