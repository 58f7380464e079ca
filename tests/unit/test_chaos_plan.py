"""The pure parts of the fault-injection driver: fault schedule, report verdict, docs section."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from capa.codec import encode_single_object
from capa.events import ChangeEvent, Op, SourceKind
from capa.verify import TableDiff
from capa_app.chaos.harness import FAULT_KINDS, ChaosPlan, ChaosReport, ChaosRun, chaos_settings
from capa_app.chaos.poison import (
    BIG_TABLE,
    DRIFT_TABLE,
    LONG_NAME,
    NULL_KEY_TABLE,
    REASONS,
    PoisonLedger,
    PoisonReport,
    check_dead_letters,
    row_id,
)
from capa_app.chaos.report import POISON_SECTION, SECTION, replace_section, section_text
from connectors.kafka.wire import ChangeEventDecoder


def test_schedule_hits_every_kind_once_per_round_inside_the_workload(tmp_path) -> None:
    plan = ChaosPlan(events=10_000, faults=24, seed=5)
    run = ChaosRun(chaos_settings(tmp_path), plan)
    kinds = run.fault_kinds()
    assert len(kinds) == 24
    for start in range(0, 24, len(FAULT_KINDS)):
        assert sorted(kinds[start : start + 3]) == sorted(FAULT_KINDS)
    thresholds = run.fault_thresholds()
    assert thresholds == sorted(thresholds)
    assert all(500 <= t <= 9_000 for t in thresholds)


def test_settings_keep_the_lakehouse_inside_the_state_dir(tmp_path) -> None:
    settings = chaos_settings(tmp_path)
    assert settings.warehouse.path == (tmp_path / "lakehouse").resolve()  # type: ignore[union-attr]
    assert settings.kafka.port != settings.postgres.port


def test_report_is_ok_only_without_missing_extra_different_or_count_gap() -> None:
    def report(*diffs: TableDiff) -> ChaosReport:
        return ChaosReport(ChaosPlan(), faults=Counter(kafka=1), diffs=list(diffs))

    assert report(TableDiff("raw.a", 3, 3)).ok
    assert not report().ok  # nothing verified is not a pass
    assert not report(TableDiff("raw.a", 3, 2, missing=[(1,)])).ok
    assert not report(TableDiff("raw.a", 3, 4, extra=[(9,)])).ok
    assert not report(TableDiff("raw.a", 3, 3, different=[(2,)])).ok
    lost = report(TableDiff("raw.a", 3, 2, missing=[(1,)]), TableDiff("raw.b", 1, 1))
    assert (lost.missing, lost.extra, lost.different) == (1, 0, 0)
    assert "result: MISMATCH" in lost.lines()


def test_docs_section_is_replaced_in_place_or_appended() -> None:
    section = section_text(ChaosReport(ChaosPlan(), diffs=[TableDiff("raw.a", 1, 1)]), "cmd")
    doc = f"# B\n\n## A\n\na\n\n{SECTION}\n\nold\n\n## Z\n\nz\n"
    replaced = replace_section(doc, section)
    assert "old" not in replaced and replaced.count(SECTION) == 1
    assert replaced.index(SECTION) < replaced.index("## Z") and "a\n" in replaced
    appended = replace_section("# B\n\n## A\n\na\n", section)
    assert appended.endswith(section) and "**OK**" in section


# --- poison mode: the dead-letter oracle and its docs section ------------------------------


@dataclass
class Letter:
    """A consumed dead-letter record: value, headers and where it sits (as confluent_kafka's)."""

    raw: bytes | None
    head: dict[str, str]
    at: int

    def value(self) -> bytes | None:
        return self.raw

    def headers(self) -> list[tuple[str, bytes]]:
        return [(k, v.encode()) for k, v in self.head.items()]

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self.at


def null_key_event(n: int) -> ChangeEvent:
    return ChangeEvent(
        source="f2",
        source_kind=SourceKind.POSTGRES,
        database="capa",
        schema="public",
        table=NULL_KEY_TABLE,
        op=Op.INSERT,
        position=f"{n:016x}.chaos",
        commit_ts_us=1,
        primary_key=("id",),
        key={"id": None},
        before=None,
        after={"id": None, "n": n},
    )


def debezium_value(table: str, row: int) -> bytes:
    """The bridge's dead-letter value: the engine record with its JSON key and value."""
    value = {"payload": {"source": {"schema": "public", "table": table}, "after": {"id": row}}}
    record = {"destination": "x", "key": json.dumps({"id": row}), "value": json.dumps(value)}
    return json.dumps(record).encode()


def test_dead_letter_oracle_matches_each_poison_by_its_id_and_reason() -> None:
    ledger = PoisonLedger()
    ledger.add(row_id("public", BIG_TABLE, {"id": 1}), "oversize")
    ledger.add(row_id("public", LONG_NAME, {"id": 2}), "long_name")
    event = null_key_event(3)
    ledger.add(f"event:{event.event_id}", "null_key")
    ledger.add(row_id("public", DRIFT_TABLE, {"id": 9}), "type_drift")  # never dead-lettered
    big = {
        "capa.dlq.reason": f"change event of 2000000 bytes {REASONS['oversize']}=1048576",
        "capa.dlq.table": f"public.{BIG_TABLE}",
        "capa.dlq.key": '[["id",1]]',
    }
    long_reason = {"capa.dlq.reason": f"source table 'f2'.'public'.'..' {REASONS['long_name']} 9"}
    messages = [
        Letter(b"{truncated", big, 0),
        Letter(debezium_value(LONG_NAME, 2), long_reason, 1),
        Letter(encode_single_object(event), {"capa.dlq.reason": "insert ... has NULL"}, 2),  # wrong
        Letter(debezium_value(LONG_NAME, 2), long_reason, 3),  # redelivered after a kill
        Letter(b"junk", {"capa.dlq.reason": "not avro"}, 4),
    ]
    check = check_dead_letters(messages, ledger, ChangeEventDecoder())
    assert check.letters == 5
    assert check.once == Counter(oversize=1, null_key=1)
    assert check.redelivered == Counter(long_name=1) and check.extra_copies == 1
    assert check.missing == [row_id("public", DRIFT_TABLE, {"id": 9})]
    assert len(check.wrong_reason) == 1 and check.wrong_reason[0].startswith("event:")
    assert check.unexpected == ["0@4: not avro"]
    assert not check.exactly_once and "dead-letter exactly once by poison id: NO" in check.lines()
    fixed = PoisonLedger({k: v for k, v in ledger.expected.items() if v == "long_name"})
    again = check_dead_letters(messages[1:2] + messages[3:4], fixed, ChangeEventDecoder())
    assert again.exactly_once and again.extra_copies == 1  # a redelivered copy is counted apart


def test_poison_report_has_its_own_docs_section() -> None:
    ledger = PoisonLedger()
    ledger.add(row_id("public", BIG_TABLE, {"id": 1}), "oversize")
    check = check_dead_letters([], ledger, ChangeEventDecoder())
    poison = PoisonReport(ledger.by_kind(), check, [1, 2, 3, 4, 5], 0)
    report = ChaosReport(ChaosPlan(poison_every=10), diffs=[TableDiff("raw.a", 1, 1)])
    report.poison = poison
    assert not report.ok  # the oversize poison is missing from the dead-letter topic
    section = section_text(report, "cmd")
    assert section.startswith(POISON_SECTION) and "**MISMATCH**" in section
    doc = replace_section(f"# B\n\n{SECTION}\n\nplain\n\n## Z\n", section)
    assert "plain" in doc and doc.count(POISON_SECTION) == 1  # the plain section stays
