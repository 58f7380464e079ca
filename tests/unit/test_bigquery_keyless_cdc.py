"""Keyless tables in BigQuery's cdc mode: the CDC rows the adapter sends for a keyless table,
replayed through the reference of BigQuery's documented CDC rules (``bigquery_apply``, keyed
on ``_capa_row_id``), give the source's multiset under any redelivery of prefixes, and the
same rows as the apply rules' reference (``ReplicaState``).

Per batch this does what ``BigQueryWarehouse._apply_table`` and ``CdcApply.apply`` do, with
the replica as the reference's table: plan (``keyless=True``), resolve against what the
replica holds (only batches that update or delete read it), and send ``replica_rows``; a
truncate's history is the replica's rows below it.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_bigquery_cdc_rows import bigquery_apply
from test_keyless import IMAGES, keyless, keyless_histories, multiset, redeliveries

from capa.apply import keyless_target, plan_table, resolve_plan
from capa.events import ChangeEvent, Op
from capa.keyless import KEYLESS_COLUMNS, KEYLESS_KEY, ROW_ID, KeylessTarget
from capa.merge_rule import ReplicaState
from capa.warehouse.base import META_DELETED, META_POSITION
from capa.warehouse.bigquery.cdc import replica_rows
from capa.warehouse.bigquery.keyless import latest_rows, needs_read
from capa.warehouse.bigquery.write_api import CHANGE_TYPE

COLUMNS = ("level", "msg", "n", *KEYLESS_COLUMNS)
NOW = datetime(2026, 12, 7, tzinfo=UTC)


def send(batches: list[list[ChangeEvent]]) -> tuple[list[dict[str, Any]], int]:
    """(every CDC row sent, the number of unmatched changes reported)."""
    sent: list[dict[str, Any]] = []
    watermark, unmatched = None, 0
    for batch in batches:
        plan = plan_table(batch, watermark, keyless=True)
        held = list(bigquery_apply(sent, key=ROW_ID).values())
        if plan.needs_target:
            target = keyless_target(plan, latest_rows(held)) if needs_read(plan) else None
            plan = resolve_plan(plan, target or KeylessTarget())
        cut = plan.truncate_position
        history = [r for r in held if cut is not None and r[META_POSITION] < cut]
        sent += replica_rows(plan, history, COLUMNS, NOW, primary_key=KEYLESS_KEY)
        watermark, unmatched = cut or watermark, unmatched + len(plan.unmatched)
    return sent, unmatched


@settings(max_examples=200, deadline=None)
@given(keyless_histories(), st.integers(0, 2**32))
def test_cdc_rows_replay_to_the_source_multiset(history: Any, seed: int) -> None:
    events, expected = history
    batches = redeliveries(events, seed)
    sent, unmatched = send(batches)
    replica = bigquery_apply(sent, key=ROW_ID)
    live = [r for r in replica.values() if not r[META_DELETED]]
    assert multiset(live) == expected
    assert unmatched == 0  # full before images: every change finds its row
    reference = ReplicaState()
    for batch in batches:
        reference.apply(plan_table(batch, reference.watermark, keyless=True))
    assert {k: r[META_DELETED] for k, r in replica.items()} == {
        k[0]: r["_capa_deleted"] for k, r in reference.rows.items()
    }


def test_insert_only_batches_read_nothing_and_redeliver_as_the_same_rows() -> None:
    events = [keyless(Op.INSERT, 10 + n, after=IMAGES[0]) for n in range(3)]
    plan = plan_table(events, keyless=True)
    assert plan.needs_target and not needs_read(plan)
    sent, _ = send([events, events[:2]])
    assert [r[CHANGE_TYPE] for r in sent] == ["UPSERT"] * 5
    assert sent[3:] == [{**r, "_capa_ingested_at": NOW} for r in sent[:2]]
    assert multiset(bigquery_apply(sent, key=ROW_ID).values()) == multiset([IMAGES[0]] * 3)


def test_a_delete_is_a_tombstone_upsert_of_the_oldest_duplicate() -> None:
    a = IMAGES[0]
    inserts = [keyless(Op.INSERT, 10 + n, after=a) for n in range(2)]
    sent, _ = send([inserts, [keyless(Op.DELETE, 20, before=a)]])
    tombstone = sent[-1]
    assert (tombstone[CHANGE_TYPE], tombstone[META_DELETED]) == ("UPSERT", True)
    assert tombstone[ROW_ID] == inserts[0].event_id


def test_a_truncate_deletes_every_row_id_below_it() -> None:
    a, b = IMAGES[0], IMAGES[1]
    before = [keyless(Op.INSERT, 10, after=a), keyless(Op.INSERT, 11, after=b)]
    after = [keyless(Op.TRUNCATE, 20), keyless(Op.INSERT, 21, after=b)]
    sent, _ = send([before, after])
    deleted = sorted(r[ROW_ID] for r in sent if r[CHANGE_TYPE] == "DELETE")
    assert deleted == sorted(e.event_id for e in before)
    live = bigquery_apply(sent, key=ROW_ID).values()
    assert multiset(live) == Counter({(b["level"], b["msg"], b["n"]): 1})


def test_changes_without_before_images_still_add_their_rows() -> None:
    a, b = IMAGES[0], IMAGES[1]
    sent, unmatched = send([[keyless(Op.INSERT, 10, after=a)], [keyless(Op.UPDATE, 11, after=b)]])
    assert unmatched == 1
    live = bigquery_apply(sent, key=ROW_ID).values()
    assert multiset(live) == multiset([a, b])
