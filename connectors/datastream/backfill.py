"""Datastream backfill files written through the bulk writer instead of Kafka.

A file of ``postgresql-backfill`` reads of one keyed table is normalised as every file is
(the same events, values, positions and event ids), then written column-wise by
:meth:`~capa.warehouse.local.warehouse.LocalWarehouse.load_reads`: the apply job's plan
(types, last row per key, truncate watermark) and the bulk writer's once-only commits (a
changelog append and one guarded merge, each tagged with the Delta transaction of
``datastream:<object>#<generation>``). Skipped are the Avro encode, Kafka and the decode of
the apply job; the bucket reader marks the file done only after both commits, so a crash in
between reads the file again and its transaction makes the second load write nothing.

Ordering with the stream: backfill reads sort before every streamed change
(:mod:`capa.position`, phase 0), and the merge applies the stale guard, so whichever of the
reader and the apply job writes a key first, the replica ends with the row of the highest
position (a streamed update or tombstone is never overwritten by a backfill read). Two
writers of one Delta table commit optimistically; a conflict is retried by both.

Anything else (CDC files, mixed files, dead letters, keyless tables, whose duplicate rows
are numbered by the apply rules) goes to Kafka as before.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from capa.columnar import TableColumns, split_plain
from capa.events import ChangeEvent, Op
from capa.warehouse.base import TableReport

logger = logging.getLogger(__name__)

LOAD_PREFIX = "datastream:"


class ReadLoader(Protocol):
    """A warehouse that writes snapshot reads in bulk (the local lakehouse)."""

    def load_reads(self, cols: TableColumns, load_id: str) -> TableReport: ...


def backfill_table(events: Sequence[ChangeEvent]) -> TableColumns | None:
    """The events column-wise if they are backfill reads of ONE keyed table that the column
    path can write (plain, non-NULL keys, one column list); else None (produce to Kafka)."""
    if not events or any(e.op is not Op.READ for e in events):
        return None
    tables, others = split_plain(events)
    if others or len(tables) != 1:
        return None
    return tables[0]


def load_id(name: str, generation: int) -> str:
    """The once-only id of one object version's load."""
    return f"{LOAD_PREFIX}{name}#{generation}"


class BulkBackfill:
    """Writes pure backfill files of keyed tables through ``warehouse``'s bulk writer."""

    def __init__(self, warehouse: ReadLoader) -> None:
        self.warehouse = warehouse

    def load(self, events: Sequence[ChangeEvent], name: str, generation: int) -> int | None:
        """Rows written for the file, or None when it is not a pure keyed backfill."""
        cols = backfill_table(events)
        if cols is None:
            return None
        report = self.warehouse.load_reads(cols, load_id(name, generation))
        logger.debug("bulk backfill %s#%d: %s", name, generation, report)
        return len(cols)
