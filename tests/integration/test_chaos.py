"""Fault injection, the short version: kill -9 of the apply job, the Debezium bridge and the
Kafka broker while a randomized workload runs (inserts, updates, deletes, primary-key
updates, truncates), each restarted through its Service; after quiesce the oracle must
find nothing lost, nothing duplicated and every row hash equal.

The poison test mixes every kind of poison record into a shorter run of the same kind
(oversize rows, NULL-key events, type drift, a table name too long to encode, plus the legal
hostile names replicated row for row; see capa_app/chaos/poison.py): the good rows must
equal their source and each poison must be on the dead-letter topic with its reason.

The long runs are ``make chaos`` and ``make chaos-poison`` (``python -m capa_app.chaos
[--poison]``).
"""

from __future__ import annotations

from capa_app.chaos.harness import FAULT_KINDS, ChaosPlan, ChaosRun, chaos_settings, chaos_state_dir
from capa_app.chaos.poison import HOSTILE_TABLES, POISON_KINDS

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


# seed 3: 25 poison records, every kind at least once, among 2,000 changes and 3 kills
POISON_PLAN = ChaosPlan(events=2_000, faults=3, rate=200.0, seed=3, poison_every=80)


def test_poison_records_are_dead_letters_once_and_good_rows_still_equal_their_source() -> None:
    with chaos_state_dir() as state_dir:
        report = ChaosRun(chaos_settings(state_dir, poison=True), POISON_PLAN).run()
    text = "\n".join(report.lines())
    assert report.poison is not None, text
    assert sum(report.faults.values()) == POISON_PLAN.faults, text
    assert all(report.poison.injected[kind] >= 1 for kind in POISON_KINDS), text
    assert sum(report.poison.injected.values()) == POISON_PLAN.events // POISON_PLAN.poison_every
    # the hostile-but-legal tables were written and are compared row for row
    hostile = report.poison.hostile_rows
    assert len(hostile) == len(HOSTILE_TABLES) and all(n > 0 for n in hostile.values()), text
    assert report.missing == 0 and report.extra == 0 and report.different == 0, text
    dlq = report.poison.dlq
    assert dlq.missing == [] and dlq.wrong_reason == [] and dlq.unexpected == [], text
    # copies redelivered after a kill (at-least-once transport) carry the same id and reason
    assert dlq.letters == sum(report.poison.injected.values()) + dlq.extra_copies, text
    assert report.poison.null_key_replica_rows == 0, text
    assert report.poison.ok and report.ok, text
