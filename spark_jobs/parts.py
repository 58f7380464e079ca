"""Part-wise recompute: rebuild only the output columns whose joined part saw changed input.

Many models are a *keyed join*: one driving relation (a CTE or an input) LEFT JOINed to other
relations ("parts") on the driver's key column, e.g. ``customer_360``::

    WITH customers AS (...), orders AS (... GROUP BY customer_id), ...
    SELECT c.customer_id, c.name, COALESCE(o.orders, 0) AS orders, ...
    FROM customers c LEFT JOIN orders o ON o.customer_id = c.customer_id ...

Each output column reads the columns of some parts. When only the inputs of some parts changed
and the driver did not, the set of output rows is unchanged (one per driver row), and so is
every output column that reads no changed part. An incremental build then recomputes just the
columns that read a changed part, over the current target rows of the changed keys, and copies
the other columns from those rows::

    SELECT __capa_current.customer_id, __capa_current.name, COALESCE(o.orders, 0) AS orders, ...
    FROM {{ current }} __capa_current LEFT JOIN orders o ON o.customer_id = __capa_current.customer_id

so that Spark reads (and plans) the changed parts only; the unchanged parts' inputs are not read
at all. ``PartPlan.narrow`` gives only the key and the recomputed columns, over a view holding
only the keys: a builder holding the current rows in the driver copies the other columns there
(Spark then reads, joins and returns 4 columns of ``customer_360`` instead of 15). For
``customer_360`` after some orders changed this is one keyed aggregation of the orders instead
of five inputs joined.

:func:`analyse` recognises the shape with sqlglot (Spark dialect); anything else (no driver,
joins that are not LEFT equi-joins on the driver's key, unqualified or ``*`` output columns,
WHERE / GROUP BY / window / DISTINCT / ORDER on the outer query) gives ``None`` and the model
keeps the keyed recompute of every column. The shape is an assumption only about the SQL text;
the header's ``key`` already promises one output row per key, i.e. one driver row and at most
one row per part per key, which is what makes copying the unchanged columns exact.

Pure Python (sqlglot imported lazily): the Airflow environment and Dataproc never load it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from spark_jobs.project import _CALL, Model

logger = logging.getLogger(__name__)

CURRENT = "__capa_current"  # alias of the current target rows in generated SQL
CURRENT_VIEW = "{{ current }}"  # the builder substitutes the view of those rows
_TARGET_TOKEN = "__capa_target_rows"  # stands for CURRENT_VIEW while sqlglot holds the SQL
_PLACEHOLDER = re.compile(r"__capa_(raw_history|raw|ref)__([a-z][a-z0-9_]*)")


@dataclass(frozen=True, slots=True)
class Part:
    """One relation of the outer FROM clause."""

    alias: str
    relation: str  # CTE name or template placeholder
    inputs: frozenset[str]  # raw tables / models it reads (transitively through CTEs)


@dataclass(frozen=True, slots=True)
class PartPlan:
    """What an incremental build recomputes when some inputs changed."""

    columns: tuple[str, ...]  # output columns recomputed (the others are copied)
    sql: str  # template SQL: {{ raw('x') }} / {{ ref('x') }} and {{ current }}
    narrow: str = ""  # the same, giving only the key and ``columns`` ({{ current }} needs
    # only the key column then: the caller copies the other columns from the current rows)


@dataclass(frozen=True, slots=True)
class ModelParts:
    """A keyed-join model split into its driver, its parts and the parts each column reads."""

    model: str
    key: str  # output key column
    key_source: str  # the driver column the key is (``c.customer_id [AS customer_id]``)
    driver: Part
    parts: tuple[Part, ...]  # joined parts, in join order
    columns: tuple[tuple[str, frozenset[str]], ...]  # output column -> aliases it reads
    tree: Any  # the parsed SELECT (sqlglot), never mutated

    def changed_parts(self, changed: Iterable[str]) -> set[str]:
        names = set(changed)
        return {p.alias for p in (self.driver, *self.parts) if p.inputs & names}

    def plan(self, changed: Iterable[str]) -> PartPlan | None:
        """The SQL recomputing the columns that read a part whose inputs are in ``changed``;
        None when the driver changed (the output rows themselves may change)."""
        touched = self.changed_parts(changed)
        if self.driver.alias in touched:
            return None
        recomputed = tuple(name for name, reads in self.columns if reads & touched)
        wanted = set(recomputed)
        return PartPlan(recomputed, self._sql(wanted), self._sql(wanted, narrow=True))

    def _sql(self, recomputed: set[str], *, narrow: bool = False) -> str:
        from sqlglot import exp

        tree = self.tree.copy()
        needed = set().union(*(reads for name, reads in self.columns if name in recomputed))
        current = exp.to_identifier(CURRENT)
        outputs = []
        for projection, (name, _) in zip(tree.expressions, self.columns, strict=True):
            if name in recomputed:
                outputs.append(projection)
            elif not narrow or name == self.key:
                outputs.append(exp.column(name, table=current, quoted=True))
        tree.set("expressions", outputs)
        joins = [_rekey(j, self.driver.alias) for j in tree.args.get("joins") or []]
        if self.driver.alias in needed:  # the driver's own columns: join it on the key as well
            joins.insert(0, _driver_join(self.tree, self.driver.alias, self.key_source, self.key))
        kept = [j for j in joins if j.alias_or_name in needed]
        tree.set("joins", kept)
        tree.set("from_", exp.From(this=exp.to_table(_TARGET_TOKEN).as_(CURRENT)))
        _keep_used_ctes(tree)
        return template_sql(tree).replace(_TARGET_TOKEN, CURRENT_VIEW)


def parse_template(sql: str) -> Any:
    """Model SQL parsed by sqlglot (Spark dialect), its ``{{ raw('x') }}`` templates as table
    placeholders (:func:`template_sql` puts them back)."""
    import sqlglot

    text = _CALL.sub(lambda m: f"__capa_{m.group(1)}__{m.group(2)}", sql)
    return sqlglot.parse_one(text, read="spark")


def template_sql(tree: Any) -> str:
    """Spark SQL of a tree from :func:`parse_template`, with its templates back."""
    sql = tree.sql(dialect="spark")
    return _PLACEHOLDER.sub(lambda m: f"{{{{ {m.group(1)}('{m.group(2)}') }}}}", sql)


def analyse(model: Model) -> ModelParts | None:
    """The model's parts, or None when its SQL is not a keyed join (see module doc)."""
    if len(model.header.key) != 1 or model.header.additive is not None:
        return None
    try:
        import sqlglot
        from sqlglot import exp
    except ImportError:  # Dataproc / Airflow: no part-wise recompute, keyed recompute instead
        return None
    try:
        tree = parse_template(model.sql)
    except sqlglot.errors.ParseError as exc:
        logger.info("%s: SQL not parsed for part-wise recompute (%s)", model.name, exc)
        return None
    if not isinstance(tree, exp.Select):
        return None
    reason = _shape_problem(tree)
    if reason:
        logger.info("%s: no part-wise recompute: %s", model.name, reason)
        return None
    return _split(model, tree)


def _shape_problem(tree: Any) -> str | None:
    for arg in ("where", "group", "having", "qualify", "order", "limit", "distinct", "windows"):
        if tree.args.get(arg):
            return f"the outer SELECT has {arg.upper()}"
    if not tree.args.get("from_") or not tree.args.get("joins"):
        return "the outer SELECT joins nothing"
    return None


def _split(model: Model, tree: Any) -> ModelParts | None:
    from sqlglot import exp

    ctes = _cte_inputs(tree)
    driver_rel = tree.args["from_"].this
    if not isinstance(driver_rel, exp.Table):
        return None
    driver = _part(driver_rel, ctes)
    columns = _column_reads(tree)
    if columns is None or len({c for c, _ in columns}) != len(columns):
        return None
    key = model.header.key[0]
    key_source = _key_source(tree, key, driver.alias)
    if key_source is None:
        return None
    parts = []
    for join in tree.args.get("joins") or []:
        part = _join_part(join, driver.alias, key_source, ctes)
        if part is None:
            return None
        parts.append(part)
    aliases = {driver.alias, *(p.alias for p in parts)}
    if len(aliases) != len(parts) + 1 or any(not reads <= aliases for _, reads in columns):
        return None
    return ModelParts(model.name, key, key_source, driver, tuple(parts), tuple(columns), tree)


def _cte_inputs(tree: Any) -> dict[str, frozenset[str]]:
    """CTE name -> the inputs it reads, through the CTEs it reads (in definition order)."""
    from sqlglot import exp

    out: dict[str, frozenset[str]] = {}
    for cte in tree.args["with_"].expressions if tree.args.get("with_") else []:
        names: set[str] = set()
        for table in cte.this.find_all(exp.Table):
            names |= _inputs_of(table.name, out)
        out[cte.alias] = frozenset(names)
    return out


def _inputs_of(name: str, ctes: Mapping[str, frozenset[str]]) -> frozenset[str]:
    if name in ctes:
        return ctes[name]
    m = _PLACEHOLDER.fullmatch(name)
    return frozenset({m.group(2)}) if m else frozenset()


def _part(table: Any, ctes: Mapping[str, frozenset[str]]) -> Part:
    return Part(table.alias_or_name, table.name, _inputs_of(table.name, ctes))


def _column_reads(tree: Any) -> list[tuple[str, frozenset[str]]] | None:
    """(output name, aliases its expression reads) per projection; None for ``*`` or a column
    without a table qualifier (it could come from any part)."""
    from sqlglot import exp

    out = []
    for projection in tree.expressions:
        if isinstance(projection, exp.Star) or projection.find(exp.Star):
            return None
        reads = set()
        for column in projection.find_all(exp.Column):
            if not column.table:
                return None
            reads.add(column.table)
        out.append((projection.alias_or_name, frozenset(reads)))
    return out


def _key_source(tree: Any, key: str, driver: str) -> str | None:
    """The driver column the output key is (``c.customer_id [AS customer_id]``), else None."""
    from sqlglot import exp

    for projection in tree.expressions:
        if projection.alias_or_name != key:
            continue
        inner = projection.this if isinstance(projection, exp.Alias) else projection
        if isinstance(inner, exp.Column) and inner.table == driver:
            return inner.name
    return None


def _join_part(
    join: Any, driver: str, key_source: str, ctes: Mapping[str, frozenset[str]]
) -> Part | None:
    """The joined part when the join is ``LEFT JOIN rel x ON x.col = <driver>.<key>``."""
    from sqlglot import exp

    if join.side != "LEFT" or join.kind not in ("", "OUTER") or join.args.get("using"):
        return None
    rel, on = join.this, join.args.get("on")
    if not isinstance(rel, exp.Table) or not isinstance(on, exp.EQ):
        return None
    sides = [on.this, on.expression]
    if not all(isinstance(s, exp.Column) for s in sides):
        return None
    alias = rel.alias_or_name
    by_table = {s.table: s for s in sides}
    if set(by_table) != {alias, driver} or by_table[driver].name != key_source:
        return None
    return _part(rel, ctes)


def _rekey(join: Any, driver: str) -> Any:
    """The join with the driver's key column replaced by the current rows' key."""
    from sqlglot import exp

    join = join.copy()
    for column in join.args["on"].find_all(exp.Column):
        if column.table == driver:
            column.set("table", exp.to_identifier(CURRENT))
    return join


def _driver_join(tree: Any, driver: str, source: str, key: str) -> Any:
    """``LEFT JOIN <driver relation> <driver> ON <driver>.<source> = current.<key>``."""
    from sqlglot import exp

    relation = tree.args["from_"].this.copy()
    on = exp.EQ(
        this=exp.column(source, table=driver),
        expression=exp.column(key, table=exp.to_identifier(CURRENT), quoted=True),
    )
    return exp.Join(this=relation, side="LEFT", on=on)


def _keep_used_ctes(tree: Any) -> None:
    """Drop the CTEs nothing reads any more (their inputs would be resolved for nothing)."""
    from sqlglot import exp

    with_ = tree.args.get("with_")
    if not with_:
        return
    ctes = list(with_.expressions)
    outer = [tree.args["from_"].this, *(j.this for j in tree.args.get("joins") or [])]
    used = {t.name for t in outer}  # plain tables: analyse accepts no other relation
    for cte in reversed(ctes):  # a CTE can only read CTEs defined before it
        if cte.alias in used:
            used |= {t.name for t in cte.this.find_all(exp.Table)}
    kept = [c for c in ctes if c.alias in used]
    if kept:
        with_.set("expressions", kept)
    else:
        tree.set("with_", None)
