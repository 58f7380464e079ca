"""Kafka source for Beam as a splittable DoFn on confluent-kafka, plus the offset committer.

Why not ``ReadFromKafka``: it is cross-language and needs the Java expansion service jar at
run time; this reader runs on every runner (FnApiRunner, Flink, Dataflow, Prism). See
docs/adr/0003-beam-runner-and-kafka-source.md.

* Element: :class:`KafkaPartition` (topic, partition).
* Restriction: an :class:`OffsetRange` of that partition, starting at the consumer group's
  committed offset (the apply job commits only after the warehouse committed), ending at
  "infinity" (streaming) or at the end offset seen at start (``stop_at_end``).
* Each call polls up to ``max_records`` records or ``budget_s`` seconds, yields them as
  :class:`KafkaBatch` elements (one per ``consume`` call, up to 5,000 records: Beam's
  per-element cost is paid per batch, not per record) and defers the remainder
  (self-checkpoint), so every poll round is one bundle and downstream bundle-level work
  (apply + commit) runs once per round.

The reader never commits offsets itself: :class:`KafkaOffsetCommitter` does, driven by
the sink after a successful apply.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple, TypeVar

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.transforms.core import RestrictionProvider

from capa.config import KafkaConfig, load_settings
from capa.errors import ServiceUnavailable
from connectors.kafka.clients import client_config

logger = logging.getLogger(__name__)

UNBOUNDED_END = 2**63 - 1
_INVALID_OFFSET = -1001  # librdkafka OFFSET_INVALID: the group has no committed offset


class KafkaPartition(NamedTuple):
    topic: str
    partition: int


class KafkaBatch(NamedTuple):
    """Consecutive records of one partition, in offset order (offsets may have gaps:
    transaction markers); ``values[i]`` is the value at ``offsets[i]``."""

    topic: str
    partition: int
    offsets: tuple[int, ...]
    values: tuple[bytes | None, ...]

    @property
    def next_offset(self) -> int:
        """The offset to commit once every record of the batch is safe."""
        return self.offsets[-1] + 1


def job_kafka_config(bootstrap: str) -> KafkaConfig:
    """The configured Kafka security (``CAPA__KAFKA__*`` / capa.yaml of the process running
    this step) for the job's ``--bootstrap``."""
    return load_settings().kafka.model_copy(update={"bootstrap_servers": bootstrap})


def _client_settings(bootstrap: str, group: str, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    return client_config(
        job_kafka_config(bootstrap),
        {
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
            **(extra or {}),
        },
    )


def make_consumer(bootstrap: str, group: str, extra: Mapping[str, Any] | None = None) -> Any:
    """A confluent-kafka consumer that is never subscribed (assign/commit only)."""
    from confluent_kafka import Consumer

    return Consumer(_client_settings(bootstrap, group, extra))


T = TypeVar("T")


def retry_while_unavailable(
    call: Callable[[], T], what: str, patience_s: float = 300.0, backoff_s: float = 1.0
) -> T:
    """``call()``, retried with backoff while it raises :class:`ServiceUnavailable`.

    A streaming job started next to a broker that is still coming up (or restarting after a
    crash: "coordinator load in progress", NOT_COORDINATOR) waits for it instead of
    exiting; it gives up after ``patience_s``.
    """
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return call()
        except ServiceUnavailable as exc:
            if time.monotonic() + backoff_s > deadline:
                raise
            logger.warning("%s (%s); retrying in %.0fs", what, exc, backoff_s)
            time.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, 30.0)


def wait_for_partitions(
    bootstrap: str, topic: str, patience_s: float = 300.0, backoff_s: float = 2.0
) -> list[KafkaPartition]:
    """:func:`list_partitions`, retried with backoff while Kafka is (re)starting."""
    return retry_while_unavailable(
        lambda: list_partitions(bootstrap, topic), f"partitions of {topic}", patience_s, backoff_s
    )


def list_partitions(bootstrap: str, topic: str, timeout_s: float = 15.0) -> list[KafkaPartition]:
    """The topic's partitions; :class:`ServiceUnavailable` if the broker or topic is missing."""
    consumer = make_consumer(bootstrap, "capa-metadata")
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s)
    except Exception as exc:  # KafkaException: broker down / timeout
        raise ServiceUnavailable(f"Kafka at {bootstrap} did not answer: {exc}") from exc
    finally:
        consumer.close()
    found = meta.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise ServiceUnavailable(
            f"topic {topic!r} does not exist on {bootstrap}; start the producer (capa up) first"
        )
    return [KafkaPartition(topic, p) for p in sorted(found.partitions)]


class KafkaOffsetCommitter:
    """Reads and commits a consumer group's offsets and reads partition end offsets."""

    def __init__(self, bootstrap: str, group: str, extra: Mapping[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self._consumer = make_consumer(bootstrap, group, extra)

    def committed(self, partition: KafkaPartition, timeout_s: float = 15.0) -> int | None:
        from confluent_kafka import KafkaException, TopicPartition

        tp = TopicPartition(partition.topic, partition.partition)
        try:
            (result,) = self._consumer.committed([tp], timeout=timeout_s)
        except KafkaException as exc:  # e.g. NOT_COORDINATOR while the broker starts
            raise ServiceUnavailable(f"reading offsets of group {self.group!r}: {exc}") from exc
        return None if result.offset == _INVALID_OFFSET or result.offset < 0 else result.offset

    def watermarks(self, partition: KafkaPartition, timeout_s: float = 15.0) -> tuple[int, int]:
        from confluent_kafka import KafkaException, TopicPartition

        tp = TopicPartition(partition.topic, partition.partition)
        try:
            low, high = self._consumer.get_watermark_offsets(tp, timeout=timeout_s, cached=False)
        except KafkaException as exc:
            raise ServiceUnavailable(f"reading the end offsets of {partition}: {exc}") from exc
        return int(low), int(high)

    def start_offset(self, partition: KafkaPartition) -> int:
        """Where reading resumes: the committed offset, else the earliest retained one."""
        committed = self.committed(partition)
        low, _ = self.watermarks(partition)
        return low if committed is None else max(committed, low)

    def commit(self, next_offsets: Mapping[KafkaPartition, int]) -> None:
        """Synchronously commit ``partition -> next offset to read`` for the group."""
        from confluent_kafka import KafkaException, TopicPartition

        if not next_offsets:
            return
        tps = [TopicPartition(p.topic, p.partition, o) for p, o in sorted(next_offsets.items())]
        try:
            results = self._consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            raise ServiceUnavailable(f"committing offsets of group {self.group!r}: {exc}") from exc
        failed = [r for r in results or () if r.error is not None]
        if failed:
            raise ServiceUnavailable(f"offset commit refused for {failed[0]}: {failed[0].error}")

    def lag(self, next_offsets: Mapping[KafkaPartition, int]) -> int:
        """Events between the given positions and the partitions' end offsets."""
        return sum(max(self.watermarks(p)[1] - o, 0) for p, o in next_offsets.items())

    def close(self) -> None:
        self._consumer.close()


class KafkaOffsetRestrictions(RestrictionProvider):
    """Offset range per partition: [committed, end-at-start) or [committed, infinity)."""

    def __init__(self, bootstrap: str, group: str, stop_at_end: bool) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.stop_at_end = stop_at_end

    def initial_restriction(self, element: KafkaPartition) -> OffsetRange:
        start, end = retry_while_unavailable(
            lambda: self._offsets(element), f"offsets of {element.topic}/{element.partition}"
        )
        logger.info("reading %s/%d from offset %d to %s", *element, start, end)
        return OffsetRange(start, max(start, end))

    def _offsets(self, element: KafkaPartition) -> tuple[int, int]:
        committer = KafkaOffsetCommitter(self.bootstrap, self.group)
        try:
            start = committer.start_offset(element)
            end = committer.watermarks(element)[1] if self.stop_at_end else UNBOUNDED_END
        finally:
            committer.close()
        return start, end

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, element: KafkaPartition, restriction: OffsetRange) -> int:
        return min(restriction.size(), 1 << 40)

    def split(self, element: KafkaPartition, restriction: OffsetRange) -> Iterator[OffsetRange]:
        yield restriction  # one partition is read sequentially: order matters


class _PartitionConsumers:
    """One assigned consumer per partition, reused across bundles; re-seeks when needed."""

    def __init__(self, bootstrap: str, group: str) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self._consumers: dict[KafkaPartition, Any] = {}
        self._next: dict[KafkaPartition, int] = {}

    def at(self, partition: KafkaPartition, offset: int) -> Any:
        from confluent_kafka import TopicPartition

        consumer = self._consumers.get(partition)
        if consumer is None:
            consumer = make_consumer(self.bootstrap, self.group, {"fetch.wait.max.ms": 50})
            self._consumers[partition] = consumer
        if self._next.get(partition) != offset:
            consumer.assign([TopicPartition(partition.topic, partition.partition, offset)])
        return consumer

    def advanced(self, partition: KafkaPartition, next_offset: int) -> None:
        self._next[partition] = next_offset

    def forget(self, partition: KafkaPartition) -> None:
        self._next.pop(partition, None)

    def close(self) -> None:
        for consumer in self._consumers.values():
            consumer.close()
        self._consumers.clear()
        self._next.clear()


@beam.DoFn.unbounded_per_element()
class ReadKafkaPartitionFn(beam.DoFn, RestrictionProvider):
    """Splittable DoFn: one partition's records in offset order, one poll round per call.

    It is its own restriction provider (delegating to :class:`KafkaOffsetRestrictions`),
    so the configured instance, not a class-level default, computes the restrictions.
    """

    def __init__(
        self,
        restrictions: KafkaOffsetRestrictions,
        *,
        max_records: int,
        budget_s: float,
        poll_timeout_s: float,
    ) -> None:
        self.restrictions = restrictions
        self.max_records = max_records
        self.budget_s = budget_s
        self.poll_timeout_s = poll_timeout_s
        self._consumers: _PartitionConsumers | None = None

    def initial_restriction(self, element: KafkaPartition) -> OffsetRange:
        return self.restrictions.initial_restriction(KafkaPartition(*element))

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return self.restrictions.create_tracker(restriction)

    def restriction_size(self, element: KafkaPartition, restriction: OffsetRange) -> int:
        return self.restrictions.restriction_size(element, restriction)

    def split(self, element: KafkaPartition, restriction: OffsetRange) -> Iterator[OffsetRange]:
        return self.restrictions.split(element, restriction)

    def setup(self) -> None:
        self._consumers = _PartitionConsumers(self.restrictions.bootstrap, self.restrictions.group)

    def teardown(self) -> None:
        if self._consumers is not None:
            self._consumers.close()

    def process(
        self,
        element: KafkaPartition,
        tracker: Any = beam.DoFn.RestrictionParam(),  # noqa: B008 - Beam's SDF idiom
    ) -> Iterator[KafkaBatch]:
        element = KafkaPartition(*element)
        restriction = tracker.current_restriction()
        if restriction.start >= restriction.stop:
            tracker.try_claim(restriction.stop)
            return
        assert self._consumers is not None
        consumer = self._consumers.at(element, restriction.start)
        try:
            done = yield from self._poll_round(consumer, element, tracker)
        except BaseException:
            self._consumers.forget(element)
            raise
        if not done:
            tracker.defer_remainder()

    def _poll_round(self, consumer: Any, element: KafkaPartition, tracker: Any) -> Iterator[Any]:
        """Yield batches until the budget is spent; return True when the range is finished."""
        assert self._consumers is not None
        deadline = time.monotonic() + self.budget_s
        claimed = 0
        while claimed < self.max_records:
            wait = min(self.poll_timeout_s, max(deadline - time.monotonic(), 0.0))
            messages = consumer.consume(min(self.max_records - claimed, 5000), wait)
            kept, finished = _claim(tracker, messages)
            if kept:
                batch = _to_batch(element, kept)
                self._consumers.advanced(element, batch.next_offset)
                claimed += len(kept)
                yield batch
            if finished:
                return True
            stop = tracker.current_restriction().stop
            if stop != UNBOUNDED_END and self._caught_up(consumer, element, stop):
                return not tracker.try_claim(stop)
            if not messages or time.monotonic() >= deadline:
                return False
        return False

    @staticmethod
    def _caught_up(consumer: Any, element: KafkaPartition, stop: int) -> bool:
        from confluent_kafka import TopicPartition

        (position,) = consumer.position([TopicPartition(element.topic, element.partition)])
        return position.offset >= stop


def _raise_on_error(msg: Any) -> None:
    error = msg.error()
    if error is not None:
        raise ServiceUnavailable(f"Kafka read failed on {msg.topic()}/{msg.partition()}: {error}")


def _claim(tracker: Any, messages: list[Any]) -> tuple[list[Any], bool]:
    """Claim one poll's messages with ONE ``try_claim`` (of the last offset kept).

    Returns the messages this restriction owns and whether the restriction is finished.
    Messages at or past the restriction's stop are left to its owner (``stop_at_end``, or
    a split). Should a split land between reading the stop and claiming, the claim fails;
    the messages below the new stop still belong to this (primary) restriction and nobody
    else will read them, so they are kept: nothing is lost, nothing is read twice.
    """
    for msg in messages:
        _raise_on_error(msg)
    stop = tracker.current_restriction().stop
    if messages and messages[-1].offset() < stop:  # offsets rise within a partition
        kept = messages
    else:
        kept = [msg for msg in messages if msg.offset() < stop]
    finished = len(kept) < len(messages)
    if kept and not tracker.try_claim(kept[-1].offset()):
        stop = tracker.current_restriction().stop
        kept = [msg for msg in kept if msg.offset() < stop]
        finished = True
    return kept, finished


def _to_batch(element: KafkaPartition, messages: list[Any]) -> KafkaBatch:
    return KafkaBatch(
        element.topic,
        element.partition,
        tuple(msg.offset() for msg in messages),
        tuple(msg.value() for msg in messages),
    )


class ReadFromKafkaPartitions(beam.PTransform):
    """Read every partition of ``topic`` as :class:`KafkaBatch` elements (in offset order)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        *,
        stop_at_end: bool = False,
        max_records: int = 50_000,
        budget_s: float = 1.0,
        poll_timeout_s: float = 0.2,
    ) -> None:
        super().__init__()
        self.bootstrap = bootstrap
        self.topic = topic
        self.restrictions = KafkaOffsetRestrictions(bootstrap, group, stop_at_end)
        self.max_records = max_records
        self.budget_s = budget_s
        self.poll_timeout_s = poll_timeout_s

    def expand(self, pbegin: Any) -> Any:
        partitions = wait_for_partitions(self.bootstrap, self.topic)
        reader = ReadKafkaPartitionFn(
            self.restrictions,
            max_records=self.max_records,
            # One bundle polls every partition once: split the cadence between them.
            budget_s=self.budget_s / len(partitions),
            poll_timeout_s=min(self.poll_timeout_s, self.budget_s / len(partitions)),
        )
        return (
            pbegin
            | "ListPartitions" >> beam.Create(partitions)
            | "ReadPartitions" >> beam.ParDo(reader)
        )
