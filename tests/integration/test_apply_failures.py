"""The streaming apply job against real Kafka when things go wrong (the job runs as a subprocess).

* offset gap: the group's committed offset is below the partition's low watermark (records
  deleted with the admin API, as retention would): the job stops and names the topic, the
  partition and the number of lost events; with ``--accept_offset_gap`` it resumes at the
  low watermark, says so once, and applies the rest;
* a record the warehouse refuses (delta-rs rejects a column that differs from another only
  by case): only that record is on the dead-letter topic, the rest of its table is applied,
  the offsets reach the end, and a second run changes nothing.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition
from test_streaming_apply import (
    ROOT,
    Topic,
    assert_offsets_at_end,
    job_argv,
    make_event,
    read_dlq,
    replica_rows,
    run_job,
)

from beam_jobs.kafka_io import KafkaOffsetCommitter, KafkaPartition
from capa.events import Op


def delete_records_before(kafka: Any, topic: str, partition: int, offset: int) -> None:
    """Move the partition's low watermark to ``offset``, as retention would."""
    admin = kafka.admin()  # held until the futures resolve: they die with their client
    futures = admin.delete_records([TopicPartition(topic, partition, offset)])
    for future in futures.values():
        assert future.result(timeout=30).low_watermark == offset


def committed(topic: Topic, partition: int = 0) -> int | None:
    committer = KafkaOffsetCommitter(topic.bootstrap, f"g-{topic.name}")
    try:
        return committer.committed(KafkaPartition(topic.name, partition))
    finally:
        committer.close()


def test_an_offset_gap_stops_the_job_unless_it_is_accepted(kafka: Any, tmp_path: Path) -> None:
    topic = Topic(kafka, partitions=1)
    topic.produce([make_event(k, k, Op.INSERT) for k in range(100)])
    committer = KafkaOffsetCommitter(topic.bootstrap, f"g-{topic.name}")
    committer.commit({KafkaPartition(topic.name, 0): 10})  # applied up to offset 9, long ago
    committer.close()
    delete_records_before(kafka, topic.name, 0, 40)  # offsets 10..39 expired unapplied
    argv = job_argv(topic, tmp_path / "wh", tmp_path / "status.json", "--stop_at_end")

    log = tmp_path / "refused.log"
    with log.open("wb") as out:
        done = subprocess.run(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=240)
    output = log.read_text()
    assert done.returncode != 0, output[-3000:]
    assert f"topic {topic.name!r} partition 0" in output
    assert "30 events expired by retention" in output
    assert committed(topic) == 10 and replica_rows(tmp_path / "wh") == {}

    run_job([*argv, "--accept_offset_gap"], tmp_path / "accepted.log")
    output = (tmp_path / "accepted.log").read_text()
    assert output.count("accepted an offset gap") == 1
    assert f"{topic.name}/0: 30 events" in output
    assert sorted(replica_rows(tmp_path / "wh")) == list(range(40, 100))
    assert_offsets_at_end(topic)


def test_a_record_the_warehouse_refuses_is_the_only_dead_letter(kafka: Any, tmp_path: Path) -> None:
    topic = Topic(kafka, partitions=2)
    events = [make_event(k, k + 1, Op.INSERT) for k in range(300)]
    poison = events[123]
    events[123] = dataclasses.replace(poison, after={**(poison.after or {}), "QTY": 1})
    topic.produce(events)
    argv = job_argv(topic, tmp_path / "wh", tmp_path / "status.json", "--stop_at_end")

    run_job(argv, tmp_path / "apply.log")

    rows = replica_rows(tmp_path / "wh")
    assert sorted(rows) == [k for k in range(300) if k != 123]
    assert_offsets_at_end(topic)
    (letter,) = read_dlq(topic, expected=1)
    assert "Duplicate field name" in letter.reason and letter.origin == "beam-apply"
    assert letter.raw is not None and b"QTY" in letter.raw

    run_job(argv, tmp_path / "again.log")  # resumes at the committed end: nothing to do
    assert replica_rows(tmp_path / "wh") == rows
    committer = KafkaOffsetCommitter(topic.bootstrap, "capa-test")
    try:
        assert committer.watermarks(KafkaPartition(topic.dlq, 0)) == (0, 1)  # no second letter
    finally:
        committer.close()
