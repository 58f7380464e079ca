"""Data-quality checks evaluated in Arrow (the incremental path's checks) on crafted tables;
tests/integration/test_spark_build.py compares them with the Spark checks on one failure."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from spark_jobs.arrow_checks import Parents, evaluate
from spark_jobs.project import Model, ModelHeader

HEADER = {
    "key": ["customer_id"],
    "checks": {
        "not_null": ["customer_id", "orders"],
        "unique": ["customer_id"],
        "accepted_values": {"industry": ["retail", "energy"]},
        "relationships": [{"column": "customer_id", "to": "f2_public_customers", "field": "id"}],
    },
}


def model() -> Model:
    return Model("m", Path("m.sql"), ModelHeader.model_validate(HEADER), "SELECT 1")


def parents(values: list[int]) -> Parents:
    return lambda rel: pa.array(values, pa.int64()) if rel.field == "id" else None


def outcome(table: pa.Table, known: list[int]) -> dict[str, tuple[str, int, tuple[str, ...]]]:
    results = evaluate(model(), table, parents(known))
    assert results is not None
    return {r.check.kind: (r.check.columns, r.failures, r.examples) for r in results}


def test_a_clean_table_passes_every_check() -> None:
    table = pa.table(
        {
            "customer_id": pa.array([1, 2, 3], pa.int64()),
            "orders": [1, 0, 2],
            "industry": ["retail", None, "energy"],
        }
    )
    assert {kind: failures for kind, (_, failures, _) in outcome(table, [1, 2, 3, 4]).items()} == {
        "not_null": 0,
        "unique": 0,
        "accepted_values": 0,
        "relationships": 0,
    }


def test_each_kind_counts_and_shows_its_failures() -> None:
    table = pa.table(
        {
            "customer_id": pa.array([1, 1, 2, None, 7], pa.int64()),
            "orders": [1, None, 2, 3, 4],
            "industry": ["retail", "aerospace", "energy", "mining", None],
        }
    )
    found = outcome(table, [1, 2])
    assert found["not_null"] == ("customer_id, orders", 2, ("customer_id", "orders"))
    assert found["unique"] == ("customer_id", 1, ("1",))
    assert found["accepted_values"] == ("industry", 2, ("aerospace", "mining"))
    assert found["relationships"] == ("customer_id -> f2_public_customers.id", 1, ("7",))


def test_unreadable_parent_or_missing_column_is_left_to_spark() -> None:
    table = pa.table({"customer_id": pa.array([1], pa.int64()), "orders": [1], "industry": [None]})
    assert evaluate(model(), table, lambda rel: None) is None
    assert evaluate(model(), table.drop_columns(["orders"]), parents([1])) is None


def test_parent_values_of_another_type_are_cast_to_the_child_type() -> None:
    table = pa.table(
        {"customer_id": pa.array([1, 5], pa.int64()), "orders": [1, 1], "industry": [None, None]}
    )
    results = evaluate(model(), table, lambda rel: pa.array([1, 2], pa.int32()))
    assert results is not None
    assert [r.failures for r in results if r.check.kind == "relationships"] == [1]


def test_incremental_checks_read_the_recomputed_rows_unless_the_parent_changed() -> None:
    """As the Spark path's incremental checks: kept rows passed when their version was built,
    so a NULL or a bad value among them is not counted again; a kept row orphaned by a parent
    that changed is."""
    from spark_jobs.arrow_checks import evaluate_incremental

    kept = pa.table(
        {
            "customer_id": pa.array([1, 2, 9], pa.int64()),
            "orders": [None, 0, 1],  # passed before (a check added later would change the SQL)
            "industry": ["retail", "mining", None],
        }
    )
    fresh = pa.table(
        {
            "customer_id": pa.array([3, 3, 4], pa.int64()),
            "orders": [1, None, 2],
            "industry": ["aerospace", "energy", None],
        }
    )
    whole = pa.concat_tables([kept, fresh])

    def run(unchanged: set[str]) -> dict[str, tuple[int, tuple[str, ...]]]:
        results = evaluate_incremental(model(), whole, fresh, parents([1, 2, 3]), unchanged)
        assert results is not None
        return {r.check.kind: (r.failures, r.examples) for r in results}

    stable = run({"f2_public_customers"})
    assert stable["not_null"] == (1, ("orders",))
    assert stable["unique"] == (1, ("3",))
    assert stable["accepted_values"] == (1, ("aerospace",))
    assert stable["relationships"] == (1, ("4",))  # fresh rows only
    assert run(set())["relationships"] == (2, ("9", "4"))  # the parent changed: every row


def test_incremental_uniqueness_of_other_columns_reads_the_whole_table() -> None:
    from spark_jobs.arrow_checks import evaluate_incremental

    header = {"key": ["customer_id"], "checks": {"unique": ["email"]}}
    other = Model("m", Path("m.sql"), ModelHeader.model_validate(header), "SELECT 1")
    kept = pa.table({"customer_id": pa.array([1], pa.int64()), "email": ["a@x"]})
    fresh = pa.table({"customer_id": pa.array([2], pa.int64()), "email": ["a@x"]})
    results = evaluate_incremental(
        other, pa.concat_tables([kept, fresh]), fresh, lambda rel: None, set()
    )
    assert results is not None
    assert [(r.check.kind, r.failures) for r in results] == [("unique", 1)]


def test_an_unchanged_parent_is_read_only_for_values_the_replaced_rows_lacked() -> None:
    """A value the replaced rows held passed against this parent version when they were
    built; only new values are looked up, and the parent is not read when there are none."""
    from spark_jobs.arrow_checks import evaluate_incremental

    def rows(ids: list[int]) -> pa.Table:
        n = len(ids)
        return pa.table(
            {"customer_id": pa.array(ids, pa.int64()), "orders": [1] * n, "industry": [None] * n}
        )

    def unreadable(rel: object) -> pa.Array:
        raise AssertionError("the parent was read")

    fresh, replaced = rows([1, 2]), rows([2, 1])
    unchanged = {"f2_public_customers"}
    same = evaluate_incremental(model(), fresh, fresh, unreadable, unchanged, replaced)
    assert same is not None
    assert [(r.check.kind, r.failures) for r in same][-1] == ("relationships", 0)
    fresh = rows([1, 5, 6])
    found = evaluate_incremental(model(), fresh, fresh, parents([1, 6]), unchanged, replaced)
    assert found is not None
    assert (found[-1].failures, found[-1].examples) == (1, ("5",))
    changed = evaluate_incremental(model(), fresh, fresh, parents([6]), set(), replaced)
    assert changed is not None  # the parent changed: every fresh row is looked up
    assert (changed[-1].failures, changed[-1].examples) == (2, ("1", "5"))
