"""The streaming apply loop, without Beam: Kafka batches in, warehouse commits and offsets out.

:class:`ApplyLoop` is what the streaming job does with the records it reads; the Beam DoFn
(``beam_jobs.streaming_apply.ApplyBatchesFn``) only maps its bundle lifecycle onto it:
``add`` per Kafka batch, ``finish`` at the end of a bundle, ``close`` at teardown.

One flush of the buffered batches:

1. decode (:class:`~connectors.kafka.batch_decode.BatchDecoder`: plain tables column-wise,
   the rest as events, poison records with their reason);
2. apply: the fast path is one ``apply_columns`` and one ``apply`` call. A transient error
   (:class:`~capa.errors.TransientError`) is retried with bounded backoff (:data:`APPLY_RETRY`),
   then raised: the job stops without committing and its restart resumes there. Any other
   error means some events are refused: each table is applied on its own and a refusing
   table is bisected (:func:`capa.apply.apply_isolating_failures`, as ``capa apply`` does) so
   exactly the refused events are dead-lettered, with the reason and their original bytes;
3. write the dead letters (decode and apply) and wait for their acknowledgement;
4. commit the offsets past the batch: only now is every record either in the warehouse or
   on the dead-letter topic.

Pipelined, steps 2-4 of a batch run on one background thread while the next batch is read
and decoded; only one batch is in flight and its result (or error) is collected before the
next one is handed over. Redelivery (a crash before step 4) is harmless: apply is
idempotent and a dead letter may be written twice, never lost.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, NamedTuple, Protocol, TypeVar

from beam_jobs.apply_stats import ApplyStats, spread
from capa import metrics, retry
from capa.apply import apply_isolating_failures, rejection_reason
from capa.columnar import TableColumns
from capa.errors import TerminalError, TransientError
from capa.events import ChangeEvent, Op, iter_tables
from capa.lineage import ApplyRun
from capa.retry import RetryPolicy
from capa.warehouse.base import RAW_NAMESPACE, Warehouse, column_writer, compactor
from connectors.kafka.batch_decode import BatchDecoder, DecodedBatch
from connectors.kafka.dlq import DeadLetter
from connectors.kafka.offsets import KafkaBatch, KafkaPartition, job_kafka_config
from connectors.kafka.wire import ChangeEventDecoder

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A warehouse (or offset commit) call that fails transiently: 8 tries over about a minute
# (0.5 s doubling to 30 s), then the job stops and its restart resumes from the offsets.
APPLY_RETRY = RetryPolicy(TransientError, first_wait_s=0.5, max_wait_s=30.0, attempts=8)
ORIGIN = "beam-apply"


class OffsetCommitter(Protocol):
    """The consumer group's offsets (:class:`~connectors.kafka.offsets.KafkaOffsetCommitter`)."""

    def commit(self, next_offsets: dict[KafkaPartition, int]) -> None: ...

    def partition_lags(
        self, next_offsets: dict[KafkaPartition, int]
    ) -> dict[KafkaPartition, int]: ...

    def close(self) -> None: ...


class DeadLetterWriter(Protocol):
    """Writes dead letters and returns once they are acknowledged (:class:`DeadLetterSink`)."""

    def write(self, letters: Sequence[DeadLetter]) -> None: ...

    def close(self) -> None: ...


class Decoded(NamedTuple):
    """A decoded record, with what a dead letter needs should the warehouse reject it."""

    topic: str
    partition: int
    offset: int
    event: ChangeEvent
    raw: bytes | None


class _Records:
    """The buffered Kafka batches of one flush, as one list of values."""

    def __init__(self, batches: Sequence[KafkaBatch]) -> None:
        self.batches = batches
        self.values: list[bytes | None] = [v for b in batches for v in b.values]
        self._starts = list(accumulate((len(b.values) for b in batches), initial=0))

    def locate(self, index: int) -> tuple[str, int, int]:
        """(topic, partition, offset) of the record at ``index``."""
        n = bisect_right(self._starts, index) - 1
        batch = self.batches[n]
        return batch.topic, batch.partition, batch.offsets[index - self._starts[n]]

    def item(self, index: int, event: ChangeEvent) -> Decoded:
        return Decoded(*self.locate(index), event, self.values[index])

    def dead_letter(self, index: int, reason: str) -> DeadLetter:
        return _dead_letter(*self.locate(index), self.values[index], reason)


@dataclass(slots=True)
class _Work:
    """One flush: what to apply, the offsets it covers, and (once applied) how it went."""

    decoded: DecodedBatch
    records: _Records
    items: list[Decoded]  # the records applied as events
    offsets: dict[KafkaPartition, int]
    letters: list[DeadLetter] = field(default_factory=list)  # poison, then refused events
    refused: int = 0  # decoded events the warehouse refused (dead-lettered)
    seconds: float = 0.0
    visible_at: float = 0.0


def _event_stamps(items: Sequence[Decoded]) -> list[int]:
    return [
        ts
        for item in items
        if (ts := item.event.commit_ts_us) is not None and item.event.op is not Op.READ
    ]


def _column_stamps(tables: Sequence[TableColumns]) -> list[int]:
    read = Op.READ.value
    return [
        ts
        for t in tables
        for ts, op in zip(t.commit_ts_us, t.ops, strict=True)
        if ts is not None and op != read
    ]


# At most this many commit stamps per table and batch go into the latency histogram: the
# distribution is kept (evenly spread over the sorted latencies) without a Python call per event.
LATENCY_HISTOGRAM_SAMPLES = 256


def _export_tables(work: _Work, recent: Callable[[Sequence[int]], list[int]]) -> None:
    """Per-table Prometheus figures of one applied batch (:mod:`capa.metrics`): events
    applied, commit-to-visible latencies (snapshot reads and old history left out, as in the
    stats) and the events the warehouse refused, by reason."""
    refused = {letter.location: letter.reason for letter in work.letters}
    tally = _TableTally()
    read = Op.READ.value
    for t in work.decoded.tables:
        label = metrics.table_label(t.source, t.schema, t.table)
        if not refused:  # the usual batch: whole columns, no per-record work here
            tally.counts[label] = tally.counts.get(label, 0) + len(t.indices)
            tally.stamps.setdefault(label, []).extend(_column_stamps([t]))
            continue
        for i, ts, op in zip(t.indices, t.commit_ts_us, t.ops, strict=True):
            where = _location(*work.records.locate(i))
            tally.add(label, None if op == read else ts, refused.get(where))
    for item in work.items:
        e = item.event
        label = metrics.table_label(e.source, e.schema, e.table)
        ts = None if e.op is Op.READ else e.commit_ts_us
        tally.add(label, ts, refused.get(_location(item.topic, item.partition, item.offset)))
    for label in tally.counts.keys() | tally.letters.keys():
        metrics.record_applied(
            label,
            tally.counts.get(label, 0),
            spread(recent(tally.stamps.get(label, [])), LATENCY_HISTOGRAM_SAMPLES),
            tally.letters.get(label),
            now=work.visible_at,
        )


@dataclass(slots=True)
class _TableTally:
    counts: dict[str, int] = field(default_factory=dict)
    stamps: dict[str, list[int]] = field(default_factory=dict)
    letters: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, label: str, commit_ts_us: int | None, refused: str | None) -> None:
        if refused is not None:
            by_reason = self.letters.setdefault(label, {})
            by_reason[refused] = by_reason.get(refused, 0) + 1
            return
        self.counts[label] = self.counts.get(label, 0) + 1
        if commit_ts_us is not None:
            self.stamps.setdefault(label, []).append(commit_ts_us)


def _location(topic: str, partition: int, offset: int) -> str:
    return f"{topic}/{partition}@{offset}"


def _dead_letter(
    topic: str, partition: int, offset: int, raw: bytes | None, reason: str
) -> DeadLetter:
    """A DeadLetter for the record at ``topic/partition@offset``."""
    location = _location(topic, partition, offset)
    return DeadLetter(reason=reason, raw=raw, origin=ORIGIN, location=location)


class DeadLetterSink:
    """Produces dead letters to the DLQ topic and waits for the acknowledgement."""

    def __init__(self, bootstrap: str, dlq_topic: str) -> None:
        from connectors.kafka.producer import KafkaChangeProducer

        config = job_kafka_config(bootstrap, dlq_topic=dlq_topic)  # with the security settings
        self._producer = KafkaChangeProducer(config)

    def write(self, letters: Sequence[DeadLetter]) -> None:
        from connectors.kafka.producer import flush_with_retry

        def resend() -> None:
            for letter in letters:
                self._producer.send_dead_letter(letter)

        resend()
        flush_with_retry(self._producer, resend)

    def close(self) -> None:
        self._producer.close()


class ApplyLoop:
    """Buffers Kafka batches; each flush decodes, applies, dead-letters, then commits."""

    def __init__(
        self,
        warehouse: Warehouse,
        decoder: ChangeEventDecoder,
        *,
        committer: OffsetCommitter | None,
        dead_letters: DeadLetterWriter | None,
        max_batch_events: int,
        stats: ApplyStats,
        native_decode: Any = None,
        pipelined: bool = False,
        retry_policy: RetryPolicy = APPLY_RETRY,
        lineage: ApplyRun | None = None,
    ) -> None:
        self._warehouse = warehouse
        self._lineage = lineage
        self._columns = column_writer(warehouse)
        self._decoder = decoder
        self._batch_decoder = BatchDecoder(
            decoder, native_decode, columns=self._columns is not None
        )
        self._committer = committer
        self._dlq = dead_letters
        self.max_batch_events = max_batch_events
        self.stats = stats
        self.pipelined = pipelined
        self.retry_policy = retry_policy
        self._batches: list[KafkaBatch] = []
        self._buffered = 0
        self._offsets: dict[KafkaPartition, int] = {}
        self._inflight: Future[_Work] | None = None
        self._background = ThreadPoolExecutor(1, thread_name_prefix="capa-apply")
        self._last_lag_check = 0.0
        self._applied: dict[KafkaPartition, int] = {}  # next offset per partition, applied

    # --- the driver's calls ----------------------------------------------------------

    def add(self, batch: KafkaBatch) -> dict[str, Any] | None:
        """Buffer ``batch``; flush when full. Returns the report of a batch finished now."""
        self._batches.append(batch)
        self._buffered += len(batch.values)
        key = KafkaPartition(batch.topic, batch.partition)
        self._offsets[key] = max(self._offsets.get(key, -1), batch.next_offset)
        return self._flush() if self._buffered >= self.max_batch_events else None

    def finish(self) -> dict[str, Any] | None:
        """End of a read round: flush what is buffered; an idle round records the batch
        in flight (if any) now, not at the next busy one."""
        if self._batches:
            return self._flush()
        report = self._collect()
        if report is None and self._applied:  # idle: the lag gauge must not keep a stale value
            self._maybe_record_lag(self._applied)
        return report

    def close(self) -> None:
        """Wait for the batch in flight, compact deferred writes, release every client."""
        try:
            if self._inflight is not None:
                report = self._collect()
                logger.info(
                    "last batch applied at shutdown: %s events", report and report["events"]
                )
        finally:
            self._background.shutdown()
            self._compact_pending()
            for closable in (self._committer, self._dlq, self._warehouse):
                if closable is not None:
                    closable.close()

    # --- one flush -------------------------------------------------------------------

    def _flush(self) -> dict[str, Any] | None:
        """Decode the buffered records, then apply, dead-letter and commit them: here, or
        (pipelined) in the background after the previous batch is collected. Returns the
        report of the batch finished now (pipelined: the previous one, None if none)."""
        work = self._prepare()
        if not self.pipelined:
            return self._record(self._apply_commit(work))
        report = self._collect()
        self._inflight = self._background.submit(self._apply_commit, work)
        return report

    def _prepare(self) -> _Work:
        batches, offsets = self._batches, self._offsets
        self._batches, self._buffered, self._offsets = [], 0, {}
        records = _Records(batches)
        decoded = self._batch_decoder.decode(records.values)
        self.stats.metrics.count("events_decoded", decoded.decoded)
        items = [records.item(index, event) for index, event in decoded.events]
        letters = [records.dead_letter(index, reason) for index, reason in decoded.errors]
        return _Work(decoded, records, items, offsets, letters)

    def _apply_commit(self, work: _Work) -> _Work:
        """Apply (isolating refused events), write the dead letters, then commit."""
        started = time.monotonic()
        refused = self._apply(work)
        work.refused = len(refused)
        work.letters.extend(refused)
        if work.letters:  # acknowledged before any commit covers their offsets
            self._write_dead_letters(work.letters)
        if self._committer is not None:
            committer = self._committer
            self._retrying(lambda: committer.commit(work.offsets), "offset commit")
        work.seconds, work.visible_at = time.monotonic() - started, time.time()
        return work

    def _apply(self, work: _Work) -> list[DeadLetter]:
        """The fast path: plain tables column-wise, other events as events, one call each.
        Only when the warehouse refuses something are tables and events taken apart."""
        tables, events = work.decoded.tables, [item.event for item in work.items]
        try:
            if tables and self._columns is not None:
                columns = self._columns
                self._retrying(lambda: columns.apply_columns(tables), "apply")
            if events:
                self._retrying(lambda: self._warehouse.apply(events), "apply")
            return []
        except TransientError:
            raise  # retries spent: stop without committing
        except Exception as exc:
            logger.warning(
                "warehouse refused part of a batch (%s); isolating the refused events",
                rejection_reason(exc),
            )
            return self._isolate(work)

    def _isolate(self, work: _Work) -> list[DeadLetter]:
        """Each plain table column-wise on its own; a refusing one goes to the event path,
        where each table's events are bisected down to the refused ones."""
        items = list(work.items)
        for table in work.decoded.tables:
            if not self._table_applies(table):
                values = work.records.values
                items += [
                    work.records.item(i, self._decoder.decode(values[i])) for i in table.indices
                ]
        return self._bisect(items)

    def _table_applies(self, table: TableColumns) -> bool:
        assert self._columns is not None
        columns = self._columns
        try:
            self._retrying(lambda: columns.apply_columns([table]), "apply")
            return True
        except TransientError:
            raise
        except Exception:
            return False

    def _bisect(self, items: Sequence[Decoded]) -> list[DeadLetter]:
        by_event = {id(item.event): item for item in items}
        letters: list[DeadLetter] = []
        for table, events in iter_tables([item.event for item in items]):
            for refused in apply_isolating_failures(self._apply_events, events):
                item = by_event[id(refused.event)]
                reason = (
                    f"warehouse refused the event for {RAW_NAMESPACE}.{table}: {refused.reason}"
                )
                letters.append(
                    _dead_letter(item.topic, item.partition, item.offset, item.raw, reason)
                )
        return letters

    def _apply_events(self, events: Sequence[ChangeEvent]) -> None:
        self._retrying(lambda: self._warehouse.apply(events), "apply")

    def _retrying(self, call: Callable[[], T], what: str) -> T:
        return retry.call(call, self.retry_policy, what)

    def _write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if self._dlq is None:
            raise TerminalError(
                f"{len(letters)} record(s) are not change events or were refused by the "
                f"warehouse ({letters[0].reason}); no dead-letter topic is configured"
            )
        self._dlq.write(letters)

    # --- reporting -------------------------------------------------------------------

    def _collect(self) -> dict[str, Any] | None:
        """Wait for the batch in flight (its errors raise here) and record it."""
        inflight, self._inflight = self._inflight, None
        return None if inflight is None else self._record(inflight.result())

    def _record(self, work: _Work) -> dict[str, Any]:
        """Stats and metrics of a finished batch (on the driver's thread)."""
        applied = work.decoded.decoded - work.refused
        stamps = _column_stamps(work.decoded.tables) + _event_stamps(work.items)
        self.stats.record_batch(applied, stamps, work.seconds, work.visible_at)
        _export_tables(work, self.stats.recent)
        if self._lineage is not None:
            self._lineage.wrote(
                [t.table_id for t in work.decoded.tables]
                + [item.event.table_id for item in work.items]
            )
        if work.letters:
            self.stats.record_dead_letters(len(work.letters))
        self._applied.update(work.offsets)
        if self._committer is not None:
            self._maybe_record_lag(work.offsets)
        self.stats.publish()
        return {
            "events": applied,
            "dead_letters": len(work.letters),
            "seconds": work.seconds,
            "offsets": {f"{p.topic}/{p.partition}": o for p, o in work.offsets.items()},
        }

    def _maybe_record_lag(self, offsets: dict[KafkaPartition, int]) -> None:
        now = time.monotonic()
        if now - self._last_lag_check < 2.0 or self._committer is None:
            return
        self._last_lag_check = now
        try:
            lags = self._committer.partition_lags(offsets)
            self.stats.record_lag(sum(lags.values()))
            for partition, lag in lags.items():
                metrics.record_lag(partition.topic, partition.partition, lag)
        except TransientError as exc:  # lag is informative only
            logger.debug("lag check failed: %s", exc)

    def _compact_pending(self) -> None:
        """Merge-on-read: leave compact base tables behind (a bounded run, a clean stop)."""
        compacting = compactor(self._warehouse)
        if compacting is None:
            return
        try:
            compacting.compact()
        except Exception as exc:  # the next run or compaction catches up
            logger.warning("compaction at shutdown failed (%s); pending rows stay served", exc)
