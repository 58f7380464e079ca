"""Apply semantics (capa.apply), property-tested against an independent sequential reference."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_apply_cases import event, full_row, histories, sequential_replica, shuffled_batches

from capa.apply import DeadLetter, apply_isolating_failures, plan_table
from capa.errors import DecodeError, SchemaDriftError, TerminalError, TransientError
from capa.events import Op
from capa.merge_rule import ReplicaState


def replay(batches: list[list], state: ReplicaState | None = None) -> ReplicaState:
    state = state or ReplicaState()
    for batch in batches:
        state.apply(plan_table(batch, state.watermark))
    return state


def as_reference(state: ReplicaState) -> dict:
    return {
        key[0]: {
            "id": key[0],
            **{c: row.get(c) for c in ("name", "amount", "doc")},
            "_deleted": row["_capa_deleted"],
            "_pos": row["_capa_position"],
        }
        for key, row in state.rows.items()
    }


@settings(max_examples=300, deadline=None)
@given(histories(), st.integers(0, 2**32))
def test_any_permutation_with_duplicates_gives_the_sequential_replica(history, seed) -> None:
    state = replay(shuffled_batches(history, seed))
    assert as_reference(state) == sequential_replica(history)


@settings(max_examples=200, deadline=None)
@given(histories(toast=True), st.integers(0, 2**32))
def test_unchanged_columns_keep_the_previous_value_in_order_across_batches(history, seed) -> None:
    state = replay(shuffled_batches(history, seed, shuffle=False))
    assert as_reference(state) == sequential_replica(history)


@settings(max_examples=100, deadline=None)
@given(histories(), st.integers(0, 2**32))
def test_replaying_everything_again_changes_nothing(history, seed) -> None:
    state = replay(shuffled_batches(history, seed))
    before = {k: dict(v) for k, v in state.rows.items()}
    written = state.apply(plan_table(history, state.watermark))
    assert written == 0
    assert state.rows == before


def test_older_event_is_a_noop() -> None:
    state = replay(
        [
            [event(Op.INSERT, 1, 20, after=full_row(1, 2))],
            [event(Op.UPDATE, 1, 10, after=full_row(1, 1))],
        ]
    )
    assert state.rows[(1,)]["name"] == "n2"


def test_delete_keeps_a_tombstone_so_late_older_events_stay_noops() -> None:
    state = replay(
        [
            [event(Op.DELETE, 1, 30, before={"id": 1})],
            [event(Op.INSERT, 1, 10, after=full_row(1, 1))],
        ]
    )
    assert state.rows[(1,)]["_capa_deleted"] is True
    assert state.visible() == {}


def test_truncate_removes_older_rows_and_blocks_late_older_events() -> None:
    state = replay(
        [
            [
                event(Op.INSERT, 1, 10, after=full_row(1, 1)),
                event(Op.INSERT, 2, 50, after=full_row(2, 2)),
            ],
            [event(Op.TRUNCATE, None, 40)],
            [event(Op.UPDATE, 1, 20, after=full_row(1, 3))],
        ]
    )
    assert list(state.rows) == [(2,)]
    assert state.watermark == event(Op.TRUNCATE, None, 40).position


def test_primary_key_update_moves_the_row() -> None:
    plan = plan_table(
        [
            event(Op.INSERT, 1, 10, after=full_row(1, 1)),
            event(Op.UPDATE, 9, 11, after=full_row(9, 2), before={"id": 1}),
        ]
    )
    changes = {c.key: c for c in plan.changes}
    assert changes[(1,)].deleted and not changes[(9,)].deleted


def test_unchanged_column_folds_from_an_earlier_event_of_the_batch() -> None:
    plan = plan_table(
        [
            event(Op.INSERT, 1, 10, after=full_row(1, 1)),
            event(
                Op.UPDATE,
                1,
                11,
                after={"id": 1, "name": "x", "amount": Decimal(2)},
                unchanged=("doc",),
            ),
        ]
    )
    (change,) = plan.changes
    assert change.values["doc"] == "doc1" and change.keep == frozenset()


def test_unchanged_column_first_in_batch_keeps_the_target_value() -> None:
    plan = plan_table([event(Op.UPDATE, 1, 11, after={"id": 1, "name": "x"}, unchanged=("doc",))])
    assert plan.keep_columns == {"doc"}


def test_duplicates_are_planned_once() -> None:
    insert = event(Op.INSERT, 1, 10, after=full_row(1, 1))
    plan = plan_table([insert, insert, insert])
    assert plan.events == 3 and len(plan.changelog) == 1 and len(plan.changes) == 1


def test_table_without_primary_key_is_a_clear_terminal_error() -> None:
    keyless = event(Op.INSERT, 1, 10, after=full_row(1, 1))
    keyless = type(keyless)(
        **{
            **{f: getattr(keyless, f) for f in keyless.__dataclass_fields__},
            "primary_key": (),
            "key": {},
            "event_id": "",
        }
    )
    with pytest.raises(DecodeError, match="no primary key"):
        plan_table([keyless])


def test_isolating_failures_dead_letters_only_the_bad_events() -> None:
    applied: list[int] = []

    def apply(batch):
        if any(e.key["id"] == 3 for e in batch):
            raise SchemaDriftError("column 'x' changed type")
        applied.extend(e.key["id"] for e in batch)

    events = [event(Op.INSERT, k, 10 + k, after=full_row(k, k)) for k in (1, 2, 3, 4)]
    dead = apply_isolating_failures(apply, events)
    assert dead == [DeadLetter(events[2], "column 'x' changed type")]
    assert sorted(set(applied)) == [1, 2, 4]


def test_isolating_failures_lets_transient_errors_through() -> None:
    def apply(batch):
        raise TransientError("broker down")

    with pytest.raises(TransientError):
        apply_isolating_failures(apply, [event(Op.INSERT, 1, 10, after=full_row(1, 1))])
    assert issubclass(SchemaDriftError, TerminalError)
