"""CRM rows -> change events: positions, c/u/d per key against the replica, rejects, ledger."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from capa.apply import plan_table
from capa.events import Op, SourceKind
from capa.merge_rule import ReplicaState
from capa.position import batch_position
from connectors.crm.contract import CrmContract, load_contract
from connectors.crm.load import (
    LoadContext,
    Reject,
    ReplicaRow,
    ValidRow,
    threshold_message,
    validate_record,
)
from connectors.crm.readers import RawRecord

TS1 = datetime(2025, 1, 1, 10, tzinfo=UTC)
TS1_US = int(TS1.timestamp() * 1_000_000)


@pytest.fixture(scope="module")
def contract() -> CrmContract:
    return load_contract()


def _ctx(contract: CrmContract, mode: str = "full") -> LoadContext:
    return LoadContext(contract, "load-2", mode, TS1_US + 10**9)


def _valid(contract: CrmContract, account_id: str, ts: str, line: int = 2) -> ValidRow:
    record = RawRecord(
        "accounts",
        "accounts.csv",
        line,
        "raw",
        {"account_id": account_id, "name": "N", "last_modified": ts},
    )
    result = validate_record(contract, record, 0)
    assert isinstance(result, ValidRow)
    return result


def test_row_event_is_canonical(contract: CrmContract) -> None:
    row = _valid(contract, "A1", "2025-01-01T10:00:00Z", line=7)
    ((kind, event),) = _ctx(contract).plan_key(
        contract.object("accounts"), row.key, [row], [], False
    )
    assert kind == "event" and event is not None
    assert (event.source, event.source_kind, event.schema, event.table) == (
        "crm",
        SourceKind.CRM,
        "crm",
        "accounts",
    )
    assert event.table_id == "crm_crm_accounts"
    assert (
        event.op is Op.INSERT
        and event.primary_key == ("account_id",)
        and event.key == {"account_id": "A1"}
    )
    assert event.position == batch_position(TS1_US, "load-2", 7)
    assert event.commit_ts_us == TS1_US and event.origin == "crm-batch"


def test_existing_key_updates_and_same_version_is_skipped(contract: CrmContract) -> None:
    obj, ctx = contract.object("accounts"), _ctx(contract)
    old = ReplicaRow(batch_position(TS1_US, "load-1", 3), False)
    same = _valid(contract, "A1", "2025-01-01T10:00:00Z")
    newer = _valid(contract, "A1", "2025-01-02T10:00:00Z", line=9)
    assert list(ctx.plan_key(obj, same.key, [same], [old], False)) == [("unchanged", None)]
    ((_, event),) = ctx.plan_key(obj, newer.key, [newer], [old], False)
    assert event is not None and event.op is Op.UPDATE


def test_duplicates_in_one_load_insert_then_update_in_version_order(contract: CrmContract) -> None:
    obj, ctx = contract.object("accounts"), _ctx(contract)
    late = _valid(contract, "A1", "2025-01-03T00:00:00Z", line=2)
    early = _valid(contract, "A1", "2025-01-02T00:00:00Z", line=5)
    events = [e for _, e in ctx.plan_key(obj, late.key, [late, early], [], False)]
    assert [(e.op, e.position < events[-1].position) for e in events if e] == [
        (Op.INSERT, True),
        (Op.UPDATE, False),
    ]


def test_full_extract_deletes_missing_live_keys_after_their_version(contract: CrmContract) -> None:
    obj = contract.object("accounts")
    future = TS1_US + 5 * 10**9  # replica row newer than the snapshot time
    replica = ReplicaRow(batch_position(future, "load-1", 3), False)
    key = '["A9"]'
    ((_, delete),) = _ctx(contract).plan_key(obj, key, [], [replica], False)
    assert delete is not None and delete.op is Op.DELETE
    assert delete.before == {"account_id": "A9"} and delete.after is None
    assert delete.position > replica.position
    assert list(_ctx(contract, "incremental").plan_key(obj, key, [], [replica], False)) == []
    assert list(_ctx(contract).plan_key(obj, key, [], [replica], True)) == []  # rejected: keep it


def test_events_apply_with_the_reference_replica(contract: CrmContract) -> None:
    obj, ctx = contract.object("accounts"), _ctx(contract)
    rows = [_valid(contract, f"A{i}", "2025-01-01T10:00:00Z", line=i + 2) for i in range(3)]
    events = [e for r in rows for _, e in ctx.plan_key(obj, r.key, [r], [], False) if e]
    state = ReplicaState()
    state.apply(plan_table(events))
    state.apply(plan_table(list(reversed(events))))  # replay: no change
    assert sorted(state.visible()) == [("A0",), ("A1",), ("A2",)]


def test_reject_keeps_key_reason_and_original_line(contract: CrmContract) -> None:
    record = RawRecord(
        "accounts",
        "accounts.csv",
        4,
        "A7,X,,,,2025-13-01",
        {"account_id": "A7", "name": "X", "last_modified": "2025-13-01"},
    )
    reject = validate_record(contract, record, 1)
    assert isinstance(reject, Reject) and reject.key == '["A7"]'
    assert "'2025-13-01' is not a timestamp" in reject.reason
    event = _ctx(contract).reject_event(reject, 1)
    assert event.table_id == "crm_crm_rejects" and event.after is not None
    assert event.after["raw_line"] == "A7,X,,,,2025-13-01" and event.after["line_no"] == 4
    unreadable = validate_record(
        contract, RawRecord("accounts", "a.csv", 5, "x", None, "bad JSON"), 0
    )
    assert (
        isinstance(unreadable, Reject)
        and unreadable.key is None
        and unreadable.reason == "bad JSON"
    )


def test_threshold_message_quotes_share_limit_reasons_and_lines() -> None:
    rejects = [
        Reject(
            "opportunities", "o.ndjson", n, "column 'stage': 'x' is not one of [...]", "{raw}", None
        )
        for n in range(3)
    ]
    message = threshold_message("L1", 4, rejects, 0.05)
    assert "rejected 3 of 4 rows (75.0%), above the limit 5.0%; nothing was applied" in message
    assert "3 x opportunities: column 'stage'" in message and "o.ndjson:0" in message
