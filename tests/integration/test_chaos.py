"""Fault injection, the short version: kill -9 of the apply job, the Debezium bridge and the
Kafka broker while a randomized workload runs (inserts, updates, deletes, primary-key
updates, a truncate), each restarted through its Service; after quiesce the oracle must
find nothing lost, nothing duplicated and every row hash equal.

The long run is ``make chaos`` (``python -m bench.chaos``).
"""

from __future__ import annotations

from pathlib import Path

from capa.chaos import FAULT_KINDS, ChaosPlan, ChaosRun, chaos_settings, chaos_state_dir

PLAN = ChaosPlan(events=4_000, faults=4, rate=150.0, seed=11, truncate_every=2_500)


def test_pipeline_survives_kill_9_of_each_component_without_loss_or_duplicates() -> None:
    with chaos_state_dir() as state_dir:
        report = ChaosRun(chaos_settings(Path(state_dir)), PLAN).run()
    text = "\n".join(report.lines())
    assert all(report.faults[kind] >= 1 for kind in FAULT_KINDS), text
    assert report.events >= PLAN.events, text
    assert len(report.diffs) >= 6, text  # 3 workload tables + the 3 sample F2 tables
    assert report.source_rows > 500, text
    assert report.missing == 0, text
    assert report.extra == 0, text
    assert report.different == 0, text
    assert report.ok, text
