"""Streaming apply against real Kafka: the job runs in a subprocess on the FnApiRunner.

* bounded run: canonical events (+ poison records) produced with the Kafka connector's
  producer -> ``--stop_at_end`` -> the replica equals the expected state, poison records
  are on the DLQ topic with reason and original bytes, offsets are committed to the end;
* crash: ``kill -9`` of an unbounded apply mid-run, restart -> same replica, nothing skipped.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from beam_jobs.kafka_io import KafkaOffsetCommitter, list_partitions
from capa.config import KafkaConfig
from capa.events import ChangeEvent, Op, SourceKind
from capa.warehouse import open_warehouse
from capa_app.stack.kafka import ensure_topics
from connectors.kafka.dlq import dead_letter_from_message
from connectors.kafka.producer import KafkaChangeProducer

ROOT = Path(__file__).resolve().parents[2]
TABLE = "raw.f2_public_items"


def make_event(key: int, seq: int, op: Op) -> ChangeEvent:
    after = None if op is Op.DELETE else {"id": key, "qty": seq, "note": f"k{key}/{seq}"}
    return ChangeEvent(
        source="f2",
        source_kind=SourceKind.POSTGRES,
        database="shop",
        schema="public",
        table="items",
        op=op,
        position=f"{seq:016x}.1",
        commit_ts_us=int(time.time() * 1e6),
        primary_key=("id",),
        key={"id": key},
        before={"id": key} if op is Op.DELETE else None,
        after=after,
    )


def workload(n: int, keys: int, seed: int) -> tuple[list[ChangeEvent], dict[int, dict[str, Any]]]:
    """Random inserts/updates/deletes in source order, and the final expected rows."""
    rng = random.Random(seed)
    state: dict[int, dict[str, Any]] = {}
    events = []
    for seq in range(1, n + 1):
        key = rng.randrange(keys)
        op = Op.INSERT if key not in state else (Op.DELETE if rng.random() < 0.15 else Op.UPDATE)
        event = make_event(key, seq, op)
        events.append(event)
        if op is Op.DELETE:
            state.pop(key)
        else:
            state[key] = dict(event.after or {})
    return events, state


class Topic:
    """A fresh canonical + DLQ topic pair on the session broker."""

    def __init__(self, kafka: Any, partitions: int = 3) -> None:
        self.name = f"it.apply.{uuid.uuid4().hex[:8]}"
        self.dlq = self.name + ".dlq"
        self.bootstrap = kafka.bootstrap
        ensure_topics(kafka.admin(), {self.name: partitions, self.dlq: 1})
        self.config = KafkaConfig(
            bootstrap_servers=self.bootstrap, topic=self.name, dlq_topic=self.dlq
        )

    def produce(self, events: list[ChangeEvent], poison: list[bytes] = ()) -> None:  # type: ignore[assignment]
        producer = KafkaChangeProducer(self.config)
        for i, event in enumerate(events):
            producer.send(event)
            if poison and i == len(events) // 2:
                for raw in poison:  # raw bytes on the canonical topic: poison records
                    producer._client().produce(self.name, raw, b"poison")
        producer.flush()
        producer.close()


def job_argv(topic: Topic, warehouse: Path, status: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "beam_jobs.streaming_apply",
        "--bootstrap",
        topic.bootstrap,
        "--topic",
        topic.name,
        "--dlq_topic",
        topic.dlq,
        "--warehouse",
        f"local:{warehouse}",
        "--consumer_group",
        f"g-{topic.name}",
        "--status_file",
        str(status),
        "--log_interval_s",
        "2",
        *extra,
    ]


def run_job(argv: list[str], log: Path, timeout: float = 240) -> None:
    with log.open("ab") as out:
        done = subprocess.run(
            argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False
        )
    if done.returncode != 0:
        pytest.fail(f"apply job exited {done.returncode}:\n{log.read_text()[-4000:]}")


def replica_rows(warehouse: Path) -> dict[int, dict[str, Any]]:
    rows = open_warehouse(f"local:{warehouse}").rows(TABLE)
    return {r["id"]: {k: r[k] for k in ("id", "qty", "note")} for r in rows}


def assert_offsets_at_end(topic: Topic) -> None:
    committer = KafkaOffsetCommitter(topic.bootstrap, f"g-{topic.name}")
    try:
        for partition in list_partitions(topic.bootstrap, topic.name):
            assert committer.committed(partition) == committer.watermarks(partition)[1], partition
    finally:
        committer.close()


def read_dlq(topic: Topic, expected: int, timeout_s: float = 30) -> list[Any]:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": topic.bootstrap,
            "group.id": f"dlq-{topic.name}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic.dlq])
    found: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(found) < expected and time.monotonic() < deadline:
        found += [m for m in consumer.consume(10, 1.0) if m.error() is None]
    consumer.close()
    return [dead_letter_from_message(m.value(), m.headers()) for m in found]


def test_bounded_apply_builds_the_replica_and_dead_letters_poison(
    kafka: Any, tmp_path: Path
) -> None:
    topic = Topic(kafka)
    events, expected = workload(6000, keys=800, seed=3)
    poison = [b"not avro at all", b"\xc3\x01" + b"\x00" * 8 + b"bad body"]
    topic.produce(events, poison)
    log = tmp_path / "apply.log"

    run_job(
        job_argv(
            topic,
            tmp_path / "wh",
            tmp_path / "status.json",
            "--stop_at_end",
            "--max_batch_events",
            "2500",
        ),
        log,
    )

    assert replica_rows(tmp_path / "wh") == expected
    assert_offsets_at_end(topic)
    letters = read_dlq(topic, expected=2)
    assert sorted(letter.raw for letter in letters) == sorted(poison)
    assert all(letter.reason and letter.origin == "beam-apply" for letter in letters)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["events_applied"] == len(events)
    assert status["dead_letters"] == 2


def wait_for_progress(status: Path, proc: subprocess.Popen[bytes], at_least: int) -> int:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if status.exists():
            applied = json.loads(status.read_text())["events_applied"]
            if applied >= at_least:
                return int(applied)
        time.sleep(0.2)
    raise AssertionError(f"no progress to {at_least} events (exit code {proc.poll()})")


def test_kill_9_mid_run_then_restart_gives_the_same_replica(kafka: Any, tmp_path: Path) -> None:
    topic = Topic(kafka)
    events, expected = workload(40_000, keys=3000, seed=5)
    topic.produce(events)
    status, log = tmp_path / "status.json", tmp_path / "apply.log"
    argv = job_argv(
        topic, tmp_path / "wh", status, "--max_batch_events", "2000", "--commit_interval_s", "0.5"
    )

    with log.open("ab") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        applied = wait_for_progress(status, proc, at_least=4000)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert applied < len(events), "the job finished before it could be killed mid-run"
    status.unlink()

    run_job([*argv, "--stop_at_end"], log)

    assert replica_rows(tmp_path / "wh") == expected, log.read_text()[-3000:]
    assert_offsets_at_end(topic)
    # The restart resumed from the offsets committed before the kill, not from scratch.
    assert json.loads(status.read_text())["events_applied"] <= len(events) - applied
