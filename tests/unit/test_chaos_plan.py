"""The pure parts of the fault-injection driver: fault schedule, report verdict, docs section."""

from __future__ import annotations

from collections import Counter

from capa.verify import TableDiff
from capa_app.chaos.harness import FAULT_KINDS, ChaosPlan, ChaosReport, ChaosRun, chaos_settings
from capa_app.chaos.report import SECTION, replace_section, section_text


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
