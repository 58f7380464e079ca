"""A real Prometheus scrapes capa's metrics while a workload runs (docs/observability.md).

It lives beside the fake-gcs-server fixture because the Datastream reader is one of the
scraped components. Prometheus (Debian package, one-second scrapes) scrapes:

* ``capa-bridge``: the Debezium bridge as a real process (its own endpoint) capturing a
  fresh table of the session's PostgreSQL into the session's Kafka;
* ``capa-serve``: this test process's endpoint, which holds the Datastream reader (run
  here against fake-gcs-server) and the slot and build collectors of ``capa serve``.

For every family the test asserts through ``/api/v1/query`` that it is present and that
it moves while the workload runs.

* ``capa-apply``: the streaming apply job as a real process (its own endpoint) applying the
  bridge's topic to a lakehouse of this test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY
from prometheus_support import PrometheusServer, running_prometheus
from service_support import drop_capture, start_bridge

from capa import metrics
from capa.config import CapaSettings
from capa_app.observe.exporter import BuildCollector, SlotCollector
from capa_app.stack.base import free_port, tail, wait_for
from capa_app.stack.kafka import ensure_topics
from connectors.datastream.reader import build_reader
from connectors.kafka.producer import KafkaChangeProducer
from spark_jobs.state import ModelState, save_state

WAIT_S = 120
ROOT = Path(__file__).resolve().parents[3]


def order_record(pk: int, lsn: str) -> bytes:
    """One Datastream JSON-format PostgreSQL record (see test_datastream_reader.py)."""
    record = {
        "uuid": str(uuid.uuid4()),
        "source_timestamp": "2025-11-05T18:23:31.393000Z",
        "object": "public_orders",
        "read_method": "postgresql-cdc",
        "sort_keys": [1762367011393, lsn],
        "source_metadata": {
            "schema": "public",
            "table": "orders",
            "is_deleted": False,
            "change_type": "INSERT",
            "lsn": lsn,
            "primary_keys": ["id"],
        },
        "payload": {"id": pk, "status": "new"},
    }
    return (json.dumps(record) + "\n").encode()


class Workload:
    """The bridge, the reader and a consumer-less slot on fresh names of their own."""

    def __init__(self, settings: CapaSettings, kafka: Any, bucket: Any, tmp: Path) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.suffix = suffix
        self.table = f"obs_{suffix}"
        self.idle_slot = f"capa_obs_idle_{suffix}"
        self.bucket = bucket
        self.prefix = f"streams/obs-{suffix}"
        self.consumption = tmp / "consumption"
        kafka_config = kafka.config.model_copy(
            update={"topic": f"it.obs.{suffix}", "dlq_topic": f"it.obs.dlq.{suffix}"}
        )
        ensure_topics(kafka.admin(), {kafka_config.topic: 3, kafka_config.dlq_topic: 1})
        debezium = settings.debezium.model_copy(
            update={
                "source_name": f"obs{suffix}",
                "engine_name": f"capa-obs-{suffix}",
                "slot_name": f"capa_obs_{suffix}",
                "publication": f"capa_obs_{suffix}",
                "table_include_list": f"public.{self.table}",
                "heartbeat_interval_ms": 1000,
            }
        )
        datastream = settings.datastream.model_copy(
            update={
                "bucket": bucket.name,
                "prefix": self.prefix,
                "source_name": f"ds{suffix}",
                "checkpoint_path": tmp / "ds-checkpoint.json",
            }
        )
        observe = settings.observe.model_copy(update={"bridge_metrics_port": free_port()})
        state = tmp / "bridge-state"
        state.mkdir()
        self.settings = settings.model_copy(
            update={
                "state_dir": state,
                "kafka": kafka_config,
                "debezium": debezium,
                "datastream": datastream,
                "observe": observe,
            }
        )
        self.bridge_table = f"{debezium.source_name}.public.{self.table}"
        self.reader_table = f"{datastream.source_name}.public.orders"

    def sql(self, dsn: str, statement: str, *params: Any) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(statement, params)

    def upload(self, name: str, data: bytes) -> None:
        self.bucket.blob(f"{self.prefix}/public_orders/2025/11/05/18/{name}").upload_from_string(
            data
        )


@pytest.fixture()
def workload(
    capa_settings: CapaSettings, kafka: Any, postgres: Any, fresh_bucket: Any, tmp_path: Path
) -> Iterator[Workload]:
    made = Workload(capa_settings, kafka, fresh_bucket, tmp_path)
    made.sql(
        postgres.dsn,
        f'CREATE TABLE "public"."{made.table}" (id int PRIMARY KEY, v text, n numeric)',
    )
    made.sql(
        postgres.dsn, "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", made.idle_slot
    )
    yield made
    made.sql(postgres.dsn, "SELECT pg_drop_replication_slot(%s)", made.idle_slot)


@pytest.fixture()
def local_endpoint(workload: Workload, postgres: Any) -> Iterator[int]:
    """This process's /metrics with the slot and build collectors (as ``capa serve`` has)."""
    collectors = [SlotCollector(postgres.dsn), BuildCollector(workload.consumption)]
    for collector in collectors:
        REGISTRY.register(collector)
    port = metrics.serve_metrics("127.0.0.1", 0)
    assert port
    yield port
    for collector in collectors:
        REGISTRY.unregister(collector)


def moves(prom: PrometheusServer, expr: str, action: Any = None) -> tuple[float, float]:
    """Wait for ``expr`` to have a value, run ``action``, wait for the value to change."""
    assert wait_for(lambda: prom.value(expr) is not None, WAIT_S), f"{expr}: no series"
    before = prom.value(expr)
    if action is not None:
        action()
    assert wait_for(lambda: prom.value(expr) != before, WAIT_S), f"{expr} stayed at {before}"
    after = prom.value(expr)
    assert after is not None
    return float(before or 0), after


def test_prometheus_scrapes_every_family_and_sees_it_move(
    workload: Workload, postgres: Any, fake_gcs: Any, local_endpoint: int, tmp_path: Path
) -> None:
    settings = workload.settings
    bridge_port = settings.observe.bridge_metrics_port
    bridge = start_bridge(settings, tmp_path / "bridge.log")
    producer = KafkaChangeProducer(settings.kafka)
    reader = build_reader(settings, storage=fake_gcs.client(), producer=producer)
    apply_port = free_port()
    apply = start_apply(settings, apply_port, tmp_path)
    jobs = {
        "capa-bridge": f"127.0.0.1:{bridge_port}",
        "capa-serve": f"127.0.0.1:{local_endpoint}",
        "capa-apply": f"127.0.0.1:{apply_port}",
    }
    seen: set[str] = set()
    try:
        with running_prometheus(jobs, tmp_path / "prometheus") as prom:
            seen |= _bridge_families(prom, workload, postgres.dsn)
            seen |= _apply_families(prom, workload, postgres.dsn)
            seen |= _reader_families(prom, workload, reader)
            seen |= _slot_families(prom, workload, postgres.dsn)
            seen |= _build_families(prom, workload)
            rules = prom.api("/api/v1/rules")["groups"]
            assert {g["name"] for g in rules} == {"capa-source", "capa-apply", "capa-ingest"}
    finally:
        producer.close()
        for process in (apply, bridge):
            process.terminate()
            process.wait(90)
        sys.stderr.write(f"\n--- bridge log tail ---\n{tail(tmp_path / 'bridge.log', 40)}\n")
        sys.stderr.write(f"\n--- apply log tail ---\n{tail(tmp_path / 'apply.log', 40)}\n")
        drop_capture(
            postgres.dsn, settings.debezium.slot_name, settings.debezium.publication, workload.table
        )
    assert seen == set(metrics.BY_NAME), "a family is not scraped"


def start_apply(settings: CapaSettings, port: int, tmp: Path) -> subprocess.Popen[bytes]:
    """The streaming apply job on the bridge's topic, its metrics on ``port``."""
    kafka = settings.kafka
    argv = [sys.executable, "-m", "beam_jobs.streaming_apply", "--bootstrap", kafka.bootstrap]
    argv += ["--topic", kafka.topic, "--dlq_topic", kafka.dlq_topic]
    argv += ["--warehouse", f"local:{tmp / 'lake'}", "--consumer_group", f"g-{kafka.topic}"]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CAPA__OBSERVE__APPLY_METRICS_PORT": str(port),
        "CAPA__OBSERVE__HOST": "127.0.0.1",
    }
    with (tmp / "apply.log").open("wb") as log:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _bridge_families(prom: PrometheusServer, w: Workload, dsn: str) -> set[str]:
    table = f'table="{w.bridge_table}"'

    def insert() -> None:
        for i in range(5):
            w.sql(dsn, f'INSERT INTO "public"."{w.table}" VALUES (%s, %s)', i, "x")

    assert wait_for(lambda: prom.value('up{job="capa-bridge"}') == 1, WAIT_S)
    received = f'capa_ingest_records_received_total{{component="debezium-bridge",{table}}}'
    produced = f'capa_ingest_events_produced_total{{component="debezium-bridge",{table}}}'
    w.sql(dsn, f'INSERT INTO "public"."{w.table}" VALUES (-1, %s)', "first")
    assert wait_for(lambda: (prom.value(produced) or 0) >= 1, WAIT_S), "no produced series"
    moves(prom, received, insert)
    assert wait_for(lambda: (prom.value(produced) or 0) >= 6, WAIT_S), prom.value(produced)
    moves(prom, 'capa_ingest_records_skipped_total{component="debezium-bridge",kind="heartbeat"}')
    nulled = f'capa_ingest_values_nulled_total{{component="debezium-bridge",{table},column="n"}}'
    w.sql(dsn, f'INSERT INTO "public"."{w.table}" VALUES (-2, %s, %s)', "nan", "NaN")
    assert wait_for(lambda: prom.value(nulled) == 1, WAIT_S), prom.value(nulled)
    return {
        "capa_ingest_records_received",
        "capa_ingest_events_produced",
        "capa_ingest_records_skipped",
        "capa_ingest_values_nulled",
    }


def _apply_families(prom: PrometheusServer, w: Workload, dsn: str) -> set[str]:
    """The apply job applies what the bridge produced; each family moves with new rows."""
    assert wait_for(lambda: prom.value('up{job="capa-apply"}') == 1, WAIT_S)
    applied = "sum(capa_apply_events_applied_total)"
    assert wait_for(lambda: (prom.value(applied) or 0) >= 7, WAIT_S), prom.value(applied)
    visible = "sum(capa_apply_commit_to_visible_seconds_count)"
    last = "max(capa_apply_last_applied_timestamp_seconds)"
    assert wait_for(lambda: prom.value(visible) is not None and prom.value(last), WAIT_S)
    before = (prom.value(visible), prom.value(last))

    def update() -> None:
        w.sql(dsn, f'UPDATE "public"."{w.table}" SET v = %s WHERE id >= 0', "y")

    moves(prom, applied, update)
    assert wait_for(lambda: (prom.value(visible), prom.value(last)) != before, WAIT_S)
    assert wait_for(lambda: prom.value("sum(capa_apply_consumer_lag_records)") == 0, WAIT_S)
    assert (prom.value("min(capa_table_freshness_slo_seconds)") or 0) > 0
    return {
        "capa_apply_events_applied",
        "capa_apply_commit_to_visible_seconds",
        "capa_apply_last_applied_timestamp_seconds",
        "capa_apply_consumer_lag_records",
        "capa_table_freshness_slo_seconds",
    }


def _reader_families(prom: PrometheusServer, w: Workload, reader: Any) -> set[str]:
    pending = f'capa_datastream_files_pending{{source="{w.settings.datastream.source_name}"}}'
    w.upload("23/a_postgresql-cdc_0_0.jsonl", order_record(1, "BD/A0000010"))
    reader.poll_once()  # a first series of every reader family
    w.upload("24/b_postgresql-cdc_0_0.jsonl", order_record(2, "BD/A0000020"))
    w.upload("24/c_postgresql-cdc_0_0.jsonl", order_record(3, "BD/A0000030"))
    w.upload("25/bad.jsonl.gz", b"\x1f\x8b\x08\x00garbage")
    reader.pending_objects()  # lists three files without reading them
    assert wait_for(lambda: prom.value(pending) == 3, WAIT_S), prom.value(pending)
    received = f'capa_ingest_records_received_total{{table="{w.reader_table}"}}'
    moves(prom, received, reader.poll_once)
    assert wait_for(lambda: prom.value(pending) == 0, WAIT_S), prom.value(pending)
    produced = f'capa_ingest_events_produced_total{{component="datastream-reader",table="{w.reader_table}"}}'
    assert wait_for(lambda: prom.value(produced) == 3, WAIT_S), prom.value(produced)
    processed = 'sum(capa_datastream_files_processed_total{status="dead-lettered"})'
    assert wait_for(lambda: (prom.value(processed) or 0) >= 1, WAIT_S)
    letters = 'sum(capa_dead_letters_total{component="datastream-reader"})'
    moves(
        prom,
        letters,
        lambda: (w.upload("26/bad2.jsonl.gz", b"\x1f\x8b\x08\x00garbage"), reader.poll_once()),
    )
    # the reason label is a class, never the raw text
    reasons = {r["metric"]["reason"] for r in prom.query("capa_dead_letters_total")}
    assert all(len(r) <= 80 and " " not in r for r in reasons), reasons
    late = f'capa_datastream_late_files_total{{source="{w.settings.datastream.source_name}"}}'
    assert wait_for(lambda: prom.value(late) == 0, WAIT_S), prom.value(late)  # none arrived
    return {
        "capa_datastream_files_pending",
        "capa_datastream_late_files",
        "capa_datastream_files_processed",
        "capa_dead_letters",
        "capa_ingest_records_received",
        "capa_ingest_events_produced",
    }


def _slot_families(prom: PrometheusServer, w: Workload, dsn: str) -> set[str]:
    slot = f'slot="{w.idle_slot}"'

    def write_wal() -> None:
        w.sql(
            dsn,
            f'INSERT INTO "public"."{w.table}" '
            f'SELECT (SELECT coalesce(max(id), 0) FROM "public"."{w.table}") + g, '
            "repeat(%s, 200) FROM generate_series(1, 2000) g",
            "w",
        )

    before, after = moves(prom, f"capa_replication_slot_retained_wal_bytes{{{slot}}}", write_wal)
    assert after > before  # nobody consumes the idle slot: it pins all new WAL
    moves(prom, f"capa_replication_slot_confirmed_flush_lag_bytes{{{slot}}}", write_wal)
    assert prom.value(f"capa_replication_slot_active{{{slot}}}") == 0
    bridge_slot = f'slot="{w.settings.debezium.slot_name}"'
    assert wait_for(
        lambda: prom.value(f"capa_replication_slot_active{{{bridge_slot}}}") == 1, WAIT_S
    )
    return {
        "capa_replication_slot_retained_wal_bytes",
        "capa_replication_slot_confirmed_flush_lag_bytes",
        "capa_replication_slot_active",
    }


def _build_families(prom: PrometheusServer, w: Workload) -> set[str]:
    def build(at: str) -> None:
        state = ModelState(
            model="orders_daily", fingerprint="f", target_version=1, inputs={}, built_at=at
        )
        save_state(w.consumption, state)

    expr = 'capa_consumption_last_success_timestamp_seconds{model="orders_daily"}'
    build("2026-12-07T10:00:00+00:00")
    before, after = moves(prom, expr, lambda: build("2026-12-07T10:05:00+00:00"))
    assert after - before == 300
    return {"capa_consumption_last_success_timestamp_seconds"}
