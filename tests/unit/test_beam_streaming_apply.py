"""Unit tests of the streaming apply DoFns (beam_jobs/streaming_apply.py) on the FnApiRunner.

TestPipeline + assert_that per transform; TestStream for order and replay: duplicated and
out-of-order events, in several bundles, must give the same replica as one in-order batch.
The warehouse is the real local lakehouse in a temp dir; Kafka is not needed here (the
offset committer is a port: these tests plug in one that audits the warehouse).
"""

from __future__ import annotations

import random
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

from beam_jobs.kafka_io import KafkaPartition, KafkaRecord
from beam_jobs.options import build_options
from beam_jobs.streaming_apply import (
    DEAD_LETTER_TAG,
    ApplyToRaw,
    Decoded,
    DecodeEvents,
)
from capa.codec import encode_single_object
from capa.errors import ConfigError
from capa.events import ChangeEvent, Op, SourceKind
from capa.warehouse import open_warehouse

TABLE = "raw.f2_public_items"


def make_event(key: int, seq: int, op: Op = Op.UPDATE) -> ChangeEvent:
    after = None if op is Op.DELETE else {"id": key, "qty": seq, "label": f"k{key}-s{seq}"}
    return ChangeEvent(
        source="f2", source_kind=SourceKind.POSTGRES, database="shop", schema="public",
        table="items", op=op, position=f"{seq:016x}.1", commit_ts_us=1_700_000_000_000_000 + seq,
        primary_key=("id",), key={"id": key},
        before={"id": key} if op is Op.DELETE else None, after=after,
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


def decoded(events: list[ChangeEvent], first_offset: int = 0) -> list[Decoded]:
    return [Decoded("t", 0, first_offset + i, e, encode_single_object(e))
            for i, e in enumerate(events)]


def replica(root: str) -> list[dict[str, Any]]:
    rows = open_warehouse(f"local:{root}").rows(TABLE)
    return sorted(({k: v for k, v in r.items() if k != "_capa_ingested_at"} for r in rows),
                  key=lambda r: r["id"])


def fn_api_pipeline() -> TestPipeline:
    """The runner of the real job (bounded inputs here)."""
    return TestPipeline(runner=FnApiRunner())


def streaming_test_pipeline() -> TestPipeline:
    """TestStream needs the BundleBasedDirectRunner: the FnApiRunner raises
    NotImplementedError(beam:transform:teststream:v1)."""
    return TestPipeline(runner=BundleBasedDirectRunner(), options=PipelineOptions(["--streaming"]))


def test_decode_events_sends_poison_to_dead_letters_and_keeps_its_offset() -> None:
    good = make_event(1, 1, Op.INSERT)
    records = [
        KafkaRecord("t", 0, 0, None, encode_single_object(good), 0),
        KafkaRecord("t", 0, 1, None, b"\x00\x00garbage", 0),
        KafkaRecord("t", 0, 2, None, None, 0),
    ]
    with fn_api_pipeline() as p:
        out = p | beam.Create(records) | DecodeEvents()
        assert_that(
            out["events"] | beam.Map(lambda d: (d.offset, d.event.event_id if d.event else None)),
            equal_to([(0, good.event_id), (1, None), (2, None)]),
            label="AssertEvents",
        )
        assert_that(
            out[DEAD_LETTER_TAG] | beam.Map(lambda d: (d.location, d.raw, d.origin == "beam-apply",
                                                       bool(d.reason))),
            equal_to([("t/0@1", b"\x00\x00garbage", True, True), ("t/0@2", None, True, True)]),
            label="AssertDeadLetters",
        )


def _stream(batches: list[list[Decoded]]) -> TestStream:
    stream = TestStream()
    for i, batch in enumerate(batches):
        stream = stream.add_elements(batch).advance_watermark_to(i + 1)
    return stream.advance_watermark_to_infinity()


def _apply(root: str, batches: list[list[Decoded]], **kwargs: Any) -> None:
    with streaming_test_pipeline() as p:
        reports = p | _stream(batches) | ApplyToRaw(
            f"local:{root}", committer=kwargs.pop("committer", None), dead_letters=None,
            max_batch_events=kwargs.pop("max_batch_events", 10_000), status_file=None,
        )
        total = (
            reports
            | beam.Map(lambda r: r["events"])
            | beam.WindowInto(GlobalWindows(), trigger=AfterWatermark(),
                              accumulation_mode=AccumulationMode.DISCARDING)
            | beam.CombineGlobally(sum).without_defaults()
        )
        assert_that(total, equal_to([sum(len(b) for b in batches)]))


def test_replayed_and_reordered_bundles_give_the_in_order_replica(tmp_path: Any) -> None:
    events = workload(400, keys=40, seed=7)
    _apply(str(tmp_path / "ordered"), [decoded(events)])

    rng = random.Random(11)
    chaos = decoded(events) + decoded(rng.sample(events, 150))  # redelivered duplicates
    rng.shuffle(chaos)
    _apply(str(tmp_path / "chaos"), [chaos[:200], chaos[200:390], chaos[390:]],
           max_batch_events=64)

    expected = replica(str(tmp_path / "ordered"))
    assert expected, "the in-order apply produced no rows"
    assert replica(str(tmp_path / "chaos")) == expected


class AuditingCommitter:
    """Offset committer port that records, at each commit, what the warehouse shows."""

    commits: ClassVar[list[tuple[int, int]]] = []

    def __init__(self, root: str) -> None:
        self.root = root

    def __call__(self) -> AuditingCommitter:
        return self

    def commit(self, offsets: dict[KafkaPartition, int]) -> None:
        (next_offset,) = offsets.values()
        changelog = open_warehouse(f"local:{self.root}").rows(TABLE + "_changelog")
        AuditingCommitter.commits.append((next_offset, len(changelog)))

    def lag(self, offsets: dict[KafkaPartition, int]) -> int:
        return 0

    def close(self) -> None:
        pass


def test_offsets_are_committed_only_after_the_warehouse_holds_the_batch(tmp_path: Any) -> None:
    events = [make_event(k, k + 1, Op.INSERT) for k in range(90)]
    AuditingCommitter.commits.clear()
    root = str(tmp_path / "wh")
    _apply(root, [decoded(events[:30]), decoded(events[30:], first_offset=30)],
           committer=AuditingCommitter(root), max_batch_events=25)
    commits = AuditingCommitter.commits
    assert len(commits) >= 4, commits  # max_batch_events=25 cuts the bundles
    # Each commit's next offset never runs ahead of the events visible in the changelog.
    assert all(next_offset <= visible for next_offset, visible in commits), commits
    assert max(offset for offset, _ in commits) == 90


def test_runner_registry_builds_the_in_process_runner_and_rejects_unknown_names() -> None:
    _, runner = build_options(["--bootstrap", "127.0.0.1:1", "--topic", "t"])
    assert type(runner).__name__ == "FnApiRunner"
    with pytest.raises(ConfigError, match="'NoSuchRunner'"):
        build_options(["--runner", "NoSuchRunner"])
