"""Datastream bucket reader against fake-gcs-server and the real Kafka broker.

The bucket gets the real Datastream Avro file from tests/fixtures plus generated
JSON-lines (plain and gzipped) files in Datastream's layout. The reader must put every
change on Kafka, re-produce nothing after a restart, and dead-letter a corrupt file.
"""

from __future__ import annotations

import base64
import gzip
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capa.config import CapaSettings
from capa.events import ChangeEvent, Op
from capa_app.stack.kafka import ensure_topics
from connectors.datastream.reader import DatastreamBucketReader, build_reader
from connectors.kafka.consumer import ChangeEventDecoder, read_topic
from connectors.kafka.dlq import dead_letter_from_message
from connectors.kafka.producer import KafkaChangeProducer

AVRO_FIXTURE = Path("datastream_postgres_avro") / "bytearray.avro"


def datastream_record(pk: int, change: str, lsn: str, status: str) -> dict[str, Any]:
    """A Datastream JSON-format PostgreSQL record (shape of the shared json_doc fixture)."""
    return {
        "uuid": str(uuid.uuid4()),
        "read_timestamp": "2025-11-05T18:23:46.698000Z",
        "source_timestamp": "2025-11-05T18:23:31.393000Z",
        "object": "public_orders",
        "read_method": "postgresql-cdc",
        "stream_name": "projects/1/locations/us-east1/streams/capa-it",
        "schema_key": "69db90b9a8c1a263696eb5cbdf57404bd2a9b7f4",
        "sort_keys": [1762367011393, lsn],
        "source_metadata": {
            "schema": "public",
            "table": "orders",
            "is_deleted": change == "DELETE",
            "change_type": change,
            "tx_id": 1186572,
            "lsn": lsn,
            "primary_keys": ["id"],
        },
        "payload": {"id": pk, "status": status, "amount": 10 + pk},
    }


def jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


class Setup:
    def __init__(self, bucket: Any, kafka: Any, settings: CapaSettings, tmp: Path) -> None:
        suffix = uuid.uuid4().hex[:10]
        self.producers: list[KafkaChangeProducer] = []
        self.bucket = bucket
        self.prefix = f"streams/capa-it-{suffix}"
        self.kafka = kafka.config.model_copy(
            update={"topic": f"it.ds.{suffix}", "dlq_topic": f"it.ds.dlq.{suffix}"}
        )
        ensure_topics(kafka.admin(), {self.kafka.topic: 3, self.kafka.dlq_topic: 1})
        section = settings.datastream.model_copy(
            update={
                "bucket": bucket.name,
                "prefix": self.prefix,
                "checkpoint_path": tmp / "checkpoint.json",
            }
        )
        self.settings = settings.model_copy(update={"kafka": self.kafka, "datastream": section})

    def upload(self, relative: str, data: bytes) -> None:
        self.bucket.blob(f"{self.prefix}/{relative}").upload_from_string(data)

    def reader(self, client: Any) -> DatastreamBucketReader:
        producer = KafkaChangeProducer(self.kafka)
        self.producers.append(producer)
        return build_reader(self.settings, storage=client, producer=producer)

    def events(self, expected: int) -> list[ChangeEvent]:
        messages = read_topic(
            self.kafka.bootstrap, self.kafka.topic, until=lambda m: len(m) >= expected
        )
        return [ChangeEventDecoder().decode(m.value()) for m in messages]

    def all_events(self) -> list[ChangeEvent]:
        messages = read_topic(self.kafka.bootstrap, self.kafka.topic)
        return [ChangeEventDecoder().decode(m.value()) for m in messages]


@pytest.fixture()
def setup(
    fresh_bucket: Any, kafka: Any, capa_settings: CapaSettings, tmp_path: Path
) -> Iterator[Setup]:
    made = Setup(fresh_bucket, kafka, capa_settings, tmp_path)
    yield made
    for producer in made.producers:
        producer.close()


def upload_stream(setup: Setup, upstream_fixtures: Path) -> None:
    setup.upload(
        "public_source_table/2025/02/11/23/06/4a7e_postgresql-cdc_1917478405_0_0.avro",
        (upstream_fixtures / AVRO_FIXTURE).read_bytes(),
    )
    setup.upload(
        "public_orders/2025/11/05/18/23/a1b2_postgresql-cdc_0_0.jsonl",
        jsonl(
            [
                datastream_record(1, "INSERT", "BD/A0007310", "new"),
                datastream_record(2, "INSERT", "BD/A0007400", "new"),
            ]
        ),
    )
    setup.upload(
        "public_orders/2025/11/05/18/24/c3d4_postgresql-cdc_0_0.jsonl.gz",
        gzip.compress(
            jsonl(
                [
                    datastream_record(1, "UPDATE", "BD/B0000010", "paid"),
                    datastream_record(2, "DELETE", "BD/B0000020", "new"),
                ]
            )
        ),
    )


def test_bucket_to_kafka_exactly_once_across_restarts(
    setup: Setup, fake_gcs: Any, upstream_fixtures: Path
) -> None:
    upload_stream(setup, upstream_fixtures)
    first = setup.reader(fake_gcs.client()).poll_once()
    assert (first.files, first.events, first.dead_letters) == (3, 5, 0)
    events = setup.events(5)
    orders = sorted((e for e in events if e.table == "orders"), key=lambda e: e.position)
    assert [(e.op, e.key["id"]) for e in orders] == [
        (Op.INSERT, 1),
        (Op.INSERT, 2),
        (Op.UPDATE, 1),
        (Op.DELETE, 2),
    ]
    assert orders[2].after is not None and orders[2].after["status"] == "paid"
    [avro] = [e for e in events if e.table == "source_table"]
    assert avro.after is not None and avro.after["binary_content"] == b"\xde\xad\xbe\xef"
    assert all(e.origin == "datastream" and e.source == "f3" for e in events)

    restarted = setup.reader(fake_gcs.client())  # new process: checkpoint from disk
    assert restarted.poll_once().files == 0
    setup.upload(
        "public_orders/2025/11/05/18/25/e5f6_postgresql-cdc_0_0.jsonl",
        jsonl([datastream_record(3, "INSERT", "BD/C0000000", "new")]),
    )
    again = setup.reader(fake_gcs.client()).poll_once()
    assert (again.files, again.events) == (1, 1)
    everything = setup.all_events()
    assert len(everything) == 6  # nothing was produced twice
    assert {e.event_id for e in everything} == {e.event_id for e in events} | {
        e.event_id for e in everything if e.table == "orders" and e.key["id"] == 3
    }


def test_corrupt_files_go_to_the_dead_letter_topic(
    setup: Setup, fake_gcs: Any, upstream_fixtures: Path
) -> None:
    good = (upstream_fixtures / AVRO_FIXTURE).read_bytes()
    half = good[: len(good) - 40]  # half-written: the last block is cut
    setup.upload("public_source_table/2025/02/11/23/07/half.avro", half)
    setup.upload("public_orders/2025/11/05/18/23/bad.jsonl.gz", b"\x1f\x8b\x08\x00garbage")
    setup.upload(
        "public_orders/2025/11/05/18/24/mixed.jsonl",
        jsonl([datastream_record(5, "INSERT", "BD/D0000000", "ok")]) + b'{"not": "datastream"}\n',
    )
    stats = setup.reader(fake_gcs.client()).poll_once()
    assert (stats.files, stats.events, stats.dead_letters) == (3, 1, 3)
    messages = read_topic(setup.kafka.bootstrap, setup.kafka.dlq_topic, until=lambda m: len(m) >= 3)
    letters = {
        d.location.split("/")[-1].split("#")[0]: d
        for d in (dead_letter_from_message(m.value(), m.headers()) for m in messages)
        if d.location
    }
    assert set(letters) == {"half.avro", "bad.jsonl.gz", "mixed.jsonl"}
    assert letters["half.avro"].raw == half and "unreadable file" in letters["half.avro"].reason
    assert letters["bad.jsonl.gz"].raw == b"\x1f\x8b\x08\x00garbage"
    assert letters["mixed.jsonl"].raw == b'{"not": "datastream"}'
    assert letters["mixed.jsonl"].extra["record_index"] == "1"
    assert all(d.origin == "datastream" and d.source == "f3" for d in letters.values())
    assert setup.reader(fake_gcs.client()).poll_once().files == 0  # dead-lettered = done


def test_pubsub_notification_processes_the_named_object_once(setup: Setup, fake_gcs: Any) -> None:
    name = f"{setup.prefix}/public_orders/2025/11/05/18/30/n1_postgresql-cdc_0_0.jsonl"
    blob = setup.bucket.blob(name)
    blob.upload_from_string(jsonl([datastream_record(9, "INSERT", "BD/E0000000", "new")]))
    blob.reload()
    resource = {
        "kind": "storage#object",
        "name": name,
        "bucket": setup.bucket.name,
        "generation": str(blob.generation),
        "size": str(blob.size),
    }
    message = {
        "message": {
            "attributes": {
                "bucketId": setup.bucket.name,
                "objectId": name,
                "objectGeneration": str(blob.generation),
                "eventType": "OBJECT_FINALIZE",
                "payloadFormat": "JSON_API_V1",
                "notificationConfig": "projects/_/buckets/b/notificationConfigs/1",
            },
            "data": base64.b64encode(json.dumps(resource).encode()).decode(),
            "messageId": "1",
            "publishTime": "2025-11-05T18:30:01.000Z",
        },
        "subscription": "projects/capa-it/subscriptions/datastream",
    }
    outcome = setup.reader(fake_gcs.client()).handle_notification(message)
    assert outcome is not None and (outcome.status, outcome.events) == ("produced", 1)
    redelivered = setup.reader(fake_gcs.client()).handle_notification(message)  # Pub/Sub retry
    assert redelivered is not None and redelivered.status == "already-done"
    [event] = setup.events(1)
    assert event.key["id"] == 9
    assert setup.reader(fake_gcs.client()).poll_once().files == 0  # poll mode agrees


def test_oversize_records_and_files_are_dead_letters_and_reading_goes_on(
    setup: Setup, fake_gcs: Any
) -> None:
    """capa issue #19: a record over kafka.max_message_bytes and a gzip file inflating past
    datastream.max_file_bytes are dead letters; their files are done, later files are read."""
    mib = 1024 * 1024
    setup.kafka = setup.kafka.model_copy(update={"max_message_bytes": mib})
    section = setup.settings.datastream.model_copy(update={"max_file_bytes": 4 * mib})
    setup.settings = setup.settings.model_copy(update={"kafka": setup.kafka, "datastream": section})
    huge = datastream_record(3, "INSERT", "BD/A0000300", "x" * (2 * mib))  # the 2 MB row
    setup.upload(
        "public_orders/2025/11/05/18/23/a_0_0.jsonl",
        jsonl([datastream_record(1, "INSERT", "BD/A0000100", "new")]),
    )
    setup.upload(
        "public_orders/2025/11/05/18/24/b_0_0.jsonl",
        jsonl([datastream_record(2, "INSERT", "BD/A0000200", "new"), huge])
        + jsonl([datastream_record(4, "INSERT", "BD/A0000400", "new")]),
    )
    bomb = gzip.compress(b" " * (64 * mib), compresslevel=9)  # 64 MiB of JSON whitespace
    setup.upload("public_orders/2025/11/05/18/25/c_0_0.jsonl.gz", bomb)
    setup.upload(
        "public_orders/2025/11/05/18/26/d_0_0.jsonl",
        jsonl([datastream_record(5, "INSERT", "BD/A0000500", "new")]),
    )
    stats = setup.reader(fake_gcs.client()).poll_once()
    assert (stats.files, stats.events, stats.dead_letters) == (4, 4, 2)
    assert sorted(e.key["id"] for e in setup.events(4)) == [1, 2, 4, 5]
    messages = read_topic(setup.kafka.bootstrap, setup.kafka.dlq_topic, until=lambda m: len(m) >= 2)
    letters = {
        (d.location or "").split("/")[-1].split("#")[0]: (d, m)
        for m in messages
        for d in [dead_letter_from_message(m.value(), m.headers())]
    }
    record, record_msg = letters["b_0_0.jsonl"]
    assert "over kafka.max_message_bytes=1048576" in record.reason
    assert record.extra["table"] == "public.orders" and record.extra["key"] == '[["id",3]]'
    assert record.extra["record_index"] == "1" and record.extra["position"]
    assert int(record.extra["event_size"]) > 2 * mib
    assert record.raw == json.dumps(huge).encode()[: setup.kafka.dlq_max_value_bytes]
    assert dict(record_msg.headers())["capa.dlq.truncated"] == b"true"
    whole, _ = letters["c_0_0.jsonl.gz"]
    assert "inflates to more than 4194304 bytes" in whole.reason and whole.raw == bomb
    assert setup.reader(fake_gcs.client()).poll_once().files == 0  # all four are done


def late_count(source: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("capa_datastream_late_files_total", {"source": source}) or 0.0


def test_late_files_are_read_within_the_grace_window_and_below_the_watermark(
    setup: Setup, fake_gcs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Files folded into the watermark, then files arriving late: one within the grace
    window (listed by the next poll), one below the watermark (found by the audit), one
    below it announced by a notification. Each is read once, the late ones with an alarm."""
    ds = setup.settings.datastream.model_copy(update={"late_file_audit_polls": 1})
    setup.settings = setup.settings.model_copy(update={"datastream": ds})
    orders = "public_orders/2025/11/05"
    setup.upload(
        f"{orders}/18/23/a_0_0.jsonl", jsonl([datastream_record(1, "INSERT", "BD/1", "a")])
    )
    setup.upload(
        f"{orders}/18/24/b_0_0.jsonl", jsonl([datastream_record(2, "INSERT", "BD/2", "b")])
    )
    setup.upload(
        f"{orders}/21/00/c_0_0.jsonl", jsonl([datastream_record(3, "INSERT", "BD/9", "c")])
    )
    reader = setup.reader(fake_gcs.client())
    assert reader.poll_once().files == 3
    watermark = f"{setup.prefix}/{orders}/18/24/b_0_0.jsonl"  # a, b are >2 h before c
    assert reader.checkpoint.watermarks == {f"{setup.prefix}/public_orders/": watermark}
    before = late_count(ds.source_name)

    setup.upload(
        f"{orders}/20/00/w_0_0.jsonl", jsonl([datastream_record(4, "INSERT", "BD/4", "w")])
    )
    setup.upload(
        f"{orders}/18/20/l_0_0.jsonl", jsonl([datastream_record(5, "INSERT", "BD/5", "l")])
    )
    with caplog.at_level("WARNING", logger="connectors.datastream.reader"):
        second = setup.reader(fake_gcs.client()).poll_once()  # a restart: checkpoint from disk
    assert (second.files, second.events) == (2, 2)
    assert late_count(ds.source_name) == before + 1  # only the one below the watermark
    late_uri = f"gs://{setup.bucket.name}/{setup.prefix}/{orders}/18/20/l_0_0.jsonl#"
    assert [r.getMessage() for r in caplog.records if late_uri in r.getMessage()], caplog.text
    assert setup.reader(fake_gcs.client()).poll_once().files == 0  # nothing read twice

    name = f"{setup.prefix}/{orders}/18/21/n_0_0.jsonl"
    setup.upload(
        f"{orders}/18/21/n_0_0.jsonl", jsonl([datastream_record(6, "INSERT", "BD/6", "n")])
    )
    blob = setup.bucket.get_blob(name)
    notification = {"bucket": setup.bucket.name, "name": name, "generation": blob.generation}
    outcome = setup.reader(fake_gcs.client()).handle_notification(notification)
    assert outcome is not None and (outcome.status, outcome.events) == ("produced", 1)
    assert late_count(ds.source_name) == before + 2
    keys = sorted(e.key["id"] for e in setup.events(6))
    assert keys == [1, 2, 3, 4, 5, 6]  # every file once, late ones included
