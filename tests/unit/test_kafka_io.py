"""The Kafka SDF's pieces: one try_claim per poll (what it keeps, in every case) and start-up retries.

Beam's real OffsetRestrictionTracker is used; the records are stand-ins for confluent-kafka's
``Message`` (which Python code cannot construct): only ``offset()`` and ``error()`` are read.
The reader against a real broker is tested in tests/integration/test_streaming_apply.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker

from beam_jobs.kafka_io import (
    KafkaOffsetCommitter,
    KafkaPartition,
    _claim,
    _to_batch,
    retry_while_unavailable,
)
from capa.errors import ServiceUnavailable


class Record:
    def __init__(self, offset: int, error: Any = None) -> None:
        self._offset, self._error = offset, error

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return f"v{self._offset}".encode()

    def error(self) -> Any:
        return self._error

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return 0


class SplitBeforeClaim(OffsetRestrictionTracker):
    """A runner split lands after the reader looked at the stop and before it claims."""

    def __init__(self, restriction: OffsetRange, fraction: float) -> None:
        super().__init__(restriction)
        self.fraction = fraction
        self.residual: OffsetRange | None = None

    def current_restriction(self) -> OffsetRange:
        seen = super().current_restriction()
        if self.residual is None:
            split = self.try_split(self.fraction)
            assert split is not None
            self.residual = split[1]
        return seen


def offsets(records: list[Any]) -> list[int]:
    return [r.offset() for r in records]


def test_a_poll_inside_the_range_is_claimed_whole_with_gaps() -> None:
    tracker = OffsetRestrictionTracker(OffsetRange(10, 1000))
    records = [Record(o) for o in (10, 11, 13, 14)]  # 12: a transaction marker
    kept, finished = _claim(tracker, records)
    assert offsets(kept) == [10, 11, 13, 14] and not finished
    assert tracker.current_restriction() == OffsetRange(10, 1000)
    kept, finished = _claim(tracker, [Record(15)])  # the next poll continues after 14
    assert offsets(kept) == [15] and not finished


def test_records_at_or_past_the_stop_are_left_and_the_range_is_finished() -> None:
    tracker = OffsetRestrictionTracker(OffsetRange(0, 5))
    kept, finished = _claim(tracker, [Record(o) for o in range(8)])
    assert offsets(kept) == [0, 1, 2, 3, 4] and finished
    tracker.check_done()  # every offset of the range was claimed


def test_a_split_between_reading_the_stop_and_claiming_loses_nothing() -> None:
    tracker = SplitBeforeClaim(OffsetRange(0, 100), fraction=0.05)
    kept, finished = _claim(tracker, [Record(o) for o in range(10)])
    assert tracker.residual is not None
    primary = tracker.current_restriction()
    assert primary.stop == tracker.residual.start  # primary + residual = the old range
    # exactly the primary's records are kept; the residual's owner reads the rest
    assert offsets(kept) == list(range(primary.stop)) and finished
    assert primary.stop < 10


def test_a_checkpoint_before_the_claim_keeps_nothing_for_the_residual() -> None:
    tracker = SplitBeforeClaim(OffsetRange(0, 100), fraction=0.0)
    kept, finished = _claim(tracker, [Record(o) for o in range(10)])
    assert kept == [] and finished
    assert tracker.residual == OffsetRange(0, 100)


def test_a_broker_error_in_a_poll_is_a_transient_failure() -> None:
    tracker = OffsetRestrictionTracker(OffsetRange(0, 100))
    with pytest.raises(ServiceUnavailable, match="Kafka read failed"):
        _claim(tracker, [Record(0), Record(-1, error="broker down")])


def test_batches_keep_offsets_and_values_in_order() -> None:
    batch = _to_batch(KafkaPartition("t", 2), [Record(o) for o in (4, 5, 7)])
    assert (batch.topic, batch.partition, batch.offsets) == ("t", 2, (4, 5, 7))
    assert batch.values == (b"v4", b"v5", b"v7") and batch.next_offset == 8


def test_start_up_waits_while_the_broker_is_unavailable() -> None:
    """Found by the demo: a job started right after the broker got NOT_COORDINATOR while
    reading its group's offsets and died; it now waits and retries."""
    answers: list[Any] = [ServiceUnavailable("Not coordinator"), ServiceUnavailable("load"), 42]

    def call() -> int:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return int(answer)

    assert retry_while_unavailable(call, "offsets", patience_s=5, backoff_s=0.01) == 42
    assert answers == []


def test_start_up_gives_up_after_its_patience() -> None:
    def call() -> int:
        raise ServiceUnavailable("broker down")

    with pytest.raises(ServiceUnavailable, match="broker down"):
        retry_while_unavailable(call, "offsets", patience_s=0.05, backoff_s=0.01)


def test_offset_reads_of_a_broker_that_is_not_there_are_transient() -> None:
    committer = KafkaOffsetCommitter("127.0.0.1:1", "capa-test")  # nothing listens on port 1
    try:
        with pytest.raises(ServiceUnavailable):
            committer.committed(KafkaPartition("t", 0), timeout_s=0.5)
        with pytest.raises(ServiceUnavailable):
            committer.watermarks(KafkaPartition("t", 0), timeout_s=0.5)
    finally:
        committer.close()
