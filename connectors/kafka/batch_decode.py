"""A poll's worth of Kafka values -> plain tables column-wise, other events, dead letters.

The streaming apply job decodes whole batches here. The native batch decoder
(``capa.native.decode_batch``) turns the single-object-framed records of plain tables (see
:mod:`capa.columnar`) straight from bytes into columns; every other record is decoded one by one
by :class:`~connectors.kafka.wire.ChangeEventDecoder` (Confluent framing, truncates, TOAST
updates, key moves, and the exact reason of every poison record; the same native reader,
``decode_event``), and plain tables among those are turned into columns by
:func:`capa.columnar.split_plain`. With ``native=None`` everything takes that second route
(slower, same result): the tests use it as the reference route.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from capa.apply import check_applicable
from capa.codec import schema_fingerprint
from capa.columnar import TableColumns, applicable_tables, from_native, split_plain
from capa.errors import DecodeError
from capa.events import ChangeEvent
from connectors.kafka.wire import ChangeEventDecoder

NativeDecode = Callable[..., tuple[list[tuple[Any, ...]], list[int]]]


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """A batch of Kafka values, decoded. Indices are positions in the batch."""

    tables: list[TableColumns]  # plain tables, column-wise
    events: list[tuple[int, ChangeEvent]]  # every other decodable record
    errors: list[tuple[int, str]]  # poison records and why

    @property
    def decoded(self) -> int:
        return sum(len(t) for t in self.tables) + len(self.events)


class BatchDecoder:
    """``columns=False`` (a warehouse without a column-wise apply): every record as an event."""

    def __init__(
        self, decoder: ChangeEventDecoder, native: NativeDecode | None, *, columns: bool = True
    ) -> None:
        self.decoder = decoder
        self.native = native if columns else None
        self.columns = columns

    def decode(self, values: Sequence[bytes | None]) -> DecodedBatch:
        if not self.columns:
            return DecodedBatch([], *self._decode_each(values, range(len(values))))
        if self.native is None:
            native_tables, rest = [], list(range(len(values)))
        else:
            rows, rest = self.native(values, schema_fingerprint())
            native_tables = [from_native(row) for row in rows]
        # native tables before decoding the rest: one with a NULL key value or an unusable
        # name joins the event path, where each record is refused with its reason
        native_tables, moved = applicable_tables(native_tables)
        events, errors = self._decode_each(values, sorted([*rest, *moved]))
        split, others = split_plain([event for _, event in events])
        where = [index for index, _ in events]
        split = [replace(t, indices=[where[i] for i in t.indices]) for t in split]
        return DecodedBatch(native_tables + split, [events[i] for i in others], errors)

    def _decode_each(
        self, values: Sequence[bytes | None], indices: Sequence[int]
    ) -> tuple[list[tuple[int, ChangeEvent]], list[tuple[int, str]]]:
        decode = self.decoder.decode
        events: list[tuple[int, ChangeEvent]] = []
        errors: list[tuple[int, str]] = []
        for index in indices:
            try:
                event = decode(values[index])
                check_applicable(event)
            except DecodeError as exc:
                errors.append((index, exc.reason))
            else:
                events.append((index, event))
        return events, errors
