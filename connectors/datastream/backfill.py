"""Datastream backfill files written through the bulk writer instead of Kafka.

A file of ``postgresql-backfill`` reads of one keyed table is normalised column-wise
(:meth:`~connectors.datastream.normalizer.DatastreamNormalizer.backfill_columns`: the same
values, positions and event ids as the events of the Kafka path), then written by
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
are numbered by the apply rules) goes to Kafka as before, and so does a file the warehouse
refuses (type drift, ...): the apply job isolates and dead-letters the refused events with
their reasons. A transient error stops the reader before the checkpoint (read again).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from capa.columnar import TableColumns
from capa.errors import TransientError
from capa.warehouse.base import TableReport
from connectors.base import RawRecord
from connectors.datastream.normalizer import DatastreamNormalizer

logger = logging.getLogger(__name__)

LOAD_PREFIX = "datastream:"


class ReadLoader(Protocol):
    """A warehouse that writes snapshot reads in bulk (the local lakehouse)."""

    def load_reads(self, cols: TableColumns, load_id: str) -> TableReport: ...


def load_id(name: str, generation: int) -> str:
    """The once-only id of one object version's load."""
    return f"{LOAD_PREFIX}{name}#{generation}"


class BulkBackfill:
    """Writes pure backfill files of keyed tables through ``warehouse``'s bulk writer."""

    def __init__(self, warehouse: ReadLoader, normalizer: DatastreamNormalizer) -> None:
        self.warehouse = warehouse
        self.normalizer = normalizer

    def load(self, records: Sequence[RawRecord], name: str, generation: int) -> int | None:
        """Rows written for the file, or None when it is not a pure keyed backfill (see
        :meth:`~connectors.datastream.normalizer.DatastreamNormalizer.backfill_columns`)."""
        cols = self.normalizer.backfill_columns(records)
        if cols is None:
            return None
        try:
            report = self.warehouse.load_reads(cols, load_id(name, generation))
        except TransientError:
            raise  # the file is not marked done: read again after the restart
        except Exception as exc:  # refused (e.g. type drift): the apply job dead-letters it
            logger.warning(
                "bulk backfill of %s#%d refused by the warehouse (%s); producing it to Kafka, "
                "where the apply job isolates and dead-letters what it refuses",
                name,
                generation,
                exc,
            )
            return None
        logger.debug("bulk backfill %s#%d: %s", name, generation, report)
        return len(cols)
