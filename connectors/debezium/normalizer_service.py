"""The normaliser service: Kafka Connect's Debezium topics -> canonical events, exactly once.

On-prem, Debezium runs inside Kafka Connect and writes its own per-table topics
(``f2.public.orders``, ``f3.crm.dbo.accounts`` ... in the JSON converter's format). This
process turns them into the canonical ``kafka.topic`` with the same normaliser the embedded
bridge uses (:class:`~connectors.debezium.normalizer.DebeziumNormalizer`, through
:mod:`connectors.debezium.routing`)::

    python -m connectors.debezium.normalizer_service   # settings from capa.config (CAPA__*)

It is a consume-transform-produce loop inside Kafka transactions. Each step reads up to
``normalizer.max_batch`` records (``read_committed``: only what Connect committed), and in
ONE transaction produces their canonical events and dead letters and adds the consumer's
next offsets (``send_offsets_to_transaction`` with the group metadata). Either all of that
becomes visible to ``read_committed`` readers (the apply job) or none of it does: after a
kill -9 the restarted service fences its predecessor (same ``transactional.id``), whose
open transaction is aborted, and resumes from the committed offsets. No change is lost and
none is produced twice. A transaction that fails is aborted and its batch redone from the
committed offsets; a fenced or fatally failed producer stops the process (exit 1).

Metrics (``observe.normalizer_metrics_port``, component ``normalizer-service``): records
received, events produced, records skipped and dead letters by table and reason, counted
after their transaction committed.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from capa import metrics
from capa.config import CapaSettings
from capa.errors import CapaError
from capa.events import ChangeEvent
from capa.runtime import start_service
from connectors.base import Normalizer, RawRecord, get_normalizer, normalize_one
from connectors.debezium import routing
from connectors.kafka.admin import ensure_topics
from connectors.kafka.consumer import build_consumer
from connectors.kafka.producer import TransactionAborted, TransactionalChangeProducer

logger = logging.getLogger(__name__)

COMPONENT = "normalizer-service"


def raw_record(msg: Any) -> RawRecord:
    """A consumed Debezium record as the normaliser's ``{destination, key, value}``."""
    location = f"{msg.topic()}/{msg.partition()}@{msg.offset()}"
    record = {"destination": msg.topic(), "key": msg.key(), "value": msg.value()}
    return RawRecord(location, msg.offset(), record, msg.value() or b"")


def table_of(outcome: Any, topic: str) -> str:
    """The metrics table label: the event's ``source.schema.table``, else the topic."""
    if isinstance(outcome, ChangeEvent):
        return metrics.table_label(outcome.source, outcome.schema, outcome.table)
    return topic


def next_offsets(messages: Sequence[Any]) -> list[Any]:
    """Per partition, the offset after the last message: what the group commits."""
    from confluent_kafka import TopicPartition

    last: dict[tuple[str, int], int] = {}
    for msg in messages:
        last[(msg.topic(), msg.partition())] = msg.offset()
    return [TopicPartition(t, p, o + 1) for (t, p), o in sorted(last.items())]


class TransactionalNormalizer:
    """One consumer, one transactional producer; :meth:`step` is one transaction."""

    def __init__(
        self,
        settings: CapaSettings,
        *,
        normalizer: Normalizer | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.config = settings.normalizer
        self.stop = stop or threading.Event()
        self.normalizer = normalizer or get_normalizer("debezium-json")
        self.producer = TransactionalChangeProducer(settings.kafka, self.config.transactional_id)
        self.consumer = build_consumer(
            settings.kafka,
            self.config.group_id,
            [self.config.topic_pattern],
            **{
                "session.timeout.ms": self.config.session_timeout_ms,
                "heartbeat.interval.ms": max(500, self.config.session_timeout_ms // 5),
                "topic.metadata.refresh.interval.ms": 5_000,  # Connect creates topics lazily
                "enable.partition.eof": False,
            },
        )
        self.totals: dict[str, int] = {}
        self.transactions = 0

    def start(self) -> None:
        self.producer.init()

    def step(self) -> int:
        """Read one batch and commit its results in one transaction; records handled."""
        messages = self._poll()
        if not messages:
            return 0
        self.producer.begin()
        handled = [self._handle(msg) for msg in messages]
        try:
            self.producer.commit(next_offsets(messages), self.consumer.consumer_group_metadata())
        except TransactionAborted as exc:
            logger.warning("transaction aborted (%s); redoing the batch", exc)
            self._rewind(messages)
            return 0
        self.transactions += 1
        for table, routed in handled:
            metrics.record_received(COMPONENT, table)
            routing.count(COMPONENT, table, routed)
            routing.tally(routed, self.totals)
        return len(messages)

    def _poll(self) -> list[Any]:
        from confluent_kafka import KafkaError

        out = []
        for msg in self.consumer.consume(self.config.max_batch, self.config.poll_timeout_s):
            error = msg.error()
            if error is None:
                out.append(msg)
            elif error.code() != KafkaError._PARTITION_EOF:
                logger.warning("consume: %s", error.str())
        return out

    def _handle(self, msg: Any) -> tuple[str, routing.Routed]:
        if msg.topic().endswith(f".{self.settings.debezium.signal_table}"):
            return msg.topic(), routing.Routed(routing.SKIPPED, "signal")  # not data
        raw = raw_record(msg)
        outcome = normalize_one(self.normalizer, raw)
        source = msg.topic().split(".", 1)[0]
        return table_of(outcome, msg.topic()), routing.route(outcome, raw, self.producer, source)

    def _rewind(self, messages: Sequence[Any]) -> None:
        """Back to the batch's first offsets (the group's committed ones) to redo it."""
        from confluent_kafka import KafkaException, TopicPartition

        first: dict[tuple[str, int], int] = {}
        for msg in messages:
            key = (msg.topic(), msg.partition())
            first[key] = min(first.get(key, msg.offset()), msg.offset())
        for (topic, partition), offset in first.items():
            try:
                self.consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:  # revoked meanwhile: its new owner redoes it
                logger.info("not rewinding %s/%d: %s", topic, partition, exc)

    def run(self) -> None:
        self.start()
        while not self.stop.is_set():
            self.step()

    def close(self) -> None:
        try:
            self.consumer.close()
        finally:
            self.producer.close()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = start_service()
        kafka = settings.kafka
        ensure_topics(kafka, {kafka.topic: kafka.partitions, kafka.dlq_topic: 1})
        observe = settings.observe
        metrics.serve_metrics(observe.host, observe.normalizer_metrics_port)
        service = TransactionalNormalizer(settings)
        signal.signal(signal.SIGTERM, lambda *_: service.stop.set())
        signal.signal(signal.SIGINT, lambda *_: service.stop.set())
        logger.info(
            "normaliser service: %s -> %s (group %s, transactional.id %s)",
            settings.normalizer.topic_pattern,
            kafka.topic,
            settings.normalizer.group_id,
            settings.normalizer.transactional_id,
        )
        try:
            service.run()
        finally:
            service.close()
        logger.info(
            "normaliser service stopped: %d transaction(s), %s",
            service.transactions,
            service.totals,
        )
        return 0
    except CapaError as exc:
        logger.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
