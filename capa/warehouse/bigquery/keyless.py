"""Keyless tables in BigQuery: what a keyless batch needs to read before it is written.

The rules are capa's own and live in one place (:func:`capa.apply.resolve_plan`, mechanics
in :mod:`capa.keyless`): a keyless batch is resolved against what the replica holds, and the
result is a keyed plan on ``_capa_row_id`` that both apply modes write like any other
(``merge``: staged and MERGEd on ``_capa_row_id``; ``cdc``: UPSERT rows keyed by
``_capa_row_id``, the replica declaring ``PRIMARY KEY (_capa_row_id) NOT ENFORCED``).
This module only reads what the resolution needs, inside BigQuery (no table download):

* only a batch holding an update or delete reads anything: inserts (and snapshot reads)
  add an occurrence keyed by their own ``event_id``, so a redelivered insert rewrites the
  same row at the same position, a no-op in both modes;
* otherwise one query reads the five metadata columns of the rows that can matter (at or
  above the batch's lowest position, or live with a row hash the batch removes) from the
  replica and from ``merge`` mode's staging tables not merged yet, and keeps the latest
  row per ``_capa_row_id`` (what the replica holds once the stage is merged);
* in ``cdc`` mode the replica of a keyless table has no ``max_staleness``: BigQuery then
  applies pending CDC rows when it is queried, so the read sees every row sent before it
  (a stale read could miss the row a delete removes). Only real BigQuery can confirm
  that (docs/emulated.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from capa.apply import TablePlan
from capa.events import Op
from capa.keyless import KEYLESS_KEY, ROW_HASH, ROW_ID, batch_needs
from capa.warehouse import sql
from capa.warehouse.base import META_DELETED, META_EVENT_ID, META_POSITION

READ_COLUMNS = (ROW_ID, ROW_HASH, META_POSITION, META_EVENT_ID, META_DELETED)
_REMOVES = frozenset({Op.UPDATE, Op.DELETE})


def is_keyless(primary_key: Sequence[str]) -> bool:
    """True for the key of a keyless replica (``_capa_row_id``)."""
    return tuple(primary_key) == KEYLESS_KEY


def needs_read(plan: TablePlan) -> bool:
    """True if resolving ``plan`` needs what the replica holds (it updates or deletes)."""
    return any(event.op in _REMOVES for event in plan.keyless)


def target_query(
    tables: Sequence[Sequence[str]], plan: TablePlan
) -> tuple[str, dict[str, tuple[str, Any]]]:
    """The read of :func:`needs_read` over ``tables`` (replica first, then staging tables):
    SQL and its typed parameters (``@lowest``, ``@hashes``)."""
    hashes, lowest = batch_needs(plan.keyless)
    d = sql.dialect("bigquery")
    columns = ", ".join(d.ident(c) for c in READ_COLUMNS)
    where = f"{d.ident(META_POSITION)} >= @lowest"
    if hashes:
        where += (
            f" OR (NOT IFNULL({d.ident(META_DELETED)}, FALSE)"
            f" AND {d.ident(ROW_HASH)} IN UNNEST(@hashes))"
        )
    statement = " UNION ALL ".join(
        f"SELECT {columns} FROM {d.table(t)} WHERE {where}" for t in tables
    )
    params: dict[str, tuple[str, Any]] = {"lowest": ("STRING", lowest or "")}
    if hashes:
        params["hashes"] = ("ARRAY<STRING>", sorted(hashes))
    return statement, params


def latest_rows(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Per ``_capa_row_id`` the row with the greatest position: a staged change shadows the
    replica row it will replace, as the MERGE's stale guard decides."""
    latest: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        held = latest.get(row[ROW_ID])
        if held is None or row[META_POSITION] > held[META_POSITION]:
            latest[row[ROW_ID]] = row
    return list(latest.values())
