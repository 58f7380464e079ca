"""The changelog, both apply modes: append-only, one row per event, deduplicated on read.

Rows are appended through the Storage Write API default stream (at-least-once: a replayed
batch appends its events again), so every reader deduplicates by ``_capa_event_id``
(:func:`capa.warehouse.sql.select_changelog_sql`). The table is partitioned by the day
of ``_capa_commit_ts`` and clustered on the primary key, so a reader of recent changes or
of one key's history scans only those partitions and blocks; no MERGE ever touches it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from capa.apply import TablePlan
from capa.warehouse.base import (
    META_COMMIT_TS,
    META_DELETED,
    META_EVENT_ID,
    META_INGESTED_AT,
    META_OP,
    META_POSITION,
)
from capa.warehouse.bigquery.cdc import UNCHANGED


def changelog_rows(
    plan: TablePlan, columns: Iterable[str], ingested_at: Any
) -> list[dict[str, Any]]:
    """One row per distinct event of the batch: its row image (or key) plus metadata."""
    wanted = set(columns)
    return [
        {
            **{k: v for k, v in (e.row or e.key).items() if k in wanted},
            META_POSITION: e.position,
            META_OP: e.op.value,
            META_COMMIT_TS: e.commit_ts_us,
            META_INGESTED_AT: ingested_at,
            META_EVENT_ID: e.event_id,
            META_DELETED: e.op.is_delete,
            UNCHANGED: list(e.unchanged),
        }
        for e in plan.changelog
    ]
