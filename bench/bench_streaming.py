"""Benchmarks of the streaming apply job (not tests): throughput, latency, backlog catch-up.

    .venvs/beam/bin/python -m bench.bench_streaming [--rows 1000000] [--updates 200000]
        [--rate 2000] [--latency_s 60]

Starts a throwaway Kafka broker (capa_app.stack.kafka, free ports, temp state dir), then:

1. backlog: ``--rows`` inserts produced, then the bounded job (subprocess, FnApiRunner)
   applies them into an empty local lakehouse: wall time to catch up (target <= 90 s at 1M),
   then the time to compact the merge-on-read pending log into the base table;
2. sustained apply: ``--updates`` random updates into that ``--rows``-row table, events/s
   of the job vs. a bare confluent-kafka read of the same topic (target ratio >= 0.5).
   ``sustained_apply`` is the steady rate, from the job's status file (first applied batch
   to the last; small runs applied in one or two batches have none and report the wall
   rate, see ``sustained_apply_measure``); ``sustained_apply_wall`` divides by the whole
   run, job start-up and the compaction at the clean stop included;
3. latency: the unbounded job while a producer sends ``--rate`` events/s for
   ``--latency_s`` s with commit_ts = send time; p50/p99 of commit -> visible in raw,
   measured by the job after each warehouse commit (status file; target p99 <= 3 s).

Prints a JSON summary and a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import add_json_out, make_result, write_result
from capa.config import KafkaConfig
from capa.events import ChangeEvent, Op, SourceKind
from capa_app.stack.base import StateDirs, free_port
from capa_app.stack.kafka import KafkaBroker, ensure_topics
from connectors.kafka.producer import KafkaChangeProducer

ROOT = Path(__file__).resolve().parents[1]


def event(key: int, seq: int, op: Op, commit_ts_us: int) -> ChangeEvent:
    return ChangeEvent(
        source="bench",
        source_kind=SourceKind.POSTGRES,
        database="db",
        schema="public",
        table="t",
        op=op,
        position=f"{seq:016x}.1",
        commit_ts_us=commit_ts_us,
        primary_key=("id",),
        key={"id": key},
        before=None,
        after={"id": key, "qty": seq % 1000, "name": f"row-{key}-{seq}", "price": seq * 0.01},
    )


def produce(config: KafkaConfig, events: Any) -> int:
    producer = KafkaChangeProducer(config, client_settings={"linger.ms": 20})
    n = 0
    for e in events:
        producer.send(e)
        n += 1
    producer.flush()
    producer.close()
    return n


def job(config: KafkaConfig, warehouse: Path, status: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "beam_jobs.streaming_apply",
        "--bootstrap",
        config.bootstrap,
        "--topic",
        config.topic,
        "--dlq_topic",
        config.dlq_topic,
        "--warehouse",
        f"local:{warehouse}",
        "--consumer_group",
        "bench",
        "--status_file",
        str(status),
        *extra,
    ]


def run_bounded(argv: list[str], log: Path) -> float:
    started = time.monotonic()
    with log.open("ab") as out:
        subprocess.run(
            [*argv, "--stop_at_end"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=True
        )
    return time.monotonic() - started


class StatusSampler:
    """Samples the job's status file (events applied) while it runs, so the steady apply rate
    can be told apart from start-up (Beam, partition discovery) and the final compaction."""

    def __init__(self, status: Path) -> None:
        self.status = status
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StatusSampler:
        self.status.unlink(missing_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                status = json.loads(self.status.read_text())
                applied, at = int(status["events_applied"]), float(status["last_batch_at"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if not self.samples or self.samples[-1][1] != applied:
                self.samples.append((at, applied))  # the job's clock: when the batch was visible

    def steady_rate(self, total: int) -> float | None:
        """Events/s from the first applied batch to the batch that completed ``total``; None
        when the first batch already held most of the events (small runs): no steady state."""
        if not self.samples:
            return None
        first = self.samples[0]
        last = next((s for s in self.samples if s[1] >= total), self.samples[-1])
        if last[1] - first[1] < total / 2:
            return None
        return (last[1] - first[1]) / max(last[0] - first[0], 1e-6)


def compact(warehouse: Path) -> float:
    """Seconds to compact the merge-on-read pending logs into the base tables."""
    from capa.warehouse.local import LocalWarehouse

    started = time.monotonic()
    LocalWarehouse(warehouse).compact()
    return time.monotonic() - started


def bare_read_rate(config: KafkaConfig, expected: int) -> float:
    """Events/s of a bare confluent-kafka read of the whole topic. The partitions are assigned
    explicitly (no group join to wait for) and the clock starts before the first ``consume``,
    so the fetch that librdkafka prefetches into its queue is counted too (starting at the first
    message made small topics, read from one prefetched batch, look millions of events/s fast)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": config.bootstrap,
            "group.id": f"bare-{time.time()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    partitions = consumer.list_topics(config.topic, timeout=30).topics[config.topic].partitions
    consumer.assign([TopicPartition(config.topic, p, OFFSET_BEGINNING) for p in partitions])
    got, started = 0, time.monotonic()
    while got < expected:
        msgs = consumer.consume(10_000, 1.0)
        got += sum(1 for m in msgs if m.error() is None)
    elapsed = time.monotonic() - started
    consumer.close()
    return got / max(elapsed, 1e-6)


def steady_producer(
    config: KafkaConfig, rate: int, seconds: float, first_seq: int, keys: int
) -> int:
    producer = KafkaChangeProducer(config, client_settings={"linger.ms": 5})
    rng = random.Random(3)
    sent, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        due = int((time.monotonic() - started) * rate)
        while sent < due:
            producer.send(
                event(rng.randrange(keys), first_seq + sent, Op.UPDATE, int(time.time() * 1e6))
            )
            sent += 1
        producer._client().poll(0)
        time.sleep(0.005)
    producer.flush()
    producer.close()
    return sent


def json_result(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    """The run_all result; the bare confluent-kafka read of the same topic is the baseline of the
    sustained apply rate and (as seconds to read ``--rows`` events) of the backlog catch-up."""
    bare = results["bare_read_events_per_s"]
    figures = {
        "backlog_catch_up": results["backlog_catch_up_s"],
        "backlog_compact": results["backlog_compact_s"],
        "sustained_apply": results["sustained_apply_events_per_s"],
        "sustained_apply_wall": results["sustained_apply_wall_events_per_s"],
        "latency_p50": results["latency_p50_s"],
        "latency_p99": results["latency_p99_s"],
    }
    return make_result(
        "streaming",
        {k: v for k, v in vars(args).items() if k != "json_out"},
        figures,
        baselines={
            "backlog_catch_up": args.rows / bare,
            "sustained_apply": bare,
            "sustained_apply_wall": bare,
        },
        baseline_labels={
            "backlog_catch_up": "bare confluent-kafka read of as many events (from its rate)",
            "sustained_apply": "bare confluent-kafka read of the same topic",
            "sustained_apply_wall": "bare confluent-kafka read of the same topic",
        },
        units={
            "backlog_catch_up": "s",
            "backlog_compact": "s",
            "sustained_apply": "events/s",
            "sustained_apply_wall": "events/s",
            "latency_p50": "s",
            "latency_p99": "s",
        },
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--updates", type=int, default=200_000)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--latency_s", type=float, default=60.0)
    add_json_out(parser)
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="capa-bench-stream-"))
    config = KafkaConfig(
        port=free_port(),
        controller_port=free_port(),
        topic="bench.changes",
        dlq_topic="bench.dlq",
        partitions=3,
    )
    broker = KafkaBroker(StateDirs(tmp / "state").create(), config)
    broker.start()
    results: dict[str, Any] = {"rows": args.rows}
    try:
        ensure_topics(broker.admin(), {config.topic: 3, config.dlq_topic: 1})
        wh, status, log = tmp / "wh", tmp / "status.json", tmp / "apply.log"
        now = int(time.time() * 1e6)
        produce(config, (event(k, k + 1, Op.INSERT, now) for k in range(args.rows)))
        results["backlog_catch_up_s"] = round(run_bounded(job(config, wh, status), log), 1)
        results["backlog_compact_s"] = round(compact(wh), 1)

        rng = random.Random(1)
        seq0 = args.rows + 1
        produce(
            config,
            (
                event(rng.randrange(args.rows), seq0 + i, Op.UPDATE, now)
                for i in range(args.updates)
            ),
        )
        with StatusSampler(status) as sampler:
            seconds = run_bounded(job(config, wh, status), log)
        wall = args.updates / seconds
        steady = sampler.steady_rate(args.updates)
        results["sustained_apply_events_per_s"] = round(wall if steady is None else steady)
        results["sustained_apply_measure"] = (
            "wall (no steady state)" if steady is None else "steady"
        )
        results["sustained_apply_wall_events_per_s"] = round(wall)
        bare = bare_read_rate(config, args.rows + args.updates)
        results["bare_read_events_per_s"] = round(bare)
        results["apply_to_read_ratio"] = round(results["sustained_apply_events_per_s"] / bare, 3)

        with log.open("ab") as out:
            proc = subprocess.Popen(
                job(config, wh, status, "--commit_interval_s", "1.0"),
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            time.sleep(8)  # job start-up (Beam import, partition discovery)
            steady_producer(config, args.rate, args.latency_s, seq0 + args.updates, args.rows)
            time.sleep(5)
            snap = json.loads(status.read_text())
        finally:
            proc.terminate()
            proc.wait(30)
        results.update(
            {
                "latency_rate_per_s": args.rate,
                "latency_p50_s": snap["latency_p50_s"],
                "latency_p99_s": snap["latency_p99_s"],
                "latency_samples": snap["latency_samples"],
            }
        )
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.json_out:
        write_result(args.json_out, json_result(args, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
