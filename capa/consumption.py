"""Read a consumption table, wherever it lives: the one entry point for data scientists.

>>> from capa.consumption import read_table
>>> df = read_table("customer_features", columns=["customer_id", "value_band"],
...                 where=[("value_band", "in", ["mid", "high"])])

With the ``local`` warehouse (the default) the table is read from the Delta store at
``<warehouse.path>/consumption/<name>``; with the ``bigquery`` warehouse from
``<project>.<consumption_dataset>.<name>`` through a parameterised query whose result is
downloaded with the BigQuery Storage Read API (plain REST paging when ``api_endpoint`` points
at an emulator, which has no TLS gRPC endpoint for it). ``where`` is a list of
``(column, op, value)`` filters ANDed together; values are bound, never pasted into SQL.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from capa.config import BigQueryWarehouseConfig, CapaSettings, LocalWarehouseConfig
from capa.errors import ConfigError

if TYPE_CHECKING:
    import pandas
    import pyarrow

Filter = tuple[str, str, Any]
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
OPS = ("=", "!=", "<", "<=", ">", ">=", "in", "not in")


def read_table(
    name: str,
    *,
    columns: Sequence[str] | None = None,
    where: Sequence[Filter] | None = None,
    output: Literal["pandas", "arrow"] = "pandas",
    settings: CapaSettings | None = None,
) -> pandas.DataFrame | pyarrow.Table:
    """Read consumption table ``name`` as a pandas DataFrame (or an Arrow table).

    Args:
        name: model name, e.g. ``"customer_360"``.
        columns: columns to read (default all).
        where: filters ``(column, op, value)`` with op one of ``= != < <= > >= in "not in"``
            (``in`` takes a list); rows must match all of them.
        output: ``"pandas"`` (default) or ``"arrow"``.
        settings: capa settings (default: env ``CAPA__WAREHOUSE__*`` / ``capa.yaml``).
    """
    _check_name(name, "table")
    for column in columns or ():
        _check_name(column, "column")
    filters = [_check_filter(f) for f in where or ()]
    warehouse = (settings or CapaSettings()).warehouse  # type: ignore[call-arg]
    table = READERS[warehouse.type](warehouse, name, columns, filters)
    return table if output == "arrow" else table.to_pandas()


def _check_name(value: str, what: str) -> None:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ConfigError(f"bad {what} name {value!r}: use letters, digits and underscores")


def _check_filter(item: Filter) -> Filter:
    try:
        column, op, value = item
    except (TypeError, ValueError):
        raise ConfigError(
            f"bad filter {item!r}: use (column, op, value), e.g. ('country', '=', 'DE')"
        ) from None
    _check_name(column, "column")
    if op not in OPS:
        raise ConfigError(f"bad filter operator {op!r} in {item!r}; use one of {', '.join(OPS)}")
    if op in ("in", "not in") and isinstance(value, str | bytes):
        raise ConfigError(f"filter {item!r}: '{op}' takes a list of values, not {value!r}")
    return column, op, value


# -- local Delta store --------------------------------------------------------------------
_ARROW_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "=": lambda f, v: f == v,
    "!=": lambda f, v: f != v,
    "<": lambda f, v: f < v,
    "<=": lambda f, v: f <= v,
    ">": lambda f, v: f > v,
    ">=": lambda f, v: f >= v,
    "in": lambda f, v: f.isin(list(v)),
    "not in": lambda f, v: ~f.isin(list(v)) & f.is_valid(),
}


def read_local(
    warehouse: LocalWarehouseConfig, name: str, columns: Sequence[str] | None, filters: list[Filter]
) -> pyarrow.Table:
    import pyarrow.dataset as ds
    from deltalake import DeltaTable

    path = Path(warehouse.path) / "consumption" / name
    if not (path / "_delta_log").is_dir():
        raise ConfigError(
            f"no consumption table {name!r} at {path}; build it with spark_jobs.build"
        )
    expression = None
    for column, op, value in filters:
        term = _ARROW_OPS[op](ds.field(column), value)
        expression = term if expression is None else expression & term
    dataset = DeltaTable(str(path)).to_pyarrow_dataset()
    return dataset.to_table(columns=list(columns) if columns else None, filter=expression)


# -- BigQuery -----------------------------------------------------------------------------
_BQ_TYPES: list[tuple[type, str]] = [
    (bool, "BOOL"),
    (int, "INT64"),
    (float, "FLOAT64"),
    (Decimal, "NUMERIC"),
    (str, "STRING"),
    (bytes, "BYTES"),
    (dt.datetime, "TIMESTAMP"),
    (dt.date, "DATE"),
]


def bigquery_param_type(value: Any) -> str:
    for python_type, bq_type in _BQ_TYPES:  # bool before int, datetime before date
        if isinstance(value, python_type):
            return bq_type
    raise ConfigError(f"filter value {value!r} ({type(value).__name__}) has no BigQuery type")


def bigquery_query(
    table_id: str, columns: Sequence[str] | None, filters: list[Filter]
) -> tuple[str, list[Any]]:
    """SQL text with ``@p<n>`` parameters and the matching query parameters."""
    from google.cloud import bigquery

    select = ", ".join(f"`{c}`" for c in columns) if columns else "*"
    clauses: list[str] = []
    params: list[Any] = []
    for n, (column, op, value) in enumerate(filters):
        if op in ("in", "not in"):
            values = list(value)
            kind = bigquery_param_type(values[0]) if values else "STRING"
            params.append(bigquery.ArrayQueryParameter(f"p{n}", kind, values))
            negate = "NOT " if op == "not in" else ""
            clauses.append(f"{negate}`{column}` IN UNNEST(@p{n})")
        else:
            params.append(bigquery.ScalarQueryParameter(f"p{n}", bigquery_param_type(value), value))
            clauses.append(f"`{column}` {'<>' if op == '!=' else op} @p{n}")
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    return f"SELECT {select} FROM `{table_id}`{where}", params


def read_bigquery(
    warehouse: BigQueryWarehouseConfig,
    name: str,
    columns: Sequence[str] | None,
    filters: list[Filter],
) -> pyarrow.Table:
    from google.cloud import bigquery

    client = bigquery_client(warehouse)
    sql, params = bigquery_query(
        f"{warehouse.project}.{warehouse.consumption_dataset}.{name}", columns, filters
    )
    job = client.query(sql, job_config=bigquery.QueryJobConfig(query_parameters=params))
    return job.result().to_arrow(create_bqstorage_client=warehouse.api_endpoint is None)


def bigquery_client(warehouse: BigQueryWarehouseConfig) -> Any:
    """Client for the warehouse project; anonymous when ``api_endpoint`` names an emulator."""
    from google.cloud import bigquery

    if warehouse.api_endpoint is None:
        return bigquery.Client(project=warehouse.project, location=warehouse.location)
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials

    return bigquery.Client(
        project=warehouse.project,
        location=warehouse.location,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=warehouse.api_endpoint),
    )


READERS: dict[str, Callable[[Any, str, Sequence[str] | None, list[Filter]], Any]] = {
    "local": read_local,
    "bigquery": read_bigquery,
}
