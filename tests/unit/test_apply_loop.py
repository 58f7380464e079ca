"""The streaming apply loop (beam_jobs/apply_loop.py) without Beam, on the real local lakehouse.

The warehouse is delta-rs on a temp dir; decoding is the job's (native when installed). The
offset committer and the dead-letter writer are ports: here they record what they were
given (the Kafka adapters are exercised against a real broker in tests/integration/).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from beam_jobs.apply_loop import APPLY_RETRY, ApplyLoop
from beam_jobs.apply_stats import ApplyStats
from capa import lineage
from capa.codec import encode_single_object
from capa.columnar import TableColumns
from capa.config import LocalWarehouseConfig
from capa.errors import TerminalError, WarehouseTransientError
from capa.events import ChangeEvent, Op, SourceKind
from capa.native import decode_batch
from capa.warehouse.base import ApplyReport
from capa.warehouse.local import LocalWarehouse
from connectors.kafka.dlq import DeadLetter
from connectors.kafka.offsets import KafkaBatch, KafkaPartition
from connectors.kafka.wire import ChangeEventDecoder

TABLE = "raw.f2_public_items"
NO_WAIT = dataclasses.replace(APPLY_RETRY, first_wait_s=0.0, attempts=3)


def make_event(key: int, seq: int, **extra: Any) -> ChangeEvent:
    return ChangeEvent(
        source="f2", source_kind=SourceKind.POSTGRES, database="shop", schema="public",
        table="items", op=Op.INSERT, position=f"{seq:016x}.1",
        commit_ts_us=1_700_000_000_000_000 + seq, primary_key=("id",), key={"id": key}, before=None,
        after={"id": key, "qty": seq, "label": f"k{key}", **extra},
    )  # fmt: skip


def as_batch(events: Sequence[ChangeEvent], first_offset: int = 0) -> KafkaBatch:
    offsets = tuple(range(first_offset, first_offset + len(events)))
    return KafkaBatch("t", 0, offsets, tuple(encode_single_object(e) for e in events))


class RecordingCommitter:
    """Records each commit with the changelog rows visible at that moment."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.commits: list[tuple[dict[KafkaPartition, int], int]] = []

    def commit(self, next_offsets: dict[KafkaPartition, int]) -> None:
        visible = len(LocalWarehouse(self.root).rows(TABLE + "_changelog"))
        self.commits.append((dict(next_offsets), visible))

    def partition_lags(self, next_offsets: dict[KafkaPartition, int]) -> dict[KafkaPartition, int]:
        return dict.fromkeys(next_offsets, 0)

    def close(self) -> None:
        pass


class RecordingDeadLetters:
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def write(self, letters: Sequence[DeadLetter]) -> None:
        self.letters.extend(letters)

    def close(self) -> None:
        pass


class CountingWarehouse(LocalWarehouse):
    """The local warehouse, counting the calls the loop makes."""

    def __init__(self, root: Path, **options: Any) -> None:
        super().__init__(root, **options)
        self.calls: list[str] = []

    def apply(self, events: Sequence[ChangeEvent]) -> ApplyReport:
        self.calls.append("apply")
        return super().apply(events)

    def apply_columns(self, tables: Sequence[TableColumns]) -> ApplyReport:
        self.calls.append("apply_columns")
        return super().apply_columns(tables)


class FlakyWarehouse(LocalWarehouse):
    """Fails its first ``failures`` calls with a transient error (a commit conflict)."""

    def __init__(self, root: Path, failures: int) -> None:
        super().__init__(root)
        self.failures = failures
        self.calls = 0

    def apply_columns(self, tables: Sequence[TableColumns]) -> ApplyReport:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise WarehouseTransientError("commit conflict on 'f2_public_items'")
        return super().apply_columns(tables)


def run_loop(
    warehouse: LocalWarehouse,
    batches: Sequence[KafkaBatch],
    committer: RecordingCommitter | None,
    dead_letters: RecordingDeadLetters | None,
    *,
    pipelined: bool = False,
) -> list[dict[str, Any]]:
    loop = ApplyLoop(
        warehouse,
        ChangeEventDecoder(),
        committer=committer,
        dead_letters=dead_letters,
        max_batch_events=10_000,
        stats=ApplyStats(None, 3600),
        native_decode=decode_batch,
        pipelined=pipelined,
        retry_policy=NO_WAIT,
    )
    reports = []
    try:
        for batch in batches:
            reports.append(loop.add(batch))
        reports.append(loop.finish())
        reports.append(loop.finish())  # pipelined: an idle round collects the batch in flight
    finally:
        loop.close()
    return [r for r in reports if r is not None]


def replica(root: Path) -> list[dict[str, Any]]:
    rows = LocalWarehouse(root).rows(TABLE)
    return sorted(({k: v for k, v in r.items() if k != "_capa_ingested_at"} for r in rows),
                  key=lambda r: r["id"])  # fmt: skip


def changelog_ids(root: Path) -> list[str]:
    return sorted(r["_capa_event_id"] for r in LocalWarehouse(root).rows(TABLE + "_changelog"))


@pytest.mark.parametrize("pipelined", [False, True])
def test_one_record_delta_rs_refuses_is_dead_lettered_and_the_rest_of_its_table_applied(
    tmp_path: Path, pipelined: bool
) -> None:
    """A column named like an existing one but for case ("QTY" next to "qty"): delta-rs
    refuses the write with an error capa does not classify. Only that record is refused."""
    events = [make_event(k, k) for k in range(1, 41)]
    events[17] = make_event(18, 18, QTY=5)  # the poison: same table, same batch
    batch = as_batch(events)
    committer, letters = RecordingCommitter(tmp_path), RecordingDeadLetters()

    (report,) = run_loop(LocalWarehouse(tmp_path), [batch], committer, letters,
                         pipelined=pipelined)  # fmt: skip

    (letter,) = letters.letters
    assert (letter.location, letter.raw, letter.origin) == (
        "t/0@17",
        batch.values[17],
        "beam-apply",
    )
    assert "Duplicate field name" in letter.reason and TABLE in letter.reason
    assert [r["id"] for r in replica(tmp_path)] == [k for k in range(1, 41) if k != 18]
    assert committer.commits == [({KafkaPartition("t", 0): 40}, 39)]  # after the apply
    assert (report["events"], report["dead_letters"]) == (39, 1)

    rows, log = replica(tmp_path), changelog_ids(tmp_path)
    again, second = RecordingCommitter(tmp_path), RecordingDeadLetters()
    run_loop(LocalWarehouse(tmp_path), [batch], again, second)  # a redelivery of the batch
    assert replica(tmp_path) == rows and changelog_ids(tmp_path) == log
    assert [d.location for d in second.letters] == ["t/0@17"]  # at least once, never lost
    assert again.commits == [({KafkaPartition("t", 0): 40}, 39)]


def test_a_type_drift_dead_letters_that_event_only(tmp_path: Path) -> None:
    run_loop(LocalWarehouse(tmp_path), [as_batch([make_event(1, 1)])], None, None)
    events = [make_event(k, k) for k in range(2, 12)]
    events[4] = dataclasses.replace(events[4], after={"id": 6, "qty": 6, "label": 42})
    letters = RecordingDeadLetters()
    run_loop(LocalWarehouse(tmp_path), [as_batch(events, 1)], RecordingCommitter(tmp_path),
             letters)  # fmt: skip
    assert [(d.location, "changed type" in d.reason) for d in letters.letters] == [("t/0@5", True)]
    assert [r["id"] for r in replica(tmp_path)] == [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]


def test_a_clean_batch_is_one_column_wise_call(tmp_path: Path) -> None:
    warehouse = CountingWarehouse(tmp_path)
    events = [make_event(k, k) for k in range(1, 101)]
    run_loop(warehouse, [as_batch(events[:50]), as_batch(events[50:], 50)], None, None)
    assert warehouse.calls == ["apply_columns"]
    assert len(replica(tmp_path)) == 100


def test_transient_errors_are_retried_then_stop_the_job_without_a_commit(tmp_path: Path) -> None:
    batch = as_batch([make_event(k, k) for k in range(1, 11)])
    healing = FlakyWarehouse(tmp_path / "healing", failures=2)
    committer = RecordingCommitter(tmp_path / "healing")
    run_loop(healing, [batch], committer, RecordingDeadLetters())
    assert healing.calls == 3 and len(committer.commits) == 1

    down = FlakyWarehouse(tmp_path / "down", failures=99)
    committer, letters = RecordingCommitter(tmp_path / "down"), RecordingDeadLetters()
    with pytest.raises(WarehouseTransientError):
        run_loop(down, [batch], committer, letters)
    assert down.calls == NO_WAIT.attempts  # bounded, and never taken for a refusal
    assert committer.commits == [] and letters.letters == []


def test_refused_records_without_a_dead_letter_topic_stop_the_job_uncommitted(
    tmp_path: Path,
) -> None:
    committer = RecordingCommitter(tmp_path)
    batch = as_batch([make_event(1, 1), make_event(2, 2, QTY=1)])
    with pytest.raises(TerminalError, match="no dead-letter topic is configured"):
        run_loop(LocalWarehouse(tmp_path), [batch], committer, None)
    assert committer.commits == []


def test_a_refused_event_on_the_event_path_is_isolated_too(tmp_path: Path) -> None:
    """A TOAST update keeps its table off the column path: the events are bisected there."""
    events = [make_event(k, k) for k in range(1, 21)]
    toast = dataclasses.replace(
        make_event(3, 30), op=Op.UPDATE, after={"id": 3, "qty": 30}, unchanged=("label",)
    )
    events += [toast, make_event(21, 31, QTY=1)]
    warehouse = CountingWarehouse(tmp_path)
    letters = RecordingDeadLetters()
    run_loop(warehouse, [as_batch(events)], RecordingCommitter(tmp_path), letters)
    assert "apply_columns" not in warehouse.calls
    assert [d.location for d in letters.letters] == ["t/0@21"]
    rows = {r["id"]: (r["qty"], r["label"]) for r in replica(tmp_path)}
    assert sorted(rows) == list(range(1, 21)) and rows[3] == (30, "k3")  # the TOAST kept label


def _sample(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_loop_exports_per_table_prometheus_figures(tmp_path: Path) -> None:
    """Applied events, latencies and refused events by table (capa/metrics.py families)."""
    label = "f2.public.items"
    applied = _sample("capa_apply_events_applied_total", table=label)
    observed = _sample("capa_apply_commit_to_visible_seconds_count", table=label)
    refused = _sample(
        "capa_dead_letters_total",
        component="apply",
        table=label,
        reason="warehouse refused the event for raw.f2_public_items",
    )
    now_us = int(__import__("time").time() * 1e6)
    events = [dataclasses.replace(make_event(k, k), commit_ts_us=now_us) for k in range(1, 21)]
    events[3] = make_event(4, 4, QTY=5)  # refused by delta-rs (see the first test)
    run_loop(LocalWarehouse(tmp_path), [as_batch(events)], RecordingCommitter(tmp_path),
             RecordingDeadLetters())  # fmt: skip

    assert _sample("capa_apply_events_applied_total", table=label) - applied == 19
    assert _sample("capa_apply_commit_to_visible_seconds_count", table=label) - observed == 19
    assert _sample("capa_apply_last_applied_timestamp_seconds", table=label) >= now_us / 1e6
    from prometheus_client import REGISTRY

    letters = [
        s for m in REGISTRY.collect() if m.name == "capa_dead_letters"
        for s in m.samples if s.labels.get("component") == "apply" and s.labels.get("table") == label
        and s.name.endswith("_total")
    ]  # fmt: skip
    assert sum(s.value for s in letters) - refused >= 1


def test_the_loop_reports_each_new_raw_table_to_lineage_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four batches, two tables: one RUNNING event per table that first appears, not per batch."""
    events_file = tmp_path / "lineage.jsonl"
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__TYPE", "file")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__LOG_FILE_PATH", str(events_file))
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__APPEND", "true")
    run = lineage.apply_run(
        lineage.emitter(), "127.0.0.1:9092", "t", LocalWarehouseConfig(path=tmp_path)
    )
    parts = [dataclasses.replace(make_event(k, 100 + k), table="parts") for k in range(1, 4)]
    batches = [as_batch([make_event(k, k) for k in range(1, 6)]),
               as_batch([make_event(k, 10 + k) for k in range(1, 6)], 5),
               as_batch(parts, 10),
               as_batch([make_event(k, 20 + k) for k in range(1, 6)], 13)]  # fmt: skip
    run.start()
    loop = ApplyLoop(
        LocalWarehouse(tmp_path), ChangeEventDecoder(), committer=None, dead_letters=None,
        max_batch_events=1, stats=ApplyStats(None, 3600), native_decode=decode_batch,
        retry_policy=NO_WAIT, lineage=run,
    )  # fmt: skip
    try:
        for batch in batches:
            loop.add(batch)
    finally:
        loop.close()
    run.end(failed=False)

    sent = [json.loads(line) for line in events_file.read_text().splitlines()]
    assert [e["eventType"] for e in sent] == ["START", "RUNNING", "RUNNING", "COMPLETE"]
    outputs = [[d["name"] for d in e["outputs"]] for e in sent]
    raw = tmp_path.resolve() / "raw"
    assert outputs[1] == [str(raw / "f2_public_items")]
    assert outputs[3] == [str(raw / "f2_public_items"), str(raw / "f2_public_parts")]


class LagCommitter(RecordingCommitter):
    """Reports the lag it is told to (the topic's end offsets move without the loop)."""

    lag = 0

    def partition_lags(self, next_offsets: dict[KafkaPartition, int]) -> dict[KafkaPartition, int]:
        return dict.fromkeys(next_offsets, self.lag)


def test_an_idle_round_refreshes_the_lag_gauge(tmp_path: Path) -> None:
    """The lag of the last applied batch must not stay on the gauge while the job is idle."""
    committer = LagCommitter(tmp_path)
    committer.lag = 7
    loop = ApplyLoop(
        LocalWarehouse(tmp_path), ChangeEventDecoder(), committer=committer,
        dead_letters=RecordingDeadLetters(), max_batch_events=10_000,
        stats=ApplyStats(None, 3600), native_decode=decode_batch, retry_policy=NO_WAIT,
    )  # fmt: skip
    try:
        loop.add(as_batch([make_event(1, 1)]))
        loop.finish()
        assert _sample("capa_apply_consumer_lag_records", topic="t", partition="0") == 7
        committer.lag = 0  # the rest was applied; nothing new arrives
        time.sleep(2.1)  # the loop checks the lag at most every 2 s
        assert loop.finish() is None  # an idle round
        assert _sample("capa_apply_consumer_lag_records", topic="t", partition="0") == 0
    finally:
        loop.close()
