"""Data-quality checks of a model (not_null, unique, accepted_values, relationships).

Each check is one Spark SQL query returning ``failures`` (count) and ``examples`` (up to three
offending values as strings); identifiers are quoted and values are bound as named parameters.
The SQL is built here without Spark (unit-tested as text); :func:`run_checks` executes it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from spark_jobs.project import Checks, Model, Relationship, quote

_EXAMPLES = "slice(collect_list({value}), 1, 3) AS examples"


@dataclass(frozen=True, slots=True)
class Check:
    model: str
    kind: str
    columns: str  # human label: "customer_id" or "customer_id -> f2_public_customers.id"
    sql: str = ""  # empty when evaluated in Arrow (spark_jobs.arrow_checks)
    params: dict[str, tuple[str, ...]] = field(default_factory=dict)  # view -> values


@dataclass(frozen=True, slots=True)
class CheckResult:
    check: Check
    failures: int
    examples: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.failures == 0


def not_null_checks(model: str, table: str, checks: Checks) -> list[Check]:
    """One pass for all columns; the examples name the columns that hold NULLs."""
    if not checks.not_null:
        return []
    any_null = " OR ".join(f"{quote(c)} IS NULL" for c in checks.not_null)
    flags = ", ".join(
        f"IF(max(CAST({quote(c)} IS NULL AS INT)) = 1, '{c}', NULL)" for c in checks.not_null
    )
    sql = (
        f"SELECT COUNT(*) AS failures, array_compact(array({flags})) AS examples "
        f"FROM {table} WHERE {any_null}"
    )
    return [Check(model, "not_null", ", ".join(checks.not_null), sql)]


def unique_checks(model: str, table: str, checks: Checks) -> list[Check]:
    if not checks.unique:
        return []
    cols = ", ".join(quote(c) for c in checks.unique)
    label = (
        "concat_ws('|', " + ", ".join(f"CAST({quote(c)} AS STRING)" for c in checks.unique) + ")"
    )
    sql = (
        f"SELECT COUNT(*) AS failures, {_EXAMPLES.format(value='dup')} FROM ("
        f"SELECT {label} AS dup FROM {table} GROUP BY {cols} HAVING COUNT(*) > 1)"
    )
    return [Check(model, "unique", ", ".join(checks.unique), sql)]


def accepted_values_checks(model: str, table: str, checks: Checks) -> list[Check]:
    """Allowed values travel as data (a one-column view), never inside the SQL text."""
    out = []
    for col, values in sorted(checks.accepted_values.items()):
        view = f"capa_accepted__{model}__{col}"
        value = f"CAST({quote(col)} AS STRING)"
        sql = (
            f"SELECT COUNT(*) AS failures, {_EXAMPLES.format(value=value)} FROM {table} "
            f"WHERE {quote(col)} IS NOT NULL AND {value} NOT IN (SELECT value FROM {quote(view)})"
        )
        out.append(Check(model, "accepted_values", col, sql, {view: tuple(values)}))
    return out


def relationship_checks(
    model: str, table: str, checks: Checks, resolve: Callable[[str], str]
) -> list[Check]:
    out = []
    for rel in checks.relationships:
        child, parent = quote(rel.column), quote(rel.field)
        sql = (
            f"SELECT COUNT(*) AS failures, {_EXAMPLES.format(value=f'CAST(c.{child} AS STRING)')} "
            f"FROM {table} c LEFT ANTI JOIN {resolve(rel.to)} p ON c.{child} = p.{parent} "
            f"WHERE c.{child} IS NOT NULL"
        )
        out.append(Check(model, "relationships", f"{rel.column} -> {rel.to}.{rel.field}", sql))
    return out


def model_checks(model: Model, table: str, resolve: Callable[[str], str]) -> list[Check]:
    """Every check of ``model`` against the built table (a view or path expression)."""
    checks = model.header.checks
    return [
        *not_null_checks(model.name, table, checks),
        *unique_checks(model.name, table, checks),
        *accepted_values_checks(model.name, table, checks),
        *relationship_checks(model.name, table, checks, resolve),
    ]


def incremental_checks(
    model: Model,
    table: str,
    changed: str,
    resolve: Callable[[str], str],
    unchanged_inputs: Collection[str],
) -> list[Check]:
    """The checks of ``model`` after rows of some keys were replaced by ``changed``.

    The rows kept from the previous version passed these checks when it was built, so
    row-wise checks (not_null, accepted_values) and uniqueness of the key read only the
    recomputed rows (kept keys and recomputed keys are disjoint); uniqueness of other columns
    reads the whole ``table``, and so does a relationship whose parent table changed since
    the last build (a removed parent can orphan a kept row), unless the relationship goes from
    the key to the field the parent's incremental mapping names (then any parent change
    recomputed the key it references).
    """
    checks = model.header.checks
    by_key = set(checks.unique) == set(model.header.key)
    stable = tuple(r for r in checks.relationships if r.to in unchanged_inputs or covered(model, r))
    moved = tuple(r for r in checks.relationships if r not in stable)
    return [
        *not_null_checks(model.name, changed, checks),
        *unique_checks(model.name, changed if by_key else table, checks),
        *accepted_values_checks(model.name, changed, checks),
        *relationship_checks(
            model.name, changed, checks.model_copy(update={"relationships": stable}), resolve
        ),
        *relationship_checks(
            model.name, table, checks.model_copy(update={"relationships": moved}), resolve
        ),
    ]


def covered(model: Model, rel: Relationship) -> bool:
    """A relationship from the (one-column) key to a parent input whose incremental mapping
    is the referenced field: every parent row that changed or went away (old version included)
    mapped its key into the recomputed set, so kept rows still have their parent."""
    expr = model.key_expression(rel.to)
    return model.header.key == (rel.column,) and expr is not None and expr.strip() == rel.field


def union_sql(checks: Sequence[Check]) -> str:
    """One query answering every check (one Spark job instead of one per check)."""
    return " UNION ALL ".join(
        f"SELECT {i} AS check_index, failures, CAST(examples AS ARRAY<STRING>) AS examples "
        f"FROM ({check.sql})"
        for i, check in enumerate(checks)
    )


def run_checks(spark: Any, checks: Sequence[Check]) -> list[CheckResult]:
    if not checks:
        return []
    for check in checks:
        for view, values in check.params.items():
            frame = spark.createDataFrame([(v,) for v in values], "value STRING")
            frame.createOrReplaceTempView(view)
    rows = {int(r["check_index"]): r for r in spark.sql(union_sql(checks)).collect()}
    results = []
    for i, check in enumerate(checks):
        row = rows[i]
        examples = tuple(str(v) for v in (row["examples"] or ()))
        results.append(CheckResult(check, int(row["failures"]), examples))
    return results


def failure_rows(results: Sequence[CheckResult]) -> list[tuple[str, str, str, int, str]]:
    """Rows for the console table of failing checks."""
    return [
        (r.check.model, r.check.kind, r.check.columns, r.failures, ", ".join(r.examples))
        for r in results
        if not r.ok
    ]
