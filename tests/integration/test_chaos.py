"""Fault injection, the short version: kill -9 of the apply job, the Debezium bridge and the
Kafka broker while a randomized workload runs (inserts, updates, deletes, primary-key
updates, truncates), each restarted through its Service; after quiesce the oracle must
find nothing lost, nothing duplicated and every row hash equal.

The long run is ``make chaos`` (``python -m capa_app.chaos``).
"""

from __future__ import annotations

from capa_app.chaos.harness import FAULT_KINDS, ChaosPlan, ChaosRun, chaos_settings, chaos_state_dir

# seed 2: the workload's random choices include 2 truncates and about 250 primary-key updates
PLAN = ChaosPlan(events=4_000, faults=4, rate=150.0, seed=2, truncate_every=2_500)


def test_pipeline_survives_kill_9_of_each_component_without_loss_or_duplicates() -> None:
    with chaos_state_dir() as state_dir:
        report = ChaosRun(chaos_settings(state_dir), PLAN).run()
    text = "\n".join(report.lines())
    assert all(report.faults[kind] >= 1 for kind in FAULT_KINDS), text
    assert report.events >= PLAN.events, text
    assert report.workload["truncates"] >= 1 and report.workload["pk_updates"] >= 1, text
    assert len(report.diffs) >= 6, text  # 3 workload tables + the 3 sample F2 tables
    assert report.source_rows > 500, text
    assert report.missing == 0, text
    assert report.extra == 0, text
    assert report.different == 0, text
    assert report.ok, text
