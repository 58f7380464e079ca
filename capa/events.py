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
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from typing import Any, NoReturn

from capa.errors import TableNameError


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
        """The raw table's name (:func:`raw_table_name`); raises TableNameError if too long."""
        return raw_table_name(self.source, self.schema, self.table)

    @property
    def row(self) -> Mapping[str, Any] | None:
        """The row image to apply: ``after``, or ``before``/``key`` for deletes."""
        return self.before if self.op is Op.DELETE else self.after

    def kafka_key(self) -> bytes:
        """Partitioning key: source + table + primary key (same row -> same partition)."""
        return stable_json([self.source, self.schema, self.table, key_items(self.key)]).encode()


# --- table identity ---------------------------------------------------------------------------
#
# The names capa derives from a raw table's name ``N`` (every adapter appends these and only
# these). A plain table name never ends in one of them, so no derived name is an encoding.
CHANGELOG_SUFFIX = "_changelog"  # N_changelog: the append-only history
ALL_ROWS_SUFFIX = "_all"  # raw.N_all: the DuckDB view of a replica with its tombstones
STAGE_SUFFIX = "__stage_"  # N__stage_<hex id>: a BigQuery batch's staging table
DERIVED_SUFFIXES = (CHANGELOG_SUFFIX, ALL_ROWS_SUFFIX, STAGE_SUFFIX)
# Filesystems take names up to 255 bytes; the longest derived name adds 20 characters
# (STAGE_SUFFIX + 12 hex digits), so every derived name of a valid raw name fits.
MAX_RAW_NAME = 230

_PLAIN_PART = re.compile(r"[a-z0-9]+")
_PLAIN_TABLE = re.compile(r"[a-z0-9]+(?:_[a-z0-9]+)*")
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_SEPARATOR = "__"
_ESCAPE = re.compile(r"_x([0-9a-f]{2})")


@lru_cache(maxsize=4096)
def raw_table_name(source: str, schema: str, table: str) -> str:
    """The raw table's name for a source table: the one, injective encoding.

    * **Plain** triples keep ``<source>_<schema>_<table>``: source and schema match
      ``[a-z0-9]+``, table matches ``[a-z0-9]+(_[a-z0-9]+)*`` and does not end in a
      :data:`DERIVED_SUFFIXES` entry (``f2``, ``public``, ``orders`` -> ``f2_public_orders``).
    * Every other triple is **escaped**: ``esc(source) + "__" + esc(schema) + "__" +
      esc(table)``, where ``esc`` keeps ``[a-z0-9]`` and writes any other character as
      ``_x`` + two lower-case hex digits per UTF-8 byte (``Orders`` ->
      ``f2__public___x4frders``, ``x/..`` -> ``..._x2f_x2e_x2e``).

    Why it is safe: the output alphabet is ``[a-z0-9_]`` (no path separator, no dot, no
    case to fold); plain names never contain ``__`` while escaped ones always do, so the
    two forms never meet; in an escaped component every ``_`` starts ``_x``, so reading
    left to right ``__`` is always a separator and :func:`decode_raw_table_name` recovers
    the triple; a derived name is never an encoding (``_changelog``/``_all`` after a plain
    name makes a table ending in a reserved suffix, which is not plain; after an escaped
    name, and ``__stage_<hex>`` after any, they put a ``_`` before a letter other than
    ``x``, which no escaped name has). A name longer than :data:`MAX_RAW_NAME` raises
    :class:`~capa.errors.TableNameError` (terminal: the events dead-letter).
    """
    if _is_plain(source, schema, table):
        name = f"{source}_{schema}_{table}"
    else:
        name = _SEPARATOR.join(_escape(part) for part in (source, schema, table))
    if len(name) > MAX_RAW_NAME:
        raise TableNameError(
            f"source table {source!r}.{schema!r}.{table!r} encodes to a raw table name of "
            f"{len(name)} characters, over the limit of {MAX_RAW_NAME} (filesystem names); "
            "rename the source, schema or table, or leave this table out of the capture"
        )
    return name


def decode_raw_table_name(name: str) -> tuple[str, str, str]:
    """The (source, schema, table) that :func:`raw_table_name` encodes as ``name``.

    Raises ``ValueError`` for a name that is no encoding (a derived name such as
    ``<name>_changelog``, or a non-canonical spelling).
    """
    if _SEPARATOR in name:
        parts = tuple(_unescape(part) for part in _split_escaped(name))
    else:
        parts = tuple(name.split("_", 2))
    if len(parts) != 3 or raw_table_name(*parts) != name:
        raise ValueError(f"{name!r} is not a raw table name (no source table encodes to it)")
    return parts  # type: ignore[return-value]


def _is_plain(source: str, schema: str, table: str) -> bool:
    return (
        _PLAIN_PART.fullmatch(source) is not None
        and _PLAIN_PART.fullmatch(schema) is not None
        and _PLAIN_TABLE.fullmatch(table) is not None
        and not table.endswith(DERIVED_SUFFIXES)
    )


def _escape(part: str) -> str:
    # surrogatepass: a lone surrogate (valid in a JSON string) still has one spelling
    return "".join(
        char
        if char in _SAFE
        else "".join(f"_x{byte:02x}" for byte in char.encode("utf-8", "surrogatepass"))
        for char in part
    )


def _split_escaped(name: str) -> list[str]:
    """Split at separators: inside an escaped component every ``_`` is followed by ``x``,
    so the first ``_`` of each ``__`` met left to right starts a separator."""
    parts, start, i = [], 0, 0
    while i < len(name):
        if name.startswith(_SEPARATOR, i):
            parts.append(name[start:i])
            i = start = i + len(_SEPARATOR)
        else:
            i += 1
    parts.append(name[start:])
    return parts


def _unescape(part: str) -> str:
    data = bytearray()
    i = 0
    while i < len(part):
        match = _ESCAPE.match(part, i)
        if match is not None:
            data.append(int(match.group(1), 16))
            i = match.end()
        elif part[i] in _SAFE:
            data += part[i].encode()
            i += 1
        else:
            raise ValueError(f"{part!r} is not an escaped name component")
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{part!r} escapes bytes that are not UTF-8: {exc}") from None


def key_items(key: Mapping[str, Any]) -> list[list[Any]]:
    return [[k, _jsonable(v)] for k, v in key.items()]


def compute_event_id(event: ChangeEvent) -> str:
    """Deterministic id: the same source change gives the same id on every path.

    It depends only on what identifies the change at the source (source, table,
    position, operation, and the key, or for a keyless table the row image: see
    :func:`identity_of`), never on the path, arrival time or redelivery.
    """
    identity = identity_of(event.primary_key, event.key, event.row, event.op)
    ident = [event.source, event.schema, event.table, event.position, event.op.value]
    try:
        text = stable_json([*ident, key_items(identity)])
    except TypeError:  # a keyless image with a value outside the canonical domain: the id
        # stays computable, the codec refuses the event with its reason when it is encoded
        text = json.dumps([*ident, list(identity.items())], sort_keys=True, default=repr)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def identity_of(
    primary_key: tuple[str, ...],
    key: Mapping[str, Any],
    row: Mapping[str, Any] | None,
    op: Op,
) -> Mapping[str, Any]:
    """What names the changed row in the event id: the key; for a keyless table (no
    primary key) the row image, so that the rows of one snapshot (which share its position)
    get distinct ids. Duplicate rows of one snapshot still share an id: normalisers number
    them (:func:`occurrence_id`)."""
    if primary_key or op is Op.TRUNCATE or row is None:
        return key
    return row


def occurrence_id(event_id: str, ordinal: int) -> str:
    """The id of the ``ordinal``-th (from 0) event of a keyless snapshot that repeats
    another's (same table, position and image): the first keeps ``event_id``."""
    if ordinal == 0:
        return event_id
    return hashlib.blake2b(f"{event_id}#{ordinal}".encode(), digest_size=16).hexdigest()


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
