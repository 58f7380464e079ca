"""Consumption models as SQL files: header parsing, templating and dependency order.

A model is ``spark_jobs/models/<name>.sql``: a leading ``--`` comment block whose lines after
``-- capa:`` are YAML (validated by :class:`ModelHeader`), then one Spark SQL ``SELECT``.
Inside the SQL, ``{{ raw('f2_public_orders') }}`` names a raw replica (current rows, deletes
hidden) and ``{{ ref('customer_360') }}`` another model; dependency order comes from the refs.
Inside an ``incremental`` mapping query, ``{{ rows }}`` names the changed input rows and
``{{ raw_history('t') }}`` the raw table including tombstones. The header also chooses how the
model is rebuilt when its inputs change (:attr:`ModelHeader.strategy`, the names of
:data:`spark_jobs.strategies.STRATEGIES`). Model SQL is plain Spark SQL over the inputs' own
columns; the engine's columns (``_capa_sign`` on changed rows) never reach it.

This module is pure Python (pydantic + yaml): Airflow and the unit tests import it without Spark.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from capa.errors import ConfigError

MODELS_DIR = Path(__file__).resolve().parent / "models"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CALL = re.compile(r"\{\{\s*(raw|ref|raw_history)\(\s*'([^']*)'\s*\)\s*\}\}")
_ROWS = re.compile(r"\{\{\s*rows\s*\}\}")
_ANY_TEMPLATE = re.compile(r"\{\{.*?\}\}", re.S)
SIGN = "_capa_sign"  # on changed input rows: +1 new row version, -1 replaced or removed one


class Relationship(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str = Field(description="Column of this model that must exist in the other table.")
    to: str = Field(description="Raw table (<source>_<schema>_<table>) or model name.")
    field: str = Field(description="Column of the other table.")


class Checks(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    not_null: tuple[str, ...] = Field((), description="Columns that must never be NULL.")
    unique: tuple[str, ...] = Field((), description="Column set whose values must be unique.")
    accepted_values: dict[str, tuple[str, ...]] = Field(
        default_factory=dict, description="Column -> allowed values (NULL passes; use not_null)."
    )
    relationships: tuple[Relationship, ...] = Field(
        (), description="Referential integrity: every non-NULL value exists in the other table."
    )

    @model_validator(mode="after")
    def _plain_column_names(self) -> Checks:
        names = [*self.not_null, *self.unique, *self.accepted_values]
        names += [n for r in self.relationships for n in (r.column, r.field)]
        bad = [n for n in names if not _COLUMN.match(n)]
        if bad:
            raise ValueError(f"check columns must be plain identifiers, got {bad}")
        return self


class Additive(BaseModel):
    """``additive:`` of a model header: the model is maintained as current rows + change.

    Every non-key output column must be a sum over input rows (``COUNT(*)``, ``SUM(x)``, and
    sums or COALESCEs to 0 of those): then the column over the new input rows is the column
    over the old rows, plus the model's SQL over the rows added since, minus the same SQL over
    the rows removed since, and an incremental build reads only the changed rows (see
    :class:`spark_jobs.strategies.Additive`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    exists: str = Field(
        description="SQL condition over the output columns: a key keeps a row while it holds "
        "(e.g. 'orders + invoices > 0'); a full build never yields a row where it fails."
    )


class BigQueryLayout(BaseModel):
    """``bigquery:`` of a model header: how the published table is laid out in BigQuery.

    Partition a table that is large and read by ranges of a date column (a partition should
    hold about 1 GB or more: a small daily table is better partitioned by MONTH or YEAR);
    cluster on the columns readers filter or join on (at most 4).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition_by: str | None = Field(None, description="DATE column the table is partitioned on.")
    granularity: Literal["DAY", "MONTH", "YEAR"] = Field(
        "DAY", description="Partition granularity of partition_by."
    )
    cluster_by: tuple[str, ...] = Field(
        (), max_length=4, description="Clustering columns, in order (at most 4)."
    )

    def ddl(self) -> str:
        """The ``PARTITION BY ... CLUSTER BY ...`` clauses of a CREATE TABLE ('' if none)."""
        from capa.warehouse.sql import dialect

        _backtick = dialect("bigquery").ident
        parts = []
        if self.partition_by:
            column = _backtick(self.partition_by)
            unit = (
                column if self.granularity == "DAY" else f"DATE_TRUNC({column}, {self.granularity})"
            )
            parts.append(f"PARTITION BY {unit}")
        if self.cluster_by:
            parts.append("CLUSTER BY " + ", ".join(_backtick(c) for c in self.cluster_by))
        return " ".join(parts)


class ModelHeader(BaseModel):
    """The ``-- capa:`` block of a model file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: tuple[str, ...] = Field(description="Columns that identify one output row (MERGE key).")
    incremental: dict[str, str] = Field(
        default_factory=dict,
        description="Input table -> SQL expression over its changed rows giving the model key "
        "(or a SELECT over {{ rows }}). Inputs missing here force a full rebuild when they change.",
    )
    checks: Checks = Field(default_factory=Checks, description="Data-quality checks after build.")
    additive: Additive | None = Field(
        None,
        description="Maintain by signed sums instead of recomputing keys (see Additive); "
        "the incremental mappings still name the keys for checks and fallbacks.",
    )
    bigquery: BigQueryLayout = Field(
        default_factory=BigQueryLayout,
        description="Partitioning and clustering of the table published to BigQuery.",
    )

    @property
    def strategy(self) -> str:
        """How an incremental build rebuilds the model: ``additive`` (an ``additive:``
        block), ``keyed`` (``incremental:`` mappings), else ``full``."""
        if self.additive is not None:
            return "additive"
        return "keyed" if self.incremental else "full"

    @field_validator("key")
    @classmethod
    def _key_not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("key must name at least one column, e.g. key: [customer_id]")
        return value


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    path: Path
    header: ModelHeader
    sql: str  # the SELECT, with {{ ... }} templates

    @property
    def raw_inputs(self) -> tuple[str, ...]:
        return _calls(self.sql, "raw")

    @property
    def history_inputs(self) -> tuple[str, ...]:
        return _calls(self.sql, "raw_history")

    @property
    def refs(self) -> tuple[str, ...]:
        return _calls(self.sql, "ref")

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.raw_inputs + self.refs

    def render(self, resolve: Callable[[str, str], str]) -> str:
        """The SQL with each ``{{ raw|ref|raw_history('x') }}`` replaced by ``resolve(kind, x)``."""
        return render(self.sql, resolve)

    def key_expression(self, table: str) -> str | None:
        """The mapping of ``table`` when it is a plain expression giving the (one-column) key,
        else None. Rows of ``table`` whose expression lies outside a key set cannot change
        those keys' rows (else the mapping would be incomplete), so a rebuild of the set reads
        only rows inside it."""
        expr = self.header.incremental.get(table)
        if expr is None or _ROWS.search(expr) or len(self.header.key) != 1:
            return None
        return expr

    def mapped_column(self, table: str) -> str | None:
        """The mapping of ``table`` when it is a bare column name (the key is that column of
        the changed rows, no SQL needed), else None."""
        expr = (self.header.incremental.get(table) or "").strip()
        return expr if _COLUMN.match(expr) and len(self.header.key) == 1 else None

    def mapping_sql(self, table: str, rows_view: str, resolve: Callable[[str, str], str]) -> str:
        """SQL giving the model keys touched by the changed ``table`` rows in ``rows_view``."""
        expr = self.header.incremental[table]
        if _ROWS.search(expr):
            return render(_ROWS.sub(rows_view, expr), resolve)
        if len(self.header.key) > 1:
            raise ConfigError(
                f"model {self.name!r}: incremental mapping for {table!r} must be a SELECT over "
                "{{ rows }} returning every key column when the key has several columns"
            )
        return f"SELECT {expr} AS {quote(self.header.key[0])} FROM {rows_view}"


def quote(identifier: str) -> str:
    """Spark SQL identifier quoting."""
    return "`" + identifier.replace("`", "``") + "`"


def render(sql: str, resolve: Callable[[str, str], str]) -> str:
    out = _CALL.sub(lambda m: resolve(m.group(1), m.group(2)), sql)
    leftover = _ANY_TEMPLATE.search(out)
    if leftover:
        raise ConfigError(
            f"unknown template {leftover.group(0)!r}; use {{{{ raw('t') }}}}, {{{{ ref('m') }}}}, "
            "{{ raw_history('t') }} or {{ rows }}"
        )
    return out


def _calls(sql: str, kind: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(m.group(2) for m in _CALL.finditer(sql) if m.group(1) == kind))


def split_header(text: str) -> tuple[str, str]:
    """(YAML of the ``-- capa:`` block, SQL body) of a model file."""
    lines = text.splitlines()
    comment = 0
    while comment < len(lines) and (lines[comment].startswith("--") or not lines[comment].strip()):
        comment += 1
    block = [ln[2:] for ln in lines[:comment] if ln.startswith("--")]
    starts = [i for i, ln in enumerate(block) if ln.strip() == "capa:"]
    if not starts:
        return "", "\n".join(lines[comment:])
    body = [ln[1:] if ln.startswith(" ") else ln for ln in block[starts[0] + 1 :]]
    return "\n".join(body), "\n".join(lines[comment:]).strip().rstrip(";")


def parse_model(path: Path) -> Model:
    name = path.stem
    if not _NAME.match(name):
        raise ConfigError(f"model file {path}: name {name!r} must be lower_snake_case")
    header_yaml, sql = split_header(path.read_text(encoding="utf-8"))
    if not header_yaml:
        raise ConfigError(f"model {path}: no '-- capa:' header block; add one with at least key:")
    try:
        data = yaml.safe_load(header_yaml) or {}
        header = ModelHeader.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"model {path}: bad header: {exc}") from exc
    if not sql:
        raise ConfigError(f"model {path}: no SQL after the header")
    return Model(name=name, path=path, header=header, sql=sql)


@dataclass(frozen=True, slots=True)
class Project:
    models: Mapping[str, Model]

    def order(self, select: Iterable[str] | None = None) -> list[Model]:
        """Models in dependency order (refs first); ``select`` limits to those names."""
        graph = {m.name: set(m.refs) for m in self.models.values()}
        try:
            ordered = list(TopologicalSorter(graph).static_order())
        except CycleError as exc:
            raise ConfigError(f"models reference each other in a cycle: {exc.args[1]}") from exc
        wanted = set(select) if select else set(self.models)
        unknown = wanted - set(self.models)
        if unknown:
            raise ConfigError(f"unknown model(s) {sorted(unknown)}; known: {sorted(self.models)}")
        return [self.models[n] for n in ordered if n in wanted]

    def raw_tables(self) -> list[str]:
        return sorted({t for m in self.models.values() for t in m.raw_inputs})


def load_project(models_dir: Path = MODELS_DIR) -> Project:
    models = {p.stem: parse_model(p) for p in sorted(models_dir.glob("*.sql"))}
    if not models:
        raise ConfigError(f"no models (*.sql) in {models_dir}")
    for model in models.values():
        _validate_refs(model, models)
    return Project(models=models)


def _validate_refs(model: Model, models: Mapping[str, Model]) -> None:
    for ref in model.refs:
        if ref not in models:
            raise ConfigError(f"model {model.name!r} refs unknown model {ref!r}")
    for table in model.header.incremental:
        if table not in model.inputs:
            raise ConfigError(
                f"model {model.name!r}: incremental names {table!r}, which the SQL never reads"
            )
