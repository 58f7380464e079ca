"""Benchmark: the on-prem normaliser service's transactional loop (not a test).

    .venvs/beam/bin/python -m bench.bench_normalizer_service [--events 100000] [--batch 2000]

Starts a throwaway Kafka broker, writes ``--events`` Debezium records shaped like Connect's
JsonConverter output (the ``orders``-like row of :mod:`bench.bench_normalize`, schemaless)
to a 3-partition topic ``f2.public.orders``, then times:

* **baseline**: a bare confluent-kafka consumer reading the same records (no decode);
* **service**: :class:`~connectors.debezium.normalizer_service.TransactionalNormalizer`
  reading them, normalising, producing canonical Avro events and committing one Kafka
  transaction (events + consumer offsets) per batch, until every record is handled.

Prints events/s (wall clock) of both and the ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import uuid

from bench.bench_normalize import debezium_lines
from capa.config import NormalizerConfig
from capa_app.stack.base import StateDirs
from capa_app.stack.kafka import KafkaBroker, ensure_topics
from capa_app.stack.throwaway import running_service, throwaway_settings, throwaway_state_dir
from connectors.debezium.normalizer_service import TransactionalNormalizer
from connectors.kafka.clients import client_config
from connectors.kafka.consumer import build_consumer

TOPIC = "f2.public.orders"


def produce(kafka: KafkaBroker, lines: list[str]) -> None:
    from confluent_kafka import Producer

    producer = Producer(client_config(kafka.config, {"linger.ms": 20}, bootstrap=kafka.bootstrap))
    for line in lines:
        record = json.loads(line)
        key = json.dumps(record["key"]).encode()
        producer.produce(TOPIC, json.dumps(record["value"]).encode(), key)
        producer.poll(0)
    producer.flush(60)


def bare_read(kafka: KafkaBroker, events: int) -> float:
    consumer = build_consumer(kafka.config, f"bare-{uuid.uuid4().hex[:6]}", [TOPIC])
    seen, started = 0, time.perf_counter()
    try:
        while seen < events:
            seen += sum(1 for m in consumer.consume(2000, 0.5) if m.error() is None)
    finally:
        consumer.close()
    return events / (time.perf_counter() - started)


def service_run(settings: object, events: int) -> float:
    service = TransactionalNormalizer(settings)  # type: ignore[arg-type]
    service.start()
    handled, started = 0, time.perf_counter()
    try:
        while handled < events:
            handled += service.step()
    finally:
        service.close()
    return events / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=2_000)
    args = parser.parse_args()
    state_dir = throwaway_state_dir("capa-bench-norm-")
    try:
        base = throwaway_settings(state_dir)
        settings = base.model_copy(
            update={
                "normalizer": NormalizerConfig(
                    topic_pattern=r"^f2\..+",
                    group_id="bench-normalizer",
                    transactional_id="bench-normalizer",
                    max_batch=args.batch,
                )
            }
        )
        with running_service(KafkaBroker(StateDirs(state_dir), settings.kafka)) as kafka:
            ensure_topics(kafka.admin(), {TOPIC: 3})
            produce(kafka, debezium_lines(args.events))
            baseline = bare_read(kafka, args.events)
            service = service_run(settings, args.events)
        print(f"bare consume: {baseline:,.0f} records/s")
        print(f"normaliser service (transactions of {args.batch}): {service:,.0f} events/s")
        print(f"ratio: {service / baseline:.2f}")
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
