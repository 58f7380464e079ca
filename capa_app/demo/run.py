"""``capa demo``: the whole pipeline on the embedded default, step by step.

1. start the local stack (Kafka, PostgreSQL F2, Debezium bridge, streaming apply job, GCS emulator);
2. run a live workload on the F2 shop database (Debezium -> canonical topic -> apply);
3. ingest Datastream files for F2's cloud path through the GCS emulator and the bucket reader;
4. replay SQL Server (F3) Debezium events through the normaliser onto the canonical topic;
5. load a generated CRM extract with the batch Beam pipeline;
6. wait until the apply job has caught up, then build the consumption layer with Spark;
7. print a summary per table and the commands to query raw and consumption tables.

A second run reuses the state directory. Ctrl-C stops every process capa started.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capa import console
from capa.config import CapaSettings
from capa.errors import CapaError, EnvironmentProblem, ServiceFailed
from capa_app.stack import Stack
from capa_app.stack.base import tail
from connectors.pgsync.progress import initial_sync_status, sync_lines

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
VENVS = ROOT / ".venvs"


@dataclass(frozen=True)
class DemoOptions:
    seconds: float = 30.0  # duration of the live F2 workload
    rate: float = 200.0  # target F2 row changes per second
    crm_accounts: int = 300
    f3_snapshot: int = 500
    f3_changes: int = 1500
    keep_running: bool = False
    skip_spark: bool = False


@dataclass
class TableSummary:
    table: str
    source_rows: int | None
    replica_rows: int | None
    match: str
    note: str = ""
    streamed: bool = True  # went through the canonical topic and the streaming apply job


@dataclass
class DemoState:
    summaries: list[TableSummary] = field(default_factory=list)
    expected: dict[str, Mapping[Any, Mapping[str, Any]]] = field(default_factory=dict)
    apply_status: dict[str, Any] = field(default_factory=dict)


class Demo:
    def __init__(self, settings: CapaSettings, options: DemoOptions) -> None:
        self.options = options
        self.stack = Stack(settings)
        self.settings = self.stack.provision()  # the PostgreSQL password the workload needs
        self.state = DemoState()
        self.lakehouse = Path(settings.warehouse.path).resolve()  # type: ignore[union-attr]
        self._status_server: Any = None

    # --- orchestration --------------------------------------------------------------------

    def run(self) -> int:
        steps: list[tuple[str, Callable[[], None]]] = [
            ("start the local stack", self.start_stack),
            ("F2 PostgreSQL: live workload through Debezium", self.run_f2_workload),
            (
                "F2 Datastream: files through the GCS emulator and the bucket reader",
                self.ingest_datastream,
            ),
            ("F3 SQL Server: replay Debezium events", self.replay_f3),
            ("CRM: generate an extract and load it with the batch Beam pipeline", self.load_crm),
            ("wait for the streaming apply job to catch up", self.wait_caught_up),
            ("compact the raw tables (merge-on-read pending rows -> base)", self.compact_raw),
            ("consumption layer: Spark SQL models", self.build_consumption),
        ]
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops as cleanly as Ctrl-C
        try:
            for n, (title, step) in enumerate(steps, start=1):
                console.step(f"[{n}/{len(steps)}] {title}")
                started = time.monotonic()
                step()
                console.info(f"    done in {time.monotonic() - started:.1f}s")
            self.summarize()
            return 0 if all(s.match != "NO" for s in self.state.summaries) else 4
        except KeyboardInterrupt:
            console.error("interrupted: stopping every process capa started")
            self.options = DemoOptions(**{**self.options.__dict__, "keep_running": False})
            return 130
        finally:
            if self._status_server is not None:
                self._status_server.shutdown()
                self._status_server.server_close()
                if self.options.keep_running:
                    console.info("status page stopped with the demo; keep watching: capa serve")
            if not self.options.keep_running:
                stopped = self.stack.down()
                console.info(
                    f"stopped: {', '.join(stopped) or 'nothing'} (state kept in {self.stack.state.root})"
                )

    # --- steps ----------------------------------------------------------------------------

    def start_stack(self) -> None:
        for result in self.stack.up(strict=True):
            console.info(f"    {result.component}: {result.health} ({result.seconds:.1f}s)")
        self._serve_status()
        self._wait_apply_streaming()

    def _serve_status(self) -> None:
        """The ``capa serve`` page in this process while the demo runs, and where to look."""
        from capa_app.observe.server import StatusServer
        from capa_app.observe.status import endpoints

        try:
            self._status_server = StatusServer(self.settings)
        except OSError as exc:  # the port is taken (another capa serve): the demo goes on
            console.info(f"    status page not started ({exc}); run: capa serve --port N")
            return
        self._status_server.start_background()
        url = self._status_server.url
        console.info(f"    status page: {url}/  (JSON: {url}/api/status)")
        console.info(f"    metrics (Prometheus): slots and builds {url}/metrics")
        for component, metrics_url in endpoints(self.settings).items():
            console.info(f"      {component}: {metrics_url}")

    def _wait_apply_streaming(self, timeout: float = 120.0) -> None:
        """Until the apply job has applied its first batch (the bridge's snapshot), so the
        live workload's latency is measured against a running job, not its start-up."""
        record = self.stack.service("apply").running()
        deadline = time.monotonic() + timeout
        reported = 0.0
        while record is not None and time.monotonic() < deadline:
            status = self._apply_status() or {}
            if status.get("pid") == record.pid and status.get("batches", 0) > 0:
                console.info(f"    apply job streaming: {self._apply_line()}")
                return
            sync = initial_sync_status(self.settings)
            if sync is not None and time.monotonic() - reported >= 5.0:
                reported = time.monotonic()
                for line in sync_lines(sync):
                    console.info(f"    initial sync {line}")
            if sync is not None and sync["status"] == "done":
                console.info("    initial sync done; apply job waiting for streamed changes")
                return
            if sync is not None and sync["status"] != "done":
                deadline = time.monotonic() + timeout  # a large copy: wait while it runs
            time.sleep(0.5)
        console.info("    apply job has not applied a batch yet; continuing")

    def run_f2_workload(self) -> None:
        from capa_app.demo.f2_shop import ShopWorkload

        workload = ShopWorkload(self.settings.postgres.dsn(), seed=int(time.time()))
        workload.start(self.options.rate, self.options.seconds)
        deadline = time.monotonic() + self.options.seconds
        while time.monotonic() < deadline and workload.error is None:
            time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
            console.info(
                f"    {workload.changes} row changes committed; apply: {self._apply_line()}"
            )
        workload.join()

    def ingest_datastream(self) -> None:
        from capa_app.demo.datastream_files import shipment_files
        from capa_app.stack.gcs import FakeGcsServer
        from connectors.datastream.checkpoint import FileCheckpoint
        from connectors.datastream.normalizer import DatastreamNormalizer
        from connectors.datastream.reader import DatastreamBucketReader
        from connectors.kafka.producer import KafkaChangeProducer

        gcs = FakeGcsServer(self.stack.state, self.settings.gcs)
        client = gcs.client()
        bucket = client.lookup_bucket(self.settings.gcs.bucket) or client.create_bucket(
            self.settings.gcs.bucket
        )
        files, expected = shipment_files()
        for name, data in files.items():
            bucket.blob(f"{self.settings.gcs.prefix}/{name}").upload_from_string(data)
        self.state.expected["f2_public_shipments"] = expected
        producer = KafkaChangeProducer(self.settings.kafka)
        checkpoint = FileCheckpoint(
            self.stack.state.data / "datastream-checkpoint.json", self.settings.gcs.prefix
        )
        reader = DatastreamBucketReader(
            storage_client=client,
            bucket=self.settings.gcs.bucket,
            prefix=self.settings.gcs.prefix,
            normalizer=DatastreamNormalizer("f2"),
            producer=producer,
            checkpoint=checkpoint,
            source="f2",
        )
        stats = reader.poll_once()
        producer.close()
        console.info(
            f"    {stats.files} new file(s), {stats.events} event(s) produced "
            f"({len(files)} in the bucket; the checkpoint skips files already done, and a re-sent file is harmless: apply is idempotent)"
        )

    def replay_f3(self) -> None:
        from capa_app.demo.f3_events import InvoiceEvents
        from connectors.debezium.normalizer import DebeziumNormalizer
        from connectors.kafka.producer import KafkaChangeProducer

        generator = InvoiceEvents(seed=3)
        records = [
            *generator.snapshot(self.options.f3_snapshot),
            *generator.changes(self.options.f3_changes),
        ]
        normalizer = DebeziumNormalizer(source="f3")
        producer = KafkaChangeProducer(self.settings.kafka)
        for record in records:
            producer.send(normalizer.normalize(record))  # type: ignore[arg-type]
        producer.flush()
        producer.close()
        self.state.expected["f3_dbo_invoices"] = generator.rows
        console.info(
            f"    {len(records)} Debezium SQL Server records replayed ({len(generator.rows)} live invoices)"
        )

    def load_crm(self) -> None:
        extract = self.stack.state.data / "crm-extract"
        capa = [sys.executable, "-m", "capa_app.cli"]
        _run(
            [
                *capa,
                "crm",
                "generate",
                "--out",
                str(extract),
                "--accounts",
                str(self.options.crm_accounts),
            ]
        )
        _run(
            [
                *capa,
                "crm",
                "load",
                "--extract",
                str(extract),
                "--warehouse",
                f"local:{self.lakehouse}",
            ]
        )

    def wait_caught_up(self, timeout: float = 300.0) -> None:
        """Until the apply job's committed offsets reach the topic's end twice in a row."""
        deadline, settled = time.monotonic() + timeout, 0
        apply_job = self.stack.service("apply")
        while time.monotonic() < deadline:
            if apply_job.running() is None:  # fail now, not after the timeout
                raise ServiceFailed(
                    f"the streaming apply job exited; the end of {apply_job.log_path}:\n"
                    + tail(apply_job.log_path, 8)
                )
            lag = kafka_lag(self.settings)
            settled = settled + 1 if lag == 0 else 0
            if settled >= 2:
                status = self._apply_status() or {}
                console.info(
                    f"    caught up: committed offsets are at the end of the topic; "
                    f"{status.get('events_applied', 0)} applied by this job run"
                )
                return
            console.info(f"    {lag} event(s) not yet applied")
            time.sleep(3.0)
        raise EnvironmentProblem(
            f"the apply job did not catch up within {timeout:.0f}s; see {self.stack.state.logs}/apply.log"
        )

    def compact_raw(self) -> None:
        """Stop the apply job (the one writer), compact its pending rows, start it again.

        With merge-on-read the job commits each batch to a pending log that ``capa sql`` and
        ``capa verify`` already serve; Spark reads the Delta base tables, so they are
        compacted first. Compaction runs only while the job is stopped: one writer per table.
        """
        from capa.warehouse import open_warehouse
        from capa.warehouse.base import compactor

        apply_job = self.stack.service("apply")
        apply_job.stop()
        warehouse = open_warehouse(f"local:{self.lakehouse}")
        try:
            compacting = compactor(warehouse)
            rows = compacting.compact() if compacting is not None else 0
        finally:
            warehouse.close()
        console.info(f"    {rows} pending row(s) compacted")
        apply_job.start()

    def build_consumption(self) -> None:
        if self.options.skip_spark:
            console.info("    skipped (--skip-spark)")
            return
        python = VENVS / "spark" / "bin" / "python"
        if not python.exists():
            raise EnvironmentProblem(
                f"{python} is missing; run `make setup` (scripts/setup.sh spark)"
            )
        _run([str(python), "-m", "spark_jobs.build", "run", "--lakehouse", str(self.lakehouse)])

    # --- summary ----------------------------------------------------------------------------

    def summarize(self) -> None:
        from capa_app.demo.summary import summary_rows

        rows = summary_rows(self.settings, self.lakehouse, self.state.expected)
        self.state.summaries = rows
        status = self._apply_status() or {}
        lag = kafka_lag(self.settings)
        console.table(
            [
                "table",
                "source rows",
                "replica rows",
                "checksum match",
                "lag (events)",
                "p99 latency (s)",
                "note",
            ],
            [
                (
                    r.table,
                    _dash(r.source_rows),
                    _dash(r.replica_rows),
                    r.match,
                    lag if r.streamed else "-",
                    _fmt(status.get("latency_p99_s")) if r.streamed else "-",
                    r.note,
                )
                for r in rows
            ],
        )
        where = f"local:{self.lakehouse}"
        console.info("\nQuery the tables:")
        console.info(
            f'  .venvs/beam/bin/capa sql --warehouse {where} "SELECT * FROM raw.f2_public_orders LIMIT 5"'
        )
        console.info(
            f'  .venvs/beam/bin/capa sql --warehouse {where} --json "SELECT count(*) FROM raw.f3_dbo_invoices"'
        )
        console.info(
            f'  .venvs/beam/bin/capa sql --warehouse {where} "SELECT * FROM consumption.customer_360 LIMIT 5"'
        )
        console.info("  .venvs/beam/bin/capa verify")

    # --- helpers ------------------------------------------------------------------------------

    def _apply_status(self) -> dict[str, Any] | None:
        path = self.stack.state.root / "apply-status.json"
        try:
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return None

    def _apply_line(self) -> str:
        s = self._apply_status()
        if not s:
            return "starting"
        return (
            f"{s.get('events_applied', 0)} applied, lag {s.get('lag_events', '?')} events / "
            f"{_fmt(s.get('lag_s'))}s, p99 {_fmt(s.get('latency_p99_s'))}s"
        )


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def kafka_lag(settings: CapaSettings) -> int:
    """Events on the canonical topic beyond the apply job's committed offsets."""
    from confluent_kafka import Consumer, TopicPartition

    topic = settings.kafka.topic
    from connectors.kafka.clients import client_config

    group = {"group.id": settings.apply.consumer_group, "enable.auto.commit": False}
    consumer = Consumer(client_config(settings.kafka, group))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        lag = 0
        for tp in committed:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            lag += high - (tp.offset if tp.offset >= 0 else low)
        return lag
    finally:
        consumer.close()


def _run(argv: list[str]) -> None:
    logger.info("running %s", " ".join(argv))
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    for line in (result.stderr.strip().splitlines() + result.stdout.strip().splitlines())[-6:]:
        console.info(f"    | {line}")
    if result.returncode != 0:
        raise CapaError(f"{' '.join(argv[:4])} ... failed with exit code {result.returncode}")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def _dash(value: Any) -> Any:
    return "-" if value is None else value
