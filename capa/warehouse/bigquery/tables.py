"""Raw-dataset tables: creation with their physical layout, schema evolution, a schema cache.

Layout (what a reader or a MERGE pays for):

* replica ``<name>``: ``PRIMARY KEY (...) NOT ENFORCED`` (BigQuery CDC needs it; the
  optimizer uses it for joins) and ``CLUSTER BY`` the first four key columns, so a MERGE
  or a point lookup reads only the blocks of the keys it touches; in ``cdc`` mode also
  ``max_staleness`` (how stale a query may read before it pays for merging pending changes);
* changelog ``<name>_changelog``: partitioned by the day of ``_capa_commit_ts`` and
  clustered on the key (readers of recent changes or of one key's history prune);
* ``_capa_state``: append-only truncate watermarks.

Schemas are cached for the warehouse's lifetime: a batch whose columns and types the cache
already covers makes no metadata call (BigQuery allows 5 metadata updates per table per
10 s, and every ``tables.insert`` costs a round trip).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from capa.warehouse import sql
from capa.warehouse.base import (
    META_COMMIT_TS,
    META_DELETED,
    META_EVENT_ID,
    META_INGESTED_AT,
    META_OP,
    META_POSITION,
)
from capa.warehouse.bigquery.types import bq_type, column_type, type_sql
from capa.warehouse.types import ColumnType, widen

logger = logging.getLogger(__name__)

STATE_TABLE = "_capa_state"
MAX_CLUSTERING_COLUMNS = 4  # BigQuery's limit
META_TYPES = {
    META_POSITION: "STRING",
    META_OP: "STRING",
    META_COMMIT_TS: "TIMESTAMP",
    META_INGESTED_AT: "TIMESTAMP",
    META_EVENT_ID: "STRING",
    META_DELETED: "BOOL",
}


def max_staleness_interval(minutes: int) -> str:
    """Minutes -> the REST API's INTERVAL text (``Y-M D H:M:S``), e.g. 15 -> ``0-0 0 0:15:0``."""
    return f"0-0 0 {minutes // 60}:{minutes % 60}:0"


def table_layout(
    table: Any,
    *,
    primary_key: Sequence[str] = (),
    max_staleness_minutes: int | None = None,
    partition_by: str | None = None,
) -> Any:
    """Set key, clustering, staleness and partitioning on a new ``bigquery.Table``."""
    from google.cloud import bigquery
    from google.cloud.bigquery.table import PrimaryKey, TableConstraints

    if primary_key:
        table.clustering_fields = list(primary_key[:MAX_CLUSTERING_COLUMNS])
        table.table_constraints = TableConstraints(
            primary_key=PrimaryKey(columns=list(primary_key)), foreign_keys=None
        )
    if max_staleness_minutes is not None:
        table.max_staleness = max_staleness_interval(max_staleness_minutes)
    if partition_by:
        table.time_partitioning = bigquery.TimePartitioning(
            type_=bigquery.TimePartitioningType.DAY, field=partition_by
        )
    return table


def schema_fields(
    wanted: Mapping[str, ColumnType | None], extra: Mapping[str, tuple[str, str]]
) -> list[Any]:
    from google.cloud import bigquery

    fields = []
    for name, column in wanted.items():
        if column is not None:
            type_name, mode, precision, scale = bq_type(column)
            options: dict[str, Any] = (
                {"precision": precision, "scale": scale} if precision is not None else {}
            )
            fields.append(bigquery.SchemaField(name, type_name, mode=mode, **options))
    fields += [bigquery.SchemaField(n, t) for n, t in META_TYPES.items()]
    fields += [bigquery.SchemaField(n, t, mode=m) for n, (t, m) in extra.items()]
    return fields


class BigQueryTables:
    """Creates and evolves the raw dataset's tables; caches their schemas."""

    def __init__(
        self,
        client: Any,
        parts: Callable[[str], tuple[str, str, str]],
        run: Callable[[str], Any],
        translated: Callable[[str], Any],
        retry: Any,
    ) -> None:
        self._client = client
        self._parts = parts
        self._run = run
        self._translated = translated
        self._retry = retry
        self._schemas: dict[str, dict[str, Any]] = {}
        self._keys: dict[str, tuple[str, ...]] = {}
        self._dataset_ready = False

    def ensure_dataset(self, project: str, dataset_name: str, location: str) -> None:
        if self._dataset_ready:
            return
        from google.cloud import bigquery

        dataset = bigquery.Dataset(f"{project}.{dataset_name}")
        dataset.location = location
        with self._translated("create dataset"):
            self._client.create_dataset(dataset, exists_ok=True, retry=self._retry)
            state = bigquery.Table(
                ".".join(self._parts(STATE_TABLE)),
                schema=[
                    bigquery.SchemaField("table_name", "STRING"),
                    bigquery.SchemaField("truncate_position", "STRING"),
                ],
            )
            self._client.create_table(state, exists_ok=True, retry=self._retry)
        self._dataset_ready = True

    def ensure(
        self,
        name: str,
        wanted: Mapping[str, ColumnType | None],
        extra: Mapping[str, tuple[str, str]] = {},
        **layout: Any,
    ) -> dict[str, Any]:
        """Create or evolve ``name``; returns column -> SchemaField of its schema.

        ``layout`` (primary_key, max_staleness_minutes, partition_by) applies to a new table
        only: BigQuery cannot re-cluster or re-partition an existing one in place.
        """
        cached = self._schemas.get(name)
        if cached is not None and _covers(cached, wanted, extra):
            return cached
        from google.cloud import bigquery

        table_id = ".".join(self._parts(name))
        new_table = table_layout(
            bigquery.Table(table_id, schema=schema_fields(wanted, extra)), **layout
        )
        with self._translated(f"create table {table_id}"):
            table = self._client.create_table(new_table, exists_ok=True, retry=self._retry)
        current = {f.name: f for f in table.schema}
        self._widen(name, current, wanted)
        new = [f for f in schema_fields(wanted, extra) if f.name not in current]
        if new:
            table.schema = [*table.schema, *new]
            with self._translated(f"add columns to {table_id}"):
                table = self._client.update_table(table, ["schema"], retry=self._retry)
            logger.info("added columns %s to %s", [f.name for f in new], table_id)
        self._keys[name] = _primary_key_of(table)
        self._schemas[name] = {f.name: f for f in table.schema}
        return self._schemas[name]

    def schema(self, name: str) -> dict[str, Any]:
        """Column -> SchemaField of an existing table (cached)."""
        with self._translated(f"get table {name}"):
            return self._load(name)

    def _load(self, name: str) -> dict[str, Any]:
        if name not in self._schemas:
            table = self._client.get_table(".".join(self._parts(name)), retry=self._retry)
            self._keys[name] = _primary_key_of(table)
            self._schemas[name] = {f.name: f for f in table.schema}
        return self._schemas[name]

    def exists(self, name: str) -> bool:
        if name in self._schemas:
            return True
        from google.api_core.exceptions import NotFound

        with self._translated(f"get table {name}"):
            try:
                self._load(name)
            except NotFound:
                return False
        return True

    def primary_key(self, name: str) -> tuple[str, ...]:
        """The key a table was created with (its PRIMARY KEY constraint, else its
        clustering: bqemulator keeps clustering but drops constraints)."""
        if name not in self._keys:
            self.schema(name)
        return self._keys[name]

    def forget(self, name: str) -> None:
        self._schemas.pop(name, None)

    def _widen(
        self, name: str, current: Mapping[str, Any], wanted: Mapping[str, ColumnType | None]
    ) -> None:
        for column, incoming in wanted.items():
            if incoming is None or column not in current or column in META_TYPES:
                continue
            existing = column_type(current[column])
            target = widen(existing, incoming, column=column)
            if type_sql(target) != type_sql(existing):
                self._run(sql.alter_column_type_sql(self._parts(name), column, type_sql(target)))


def _covers(
    schema: Mapping[str, Any],
    wanted: Mapping[str, ColumnType | None],
    extra: Mapping[str, tuple[str, str]],
) -> bool:
    for column, incoming in wanted.items():
        if incoming is None or column in META_TYPES:
            continue
        field = schema.get(column)
        if field is None:
            return False
        existing = column_type(field)
        if type_sql(widen(existing, incoming, column=column)) != type_sql(existing):
            return False
    return all(name in schema for name in extra)


def _primary_key_of(table: Any) -> tuple[str, ...]:
    constraints = getattr(table, "table_constraints", None)
    key = getattr(getattr(constraints, "primary_key", None), "columns", None)
    return tuple(key or table.clustering_fields or ())
