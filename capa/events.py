"""The one canonical change event.

Every normaliser maps its input into :class:`ChangeEvent`; every downstream step
(Kafka codec, Beam apply, warehouses, Spark) takes it. The model is immutable:
row images are :class:`FrozenRow` mappings and the event itself is a frozen dataclass.

Value types carried in row images (the "canonical value domain"):

=================  ==========================================================
Python type        meaning
=================  ==========================================================
``None``           SQL NULL
``bool``           boolean / bit
``int``            any integer width
``float``          real / double precision
``str``            text, varchar, char, enum, inet, xml, interval text ...
``bytes``          bytea / varbinary
``Decimal``        numeric / decimal / money (exact, scale kept)
``datetime``       timestamp; tz-aware (UTC) for timestamptz, naive otherwise
``date``           date
``time``           time (naive); timetz is carried as a str
``UUID``           uuid / uniqueidentifier
``Json``           json / jsonb (the document text, unparsed)
``tuple``          arrays (of any of the above)
=================  ==========================================================

Values no store can hold (PostgreSQL ``infinity`` dates and timestamps, years outside
1..9999, numeric ``NaN``) are mapped to documented canonical values by :mod:`capa.values`
(saturated to 0001-01-01 / 9999-12-31 23:59:59.999999; numeric ``NaN`` is NULL). Columns
of source types without a canonical kind (geometric types, ``tsquery`` ...) are ``str``:
the source's text, with the type in :class:`Column`.

A column whose value the source did not send (PostgreSQL TOAST placeholder
``__debezium_unavailable_value``) is absent from ``after`` and listed in
``unchanged``: appliers keep the previous value.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NoReturn


class Op(str, Enum):
    """Change operation, with the Debezium one-letter codes as values."""

    READ = "r"  # snapshot / backfill read
    INSERT = "c"
    UPDATE = "u"
    DELETE = "d"
    TRUNCATE = "t"

    @property
    def is_delete(self) -> bool:
        return self is Op.DELETE


class SourceKind(str, Enum):
    POSTGRES = "postgres"
    SQLSERVER = "sqlserver"
    CRM = "crm"


class Json(str):
    """A JSON document kept as its text, so that it round-trips byte for byte."""

    __slots__ = ()


class FrozenRow(dict):  # type: ignore[type-arg]
    """A read-only ``dict`` (JSON-serialisable, picklable, hashable by content)."""

    __slots__ = ()

    def _readonly(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("FrozenRow is immutable; build a new one with dict(row, k=v)")

    __setitem__ = __delitem__ = _readonly  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = __ior__ = _readonly  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenRow, (dict(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items(), key=lambda kv: kv[0])))

    def __copy__(self) -> FrozenRow:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenRow:
        return self


def freeze(row: Mapping[str, Any] | None) -> FrozenRow | None:
    if row is None or isinstance(row, FrozenRow):
        return row
    return FrozenRow(row)


@dataclass(frozen=True, slots=True)
class Column:
    """A column of the row image: its name and the source's own type name."""

    name: str
    source_type: str  # e.g. "numeric(38,9)", "int4", "datetime2(7)"; "" when unknown


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One row-level change (or a table truncate) from any source.

    ``position`` is a byte-comparable string: for one source table, sorting events by
    ``position`` gives source order (see :mod:`capa.position`).
    """

    source: str  # configured source name: "f2", "f3", "crm"
    source_kind: SourceKind
    database: str | None
    schema: str
    table: str
    op: Op
    position: str
    commit_ts_us: int | None  # source commit time, µs since epoch UTC
    primary_key: tuple[str, ...]  # primary-key column names, in key order
    key: Mapping[str, Any]  # primary-key column -> value (stored as a FrozenRow)
    before: Mapping[str, Any] | None  # stored as a FrozenRow
    after: Mapping[str, Any] | None  # stored as a FrozenRow
    columns: tuple[Column, ...] = ()
    unchanged: tuple[str, ...] = ()  # columns absent from ``after`` because unchanged (TOAST)
    transaction_id: str | None = None
    origin: str = ""  # which path produced it: "debezium", "datastream", "crm-batch"
    event_id: str = field(default="")

    def __post_init__(self) -> None:
        # ``type(x) is`` checks: this runs once per event on every hot path
        if type(self.key) is not FrozenRow:
            object.__setattr__(self, "key", FrozenRow(self.key))
        before, after = self.before, self.after
        if before is not None and type(before) is not FrozenRow:
            object.__setattr__(self, "before", FrozenRow(before))
        if after is not None and type(after) is not FrozenRow:
            object.__setattr__(self, "after", FrozenRow(after))
        if type(self.op) is not Op:
            object.__setattr__(self, "op", Op(self.op))
        if type(self.source_kind) is not SourceKind:
            object.__setattr__(self, "source_kind", SourceKind(self.source_kind))
        if not self.event_id:
            object.__setattr__(self, "event_id", compute_event_id(self))

    @property
    def table_id(self) -> str:
        """``<source>_<schema>_<table>``, lower case: the raw table's base name."""
        return raw_table_name(self.source, self.schema, self.table)

    @property
    def row(self) -> Mapping[str, Any] | None:
        """The row image to apply: ``after``, or ``before``/``key`` for deletes."""
        return self.before if self.op is Op.DELETE else self.after

    def kafka_key(self) -> bytes:
        """Partitioning key: source + table + primary key (same row -> same partition)."""
        return stable_json([self.source, self.schema, self.table, key_items(self.key)]).encode()


def raw_table_name(source: str, schema: str, table: str) -> str:
    return f"{source}_{schema}_{table}".lower()


def key_items(key: Mapping[str, Any]) -> list[list[Any]]:
    return [[k, _jsonable(v)] for k, v in key.items()]


def compute_event_id(event: ChangeEvent) -> str:
    """Deterministic id: the same source change gives the same id on every path.

    It depends only on what identifies the change at the source (source, table,
    position, operation, key), never on the path, arrival time or redelivery.
    """
    ident = [
        event.source,
        event.schema,
        event.table,
        event.position,
        event.op.value,
        key_items(event.key),
    ]
    return hashlib.blake2b(stable_json(ident).encode(), digest_size=16).hexdigest()


def stable_json(obj: Any) -> str:
    """Sorted-key, compact JSON: what ``json.dumps(sort_keys=True, separators=(",", ":"))``
    gives, through one C encoder built once (``json.dumps`` builds a new one per call)."""
    if _STABLE_ENCODER is None:  # pragma: no cover - CPython always has the C encoder
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_jsonable)
    return "".join(_STABLE_ENCODER(obj, 0))


def _make_stable_encoder() -> Any:
    from json.encoder import (  # type: ignore[attr-defined]
        c_make_encoder,
        encode_basestring_ascii,
    )

    if c_make_encoder is None:  # pragma: no cover
        return None
    # (markers, default, encoder, indent, key_separator, item_separator, sort_keys,
    #  skipkeys, allow_nan) - markers=None: no cycle check, so the encoder is reusable
    return c_make_encoder(
        None, _jsonable, encode_basestring_ascii, None, ":", ",", True, False, True
    )


def _jsonable(value: Any) -> Any:
    # Local import keeps this module free of cycles; codec owns the value mapping.
    from capa.codec import to_json_value

    return to_json_value(value)


_STABLE_ENCODER = _make_stable_encoder()


def iter_tables(events: Iterable[ChangeEvent]) -> Iterator[tuple[str, list[ChangeEvent]]]:
    """Group events by raw table name, keeping input order inside each group."""
    groups: dict[str, list[ChangeEvent]] = {}
    for event in events:
        groups.setdefault(event.table_id, []).append(event)
    yield from groups.items()
