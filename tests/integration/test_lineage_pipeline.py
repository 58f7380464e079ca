"""OpenLineage through the pipeline: the streaming apply (Kafka -> raw) on real Kafka, then a Spark
build of a consumption model (raw -> consumption), both configured with OpenLineage's file
transport (its own environment variables). The events are read back as JSON and joined: the
apply's output dataset is the build's input, so topic -> raw.f2_public_orders ->
consumption.customer_orders is one lineage path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable
from kafka_support import make_event

from capa.config import KafkaConfig
from capa.events import ChangeEvent, Op, raw_table_name
from capa_app.stack.kafka import ensure_topics
from connectors.kafka.producer import KafkaChangeProducer

ROOT = Path(__file__).resolve().parents[2]
SPARK_PYTHON = ROOT / ".venvs" / "spark" / "bin" / "python"
ORDERS, BATCH = 200, 50


def order_event(key: int, seq: int) -> ChangeEvent:
    """An insert (first sequence of a key) or update of an order the customer_orders model reads."""
    row = {
        "id": key,
        "customer_id": key % 7 + 1,
        "status": "cancelled" if seq % 5 == 0 else "paid",
        "amount": f"{seq}.50",
        "ordered_at": f"2026-01-{key % 28 + 1:02d}T10:00:00",
    }
    op = Op.INSERT if seq == key else Op.UPDATE
    return replace(make_event(key, op), position=f"{seq:016x}.1", after=row)


def run(argv: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("ab") as out:
        done = subprocess.run(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=600, check=False
        )
    if done.returncode != 0:
        pytest.fail(f"{argv[2]} exited {done.returncode}:\n{log.read_text()[-4000:]}")


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def datasets(event: dict[str, Any], side: str) -> list[tuple[str, str]]:
    return [(d["namespace"], d["name"]) for d in event[side]]


def test_apply_then_build_events_join_into_raw_to_consumption_edges(
    kafka: Any, tmp_path: Path
) -> None:
    topic = f"it.lineage.{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka.admin(), {topic: 1, topic + ".dlq": 1})
    producer = KafkaChangeProducer(KafkaConfig(bootstrap_servers=kafka.bootstrap, topic=topic))
    for seq in range(1, ORDERS + 1):  # inserts of keys 1..100, then updates of them
        producer.send(order_event((seq - 1) % (ORDERS // 2) + 1, seq))
    producer.flush()
    producer.close()

    events_file, lake = tmp_path / "lineage.jsonl", tmp_path / "lake"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "OPENLINEAGE__TRANSPORT__TYPE": "file",
        "OPENLINEAGE__TRANSPORT__LOG_FILE_PATH": str(events_file),
        "OPENLINEAGE__TRANSPORT__APPEND": "true",
    }
    status = tmp_path / "status.json"
    apply = [sys.executable, "-m", "beam_jobs.streaming_apply", "--bootstrap", kafka.bootstrap]
    apply += ["--topic", topic, "--dlq_topic", topic + ".dlq", "--warehouse", f"local:{lake}"]
    apply += ["--consumer_group", f"g-{topic}", "--status_file", str(status), "--stop_at_end"]
    run([*apply, "--max_batch_events", str(BATCH)], env, tmp_path / "apply.log")
    build = [str(SPARK_PYTHON), "-m", "spark_jobs.build", "run", "--lakehouse", str(lake)]
    run([*build, "--select", "customer_orders"], env, tmp_path / "build.log")

    events = read_events(events_file)
    applied = [e for e in events if e["job"]["name"] == "apply"]
    built = [e for e in events if e["job"]["name"] == "consumption.customer_orders"]
    assert len(applied) + len(built) == len(events)
    assert {e["job"]["namespace"] for e in events} == {"capa"}

    # the apply run: one run id, one RUNNING for its one table however many batches it took
    assert json.loads(status.read_text())["batches"] >= ORDERS // BATCH
    assert [e["eventType"] for e in applied] == ["START", "RUNNING", "COMPLETE"]
    assert len({e["run"]["runId"] for e in applied}) == 1
    assert {d for e in applied for d in datasets(e, "inputs")} == {
        (f"kafka://{kafka.bootstrap}", topic)
    }
    raw = ("file", str((lake / "raw" / raw_table_name("f2", "public", "orders")).resolve()))
    assert datasets(applied[-1], "outputs") == [raw]

    # the build run: START then COMPLETE, from the raw table the apply wrote
    assert [e["eventType"] for e in built] == ["START", "COMPLETE"]
    assert len({e["run"]["runId"] for e in built}) == 1
    assert built[0]["run"]["runId"] != applied[0]["run"]["runId"]
    consumption = ("file", str((lake / "consumption" / "customer_orders").resolve()))
    assert datasets(built[-1], "inputs") == [raw]
    assert datasets(built[-1], "outputs") == [consumption]
    assert len(DeltaTable(consumption[1]).to_pyarrow_table()) == 7  # the customers
