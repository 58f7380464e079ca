"""Streaming apply: canonical change events on Kafka -> raw layer of a warehouse.

Run (local stack, in-process FnApiRunner)::

    .venvs/beam/bin/python -m beam_jobs.streaming_apply \\
        --bootstrap 127.0.0.1:19092 --topic capa.changes --warehouse local:.state/lakehouse

Add ``--stop_at_end`` for a backfill that stops once caught up; see beam_jobs/options.py
for Flink (on-prem) and Dataflow flags, and deploy/dataflow/ for the Flex Template.

Pipeline::

    ReadCanonicalEvents -> ApplyToRaw
      (KafkaBatch elements)  (decode the batch; poison -> DLQ topic, synchronously;
                              warehouse.apply; then commit the offsets)

Elements are batches of records (one per Kafka poll), so Beam's per-element cost is paid per
batch, and decoding runs inside the apply step (no Beam hop per record).

Delivery contract: Kafka offsets advance only after the warehouse committed the events
below them (ApplyToRaw commits the group offsets of a batch after ``apply`` returned), so
a crash never skips a batch; a redelivered batch is harmless because the warehouse apply
is idempotent. Poison records are written to the DLQ synchronously, and acknowledged,
before the offsets covering them are committed, so committing past them never loses them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from beam_jobs.kafka_io import (
    KafkaBatch,
    KafkaOffsetCommitter,
    KafkaPartition,
    ReadFromKafkaPartitions,
)
from beam_jobs.options import StreamingApplyOptions, build_options, pipelined_apply
from capa.columnar import TableColumns
from capa.config import KafkaConfig
from capa.errors import TerminalError, TransientError
from capa.events import ChangeEvent, Op, iter_tables
from capa.runtime import tune_gc
from connectors.kafka.batch_decode import BatchDecoder, DecodedBatch

logger = logging.getLogger(__name__)

METRICS_NAMESPACE = "capa.apply"


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

    def dead_letter(self, index: int, reason: str) -> Any:
        return _dead_letter(*self.locate(index), self.values[index], reason)


@dataclass(slots=True)
class _Work:
    """One flush: what to apply, the offsets it covers, and (once applied) how it went."""

    decoded: DecodedBatch
    records: _Records
    items: list[Decoded]  # the records applied as events
    offsets: dict[KafkaPartition, int]
    applied: bool = False
    seconds: float = 0.0
    visible_at: float = 0.0

    def column_items(self, decoder: Any) -> list[Decoded]:
        """The column-wise records as events (for the per-table event path)."""
        indices = sorted(i for t in self.decoded.tables for i in t.indices)
        return [self.records.item(i, decoder.decode(self.records.values[i])) for i in indices]


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


# --- DoFns -------------------------------------------------------------------------------


def _dead_letter(topic: str, partition: int, offset: int, raw: bytes | None, reason: str) -> Any:
    """A DeadLetter for the record at ``topic/partition@offset``."""
    from connectors.kafka.dlq import DeadLetter

    location = f"{topic}/{partition}@{offset}"
    return DeadLetter(reason=reason, raw=raw, origin="beam-apply", location=location)


class DeadLetterSink:
    """Produces dead letters to the DLQ topic and waits for the acknowledgement."""

    def __init__(self, bootstrap: str, dlq_topic: str) -> None:
        from connectors.kafka.producer import KafkaChangeProducer

        config = KafkaConfig(bootstrap_servers=bootstrap, dlq_topic=dlq_topic)
        self._producer = KafkaChangeProducer(config)

    def write(self, letters: Sequence[Any]) -> None:
        from connectors.kafka.producer import flush_with_retry

        def resend() -> None:
            for letter in letters:
                self._producer.send_dead_letter(letter)

        resend()
        flush_with_retry(self._producer, resend)

    def close(self) -> None:
        self._producer.close()


class KafkaCommitterFactory:
    """Picklable factory of the offset committer used by ApplyToRaw."""

    def __init__(self, bootstrap: str, group: str) -> None:
        self.bootstrap = bootstrap
        self.group = group

    def __call__(self) -> KafkaOffsetCommitter:
        return KafkaOffsetCommitter(self.bootstrap, self.group)


class ApplyStats:
    """Rates, lag and latency of the apply loop: Beam metrics, a log line, a status file."""

    def __init__(self, status_file: str | None, log_interval_s: float) -> None:
        self.status_file = Path(status_file) if status_file else None
        self.log_interval_s = log_interval_s
        self.started = time.time()
        self.applied = 0
        self.dead_letters = 0
        self.batches = 0
        self.last_batch_at: float | None = None
        self.lag_events: int | None = None
        self.last_commit_ts_us: int | None = None
        self.latencies: deque[float] = deque(maxlen=100_000)
        self._window = (time.monotonic(), 0)
        self._last_log = time.monotonic()
        self._m_applied = Metrics.counter(METRICS_NAMESPACE, "events_applied")
        self._m_batches = Metrics.counter(METRICS_NAMESPACE, "batches")
        self._m_batch_ms = Metrics.distribution(METRICS_NAMESPACE, "batch_latency_ms")
        self._m_visible_ms = Metrics.distribution(METRICS_NAMESPACE, "commit_to_visible_ms")
        self._m_lag_events = Metrics.gauge(METRICS_NAMESPACE, "lag_events")
        self._m_lag_s = Metrics.gauge(METRICS_NAMESPACE, "lag_seconds")

    def record_batch(
        self, applied: int, commit_stamps: Sequence[int], seconds: float, visible_at: float
    ) -> None:
        """``commit_stamps``: the source commit times (µs) of the batch's changes (snapshot
        reads excluded)."""
        self.applied += applied
        self.batches += 1
        self.last_batch_at = visible_at
        self._m_applied.inc(applied)
        self._m_batches.inc()
        self._m_batch_ms.update(int(seconds * 1000))
        horizon_us = (self.started - HISTORY_HORIZON_S) * 1e6
        stamps = [ts for ts in commit_stamps if ts >= horizon_us]  # see HISTORY_HORIZON_S
        if not stamps:
            return
        latencies = [visible_at - ts / 1e6 for ts in stamps]
        self.latencies.extend(latencies)
        for latency in _spread(latencies, LATENCY_METRIC_SAMPLES):
            self._m_visible_ms.update(int(latency * 1000))
        self.last_commit_ts_us = max(self.last_commit_ts_us or 0, max(stamps))

    def record_lag(self, lag_events: int) -> None:
        self.lag_events = lag_events
        self._m_lag_events.set(lag_events)
        self._m_lag_s.set(int(self.lag_seconds()))

    def lag_seconds(self) -> float:
        if not self.lag_events or self.last_commit_ts_us is None:
            return 0.0
        return max(time.time() - self.last_commit_ts_us / 1e6, 0.0)

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        since, applied_then = self._window
        rate = (self.applied - applied_then) / max(now - since, 1e-6)
        if now - since > 10:
            self._window = (now, self.applied)
        ordered = sorted(self.latencies)
        return {
            "updated_at": time.time(),
            "pid": os.getpid(),
            "events_applied": self.applied,
            "last_batch_at": self.last_batch_at,  # when the last batch became visible (epoch s)
            "dead_letters": self.dead_letters,
            "batches": self.batches,
            "events_per_s": round(rate, 1),
            "lag_events": self.lag_events,
            "lag_s": round(self.lag_seconds(), 3),
            "latency_p50_s": _quantile(ordered, 0.50),
            "latency_p99_s": _quantile(ordered, 0.99),
            "latency_samples": len(ordered),
        }

    def publish(self) -> None:
        """Rewrite the status file (atomically) and log a progress line now and then."""
        if self.status_file is None and time.monotonic() - self._last_log < self.log_interval_s:
            return
        status = self.snapshot()
        if self.status_file is not None:
            self.status_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.status_file.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(status))
            tmp.replace(self.status_file)
        if time.monotonic() - self._last_log >= self.log_interval_s:
            self._last_log = time.monotonic()
            logger.info(
                "applied %d events (%.0f/s), lag %s events / %.1fs, p99 %.3fs, dead letters %d",
                status["events_applied"],
                status["events_per_s"],
                status["lag_events"],
                status["lag_s"],
                status["latency_p99_s"] or 0.0,
                status["dead_letters"],
            )


# Snapshot reads and replays of history (committed more than an hour before the job started,
# e.g. recorded F3 events or an old Datastream backfill) say nothing about the pipeline's
# latency, so they are left out of the latency figures.
HISTORY_HORIZON_S = 3600.0
# The Beam distribution of commit -> visible latency gets at most this many values per batch
# (the batch's smallest, largest and evenly spaced ones between): one update per event cost
# about 1 µs each on the apply thread. The status file's percentiles use every event.
LATENCY_METRIC_SAMPLES = 64


def _spread(values: Sequence[float], most: int) -> Sequence[float]:
    if len(values) <= most:
        return values
    ordered = sorted(values)
    step = (len(ordered) - 1) / (most - 1)
    return [ordered[round(i * step)] for i in range(most)]


def _quantile(ordered: Sequence[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(int(q * len(ordered)), len(ordered) - 1)], 4)


class ApplyBatchesFn(beam.DoFn):
    """Decodes Kafka batches, applies a bundle's events in one warehouse call, then commits."""

    def __init__(
        self,
        warehouse: str,
        *,
        committer: Callable[[], Any] | None,
        dead_letters: Callable[[], Any] | None,
        max_batch_events: int,
        status_file: str | None = None,
        log_interval_s: float = 10.0,
        max_attempts: int = 8,
        warehouse_options: dict[str, Any] | None = None,
        schema_registry_url: str | None = None,
        pipelined: bool = False,
    ) -> None:
        self.warehouse_spec = warehouse
        self.pipelined = pipelined
        self.warehouse_options = warehouse_options or {}
        self.committer_factory = committer
        self.dead_letter_factory = dead_letters
        self.max_batch_events = max_batch_events
        self.status_file = status_file
        self.log_interval_s = log_interval_s
        self.max_attempts = max_attempts
        self.schema_registry_url = schema_registry_url
        self.m_dead_letters = Metrics.counter(METRICS_NAMESPACE, "dead_letters")
        self.m_decoded = Metrics.counter(METRICS_NAMESPACE, "events_decoded")

    def setup(self) -> None:
        from capa.native import decode_batch
        from capa.warehouse import open_warehouse
        from connectors.kafka.wire import ChangeEventDecoder

        self._warehouse = open_warehouse(self.warehouse_spec, **self.warehouse_options)
        self._committer = self.committer_factory() if self.committer_factory else None
        self._dlq = self.dead_letter_factory() if self.dead_letter_factory else None
        self._decoder = ChangeEventDecoder.from_config(
            KafkaConfig(schema_registry_url=self.schema_registry_url)
        )
        self._columns = hasattr(self._warehouse, "apply_columns")
        self._batch_decoder = BatchDecoder(self._decoder, decode_batch, columns=self._columns)
        if self._columns and decode_batch is None:
            logger.warning("capa_native is not installed: decoding in Python (slower)")
        self._stats = ApplyStats(self.status_file, self.log_interval_s)
        self._last_lag_check = 0.0
        self._inflight: Future[_Work] | None = None
        self._background = ThreadPoolExecutor(1, thread_name_prefix="capa-apply")

    def start_bundle(self) -> None:
        self._batches: list[KafkaBatch] = []
        self._buffered = 0
        self._offsets: dict[KafkaPartition, int] = {}

    def process(self, batch: KafkaBatch) -> Iterator[dict[str, Any]]:
        batch = KafkaBatch(*batch)
        self._batches.append(batch)
        self._buffered += len(batch.values)
        key = KafkaPartition(batch.topic, batch.partition)
        self._offsets[key] = max(self._offsets.get(key, -1), batch.next_offset)
        if self._buffered >= self.max_batch_events:
            report = self._flush()
            if report is not None:
                yield report

    def _write_dead_letters(self, letters: Sequence[Any]) -> None:
        if self._dlq is None:
            raise TerminalError(
                f"{len(letters)} record(s) are not change events ({letters[0].reason}); "
                "no dead-letter topic is configured"
            )
        self._dlq.write(letters)
        self.m_dead_letters.inc(len(letters))
        self._stats.dead_letters += len(letters)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        # an idle bundle records the batch in flight (if any) now, not at the next busy one
        report = self._flush() if self._batches else self._collect()
        if report is not None:
            yield WindowedValue(report, GlobalWindow().max_timestamp(), [GlobalWindow()])

    def teardown(self) -> None:
        if getattr(self, "_inflight", None) is not None:
            report = self._collect()
            logger.info("last batch applied at shutdown: %s events", report and report["events"])
        if getattr(self, "_background", None) is not None:
            self._background.shutdown()
        self._compact_pending()
        for closable in (
            getattr(self, "_committer", None),
            getattr(self, "_dlq", None),
            getattr(self, "_warehouse", None),
        ):
            if closable is not None:
                closable.close()

    def _compact_pending(self) -> None:
        """Merge-on-read: leave compact base tables behind (a bounded run, a clean stop)."""
        compact = getattr(getattr(self, "_warehouse", None), "compact", None)
        if compact is None or not self.warehouse_options.get("merge_on_read"):
            return
        try:
            compact()
        except Exception as exc:  # the next run or compaction catches up
            logger.warning("compaction at shutdown failed (%s); pending rows stay served", exc)

    def _flush(self) -> dict[str, Any] | None:
        """Decode the buffered records (poison -> DLQ, acknowledged), then apply them and
        commit the offsets covering them: here, or (pipelined) in the background while the
        next batch is read, after the previous one is done. Returns the report of the batch
        finished now (pipelined: the previous one, None if there is none)."""
        work = self._prepare()
        if not self.pipelined:
            self._apply_commit(work, isolate=True)
            return self._record(work)
        report = self._collect()
        self._inflight = self._background.submit(self._apply_commit, work, isolate=False)
        return report

    def _prepare(self) -> _Work:
        batches, offsets = self._batches, self._offsets
        self._batches, self._buffered, self._offsets = [], 0, {}
        records = _Records(batches)
        decoded = self._batch_decoder.decode(records.values)
        self.m_decoded.inc(decoded.decoded)
        if decoded.errors:  # acknowledged by the DLQ before any commit covers their offsets
            self._write_dead_letters(
                [records.dead_letter(index, reason) for index, reason in decoded.errors]
            )
        items = [records.item(index, event) for index, event in decoded.events]
        return _Work(decoded, records, items, offsets)

    def _apply_commit(self, work: _Work, *, isolate: bool) -> _Work:
        """Apply, then commit. Without ``isolate`` (a background thread, where dead letters
        cannot count in the Beam metrics) a terminal error leaves the batch uncommitted, for
        :meth:`_collect` to isolate."""
        started = time.monotonic()
        work.applied = self._apply(work, isolate=isolate)
        if work.applied and self._committer is not None:
            self._committer.commit(work.offsets)
        work.seconds, work.visible_at = time.monotonic() - started, time.time()
        return work

    def _collect(self) -> dict[str, Any] | None:
        """Wait for the batch in flight (its errors raise here) and record it."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return None
        work = inflight.result()
        if not work.applied:
            self._apply_commit(work, isolate=True)
        return self._record(work)

    def _record(self, work: _Work) -> dict[str, Any]:
        tables = work.decoded.tables
        stamps = _column_stamps(tables) + _event_stamps(work.items)
        self._stats.record_batch(work.decoded.decoded, stamps, work.seconds, work.visible_at)
        if self._committer is not None:
            self._maybe_record_lag(work.offsets)
        self._stats.publish()
        return {
            "events": work.decoded.decoded,
            "seconds": work.seconds,
            "offsets": {f"{p.topic}/{p.partition}": o for p, o in work.offsets.items()},
        }

    def _apply(self, work: _Work, *, isolate: bool) -> bool:
        """Plain tables column-wise, other events as events; transient errors are retried.
        On a terminal error (``isolate``) every table's events are applied table by table,
        dead-lettering the tables the warehouse still rejects; else returns False."""
        tables, events = work.decoded.tables, [item.event for item in work.items]
        try:
            if tables:
                self._retrying(lambda: self._warehouse.apply_columns(tables))
            if events:
                self._retrying(lambda: self._warehouse.apply(events))
        except TerminalError as exc:
            if not isolate:
                return False
            logger.warning("warehouse rejected a batch (%s); applying per table", exc)
            self._apply_per_table([*work.column_items(self._decoder), *work.items])
        return True

    def _retrying(self, apply: Callable[[], Any]) -> None:
        backoff = 0.5
        for attempt in range(1, self.max_attempts + 1):
            try:
                apply()
                return
            except TransientError as exc:
                if attempt == self.max_attempts:
                    raise
                logger.warning(
                    "apply attempt %d failed (%s); retrying in %.1fs", attempt, exc, backoff
                )
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    def _apply_per_table(self, items: Sequence[Decoded]) -> None:
        by_id = {id(item.event): item for item in items}
        for table, events in iter_tables([item.event for item in items]):  # type: ignore[misc]
            try:
                self._warehouse.apply(events)
            except TerminalError as exc:
                rejected = [by_id[id(e)] for e in events]
                self._dead_letter_rejected(rejected, f"warehouse rejected {table}: {exc}")

    def _dead_letter_rejected(self, items: Sequence[Decoded], reason: str) -> None:
        self._write_dead_letters(
            [_dead_letter(i.topic, i.partition, i.offset, i.raw, reason) for i in items]
        )

    def _maybe_record_lag(self, offsets: dict[KafkaPartition, int]) -> None:
        now = time.monotonic()
        if now - self._last_lag_check < 2.0 or self._committer is None:
            return
        self._last_lag_check = now
        try:
            self._stats.record_lag(self._committer.lag(offsets))
        except TransientError as exc:  # lag is informative only
            logger.debug("lag check failed: %s", exc)


# --- PTransforms ---------------------------------------------------------------------------


class ReadCanonicalEvents(beam.PTransform):
    """The canonical topic as KafkaBatch elements, from the group's committed offsets."""

    def __init__(self, opts: StreamingApplyOptions) -> None:
        super().__init__()
        self.opts = opts

    def expand(self, pbegin: Any) -> Any:
        o = self.opts
        return pbegin | "ReadPartitions" >> ReadFromKafkaPartitions(
            o.bootstrap,
            o.topic,
            o.consumer_group,
            stop_at_end=o.stop_at_end,
            max_records=o.max_batch_events,
            budget_s=o.commit_interval_s,
            poll_timeout_s=o.poll_timeout_ms / 1000,
        )


class ApplyToRaw(beam.PTransform):
    """KafkaBatches -> decode, warehouse.apply per bundle, then offset commit; emits reports."""

    def __init__(self, warehouse: str, **kwargs: Any) -> None:
        super().__init__()
        self.warehouse = warehouse
        self.kwargs = kwargs

    def expand(self, batches: Any) -> Any:
        return batches | "ApplyBatches" >> beam.ParDo(ApplyBatchesFn(self.warehouse, **self.kwargs))


def build_pipeline(
    pipeline: beam.Pipeline, opts: StreamingApplyOptions, *, pipelined: bool = False
) -> Any:
    """Wire the job; returns the PCollection of batch reports."""
    batches = pipeline | "ReadCanonicalEvents" >> ReadCanonicalEvents(opts)
    return batches | "ApplyToRaw" >> ApplyToRaw(
        opts.warehouse,
        committer=KafkaCommitterFactory(opts.bootstrap, opts.consumer_group),
        dead_letters=_DeadLetterSinkFactory(opts.bootstrap, opts.dlq_topic),
        max_batch_events=opts.max_batch_events,
        status_file=opts.status_file or None,
        log_interval_s=opts.log_interval_s,
        warehouse_options=_warehouse_options(opts),
        schema_registry_url=opts.schema_registry_url,
        pipelined=pipelined,
    )


def _warehouse_options(opts: StreamingApplyOptions) -> dict[str, Any]:
    """Adapter options from the flags: merge-on-read and its compaction (local only)."""
    if not str(opts.warehouse).startswith("local:"):
        return {}
    return {
        "merge_on_read": opts.merge_on_read,
        "compact_interval_s": opts.compact_interval_s,
        "compact_pending_rows": opts.compact_pending_rows,
    }


class _DeadLetterSinkFactory:
    def __init__(self, bootstrap: str, dlq_topic: str) -> None:
        self.bootstrap = bootstrap
        self.dlq_topic = dlq_topic

    def __call__(self) -> DeadLetterSink:
        return DeadLetterSink(self.bootstrap, self.dlq_topic)


def run(argv: list[str] | None = None) -> None:
    tune_gc()
    options, runner = build_options(argv)
    opts = options.view_as(StreamingApplyOptions)
    logger.info(
        "streaming apply %s -> %s (stop_at_end=%s)", opts.topic, opts.warehouse, opts.stop_at_end
    )
    with beam.Pipeline(runner=runner, options=options) as pipeline:
        build_pipeline(pipeline, opts, pipelined=pipelined_apply(opts, runner))


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("apache_beam").setLevel(logging.WARNING)  # type-hint chatter at INFO
    run()
