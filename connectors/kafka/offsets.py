"""Kafka partitions, record batches and a consumer group's offsets (confluent-kafka, no Beam).

The apply job reads partitions by assignment (never subscribed) and commits the group's
offsets itself, through :class:`KafkaOffsetCommitter`, only after the warehouse committed
the events below them. Where it resumes is :meth:`KafkaOffsetCommitter.resume_point`: the
committed offset, unless retention already deleted events above it (an offset gap).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

from capa.config import KafkaConfig, load_settings
from capa.errors import ServiceUnavailable, TerminalError
from connectors.kafka.clients import client_config

logger = logging.getLogger(__name__)

_INVALID_OFFSET = -1001  # librdkafka OFFSET_INVALID: the group has no committed offset


class OffsetGapError(TerminalError):
    """The group's committed offset is below the partition's low watermark: events the job
    never applied were deleted by retention."""


class ResumePoint(NamedTuple):
    offset: int  # where reading resumes
    expired: int  # events lost to retention between the committed offset and ``offset``


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


def job_kafka_config(bootstrap: str, **update: Any) -> KafkaConfig:
    """The configured Kafka security (``CAPA__KAFKA__*`` / capa.yaml of the process running
    the job) for the job's ``--bootstrap`` (plus ``update``)."""
    return load_settings().kafka.model_copy(update={"bootstrap_servers": bootstrap, **update})


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

    def resume_point(self, partition: KafkaPartition, *, accept_gap: bool = False) -> ResumePoint:
        """Where reading resumes: the committed offset, else the earliest retained one.

        A committed offset below the partition's low watermark means retention deleted
        events the group never applied: :class:`OffsetGapError`, unless ``accept_gap``
        (then reading starts at the low watermark and the point counts the lost events).
        """
        committed = self.committed(partition)
        low, _ = self.watermarks(partition)
        if committed is None or committed >= low:
            return ResumePoint(low if committed is None else committed, 0)
        expired = low - committed
        if not accept_gap:
            raise OffsetGapError(
                f"topic {partition.topic!r} partition {partition.partition}: the committed "
                f"offset {committed} of group {self.group!r} is below the low watermark {low}, "
                f"so {expired} events expired by retention before they were applied; restore "
                "them (e.g. re-snapshot the source tables) or accept the loss with "
                "--accept_offset_gap (apply.accept_offset_gap)"
            )
        logger.error(
            "accepted an offset gap on %s/%d: %d events (offsets %d..%d) expired by retention "
            "before they were applied; resuming at %d",
            partition.topic,
            partition.partition,
            expired,
            committed,
            low - 1,
            low,
        )
        return ResumePoint(low, expired)

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

    def partition_lags(
        self, next_offsets: Mapping[KafkaPartition, int]
    ) -> dict[KafkaPartition, int]:
        """Per partition, the events between the given position and the end offset."""
        return {p: max(self.watermarks(p)[1] - o, 0) for p, o in next_offsets.items()}

    def close(self) -> None:
        self._consumer.close()
