"""``cdc`` apply mode (the default): replicas written by BigQuery CDC, no DML.

Per table and batch: the rows of :func:`capa.warehouse.bigquery.cdc.replica_rows` go to the
replica's ``_default`` stream with ``_CHANGE_TYPE`` and ``_CHANGE_SEQUENCE_NUMBER``;
BigQuery applies them in the background and queries see the result within the table's
``max_staleness``. A batch with TOAST updates or a truncate first reads the rows it needs
from the changelog (one query, :func:`capa.warehouse.sql.select_history_sql`); every other
batch is one ``AppendRows`` call for the changelog and one for the replica.

A keyless table's replica is keyed on ``_capa_row_id`` (``PRIMARY KEY (_capa_row_id) NOT
ENFORCED``): its resolved plan (:mod:`.keyless`) is sent as UPSERT rows like any other, it
has no ``max_staleness`` (its resolving reads must see every row sent), and a truncate's
DELETE rows name the row ids the replica holds below it (its changelog has no row ids).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from capa.apply import TablePlan
from capa.warehouse import sql
from capa.warehouse.base import CHANGELOG_SUFFIX
from capa.warehouse.bigquery.cdc import HistoryNeed, history_need, replica_rows
from capa.warehouse.bigquery.keyless import is_keyless

if TYPE_CHECKING:
    from capa.warehouse.bigquery.warehouse import BigQueryWarehouse

KEYS_PER_QUERY = 1_000  # bound parameters per history query stay well under the limit


class CdcApply:
    name = "cdc"

    def __init__(self, warehouse: BigQueryWarehouse) -> None:
        self._wh = warehouse

    def layout(self, primary_key: Sequence[str]) -> dict[str, Any]:
        # a keyless replica is read to resolve each batch that removes rows, and a read
        # within max_staleness may miss rows just sent: such replicas are always fresh
        staleness = None if is_keyless(primary_key) else self._wh.config.max_staleness_minutes
        return {"primary_key": primary_key, "max_staleness_minutes": staleness}

    def staged(self, name: str) -> list[str]:
        """Nothing is staged: BigQuery holds every CDC row sent."""
        return []

    def apply(
        self,
        name: str,
        plan: TablePlan,
        replica: Mapping[str, Any],
        watermark: str | None,
        ingested_at: Any,
    ) -> int:
        key = plan.primary_key or self._wh.catalog.primary_key(name)
        need = history_need(plan)
        # a keyless changelog holds events, not row ids: a truncate's rows come from the
        # replica itself (fresh: no max_staleness), and keyless plans keep no columns
        source = name if is_keyless(key) else name + CHANGELOG_SUFFIX
        history = [] if need.empty else self._history(source, key, need)
        rows = replica_rows(plan, history, replica, ingested_at, primary_key=key)
        return self._wh.append(name, replica, rows, cdc=True)

    def _history(self, table: str, key: Sequence[str], need: HistoryNeed) -> list[dict[str, Any]]:
        schema = self._wh.catalog.schema(table)
        types = {c: _param_type(schema[c].field_type) for c in key}
        chunks = [
            need.keys[i : i + KEYS_PER_QUERY] for i in range(0, len(need.keys), KEYS_PER_QUERY)
        ]
        rows: list[dict[str, Any]] = []
        for n, chunk in enumerate(chunks or [()]):
            below = need.truncate_position is not None and n == 0
            params: dict[str, tuple[str, Any]] = {
                f"k{i}_{j}": (types[c], value)
                for i, values in enumerate(chunk)
                for j, (c, value) in enumerate(zip(key, values, strict=True))
            }
            if below:
                params["truncate"] = ("STRING", need.truncate_position)
            statement = sql.select_history_sql(
                self._wh.parts(table), key, len(chunk), below_truncate=below
            )
            rows += [dict(r.items()) for r in self._wh.run_typed(statement, params)]
        return rows

    def flush(self) -> None:
        """Nothing is held back: BigQuery applies CDC rows on its own."""


_LEGACY = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}


def _param_type(field_type: str) -> str:
    name = str(field_type).upper()
    return _LEGACY.get(name, name)
