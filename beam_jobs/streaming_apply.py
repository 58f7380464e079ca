"""Streaming apply: canonical change events on Kafka -> raw layer of a warehouse.

Run (local stack, in-process FnApiRunner)::

    .venvs/beam/bin/python -m beam_jobs.streaming_apply \\
        --bootstrap 127.0.0.1:19092 --topic capa.changes --warehouse local:.state/lakehouse

Add ``--stop_at_end`` for a backfill that stops once caught up; see beam_jobs/options.py
for Flink (on-prem) and Dataflow flags, and deploy/dataflow/ for the Flex Template.

Pipeline::

    ReadCanonicalEvents -> ApplyToRaw
      (KafkaBatch elements)  (beam_jobs.apply_loop.ApplyLoop: decode; apply; poison and
                              refused events -> DLQ topic, acknowledged; commit the offsets)

Elements are batches of records (one per Kafka poll), so Beam's per-element cost is paid per
batch, and decoding runs inside the apply step (no Beam hop per record). What happens to a
batch (failure isolation, retries, dead letters, offset commits, pipelining) is the plain
Python :class:`~beam_jobs.apply_loop.ApplyLoop`; the DoFn here maps Beam's bundle lifecycle
onto it.

Delivery contract: Kafka offsets advance only after the warehouse committed the events
below them and the dead-letter topic acknowledged the records it refused, so a crash never
skips a batch; a redelivered batch is harmless because the warehouse apply is idempotent.
A committed offset that retention already passed stops the job unless
``--accept_offset_gap`` is given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from beam_jobs.apply_loop import APPLY_RETRY, ApplyLoop, DeadLetterSink
from beam_jobs.apply_stats import ApplyStats
from beam_jobs.kafka_io import (
    METRICS_NAMESPACE,
    KafkaBatch,
    KafkaOffsetCommitter,
    ReadFromKafkaPartitions,
)
from beam_jobs.options import StreamingApplyOptions, build_options, pipelined_apply
from capa import lineage
from capa.config import KafkaConfig
from capa.lineage import ApplyRun
from capa.runtime import tune_gc
from capa.warehouse import parse_spec

logger = logging.getLogger(__name__)


# --- DoFns -------------------------------------------------------------------------------


def _serve_metrics() -> None:
    """The job's Prometheus endpoint and freshness objectives (``observe`` config)."""
    from capa import metrics
    from capa.config import load_settings

    observe = load_settings().observe
    metrics.configure_slos(observe.freshness_slo_s, observe.table_freshness_slo_s)
    metrics.serve_metrics(observe.host, observe.apply_metrics_port)


class BeamApplyMetrics:
    """The apply loop's metrics as Beam metrics (namespace ``capa.apply``)."""

    def count(self, name: str, value: int) -> None:
        Metrics.counter(METRICS_NAMESPACE, name).inc(value)

    def distribution(self, name: str, value: int) -> None:
        Metrics.distribution(METRICS_NAMESPACE, name).update(value)

    def gauge(self, name: str, value: int) -> None:
        Metrics.gauge(METRICS_NAMESPACE, name).set(value)


class ApplyBatchesFn(beam.DoFn):
    """Drives an :class:`ApplyLoop`: a batch per element, a flush per bundle."""

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
        source: tuple[str, str] | None = None,
    ) -> None:
        self.warehouse_spec = warehouse
        self.source = source  # (bootstrap, topic): the lineage input
        self.warehouse_options = warehouse_options or {}
        self.committer_factory = committer
        self.dead_letter_factory = dead_letters
        self.max_batch_events = max_batch_events
        self.status_file = status_file
        self.log_interval_s = log_interval_s
        self.max_attempts = max_attempts
        self.schema_registry_url = schema_registry_url
        self.pipelined = pipelined
        self._loop: ApplyLoop | None = None
        self._lineage: ApplyRun | None = None
        self._failed = False

    def setup(self) -> None:
        from capa.native import decode_batch
        from capa.warehouse import open_warehouse
        from connectors.kafka.wire import ChangeEventDecoder

        _serve_metrics()
        if self.source is not None:
            self._lineage = lineage.apply_run(
                lineage.emitter(), *self.source, parse_spec(self.warehouse_spec)
            )
            self._lineage.start()
        self._loop = ApplyLoop(
            open_warehouse(self.warehouse_spec, **self.warehouse_options),
            ChangeEventDecoder.from_config(
                KafkaConfig(schema_registry_url=self.schema_registry_url)
            ),
            committer=self.committer_factory() if self.committer_factory else None,
            dead_letters=self.dead_letter_factory() if self.dead_letter_factory else None,
            max_batch_events=self.max_batch_events,
            stats=ApplyStats(self.status_file, self.log_interval_s, BeamApplyMetrics()),
            native_decode=decode_batch,
            pipelined=self.pipelined,
            retry_policy=replace(APPLY_RETRY, attempts=self.max_attempts),
            lineage=self._lineage,
        )

    def process(self, batch: KafkaBatch) -> Iterator[dict[str, Any]]:
        loop = self._loop
        assert loop is not None
        report = self._failing(lambda: loop.add(KafkaBatch(*batch)))
        if report is not None:
            yield report

    def finish_bundle(self) -> Iterator[WindowedValue]:
        assert self._loop is not None
        report = self._failing(self._loop.finish)
        if report is not None:
            yield WindowedValue(report, GlobalWindow().max_timestamp(), (GlobalWindow(),))

    def _failing(self, call: Callable[[], dict[str, Any] | None]) -> dict[str, Any] | None:
        """``call()``; an error marks the run failed (its lineage ends with FAIL)."""
        try:
            return call()
        except BaseException:
            self._failed = True
            raise

    def teardown(self) -> None:
        try:
            if self._loop is not None:
                self._loop.close()
        except BaseException:
            self._failed = True
            raise
        finally:
            if self._lineage is not None:
                self._lineage.end(failed=self._failed)


class KafkaCommitterFactory:
    """Picklable factory of the offset committer used by ApplyToRaw."""

    def __init__(self, bootstrap: str, group: str) -> None:
        self.bootstrap = bootstrap
        self.group = group

    def __call__(self) -> KafkaOffsetCommitter:
        return KafkaOffsetCommitter(self.bootstrap, self.group)


class _DeadLetterSinkFactory:
    def __init__(self, bootstrap: str, dlq_topic: str) -> None:
        self.bootstrap = bootstrap
        self.dlq_topic = dlq_topic

    def __call__(self) -> DeadLetterSink:
        return DeadLetterSink(self.bootstrap, self.dlq_topic)


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
            accept_gap=o.accept_offset_gap,
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
        source=(opts.bootstrap, opts.topic),
    )


def _warehouse_options(opts: StreamingApplyOptions) -> dict[str, Any]:
    """The adapter tuning flags its config declares (merge-on-read and compaction: local)."""
    flags = {
        "merge_on_read": opts.merge_on_read,
        "compact_interval_s": opts.compact_interval_s,
        "compact_pending_rows": opts.compact_pending_rows,
    }
    declared = type(parse_spec(opts.warehouse)).model_fields
    return {name: value for name, value in flags.items() if name in declared}


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
