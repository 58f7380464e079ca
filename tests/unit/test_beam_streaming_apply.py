"""Unit tests of the streaming apply DoFns (beam_jobs/streaming_apply.py) on the FnApiRunner.

TestPipeline + assert_that per transform; TestStream for order and replay: duplicated and
out-of-order events, in several bundles, must give the same replica as one in-order batch.
The warehouse is the real local lakehouse in a temp dir; Kafka is not needed here (the
offset committer is a port: these tests plug in one that audits the warehouse).
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from typing import Any, ClassVar

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.trigger import AccumulationMode, AfterWatermark
from apache_beam.transforms.window import GlobalWindows

from beam_jobs.apply_loop import Decoded, _column_stamps, _event_stamps
from beam_jobs.apply_stats import ApplyStats, spread
from beam_jobs.kafka_io import KafkaBatch, KafkaPartition
from beam_jobs.options import StreamingApplyOptions, build_options, pipelined_apply
from beam_jobs.streaming_apply import ApplyBatchesFn, ApplyToRaw
from capa.codec import encode_single_object
from capa.columnar import split_plain
from capa.errors import ConfigError
from capa.events import ChangeEvent, Op, SourceKind
from capa.warehouse import open_warehouse

TABLE = "raw.f2_public_items"


def make_event(key: int, seq: int, op: Op = Op.UPDATE) -> ChangeEvent:
    after = None if op is Op.DELETE else {"id": key, "qty": seq, "label": f"k{key}-s{seq}"}
    return ChangeEvent(
        source="f2",
        source_kind=SourceKind.POSTGRES,
        database="shop",
        schema="public",
        table="items",
        op=op,
        position=f"{seq:016x}.1",
        commit_ts_us=1_700_000_000_000_000 + seq,
        primary_key=("id",),
        key={"id": key},
        before={"id": key} if op is Op.DELETE else None,
        after=after,
    )


def workload(n: int, keys: int, seed: int) -> list[ChangeEvent]:
    """Inserts, updates and deletes (then re-inserts) over ``keys`` rows, in source order."""
    rng = random.Random(seed)
    alive: set[int] = set()
    events = []
    for seq in range(1, n + 1):
        key = rng.randrange(keys)
        if key not in alive:
            op = Op.INSERT
            alive.add(key)
        elif rng.random() < 0.2:
            op = Op.DELETE
            alive.discard(key)
        else:
            op = Op.UPDATE
        events.append(make_event(key, seq, op))
    return events


def batches(events: list[ChangeEvent], first_offset: int = 0, size: int = 7) -> list[KafkaBatch]:
    """The events as the Kafka reader emits them: batches of consecutive offsets."""
    values = [encode_single_object(e) for e in events]
    return [
        KafkaBatch(
            "t", 0, tuple(range(first_offset + i, first_offset + i + len(chunk))), tuple(chunk)
        )
        for i in range(0, len(values), size)
        for chunk in [values[i : i + size]]
    ]


def replica(root: str) -> list[dict[str, Any]]:
    rows = open_warehouse(f"local:{root}").rows(TABLE)
    return sorted(
        ({k: v for k, v in r.items() if k != "_capa_ingested_at"} for r in rows),
        key=lambda r: r["id"],
    )


def fn_api_pipeline() -> TestPipeline:
    """The runner of the real job (bounded inputs here)."""
    return TestPipeline(runner=FnApiRunner())


def streaming_test_pipeline() -> TestPipeline:
    """TestStream needs the BundleBasedDirectRunner: the FnApiRunner raises
    NotImplementedError(beam:transform:teststream:v1)."""
    return TestPipeline(runner=BundleBasedDirectRunner(), options=PipelineOptions(["--streaming"]))


class RecordingDeadLetters:
    """Dead-letter port that keeps what it was given (the Kafka DLQ adapter is exercised by
    tests/integration/test_streaming_apply.py against a real broker)."""

    letters: ClassVar[list[Any]] = []

    def __call__(self) -> RecordingDeadLetters:
        return self

    def write(self, letters: list[Any]) -> None:
        RecordingDeadLetters.letters.extend(letters)

    def close(self) -> None:
        pass


def test_poison_records_are_dead_lettered_and_the_rest_applied(tmp_path: Any) -> None:
    good, later = make_event(1, 1, Op.INSERT), make_event(2, 2, Op.INSERT)
    batch = KafkaBatch(
        "t",
        0,
        (0, 1, 2, 3),
        (encode_single_object(good), b"\x00\x00garbage", None, encode_single_object(later)),
    )
    RecordingDeadLetters.letters.clear()
    AuditingCommitter.commits.clear()
    root = str(tmp_path / "wh")
    with fn_api_pipeline() as p:
        _ = (
            p
            | beam.Create([batch])
            | ApplyToRaw(
                f"local:{root}",
                committer=AuditingCommitter(root),
                dead_letters=RecordingDeadLetters(),
                max_batch_events=100,
            )
        )
    letters = [(d.location, d.raw, d.origin, bool(d.reason)) for d in RecordingDeadLetters.letters]
    assert letters == [
        ("t/0@1", b"\x00\x00garbage", "beam-apply", True),
        ("t/0@2", None, "beam-apply", True),
    ]
    assert [r["id"] for r in replica(root)] == [1, 2]
    assert AuditingCommitter.commits == [(4, 2)]  # committed past the poison, after the apply


def test_poison_without_a_dead_letter_topic_stops_the_job(tmp_path: Any) -> None:
    batch = KafkaBatch("t", 0, (0,), (b"\x00\x00garbage",))
    with (
        pytest.raises(Exception, match="no dead-letter topic is configured"),
        fn_api_pipeline() as p,
    ):
        _ = (
            p
            | beam.Create([batch])
            | ApplyToRaw(
                f"local:{tmp_path}", committer=None, dead_letters=None, max_batch_events=100
            )
        )


def _stream(batches: list[list[KafkaBatch]]) -> TestStream:
    stream = TestStream()
    for i, batch in enumerate(batches):
        stream = stream.add_elements(batch).advance_watermark_to(i + 1)
    return stream.advance_watermark_to_infinity()


def _apply(root: str, batches: list[list[KafkaBatch]], **kwargs: Any) -> None:
    pipelined = kwargs.pop("pipelined", False)
    with streaming_test_pipeline() as p:
        reports = (
            p
            | _stream(batches)
            | ApplyToRaw(
                f"local:{root}",
                committer=kwargs.pop("committer", None),
                dead_letters=None,
                max_batch_events=kwargs.pop("max_batch_events", 10_000),
                status_file=None,
                pipelined=pipelined,
            )
        )
        if pipelined:  # reports trail by one batch; the last one is only logged at teardown
            return
        total = (
            reports
            | beam.Map(lambda r: r["events"])
            | beam.WindowInto(
                GlobalWindows(),
                trigger=AfterWatermark(),
                accumulation_mode=AccumulationMode.DISCARDING,
            )
            | beam.CombineGlobally(sum).without_defaults()
        )
        assert_that(total, equal_to([sum(len(b.offsets) for bundle in batches for b in bundle)]))


@pytest.mark.parametrize("pipelined", [False, True])
def test_replayed_and_reordered_bundles_give_the_in_order_replica(
    tmp_path: Any, pipelined: bool
) -> None:
    events = workload(400, keys=40, seed=7)
    _apply(str(tmp_path / "ordered"), [batches(events)])

    rng = random.Random(11)
    # redelivered duplicates, reordered batches of 1-7 records
    chaos = batches(events) + batches(rng.sample(events, 150), first_offset=400, size=3)
    rng.shuffle(chaos)
    _apply(
        str(tmp_path / "chaos"),
        [chaos[:40], chaos[40:80], chaos[80:]],
        max_batch_events=64,
        pipelined=pipelined,
    )

    expected = replica(str(tmp_path / "ordered"))
    assert expected, "the in-order apply produced no rows"
    assert replica(str(tmp_path / "chaos")) == expected


class AuditingCommitter:
    """Offset committer port that records, at each commit, what the warehouse shows."""

    commits: ClassVar[list[tuple[int, int]]] = []

    def __init__(self, root: str) -> None:
        self.root = root
        self.closed = False

    def __call__(self) -> AuditingCommitter:
        return AuditingCommitter(self.root)  # one per DoFn instance, as the Kafka factory

    def commit(self, offsets: dict[KafkaPartition, int]) -> None:
        time.sleep(0.05)  # a broker round trip: a commit still running at close shows up
        (next_offset,) = offsets.values()
        changelog = open_warehouse(f"local:{self.root}").rows(TABLE + "_changelog")
        AuditingCommitter.commits.append((next_offset, len(changelog)))
        assert not self.closed, "offsets committed after the job closed"

    def partition_lags(self, offsets: dict[KafkaPartition, int]) -> dict[KafkaPartition, int]:
        return dict.fromkeys(offsets, 0)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("pipelined", [False, True])
def test_offsets_are_committed_only_after_the_warehouse_holds_the_batch(
    tmp_path: Any, pipelined: bool
) -> None:
    events = [make_event(k, k + 1, Op.INSERT) for k in range(90)]
    AuditingCommitter.commits.clear()
    root = str(tmp_path / "wh")
    _apply(
        root,
        [batches(events[:30]), batches(events[30:], first_offset=30)],
        committer=AuditingCommitter(root),
        max_batch_events=25,
        pipelined=pipelined,
    )
    commits = AuditingCommitter.commits
    assert len(commits) >= 4, commits  # max_batch_events=25 cuts the bundles
    # Each commit's next offset never runs ahead of the events visible in the changelog.
    assert all(next_offset <= visible for next_offset, visible in commits), commits
    assert max(offset for offset, _ in commits) == 90


def test_runner_registry_builds_the_in_process_runner_and_rejects_unknown_names() -> None:
    options, runner = build_options(["--bootstrap", "127.0.0.1:1", "--topic", "t"])
    assert type(runner).__name__ == "FnApiRunner"
    assert pipelined_apply(options.view_as(StreamingApplyOptions), runner) is True
    flink, name = build_options(["--runner", "FlinkRunner", "--topic", "t"])
    assert pipelined_apply(flink.view_as(StreamingApplyOptions), name) is False
    off, runner = build_options(["--topic", "t", "--pipelined_apply", "false"])
    assert pipelined_apply(off.view_as(StreamingApplyOptions), runner) is False
    with pytest.raises(ConfigError, match="'NoSuchRunner'"):
        build_options(["--runner", "NoSuchRunner"])


def test_latency_figures_count_live_changes_only() -> None:
    stats = ApplyStats(status_file=None, log_interval_s=3600)
    now_us = int(stats.started * 1e6)
    live = [make_event(k, k + 1) for k in range(200)]
    live = [dataclasses.replace(e, commit_ts_us=now_us - 500_000) for e in live]
    snapshot = dataclasses.replace(make_event(1, 1, Op.READ), commit_ts_us=now_us)
    history = dataclasses.replace(make_event(2, 2), commit_ts_us=now_us - 7200 * 10**6)
    batch = [*live, snapshot, history]
    stamps = _column_stamps(split_plain(batch)[0])
    items = [Decoded("t", 0, i, e, None) for i, e in enumerate(batch)]
    assert sorted(stamps) == sorted(_event_stamps(items)) and len(stamps) == 201
    stats.record_batch(len(batch), stamps, seconds=0.1, visible_at=stats.started + 0.5)
    status = stats.snapshot()
    assert status["events_applied"] == 202
    assert status["latency_samples"] == 200  # the snapshot read and the replayed history: out
    assert status["latency_p99_s"] == 1.0  # visible 0.5 s after start, committed 0.5 s before
    assert stats.last_commit_ts_us == now_us - 500_000


def test_spread_keeps_the_extremes_and_bounds_the_sample() -> None:
    values = [float(v) for v in range(1000)]
    sample = spread(values, 64)
    assert len(sample) == 64
    assert (sample[0], sample[-1]) == (0.0, 999.0)
    assert spread(values[:10], 64) == values[:10]


def test_pipelined_batch_is_recorded_by_the_next_idle_bundle(tmp_path: Any) -> None:
    """A batch applied in the background shows in the status file once the next bundle
    ends, even when that bundle read nothing (an idle topic must not hide it)."""
    status = tmp_path / "status.json"
    fn = ApplyBatchesFn(
        f"local:{tmp_path / 'wh'}",
        committer=None,
        dead_letters=None,
        max_batch_events=10_000,
        status_file=str(status),
        pipelined=True,
    )
    fn.setup()
    try:
        fn.start_bundle()
        for batch in batches(workload(50, keys=10, seed=3)):
            list(fn.process(batch))
        assert list(fn.finish_bundle()) == []  # in flight: its report comes later
        fn.start_bundle()
        (report,) = list(fn.finish_bundle())  # idle bundle
        assert report.value["events"] == 50
        assert json.loads(status.read_text())["events_applied"] == 50
    finally:
        fn.teardown()
    assert len(open_warehouse(f"local:{tmp_path / 'wh'}").rows(TABLE + "_changelog")) == 50


def test_adapter_options_and_capabilities_come_from_the_typed_port(tmp_path: Any) -> None:
    from beam_jobs.streaming_apply import _warehouse_options
    from capa.warehouse.base import column_writer, compactor
    from capa.warehouse.bigquery import BigQueryWarehouse

    def options(spec: str) -> dict[str, Any]:
        argv = ["--topic", "t", "--warehouse", spec, "--merge_on_read", "false"]
        return _warehouse_options(build_options(argv)[0].view_as(StreamingApplyOptions))

    assert options(f"local:{tmp_path}")["merge_on_read"] is False
    assert options("bigquery:proj") == {}
    local = open_warehouse(f"local:{tmp_path}")
    assert column_writer(local) is local and compactor(local) is local
    assert not BigQueryWarehouse.capabilities.columns
    assert not BigQueryWarehouse.capabilities.compaction
