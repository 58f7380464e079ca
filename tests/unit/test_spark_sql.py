"""Generated Spark SQL (checks, MERGE) as text; the integration tests run it on Spark."""

from __future__ import annotations

from pathlib import Path

from spark_jobs.build import merge_sql
from spark_jobs.checks import model_checks
from spark_jobs.project import load_project
from spark_jobs.state import InputMark, ModelState, load_state, save_state


def test_merge_sql_upserts_and_deletes_on_null_safe_key() -> None:
    sql = merge_sql("delta.`/x`", "src", ["k"], ["k", "a", "b`c"])
    assert sql == (
        "MERGE INTO delta.`/x` t USING src s ON t.`k` <=> s.`k` "
        "WHEN MATCHED AND s.__capa_present IS NULL THEN DELETE "
        "WHEN MATCHED THEN UPDATE SET t.`a` = s.`a`, t.`b``c` = s.`b``c` "
        "WHEN NOT MATCHED AND s.__capa_present IS NOT NULL THEN INSERT (`k`, `a`, `b``c`) "
        "VALUES (s.`k`, s.`a`, s.`b``c`)"
    )


def test_merge_sql_key_only_table_has_no_update_clause() -> None:
    sql = merge_sql("t1", "s1", ["a", "b"], ["a", "b"])
    assert "UPDATE" not in sql and "t.`a` <=> s.`a` AND t.`b` <=> s.`b`" in sql


def test_checks_cover_every_kind_and_never_inline_values() -> None:
    model = load_project().models["customer_360"]
    checks = model_checks(model, "`built`", lambda name: f"`v_{name}`")
    kinds = {c.kind for c in checks}
    assert kinds == {"not_null", "unique", "accepted_values", "relationships"}
    accepted = next(c for c in checks if c.kind == "accepted_values")
    assert "'software'" not in accepted.sql
    assert accepted.params == {
        "capa_accepted__customer_360__industry": model.header.checks.accepted_values["industry"]
    }
    rel = next(c for c in checks if c.kind == "relationships")
    assert "LEFT ANTI JOIN `v_f2_public_customers` p ON c.`customer_id` = p.`id`" in rel.sql
    unique = next(c for c in checks if c.kind == "unique")
    assert "GROUP BY `customer_id` HAVING COUNT(*) > 1" in unique.sql


def test_state_round_trips(tmp_path: Path) -> None:
    state = ModelState(
        model="m",
        fingerprint="f",
        target_version=3,
        inputs={"t": InputMark(kind="raw", version=2, max_ingested_at="2026-01-01T00:00:00Z")},
    )
    save_state(tmp_path, state)
    assert load_state(tmp_path, "m") == state
    assert load_state(tmp_path, "other") is None


def test_failed_checks_are_reported_as_a_table(capsys) -> None:  # type: ignore[no-untyped-def]
    from spark_jobs.build import ChecksFailed, report_failure
    from spark_jobs.checks import Check, CheckResult

    bad = CheckResult(Check("m", "accepted_values", "band", "SELECT 1"), 2, ("x", "y"))
    good = CheckResult(Check("m", "unique", "id", "SELECT 1"), 0, ())
    report_failure(ChecksFailed("m", [bad, good]))
    err = capsys.readouterr().err
    assert "model 'm': 1 data-quality check(s) failed" in err
    assert err.splitlines()[-1].split() == ["m", "accepted_values", "band", "2", "x,", "y"]
    assert "unique" not in err
