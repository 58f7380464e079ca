"""A model's data-quality checks evaluated in Arrow, on a table the driver already holds.

An incremental build that rewrites its target in the driver (``Target.rewrite`` in
:mod:`spark_jobs.strategies`) holds every row of the new version in memory. Its checks then run
here instead of as one Spark query, whose fixed cost per model is large against a small
incremental build. The checks, their labels and failure counts are those of
:mod:`spark_jobs.checks`: :func:`evaluate` over a whole table, :func:`evaluate_incremental`
over what the Spark path's incremental checks read (the recomputed rows where that suffices,
see :func:`spark_jobs.checks.incremental_checks`). Examples are the
first three offending values, as strings. ``None`` means "cannot evaluate here" (a column the
table lacks, a parent table the driver cannot read, types that do not compare): the caller
runs the Spark checks instead.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from functools import reduce

import pyarrow as pa
import pyarrow.compute as pc

from spark_jobs.checks import Check, CheckResult, covered
from spark_jobs.project import Checks, Model, Relationship

Parents = Callable[[Relationship], pa.Array | None]  # the parent's values of rel.field
_EXAMPLES = 3


def evaluate(model: Model, table: pa.Table, parents: Parents) -> list[CheckResult] | None:
    """Every check of ``model`` over ``table`` (same order as :func:`checks.model_checks`)."""
    checks = model.header.checks
    if not _has_columns(table, checks):
        return None
    results = [
        *_not_null(model.name, table, checks),
        *_unique(model.name, table, checks),
        *_accepted(model.name, table, checks),
    ]
    for rel in checks.relationships:
        found = _relationship(model.name, table, rel, parents(rel))
        if found is None:
            return None
        results.append(found)
    return results


def evaluate_incremental(
    model: Model,
    table: pa.Table,
    fresh: pa.Table,
    parents: Parents,
    unchanged_inputs: Collection[str],
    replaced: pa.Table | None = None,
) -> list[CheckResult] | None:
    """The checks of ``model`` after the rows of some keys (``replaced``, when known) were
    replaced by ``fresh`` in ``table`` (the whole new version), reading what
    :func:`checks.incremental_checks` reads: the kept rows passed these checks when their
    version was built, so the row-wise checks and uniqueness of the key read ``fresh`` only;
    uniqueness of other columns, and a relationship whose parent changed since the last build
    (unless the parent's mapping covers it), read ``table``. For a parent unchanged since the
    last build, a value the replaced rows held passed against this very parent version: only
    the other values of ``fresh`` are looked up, and the parent is not read when there are
    none."""
    checks = model.header.checks
    if not (_has_columns(table, checks) and _has_columns(fresh, checks)):
        return None
    by_key = set(checks.unique) == set(model.header.key)
    results = [
        *_not_null(model.name, fresh, checks),
        *_unique(model.name, fresh if by_key else table, checks),
        *_accepted(model.name, fresh, checks),
    ]
    for rel in checks.relationships:
        if rel.to in unchanged_inputs and replaced is not None:
            found = _new_values_relationship(model.name, fresh, replaced, rel, parents)
        else:
            stable = rel.to in unchanged_inputs or covered(model, rel)
            found = _relationship(model.name, fresh if stable else table, rel, parents(rel))
        if found is None:
            return None
        results.append(found)
    return results


def _new_values_relationship(
    model: str, fresh: pa.Table, replaced: pa.Table, rel: Relationship, parents: Parents
) -> CheckResult | None:
    """The relationship over the rows of ``fresh`` whose value ``replaced`` did not hold."""
    child, seen = fresh.column(rel.column), replaced.column(rel.column)
    try:
        held = pc.is_in(child, value_set=seen.cast(child.type).combine_chunks().drop_null())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _relationship(model, fresh, rel, parents(rel))
    new = fresh.filter(pc.invert(pc.fill_null(held, False)))
    if not pc.any(pc.is_valid(new.column(rel.column)), min_count=0).as_py():
        return _result(model, "relationships", _label(rel), 0, [])
    return _relationship(model, new, rel, parents(rel))


def _label(rel: Relationship) -> str:
    return f"{rel.column} -> {rel.to}.{rel.field}"


def _has_columns(table: pa.Table, checks: Checks) -> bool:
    names = [*checks.not_null, *checks.unique, *checks.accepted_values]
    names += [r.column for r in checks.relationships]
    return all(n in table.column_names for n in names)


def _result(
    model: str, kind: str, columns: str, failures: int, examples: Sequence[str]
) -> CheckResult:
    return CheckResult(Check(model, kind, columns), failures, tuple(examples[:_EXAMPLES]))


def _not_null(model: str, table: pa.Table, checks: Checks) -> list[CheckResult]:
    """One result for all columns; the examples name the columns that hold NULLs."""
    if not checks.not_null:
        return []
    nulls = [pc.is_null(table.column(c)) for c in checks.not_null]
    failures = table.filter(reduce(pc.or_, nulls)).num_rows
    holding = [c for c in checks.not_null if table.column(c).null_count]
    return [_result(model, "not_null", ", ".join(checks.not_null), failures, holding)]


def _unique(model: str, table: pa.Table, checks: Checks) -> list[CheckResult]:
    if not checks.unique:
        return []
    columns = list(checks.unique)
    counts = table.select(columns).group_by(columns).aggregate([([], "count_all")])
    dups = counts.filter(pc.greater(counts.column("count_all"), 1))
    examples = [
        "|".join(str(v) for v in row.values() if v is not None)
        for row in dups.select(columns).slice(0, _EXAMPLES).to_pylist()
    ]
    return [_result(model, "unique", ", ".join(columns), dups.num_rows, examples)]


def _accepted(model: str, table: pa.Table, checks: Checks) -> list[CheckResult]:
    out = []
    for column, values in sorted(checks.accepted_values.items()):
        text = pc.cast(table.column(column), pa.string())
        allowed = pc.is_in(text, value_set=pa.array(values, pa.string()))
        bad = text.filter(pc.and_(pc.is_valid(text), pc.invert(allowed)))
        examples = [str(v) for v in bad.slice(0, _EXAMPLES).to_pylist()]
        out.append(_result(model, "accepted_values", column, len(bad), examples))
    return out


def _relationship(
    model: str, table: pa.Table, rel: Relationship, parent: pa.Array | None
) -> CheckResult | None:
    if parent is None:
        return None
    child = table.column(rel.column)
    try:
        parent = parent.cast(child.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None  # types Spark would coerce: leave it to Spark
    known = pc.is_in(child, value_set=parent.drop_null())
    bad = child.filter(pc.and_(pc.is_valid(child), pc.invert(known)))
    examples = [str(v) for v in bad.slice(0, _EXAMPLES).to_pylist()]
    return _result(model, "relationships", _label(rel), len(bad), examples)
