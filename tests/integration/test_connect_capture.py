"""On-prem capture through real processes: PostgreSQL -> Kafka Connect (Debezium PostgreSQL
plugin, distributed worker) -> normaliser service (Kafka transactions) -> canonical topic
-> streaming apply -> Delta replicas, checked by ``capa verify``.

The connector is registered from ``deploy/onprem/connect/postgres-f2.json`` (the file
docker-compose registers), with this test's slot, publication, topic prefix and schema on
top. The fault test kills -9 the Connect worker and the normaliser service during a
workload and restarts them; afterwards the canonical topic (read_committed) holds every
change exactly once - as many events as the workload made changes, each event id once -
and the replicas equal the source. The SQL Server connector file goes through Connect's
own validation (no SQL Server runs here).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from service_support import bridge_environment, drop_capture

from capa.config import CapaSettings, ConnectConfig, NormalizerConfig
from capa.verify import verify_postgres_local
from capa_app.chaos.harness import kill9
from capa_app.stack.base import StateDirs, free_port, port_in_use, tail, wait_for
from capa_app.stack.connect import ConnectWorker, load_connector_file
from capa_app.stack.kafka import ensure_topics
from capa_app.stack.normalizer import NormalizerService
from capa_app.workload import Workload
from connectors.kafka.consumer import read_topic
from connectors.kafka.wire import ChangeEventDecoder

ROOT = Path(__file__).resolve().parents[2]


class Capture:
    """The running on-prem capture path of one test module."""

    def __init__(self, settings: CapaSettings, dsn: str, suffix: str, tmp: Path) -> None:
        self.settings = settings
        self.dsn = dsn
        self.schema = f"ct_{suffix}"
        self.source = f"ct{suffix}"
        self.slot = f"capa_ct_{suffix}"
        self.warehouse = tmp / "lakehouse"
        self.tmp = tmp
        state = StateDirs(settings.state_dir)
        self.connect = ConnectWorker(state, settings)
        self.normalizer = NormalizerService(state, settings)
        self.apply: subprocess.Popen[bytes] | None = None
        self.workload = Workload(dsn, seed=21, schema=self.schema)

    def overrides(self) -> dict[str, str]:
        return {
            "topic.prefix": self.source,
            "slot.name": self.slot,
            "publication.name": self.slot,
            "table.include.list": f"{self.schema}\\..*",
            "heartbeat.interval.ms": "1000",
        }

    def start_connect(self) -> None:
        self.connect.start()
        self.connect.register("postgres-f2", self.overrides())
        self.connect.wait_running("postgres-f2")

    def start_apply(self) -> None:
        kafka = self.settings.kafka
        argv = [
            sys.executable,
            "-m",
            "beam_jobs.streaming_apply",
            "--bootstrap",
            kafka.bootstrap,
            "--topic",
            kafka.topic,
            "--dlq_topic",
            kafka.dlq_topic,
            "--warehouse",
            f"local:{self.warehouse}",
            "--consumer_group",
            f"apply-{self.source}",
            "--status_file",
            str(self.tmp / "status.json"),
        ]
        with (self.tmp / "apply.log").open("ab") as log:
            self.apply = subprocess.Popen(
                argv, cwd=ROOT, env=bridge_environment(self.settings), stdout=log, stderr=log
            )

    def replicas_equal(self) -> bool:
        assert self.apply is not None and self.apply.poll() is None, "the apply job exited"
        diffs = verify_postgres_local(self.dsn, self.source, self.schema, self.warehouse)
        return bool(diffs) and all(d.ok for d in diffs)

    def canonical_events(self, expected: int, timeout_s: float = 90) -> list[Any]:
        """The canonical topic read ``read_committed``: ``expected`` events, or all there are
        after ``timeout_s`` (a transactional topic's end offset is a commit marker, never a
        record, so "read to the end" is not a usable stop)."""
        decoder = ChangeEventDecoder.from_config(self.settings.kafka)
        messages = read_topic(
            self.settings.kafka,
            self.settings.kafka.topic,
            until=lambda got: len(got) >= expected,
            timeout_s=timeout_s,
            client_settings={"isolation.level": "read_committed"},
        )
        return [decoder.decode(m.value()) for m in messages]

    def dump_logs(self) -> None:
        for log in (self.connect.log_path, self.normalizer.log_path, self.tmp / "apply.log"):
            sys.stderr.write(f"\n----- {log.name} tail -----\n{tail(log, 40)}\n")


@pytest.fixture(scope="module")
def capture(
    capa_settings: CapaSettings, kafka: Any, postgres: Any, tmp_path_factory: Any
) -> Iterator[Capture]:
    suffix = uuid.uuid4().hex[:8]
    tmp = tmp_path_factory.mktemp("connect")
    kafka_config = kafka.config.model_copy(
        update={"topic": f"it.connect.{suffix}", "dlq_topic": f"it.connect.dlq.{suffix}"}
    )
    settings = capa_settings.model_copy(
        update={
            "state_dir": tmp / "state",
            "kafka": kafka_config,
            "connect": ConnectConfig(
                port=free_port(),
                group_id=f"connect-{suffix}",
                config_topic=f"connect.{suffix}.configs",
                offset_topic=f"connect.{suffix}.offsets",
                status_topic=f"connect.{suffix}.status",
                connectors=[],
            ),
            "normalizer": NormalizerConfig(
                topic_pattern=rf"^ct{suffix}\..+",
                group_id=f"normalizer-{suffix}",
                transactional_id=f"normalizer-{suffix}",
                session_timeout_ms=6000,
            ),
            "observe": capa_settings.observe.model_copy(
                update={"normalizer_metrics_port": free_port()}
            ),
        }
    )
    ensure_topics(kafka.admin(), {kafka_config.topic: 3, kafka_config.dlq_topic: 1})
    made = Capture(settings, postgres.dsn, suffix, tmp)
    made.workload.create_tables()
    try:
        made.start_connect()
        made.normalizer.start()
        made.start_apply()
        yield made
    except BaseException:
        made.dump_logs()
        raise
    finally:
        if made.apply is not None:
            made.apply.kill()
            made.apply.wait(30)
        made.normalizer.stop()
        made.connect.stop()
        drop_capture(postgres.dsn, made.slot, made.slot, None, schema=made.schema)


def _metric(port: int, name: str, component: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and f'component="{component}"' in line
    )


def test_workload_flows_through_connect_and_the_normaliser_to_equal_replicas(
    capture: Capture,
) -> None:
    stats = capture.workload.run(changes=2_000)
    assert wait_for(capture.replicas_equal, timeout=150, interval=2), "replicas never equal"

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "capa_app.cli",
            "verify",
            "--dsn",
            capture.dsn,
            "--source",
            capture.source,
            "--schema",
            capture.schema,
            "--warehouse",
            f"local:{capture.warehouse}",
        ],
        cwd=ROOT,
        env=bridge_environment(capture.settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "NO" not in done.stdout

    events = capture.canonical_events(stats.changes)
    assert len(events) == stats.changes
    assert {e.source for e in events} == {capture.source}
    port = capture.settings.observe.normalizer_metrics_port
    assert port is not None
    produced = _metric(port, "capa_ingest_events_produced_total", "normalizer-service")
    assert produced == stats.changes


def test_kill9_of_connect_and_normaliser_loses_and_duplicates_nothing(capture: Capture) -> None:
    before = capture.workload.stats.changes
    faults_done = threading.Event()

    def workload() -> None:  # about 200 changes/s for as long as the faults go on
        while not faults_done.is_set():
            capture.workload.run(changes=100)
            time.sleep(0.5)

    running = threading.Thread(target=workload)
    running.start()
    try:
        for service, restart in (
            (capture.normalizer, capture.normalizer.start),
            (capture.connect, capture.start_connect),
            (capture.normalizer, capture.normalizer.start),
            (capture.connect, capture.start_connect),
        ):
            time.sleep(2)
            kill9(service)
            # the killed JVM's other threads may still hold its sockets for a moment after
            # its main thread is gone
            assert service.port is not None
            address = (service.host, service.port)
            assert wait_for(lambda at=address: not port_in_use(*at), timeout=30)
            restart()
    finally:
        faults_done.set()
        running.join()
    made = capture.workload.stats.changes - before
    assert made >= 1_000
    assert wait_for(capture.replicas_equal, timeout=150, interval=2), "replicas never equal"

    events = capture.canonical_events(capture.workload.stats.changes)
    ids = Counter(e.event_id for e in events)
    duplicated = sum(n - 1 for n in ids.values() if n > 1)
    assert duplicated == 0
    assert len(events) == capture.workload.stats.changes  # none lost: one event per change
    # and nothing beyond them
    extra = capture.canonical_events(capture.workload.stats.changes + 1, timeout_s=5)
    assert len(extra) == capture.workload.stats.changes


def test_connect_validates_the_sqlserver_connector_file(capture: Capture) -> None:
    config = capture.connect.resolved_config("sqlserver-f3")
    config.update(
        {
            "database.hostname": "127.0.0.1",
            "database.port": str(free_port()),
            "driver.loginTimeout": "3",
        }
    )
    config["name"] = load_connector_file("sqlserver-f3")["name"]
    result = capture.connect.validate(config)

    assert result["name"] == "io.debezium.connector.sqlserver.SqlServerConnector"
    values = [c["value"] for c in result["configs"] if c.get("value")]
    errors = {v["name"]: v["errors"] for v in values if v.get("errors")}
    # every field validator passes; only the connection to the (absent) server fails
    assert list(errors) == ["database.hostname"], errors
    assert result["error_count"] == 1
