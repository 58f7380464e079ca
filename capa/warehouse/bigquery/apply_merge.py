"""``merge`` apply mode: stage every batch, MERGE each table at most every ``merge_interval_s``.

Per table, batches are appended (Storage Write API, ``_default`` stream) to the table's
current staging table ``<name>__stage_<id>``: one ``change`` row per key and batch, with
``_capa_keep__<column>`` flags for TOAST columns. When the table's cycle is due (its stage
is ``merge_interval_s`` old, checked after every batch for every table, and on
:meth:`flush`/close) one
MERGE (:func:`capa.warehouse.sql.merge_replica_sql`: latest staged row per key, stale guard,
keep flags) applies the whole cycle and the staging table is dropped. A cycle that carried a
truncate adds the ``WHEN NOT MATCHED BY SOURCE ... DELETE`` clause; any other MERGE reads
only the target blocks of its keys (the replica is clustered on the key).

A staging table left by a stopped process is merged the first time its table is written
again (every MERGE is idempotent, so merging a cycle twice changes nothing). Readers of the
replica see a cycle's changes when it is merged: freshness is ``merge_interval_s``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from capa.apply import TablePlan
from capa.events import STAGE_SUFFIX
from capa.merge_rule import KEEP_PREFIX
from capa.warehouse import sql
from capa.warehouse.base import (
    META_COMMIT_TS,
    META_DELETED,
    META_EVENT_ID,
    META_INGESTED_AT,
    META_OP,
    META_POSITION,
)
from capa.warehouse.bigquery.types import column_type
from capa.warehouse.types import ColumnType

if TYPE_CHECKING:
    from capa.warehouse.bigquery.warehouse import BigQueryWarehouse

logger = logging.getLogger(__name__)

STAGE = "_capa_stage"
STAGE_INFIX = STAGE_SUFFIX  # <name>__stage_<hex>: never a raw name (capa.events)


@dataclass
class _Cycle:
    table: str  # staging table name
    columns: frozenset[str]  # replica columns it was made for
    opened: float  # time.monotonic() of its first batch
    truncate: str | None  # the greatest truncate position staged in the cycle


class MergeApply:
    name = "merge"

    def __init__(self, warehouse: BigQueryWarehouse) -> None:
        self._wh = warehouse
        self._cycles: dict[str, _Cycle] = {}
        self._leftovers: dict[str, list[str]] | None = None

    def layout(self, primary_key: Sequence[str]) -> dict[str, Any]:
        return {"primary_key": primary_key}

    def apply(
        self,
        name: str,
        plan: TablePlan,
        replica: Mapping[str, Any],
        watermark: str | None,
        ingested_at: Any,
    ) -> int:
        self._merge_leftovers(name)
        cycle = self._cycle(name, replica)
        schema = self._wh.catalog.ensure(cycle.table, *_stage_columns(replica))
        rows = list(stage_rows(plan, set(schema), ingested_at))
        self._wh.append(cycle.table, schema, rows, cdc=False)
        if plan.truncate_position is not None:
            cycle.truncate = max(cycle.truncate or "", plan.truncate_position)
        return len(rows)

    def staged(self, name: str) -> list[str]:
        """The table's staging tables not merged yet (a keyless batch is resolved against
        them too); a stopped run's leftovers are merged first."""
        self._merge_leftovers(name)
        cycle = self._cycles.get(name)
        return [] if cycle is None else [cycle.table]

    def merge_due(self) -> None:
        """MERGE every table whose cycle is ``merge_interval_s`` old, whether or not the
        current batch touched it (a table that went quiet still gets its last changes)."""
        now = time.monotonic()
        for name, cycle in list(self._cycles.items()):
            if now - cycle.opened >= self._wh.config.merge_interval_s:
                self.merge(name)

    def flush(self) -> None:
        for name in list(self._cycles):
            self.merge(name)

    def merge(self, name: str) -> int:
        """MERGE the table's open cycle into the replica and drop its staging table."""
        cycle = self._cycles.pop(name, None)
        if cycle is None:
            return 0
        return self._merge_stage(name, cycle.table, truncate=cycle.truncate)

    def _cycle(self, name: str, replica: Mapping[str, Any]) -> _Cycle:
        cycle = self._cycles.get(name)
        if cycle is not None and cycle.columns != frozenset(replica):
            self.merge(name)  # the replica gained columns: close the cycle staged without them
            cycle = None
        if cycle is None:
            cycle = _Cycle(
                f"{name}{STAGE_INFIX}{uuid.uuid4().hex[:12]}",
                frozenset(replica),
                time.monotonic(),
                None,
            )
            self._cycles[name] = cycle
        return cycle

    def _merge_stage(self, name: str, stage: str, *, truncate: str | None) -> int:
        """MERGE one staging table. ``truncate``: the cycle's truncate, which the state
        table may not hold yet (it is raised after the batch is staged); for a staging table
        of an earlier run, the state's watermark stands in (conservatively: the clause is
        rendered)."""
        replica = self._wh.catalog.schema(name)
        staged = self._wh.catalog.schema(stage)
        keep = tuple(c for c in replica if KEEP_PREFIX + c in staged)
        spec = sql.MergeSpec(
            target=self._wh.parts(name),
            source=self._wh.parts(stage),
            keys=self._wh.catalog.primary_key(name),
            columns=tuple(replica),
            keep=keep,
            stage_column=STAGE,
            delete_below_truncate=truncate is not None,
        )
        watermark = max(self._wh.watermark(name, fresh=True) or "", truncate or "")
        params = {"stage": "change", "watermark": watermark, "truncate": watermark or None}
        result = self._wh.run(sql.merge_replica_sql(spec), params)
        self._wh.drop(stage)
        return int(getattr(result, "num_dml_affected_rows", 0) or 0)

    def _merge_leftovers(self, name: str) -> None:
        if self._leftovers is None:
            self._leftovers = {}
            for table in self._wh.table_names():
                base, infix, _ = table.partition(STAGE_INFIX)
                if infix:
                    self._leftovers.setdefault(base, []).append(table)
        for stage in self._leftovers.pop(name, []):
            logger.info("merging staging table %s left by an earlier run", stage)
            self._merge_stage(name, stage, truncate=self._wh.watermark(name, fresh=True))


def _stage_columns(
    replica: Mapping[str, Any],
) -> tuple[dict[str, ColumnType], dict[str, tuple[str, str]]]:
    """A staging table's columns: the replica's, the stage marker, a keep flag per column."""
    from capa.warehouse.bigquery.tables import META_TYPES

    source = {c: column_type(f) for c, f in replica.items() if c not in META_TYPES}
    flags = {KEEP_PREFIX + c: ("BOOL", "NULLABLE") for c in source}
    return source, {STAGE: ("STRING", "NULLABLE"), **flags}


def stage_rows(plan: TablePlan, columns: set[str], ingested_at: Any) -> Iterator[dict[str, Any]]:
    """One staged ``change`` row per key of the batch (pure)."""
    for c in plan.changes:
        values = {k: v for k, v in c.values.items() if k in columns}
        flags = {KEEP_PREFIX + k: True for k in c.keep if KEEP_PREFIX + k in columns}
        yield {
            **values,
            META_POSITION: c.position,
            META_OP: c.op.value,
            META_COMMIT_TS: c.commit_ts_us,
            META_INGESTED_AT: ingested_at,
            META_EVENT_ID: c.event_id,
            META_DELETED: c.deleted,
            **flags,
            STAGE: "change",
        }
