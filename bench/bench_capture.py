"""Benchmark of streaming capture (not a test): stage ceilings and end-to-end sustained rate.

    .venvs/beam/bin/python -m bench.bench_capture [--backlog_s 10] [--clients 4]
        [--rates 1000,2000,4000,8000] [--step_s 30] [--skip_e2e]

Starts a throwaway PostgreSQL 15 and Kafka broker; three tables ``t1..t3`` (bigint key,
int, text, numeric(12,2), timestamptz; ``--rows`` rows each) get a pgbench script of
single-row changes, every statement its own transaction::

    UPDATE t1 ... WHERE id = :id;  INSERT INTO t2 ...;  DELETE FROM t3 WHERE id = :id;
    INSERT INTO t3 ... ON CONFLICT DO NOTHING

Row changes are counted from ``pg_stat_user_tables`` (inserts + updates + deletes), so a
rate is always "row changes per second". Measured in one run:

1. ``source``: pgbench alone, unthrottled (``--clients`` clients, ``--source_s`` s): the
   fastest single-row change rate this machine reaches (the ceiling to keep up with);
2. a WAL backlog: replication slots are created, then pgbench runs ``--backlog_s`` s;
   every stage below drains the SAME backlog from its own slot or topic:
   - ``handoff``: the embedded Debezium engine (in this process) with a handler that only
     takes each record across JPype as the bridge does (``record_of``): Debezium's ceiling;
   - ``normalise_produce``: the bridge's handler (``DebeziumKafkaBridge``: normalise,
     encode, produce, flush per batch) over the records captured by ``handoff``, no JVM;
   - ``bridge``: the real bridge process (``connectors.debezium.bridge``), from its start
     until the canonical topic holds every change: Debezium into Kafka, the capture ceiling;
   - ``apply``: the bounded streaming apply job over that topic (``--stop_at_end``), beside
     a bare confluent-kafka read of the same topic (``kafka_read``);
3. ``e2e``: the bridge and the apply job running, pgbench at each ``--rates`` (row changes/s,
   ``-R`` = rate / 4 scripts/s) for ``--step_s`` s; the apply job (restarted for each step,
   so its latency sample is the step's) reports commit -> visible in raw p99. ``sustained``
   is the highest rate whose p99 <= 3 s and whose changes all arrived.

Prints a JSON summary (``--json-out`` for ``bench.run_all``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.bench_initial_sync import PG_BIN, ROOT, psql_env, settings_environment
from bench.common import add_json_out, make_result, write_result
from capa.config import CapaSettings, LocalWarehouseConfig
from capa_app.stack.base import StateDirs
from capa_app.stack.kafka import KafkaBroker
from capa_app.stack.postgres import PostgresCluster
from capa_app.stack.throwaway import running_service, throwaway_settings, throwaway_state_dir

SOURCE = "bench"
DATABASE = "cap"
TABLES = ("t1", "t2", "t3")
CHANGES_PER_SCRIPT = 4  # update t1, insert t2, delete t3, insert t3
P99_TARGET_S = 3.0

SCRIPT = """\
\\set id random(1, {rows})
UPDATE t1 SET qty = qty + 1, updated = now() WHERE id = :id;
INSERT INTO t2 (qty, name, price, updated) VALUES (:id, 'pgbench', 12.34, now());
DELETE FROM t3 WHERE id = :id;
INSERT INTO t3 (id, qty, name, price, updated) VALUES (:id, 1, 'again', 5.67, now())
  ON CONFLICT (id) DO NOTHING;
"""


def _sql(settings: CapaSettings, sql: str, database: str = DATABASE) -> str:
    out = subprocess.run(
        ["psql", "-qtAX", "-d", database, "-c", sql],
        env=psql_env(settings),
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def create_schema(settings: CapaSettings, rows: int) -> None:
    _sql(settings, f"CREATE DATABASE {DATABASE}", "postgres")
    for table in TABLES:
        key = "bigserial" if table == "t2" else "bigint"
        _sql(
            settings,
            f"CREATE TABLE {table} (id {key} PRIMARY KEY, qty int NOT NULL, name text, "
            f"price numeric(12,2), updated timestamptz NOT NULL DEFAULT now());"
            f"INSERT INTO {table} (id, qty, name, price) SELECT g, g % 100, 'row ' || g, "
            f"g * 0.01 FROM generate_series(1, {rows}) g",
        )
    _sql(settings, f"SELECT setval('t2_id_seq', {rows})")
    _sql(settings, f"CREATE PUBLICATION {SOURCE} FOR TABLE {', '.join(TABLES)}")


def changes_so_far(settings: CapaSettings) -> int:
    _sql(settings, "SELECT pg_stat_force_next_flush()")
    return int(
        _sql(
            settings,
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables "
            f"WHERE relname IN ({', '.join(repr(t) for t in TABLES)})",
        )
    )


def pgbench(
    settings: CapaSettings, script: Path, clients: int, seconds: float, rate: float | None = None
) -> tuple[int, float]:
    """Run the script; (row changes made, seconds)."""
    before = changes_so_far(settings)
    argv = [str(PG_BIN / "pgbench"), "-n", "-f", str(script), "-c", str(clients)]
    argv += ["-j", str(min(clients, 2)), "-T", str(int(seconds))]
    if rate is not None:
        argv += ["-R", str(max(rate / CHANGES_PER_SCRIPT, 1.0))]
    started = time.monotonic()
    subprocess.run([*argv, DATABASE], env=psql_env(settings), check=True, capture_output=True)
    elapsed = time.monotonic() - started
    time.sleep(0.6)  # the backends' statistics reach pg_stat at exit
    return changes_so_far(settings) - before, elapsed


def create_slot(settings: CapaSettings, name: str) -> None:
    _sql(settings, f"SELECT pg_create_logical_replication_slot('{name}', 'pgoutput')")


def capture_settings(base: CapaSettings, name: str, **debezium: Any) -> CapaSettings:
    pg = base.postgres.model_copy(update={"database": DATABASE})
    dbz = base.debezium.model_copy(
        update={
            "source_name": SOURCE,
            "engine_name": f"bench-{name}",
            "slot_name": name,
            "publication": SOURCE,
            "table_include_list": ",".join(f"public.{t}" for t in TABLES),
            "initial_load": "debezium",
            "snapshot_mode": "no_data",
            **debezium,
        }
    )
    lake = LocalWarehouseConfig(path=base.state_dir / f"lake-{name}")
    kafka = base.kafka.model_copy(update={"topic": f"capa.{name}", "dlq_topic": f"dlq.{name}"})
    return base.model_copy(
        update={"postgres": pg, "debezium": dbz, "warehouse": lake, "kafka": kafka}
    )


# --- stage: Debezium -> Python hand-off (in this process) ----------------------------------


class CountingHandler:
    """Takes each record across JPype like the bridge, keeps the first ``keep`` of them.

    ``touch=False``: counts the batch's records without reading them (Debezium's own rate;
    ``expected`` then counts tombstones too)."""

    def __init__(self, expected: int, keep: int, touch: bool = True) -> None:
        self.expected, self.keep, self.touch = expected, keep, touch
        self.kept: list[dict[str, Any]] = []
        self.rows = 0
        self.first_at: float | None = None
        self.done_at: float | None = None
        self.done = threading.Event()

    def handleJsonBatch(self, records: Any) -> None:
        from connectors.debezium.bridge import record_of

        if self.first_at is None:
            self.first_at = time.monotonic()
        if not self.touch:
            self.rows += len(records)
            self._check()
            return
        batch = [record_of(r) for r in records]
        self.rows += sum(1 for r in batch if r["destination"].startswith(f"{SOURCE}.public."))
        room = self.keep - len(self.kept)
        if room > 0:
            self.kept.extend(batch[:room])
        self._check()

    def _check(self) -> None:
        if self.rows >= self.expected and not self.done.is_set():
            self.done_at = time.monotonic()
            self.done.set()


def serve_registry() -> tuple[str, Any]:
    """A throwaway in-memory schema registry (register and fetch by id) for the Avro
    converter; (its URL, the server to shut down)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    schemas: dict[str, int] = {}

    class Registry(BaseHTTPRequestHandler):
        def _reply(self, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # register (or look up) a schema under a subject
            text = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["schema"]
            self._reply({"id": schemas.setdefault(text, len(schemas) + 1)})

        def do_GET(self) -> None:
            ids = {v: k for k, v in schemas.items()}
            self._reply({"schema": ids.get(int(self.path.split("/")[3].split("?")[0]), "")})

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


class AvroHandler(CountingHandler):
    """Debezium's Avro output (Confluent framing, a throwaway registry): each value's bytes."""

    def handleJsonBatch(self, records: Any) -> None:
        if self.first_at is None:
            self.first_at = time.monotonic()
        for record in records:
            value = record.value()
            if value is not None and str(record.destination()).startswith(f"{SOURCE}.public."):
                bytes(value)
                self.rows += 1
        self._check()


def stage_handoff(
    settings: CapaSettings,
    expected: int,
    keep: int,
    touch: bool = True,
    avro: bool = False,
) -> tuple[float, list[Any]]:
    """Debezium drains the backlog into a counting handler: (records/s, kept records)."""
    from connectors.debezium.engine import (
        EmbeddedDebezium,
        debezium_properties,
        jvm_options,
        write_log4j_config,
    )

    handler = (AvroHandler if avro else CountingHandler)(expected, keep, touch)
    log4j = write_log4j_config(settings.state_dir)
    props = debezium_properties(settings)
    registry = None
    if avro:
        props["converter.schema.registry.url"], registry = serve_registry()
    engine = EmbeddedDebezium(props, handler, jvm_opts=jvm_options(log4j))
    if avro:
        import jpype

        engine.engine.format = jpype.JClass("io.debezium.engine.format.Avro")
    started = time.monotonic()
    engine.start()
    try:
        deadline = time.monotonic() + 600
        while not handler.done.wait(1):
            if engine.wait(0) or time.monotonic() > deadline:
                raise RuntimeError(f"hand-off: {handler.rows} of {expected} changes")
    finally:
        engine.close()
        engine.wait(60)
        if registry is not None:
            registry.shutdown()
    assert handler.first_at is not None and handler.done_at is not None
    logs = f"start-up {handler.first_at - started:.1f} s"
    print(
        f"handoff {settings.debezium.slot_name}: {expected} records in {handler.done_at - handler.first_at:.1f} s ({logs})"
    )
    return expected / (handler.done_at - handler.first_at), handler.kept


# --- alternative: PostgreSQL's pgoutput read and decoded in Python (no JVM) ---------------


def stage_pgoutput(settings: CapaSettings, slot: str, expected: int) -> float:
    """Row changes/s of reading the slot's pgoutput stream through the SQL interface
    (``pg_logical_slot_get_binary_changes``, in chunks) and decoding every Insert/Update/Delete
    into a typed row (int, Decimal, text, datetime by the relation's type OIDs): the floor of
    a native logical-replication reader written in Python."""
    import psycopg

    decoder = PgOutputDecoder()
    started = time.monotonic()
    with psycopg.connect(settings.postgres.dsn(DATABASE), autocommit=True) as conn:
        while decoder.rows < expected:
            cur = conn.execute(
                "SELECT data FROM pg_logical_slot_get_binary_changes(%s, NULL, 20000, "
                "'proto_version', '1', 'publication_names', %s)",
                (slot, SOURCE),
            )
            got = 0
            for (data,) in cur:
                decoder.message(bytes(data))
                got += 1
            if not got:
                raise RuntimeError(f"pgoutput: slot empty after {decoder.rows} of {expected}")
    elapsed = time.monotonic() - started
    print(f"pgoutput: {decoder.rows} changes in {elapsed:.1f} s")
    return decoder.rows / elapsed


class PgOutputDecoder:
    """pgoutput protocol v1 messages -> typed rows (a measuring prototype, not production)."""

    def __init__(self) -> None:
        import struct
        from datetime import datetime
        from decimal import Decimal

        self.rows = 0
        self.relations: dict[int, tuple[str, list[tuple[str, Any]]]] = {}
        self._u32, self._u16 = struct.Struct(">I"), struct.Struct(">H")
        self._types: dict[int, Any] = {20: int, 21: int, 23: int, 1700: Decimal, 25: str}
        self._types[1184] = lambda t: datetime.fromisoformat(t)

    def message(self, data: bytes) -> None:
        kind = data[:1]
        if kind == b"R":
            self._relation(data)
        elif kind in (b"I", b"U", b"D"):
            self._change(kind, data)

    def _relation(self, data: bytes) -> None:
        oid = self._u32.unpack_from(data, 1)[0]
        start = data.index(b"\0", 5) + 1  # after the namespace
        pos = data.index(b"\0", start) + 1
        name = data[start : pos - 1].decode()
        pos += 1  # replica identity
        ncols = self._u16.unpack_from(data, pos)[0]
        pos += 2
        cols = []
        for _ in range(ncols):
            end = data.index(b"\0", pos + 1)
            col = data[pos + 1 : end].decode()
            type_oid = self._u32.unpack_from(data, end + 1)[0]
            pos = end + 9
            cols.append((col, self._types.get(type_oid, str)))
        self.relations[oid] = (name, cols)

    def _change(self, kind: bytes, data: bytes) -> None:
        oid = self._u32.unpack_from(data, 1)[0]
        pos = 5
        row: dict[str, Any] | None = None
        while pos < len(data):
            tag = data[pos : pos + 1]
            row, pos = self._tuple(oid, data, pos + 1)
            if tag == b"N":
                break
        assert row is not None
        self.rows += 1

    def _tuple(self, oid: int, data: bytes, pos: int) -> tuple[dict[str, Any], int]:
        _, cols = self.relations[oid]
        n = self._u16.unpack_from(data, pos)[0]
        pos += 2
        row: dict[str, Any] = {}
        for i in range(n):
            name, cast = cols[i]
            tag = data[pos : pos + 1]
            pos += 1
            if tag == b"t":
                size = self._u32.unpack_from(data, pos)[0]
                row[name] = cast(data[pos + 4 : pos + 4 + size].decode())
                pos += 4 + size
            else:
                row[name] = None
        return row, pos


# --- stage: normalise + produce (no JVM) ---------------------------------------------------


class _Record:
    """A kept record dressed as the engine's Java ChangeEvent (what ``record_of`` reads)."""

    def __init__(self, record: dict[str, Any]) -> None:
        self._r = record

    def destination(self) -> str:
        return str(self._r["destination"])

    def key(self) -> str | None:
        return self._r["key"]  # type: ignore[no-any-return]

    def value(self) -> str | None:
        return self._r["value"]  # type: ignore[no-any-return]


def stage_normalise_produce(settings: CapaSettings, records: list[Any], batch: int) -> float:
    from connectors.base import get_normalizer
    from connectors.debezium.bridge import DebeziumKafkaBridge
    from connectors.kafka.admin import ensure_topics
    from connectors.kafka.producer import KafkaChangeProducer

    kafka = settings.kafka
    ensure_topics(kafka, {kafka.topic: kafka.partitions, kafka.dlq_topic: 1})
    producer = KafkaChangeProducer(kafka)
    bridge = DebeziumKafkaBridge(
        get_normalizer("debezium-json", source=SOURCE), producer, source=SOURCE
    )
    wrapped = [_Record(r) for r in records]
    started = time.monotonic()
    for i in range(0, len(wrapped), batch):
        bridge.handleJsonBatch(wrapped[i : i + batch])
    elapsed = time.monotonic() - started
    producer.close()
    if bridge.dead_letters:
        raise RuntimeError(f"normalise+produce: {bridge.dead_letters} dead letter(s)")
    print(f"normalise_produce: {bridge.events} events in {elapsed:.1f} s")
    return bridge.events / elapsed


# --- stage: the bridge process (Debezium into Kafka) ---------------------------------------


def topic_size(settings: CapaSettings, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": "bench-size"})
    try:
        meta = consumer.list_topics(topic, timeout=10)
        parts = meta.topics[topic].partitions if topic in meta.topics else {}
        total = 0
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def start_bridge(
    settings: CapaSettings, log: Path, code: Path | None = None
) -> subprocess.Popen[bytes]:
    """The bridge process; ``code``: another checkout's capa (an in-run baseline)."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    env = settings_environment(settings)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "connectors.debezium.bridge"],
            cwd=settings.state_dir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stage_bridge(
    settings: CapaSettings, expected: int, log: Path, code: Path | None = None
) -> tuple[float, Any]:
    """The bridge process drains the backlog: (changes/s after its first event, process)."""
    proc = start_bridge(settings, log, code)
    first_at: float | None = None
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the bridge exited ({log})")
        size = topic_size(settings, settings.kafka.topic)
        now = time.monotonic()
        if size and first_at is None:
            first_at, first_size = now, size
        if size >= expected:
            assert first_at is not None
            rate = (size - first_size) / max(now - first_at, 1e-6)
            print(f"bridge: {size} events, {rate:.0f}/s after the first")
            return rate, proc
        time.sleep(0.25)
    proc.terminate()
    raise RuntimeError(f"bridge: backlog not drained in 900 s ({log})")


# --- stage: apply --------------------------------------------------------------------------


def apply_argv(settings: CapaSettings, status: Path, group: str) -> list[str]:
    kafka, lake = settings.kafka, settings.warehouse.path  # type: ignore[union-attr]
    return [
        *(sys.executable, "-m", "beam_jobs.streaming_apply", "--bootstrap", kafka.bootstrap),
        *("--topic", kafka.topic, "--dlq_topic", kafka.dlq_topic, "--warehouse", f"local:{lake}"),
        *("--consumer_group", group, "--status_file", str(status)),
    ]


def stage_apply(settings: CapaSettings, events: int, log: Path) -> tuple[float, float]:
    """(apply events/s from the job's status file, bare Kafka read events/s)."""
    from bench.bench_streaming import StatusSampler, bare_read_rate

    status = log.with_suffix(".status.json")
    with StatusSampler(status) as sampler, log.open("ab") as out:
        started = time.monotonic()
        subprocess.run(
            [*apply_argv(settings, status, "bench-apply"), "--stop_at_end"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=True,
        )  # fmt: skip
        wall = time.monotonic() - started
    steady = sampler.steady_rate(events)
    rate = steady if steady else events / wall
    read_rate = bare_read_rate(settings.kafka, events)
    print(f"apply: {rate:.0f}/s (wall {events / wall:.0f}/s); bare read {read_rate:.0f}/s")
    return rate, read_rate


# --- end to end -------------------------------------------------------------------------------


class CaptureProbe:
    """Reads the canonical topic from its end while the e2e steps run: for each event, its
    Kafka timestamp (the bridge's produce time) minus its source commit time, i.e. the
    capture half of the latency (commit -> in Kafka), apart from the apply job's half."""

    def __init__(self, settings: CapaSettings) -> None:
        self.settings = settings
        self.samples: list[tuple[float, float]] = []  # (kafka time s, latency s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture-probe", daemon=True)

    def __enter__(self) -> CaptureProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        from confluent_kafka import OFFSET_END, Consumer, TopicPartition

        from capa.codec import decode_single_object
        from capa.errors import DecodeError

        topic = self.settings.kafka.topic
        consumer = Consumer(
            {"bootstrap.servers": self.settings.kafka.bootstrap, "group.id": "bench-probe"}
        )
        parts = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in parts])
        try:
            while not self._stop.is_set():
                for msg in consumer.consume(2000, 0.5):
                    value = msg.value()
                    if msg.error() is not None or not value:
                        continue
                    try:
                        commit_us = decode_single_object(value).commit_ts_us
                    except DecodeError:
                        continue
                    if commit_us is not None:
                        at = msg.timestamp()[1] / 1000
                        self.samples.append((at, at - commit_us / 1e6))
        finally:
            consumer.close()

    def p99(self, since: float, until: float) -> float | None:
        window = sorted(lat for at, lat in self.samples if since <= at <= until)
        return round(window[min(int(0.99 * len(window)), len(window) - 1)], 3) if window else None


def e2e_step(
    settings: CapaSettings,
    script: Path,
    clients: int,
    rate: float,
    seconds: float,
    status: Path,
    probe: CaptureProbe,
) -> dict[str, Any]:
    """One offered rate with the bridge and the apply job running: the step's p99 is the
    job's ``latency_recent_p99_s`` (changes made visible in the last 30 s) read once every
    change of the step is applied (or the target has passed since pgbench ended)."""

    def snapshot() -> dict[str, Any]:
        return dict(json.loads(status.read_text())) if status.exists() else {"events_applied": 0}

    applied0 = snapshot()["events_applied"]
    began = time.time()
    made, elapsed = pgbench(settings, script, clients, seconds, rate)
    deadline = time.monotonic() + P99_TARGET_S
    snap = snapshot()
    while snap["events_applied"] - applied0 < made and time.monotonic() < deadline:
        time.sleep(0.2)
        snap = snapshot()
    arrived = snap["events_applied"] - applied0
    step = {
        "offered": rate,
        "achieved": round(made / elapsed, 1),
        "changes": made,
        "applied_in_time": arrived,
        "p99_s": snap.get("latency_recent_p99_s"),
        "samples": snap.get("latency_recent_samples"),
        "capture_p99_s": probe.p99(began, time.time()),
    }
    p99 = step["p99_s"]
    step["kept_up"] = bool(arrived >= made and p99 is not None and p99 <= P99_TARGET_S)
    print(f"e2e step: {json.dumps(step)}")
    return step


def run_e2e(
    settings: CapaSettings, script: Path, args: argparse.Namespace, logs: Path
) -> list[dict[str, Any]]:
    """The apply job (continuing the ``apply`` stage's group) while pgbench steps its rate."""
    from beam_jobs.apply_stats import RECENT_S

    status = logs / "e2e.status.json"
    steps: list[dict[str, Any]] = []
    with (logs / "e2e.log").open("ab") as out:
        job = subprocess.Popen(
            apply_argv(settings, status, "bench-apply"),
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            time.sleep(10)  # the job's start-up (it has nothing to apply yet)
            for rate in (float(r) for r in args.rates.split(",")):
                with CaptureProbe(settings) as probe:
                    step = e2e_step(
                        settings,
                        script,
                        args.clients,
                        rate,
                        max(args.step_s, RECENT_S),
                        status,
                        probe,
                    )
                steps.append(step)
                if not step["kept_up"]:
                    break
        finally:
            job.terminate()
            try:
                job.wait(120)
            except subprocess.TimeoutExpired:
                job.kill()
    return steps


def _wait_for(ready: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.25)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows per table")
    parser.add_argument("--clients", type=int, default=4, help="pgbench clients")
    parser.add_argument("--source_s", type=float, default=10.0, help="unthrottled pgbench run")
    parser.add_argument("--backlog_s", type=float, default=10.0, help="pgbench run for the backlog")
    parser.add_argument("--keep", type=int, default=50_000, help="records kept for normalise")
    parser.add_argument("--rates", default="1000,2000,3000,4000,6000", help="e2e changes/s")
    parser.add_argument("--step_s", type=float, default=30.0)
    parser.add_argument("--skip_e2e", action="store_true")
    parser.add_argument(
        "--baseline_code",
        default=None,
        help="a checkout of capa whose bridge drains the same backlog first (in-run baseline)",
    )
    parser.add_argument("--dump", default=None, help="write the kept records here (JSON lines)")
    add_json_out(parser)
    args = parser.parse_args()
    state = throwaway_state_dir("capa-bench-capture-")
    base = throwaway_settings(state)
    script = state / "changes.sql"
    script.write_text(SCRIPT.format(rows=args.rows))
    figures: dict[str, float] = {}
    steps: list[dict[str, Any]] = []
    bridge_proc = None
    try:
        with running_service(PostgresCluster(StateDirs(state), base.postgres)):
            create_schema(base, args.rows)
            made, secs = pgbench(base, script, args.clients, args.source_s)
            figures["source"] = made / secs
            print(f"source: {made} changes in {secs:.1f} s = {made / secs:.0f}/s")
            handoff = capture_settings(base, "handoff")
            engine_only = capture_settings(base, "engine")
            schemaless = capture_settings(base, "schemaless", json_schemas=False)
            bridge = capture_settings(base, "bridge")
            before = capture_settings(base, "before")
            avro = capture_settings(base, "avro")
            slots = ("handoff", "engine", "schemaless", "avro", "pgoutput", "bridge", "before")
            for name in slots:
                create_slot(base, name)
            deletes = int(
                _sql(base, "SELECT n_tup_del FROM pg_stat_user_tables WHERE relname='t3'")
            )
            backlog, _ = pgbench(base, script, args.clients, args.backlog_s)
            deletes = (
                int(_sql(base, "SELECT n_tup_del FROM pg_stat_user_tables WHERE relname='t3'"))
                - deletes
            )
            print(f"backlog: {backlog} changes ({deletes} deletes, each + a tombstone)")
            figures["pgoutput_python"] = stage_pgoutput(base, "pgoutput", backlog)
            with running_service(KafkaBroker(StateDirs(state), base.kafka)):
                figures["debezium_engine"], _ = stage_handoff(
                    engine_only, backlog + deletes, 0, touch=False
                )
                figures["debezium_engine"] *= backlog / (backlog + deletes)  # as row changes
                figures["handoff"], kept = stage_handoff(handoff, backlog, args.keep)
                figures["handoff_schemaless"], kept_plain = stage_handoff(
                    schemaless, backlog, args.keep
                )
                try:
                    figures["handoff_avro"], _ = stage_handoff(avro, backlog, 0, avro=True)
                except Exception as exc:  # an alternative that does not run is reported
                    print(f"handoff_avro: failed: {exc}")
                if args.dump:
                    Path(args.dump).write_text("".join(json.dumps(r) + "\n" for r in kept))
                figures["normalise_produce"] = stage_normalise_produce(handoff, kept, 2048)
                figures["normalise_produce_schemaless"] = stage_normalise_produce(
                    schemaless, kept_plain, 2048
                )
                if args.baseline_code:
                    rate, proc = stage_bridge(
                        before, backlog, state / "before.log", Path(args.baseline_code)
                    )
                    figures["bridge_baseline"] = rate
                    proc.terminate()
                    proc.wait(60)
                figures["bridge"], bridge_proc = stage_bridge(bridge, backlog, state / "bridge.log")
                figures["apply"], figures["kafka_read"] = stage_apply(
                    bridge, backlog, state / "apply.log"
                )
                if not args.skip_e2e:
                    steps = run_e2e(bridge, script, args, state)
                bridge_proc.terminate()
                bridge_proc.wait(60)
                bridge_proc = None
    finally:
        if bridge_proc is not None:
            bridge_proc.kill()
        shutil.rmtree(state, ignore_errors=True)
    kept_up = [s["achieved"] for s in steps if s["kept_up"]]
    if steps:
        figures["e2e_sustained"] = max(kept_up, default=0.0)
    params = {
        "rows_per_table": args.rows,
        "clients": args.clients,
        "backlog_changes": backlog,
        "step_s": args.step_s,
        "steps": steps,
    }
    result = make_result(
        "capture",
        params,
        figures,
        baselines={
            **({"e2e_sustained": figures["source"]} if steps else {}),
            **({"bridge": figures["bridge_baseline"]} if "bridge_baseline" in figures else {}),
        },
        baseline_labels={
            "e2e_sustained": "pgbench alone, unthrottled (row changes/s)",
            "bridge": f"the bridge of {args.baseline_code} on the same backlog",
        },
        units={k: "changes/s" for k in figures},
    )
    print(json.dumps(result, indent=2))
    if args.json_out:
        write_result(args.json_out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
