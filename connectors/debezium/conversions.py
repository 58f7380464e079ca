"""Values Debezium could not convert and sent as NULL: told once per column, counted always.

Debezium sends NULL for a value its converter rejects and logs one WARN line per value
("Failed to properly convert data value for '<schema>.<table>.<column>' of type <type>"):
PostgreSQL ``numeric`` ``NaN``/``Infinity``/``-Infinity`` are the common case (no decimal
has them; docs/type-mapping.md). The record itself cannot tell that NULL from a real one, so
the bridge reads those lines: the log4j config routes them, message only, to
:data:`~connectors.debezium.engine.CONVERSIONS_LOG`, and before each batch is produced (its
records were converted, and their lines written, before the engine handed it over)
:meth:`ConversionWatch.poll` reads what is new. Per column the operator gets ONE capa
warning, and every value is counted in ``capa_ingest_values_nulled_total``
(table, column), never a capa line per event.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from capa import metrics

logger = logging.getLogger(__name__)

LINE = re.compile(
    r"Failed to properly convert data value for '(?P<name>[^']+)' of type (?P<type>\S+)"
)


@dataclass(frozen=True, slots=True)
class NulledValue:
    """One value Debezium sent as NULL: its column's table label, column and source type."""

    table: str  # source.schema.table, as every metric labels it
    column: str
    source_type: str


def parse_line(line: str, source: str) -> NulledValue | None:
    """The value a conversion-failure line names (``'schema.table.column'``); None else."""
    found = LINE.search(line)
    if found is None:
        return None
    *table, column = found["name"].split(".")
    schema = table[-2] if len(table) >= 2 else None
    return NulledValue(
        metrics.table_label(source, schema, table[-1] if table else ""),
        column,
        found["type"].rstrip(".,;"),
    )


@dataclass
class ConversionWatch:
    """Reads the new lines of the conversion log; warns once per column, counts each value."""

    path: Path
    source: str
    component: str
    _offset: int = 0
    _told: set[tuple[str, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        # lines of an earlier run were reported by it: start at the end
        self._offset = self.path.stat().st_size if self.path.exists() else 0

    def poll(self) -> list[NulledValue]:
        """The values named since the last poll (complete lines only), reported."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self._offset:  # the file was replaced: read it from the start
            self._offset = 0
        if size == self._offset:
            return []
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            data = handle.read(size - self._offset)
        complete = data.rpartition(b"\n")[0]
        if not complete:
            return []
        self._offset += len(complete) + 1
        found = [
            parse_line(line, self.source) for line in complete.decode(errors="replace").splitlines()
        ]
        values = [v for v in found if v is not None]
        for value in values:
            self._report(value)
        return values

    def _report(self, value: NulledValue) -> None:
        metrics.record_nulled_value(self.component, value.table, value.column)
        if (value.table, value.column) in self._told:
            return
        self._told.add((value.table, value.column))
        logger.warning(
            "Debezium could not convert a value of %s.%s (type %s) and sent NULL instead "
            "(numeric NaN and Infinity have no decimal form: docs/type-mapping.md); the "
            "replica holds NULL there. Later values of this column are counted in "
            "capa_ingest_values_nulled_total, not logged",
            value.table,
            value.column,
            value.source_type,
        )
