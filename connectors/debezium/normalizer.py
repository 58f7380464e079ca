"""Debezium (PostgreSQL, SQL Server) JSON records -> canonical change events.

Accepts the JsonConverter output with and without schemas, the ``{destination, key,
value}`` wrapper of the embedded engine, and the Avro-JSON encoding of
kafka-avro-console-consumer. Values are typed from the Connect schema when present, else
from ``column_types`` hints, else kept JSON-native (see :mod:`connectors.debezium.values`).

Usage::

    normalizer = DebeziumNormalizer(source="f2")
    outcome = normalizer.normalize(json.loads(line))   # ChangeEvent | Skip, or DecodeError
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from capa.apply import check_applicable
from capa.errors import DecodeError
from capa.events import ChangeEvent, Column, FrozenRow, Op, SourceKind, identity_of
from capa.position import mssql_position, parse_pg_lsn, pg_position
from connectors.base import Skip, SnapshotOrdinals, checked_ts_us, event_id_for
from connectors.debezium import envelope
from connectors.debezium.values import (
    UNAVAILABLE,
    UNAVAILABLE_B64,
    Converter,
    hint_converter,
    native_value,
    schema_converters,
    schema_type_name,
    to_int,
)

logger = logging.getLogger(__name__)

_OPS = {"r": Op.READ, "c": Op.INSERT, "u": Op.UPDATE, "d": Op.DELETE, "t": Op.TRUNCATE}
_SNAPSHOT_TRUE = frozenset(
    {"true", "first", "last", "first_in_data_collection", "last_in_data_collection", "incremental"}
)


def _snapshot_flag(source: Mapping[str, Any], op: Op) -> bool:
    flag = source.get("snapshot")
    return op is Op.READ or flag is True or str(flag).lower() in _SNAPSHOT_TRUE


def _pg_position(source: Mapping[str, Any], op: Op) -> str:
    lsn = source.get("lsn")
    if lsn is None:
        raise DecodeError("PostgreSQL event has no source.lsn")
    return pg_position(
        lsn if isinstance(lsn, int) else str(lsn), snapshot=_snapshot_flag(source, op)
    )


def _mssql_position(source: Mapping[str, Any], op: Op) -> str:
    serial = source.get("event_serial_no")
    return mssql_position(
        source.get("commit_lsn"),
        source.get("change_lsn"),
        None if serial is None else to_int(serial),
    )


def _pg_transaction(source: Mapping[str, Any], block: Any) -> str | None:
    tx = source.get("txId")
    if tx is not None:
        return str(tx)
    return _block_transaction(source, block)


def _block_transaction(source: Mapping[str, Any], block: Any) -> str | None:
    if isinstance(block, dict) and block.get("id") is not None:
        return str(block["id"])
    return None


# connector name -> (kind, position, transaction id)
CONNECTORS: dict[str, tuple[SourceKind, Callable[..., str], Callable[..., str | None]]] = {
    "postgresql": (SourceKind.POSTGRES, _pg_position, _pg_transaction),
    "sqlserver": (SourceKind.SQLSERVER, _mssql_position, _block_transaction),
}


class DebeziumNormalizer:
    """Debezium JSON record -> :class:`ChangeEvent` | :class:`Skip` (no I/O; its only state
    numbers duplicate rows of a keyless snapshot, see :class:`SnapshotOrdinals`).

    ``source`` overrides ``source.name``; ``column_types`` maps ``"schema.table"`` (or
    ``"table"``) to ``{column: hint}`` for schemaless input; ``primary_keys`` maps the
    same table names to key columns for input that has no record key.
    """

    origin = "debezium"

    def __init__(
        self,
        source: str | None = None,
        column_types: Mapping[str, Mapping[str, str]] | None = None,
        primary_keys: Mapping[str, Sequence[str]] | None = None,
        stream_lsn: Callable[[], int | None] | None = None,
    ) -> None:
        self.source = source
        # the highest LSN streamed so far (the embedded bridge tracks it): the position of
        # an incremental-snapshot read, which Debezium may send without source.lsn
        self.stream_lsn = stream_lsn
        self._hints = {
            table: {col: hint_converter(h) for col, h in cols.items()}
            for table, cols in (column_types or {}).items()
        }
        self._primary_keys = {t: tuple(cols) for t, cols in (primary_keys or {}).items()}
        self._schema_cache: dict[Any, tuple[dict[str, Converter], tuple[Column, ...]]] = {}
        self._ordinals = SnapshotOrdinals()  # duplicate rows of a keyless snapshot

    # --- entry point -------------------------------------------------------------------------

    def normalize(self, record: Any, hints: Mapping[str, str] | None = None) -> ChangeEvent | Skip:
        parts = envelope.unwrap(record)
        kind = envelope.skip_kind(parts)
        if kind is not None:
            return Skip(kind)
        payload: Mapping[str, Any] = parts.value
        if envelope.is_avro_json(payload):
            payload = envelope.unwrap_avro_json(payload)
        return self._to_event(parts, payload)

    # --- mapping ---------------------------------------------------------------------------------

    def _to_event(self, parts: envelope.Unwrapped, payload: Mapping[str, Any]) -> ChangeEvent:
        op = _OPS.get(str(payload.get("op")))
        if op is None:
            raise DecodeError(_no_op_reason(payload))
        source = payload.get("source")
        if not isinstance(source, dict):
            raise DecodeError("Debezium change event has no 'source' block")
        connector = str(source.get("connector", ""))
        if connector not in CONNECTORS:
            raise DecodeError(
                f"Debezium connector {connector!r} is not supported; "
                f"capa reads: {', '.join(CONNECTORS)}"
            )
        kind, position_of, transaction_of = CONNECTORS[connector]
        schema, table = _schema_table(source, parts.topic, kind)
        converters, columns = self._converters(parts.value_schema, schema, table)
        before, _ = _row(payload.get("before"), converters)
        after, unchanged = _row(payload.get("after"), converters)
        primary_key, key = self._key(parts, converters, before, after, schema, table)
        if op is Op.DELETE and before is None and not key:
            raise DecodeError(
                "delete event has no before image and no record key, so the deleted row is "
                "unknown; keep the Kafka record key ({destination, key, value}) "
                "or configure primary_keys"
            )
        if op is Op.TRUNCATE:
            primary_key, key, before, after = (), {}, None, None
        name = self.source or _source_name(source, parts.topic)
        position = self._position(kind, position_of, source, op)
        event = ChangeEvent(
            source=name,
            source_kind=kind,
            database=_opt_str(source.get("db")),
            schema=schema,
            table=table,
            op=op,
            position=position,
            commit_ts_us=_commit_ts_us(source),
            primary_key=primary_key,
            key=FrozenRow(key),
            before=before,
            after=after,
            columns=columns,
            unchanged=unchanged,
            transaction_id=transaction_of(source, payload.get("transaction")),
            origin=self.origin,
            event_id=event_id_for(
                name,
                schema,
                table,
                position,
                op.value,
                _identity(primary_key, key, op, before, after),
            )
            or "",
        )
        check_applicable(event)  # a NULL key value or an unusable table name: refused here
        return self._ordinals.number(event)

    def _position(
        self, kind: SourceKind, position_of: Callable[..., str], source: Any, op: Op
    ) -> str:
        """An incremental-snapshot read sorts at the stream's LSN when it is emitted (its
        chunk's high watermark; docs/architecture.md, "Re-syncing a table")."""
        incremental = op is Op.READ and str(source.get("snapshot")) == "incremental"
        if kind is not SourceKind.POSTGRES or not incremental or self.stream_lsn is None:
            return position_of(source, op)
        streamed = self.stream_lsn()
        own = source.get("lsn")
        if streamed is None:
            return position_of(source, op)
        return pg_position(max(streamed, 0 if own is None else parse_pg_lsn(own)), snapshot=True)

    def _converters(
        self, value_schema: Mapping[str, Any] | None, schema: str, table: str
    ) -> tuple[dict[str, Converter], tuple[Column, ...]]:
        if value_schema is None:
            return self._table_hints(schema, table), ()
        struct = _row_struct(value_schema)
        cache_key = _schema_fingerprint(struct)
        cached = self._schema_cache.get(cache_key)
        if cached is None:
            fields = _fields(struct) if struct else []
            columns = tuple(
                Column(str(f.get("field")), schema_type_name(f))
                for f in fields
                if isinstance(f, dict)
            )
            cached = (schema_converters(struct), columns)
            if len(self._schema_cache) < 4096:
                self._schema_cache[cache_key] = cached
        return cached

    def _table_hints(self, schema: str, table: str) -> dict[str, Converter]:
        return self._hints.get(f"{schema}.{table}") or self._hints.get(table) or {}

    def _key(
        self,
        parts: envelope.Unwrapped,
        converters: Mapping[str, Converter],
        before: FrozenRow | None,
        after: FrozenRow | None,
        schema: str,
        table: str,
    ) -> tuple[tuple[str, ...], dict[str, Any]]:
        image = after if after is not None else before
        if isinstance(parts.key, dict) and parts.key:
            names = tuple(str(k) for k in parts.key)
            if image is not None and all(n in image for n in names):  # the common case
                return names, {n: image[n] for n in names}
            key_conv = schema_converters(parts.key_schema) if parts.key_schema else converters
            return names, {n: _key_value(n, parts.key[n], image, key_conv) for n in names}
        if parts.key is not None and not isinstance(parts.key, dict):
            raise DecodeError(f"record key {parts.key!r} is not a JSON object of key columns")
        names = self._primary_keys.get(f"{schema}.{table}") or self._primary_keys.get(table) or ()
        if names and image is not None:
            missing = [n for n in names if n not in image]
            if missing:
                raise DecodeError(
                    f"configured primary-key columns {missing} are not in the row image"
                )
            return names, {n: image[n] for n in names}
        return (), {}


def _identity(
    primary_key: tuple[str, ...],
    key: Mapping[str, Any],
    op: Op,
    before: FrozenRow | None,
    after: FrozenRow | None,
) -> Mapping[str, Any]:
    return identity_of(primary_key, key, before if op is Op.DELETE else after, op)


def _key_value(
    name: str, raw: Any, image: Mapping[str, Any] | None, conv: Mapping[str, Converter]
) -> Any:
    if image is not None and name in image:
        return image[name]
    if raw is None:
        return None
    converter = conv.get(name)
    return converter(raw) if converter else native_value(raw)


_PLAIN = frozenset({str, int, float, bool, type(None)})
_PLACEHOLDERS = (UNAVAILABLE, UNAVAILABLE_B64)


def _row(
    image: Any, converters: Mapping[str, Converter]
) -> tuple[FrozenRow | None, tuple[str, ...]]:
    if image is None:
        return None, ()
    if not isinstance(image, dict):
        raise DecodeError(
            f"row image must be a JSON object, got {type(image).__name__}: {image!r:.200}"
        )
    plain = _PLAIN
    if not converters and plain.issuperset(map(type, image.values())):
        row = dict(image)  # hot path: schemaless JSON-native row
    else:
        row = {name: _convert(name, value, converters) for name, value in image.items()}
    unchanged: tuple[str, ...] = ()
    if UNAVAILABLE in row.values() or UNAVAILABLE_B64 in row.values():
        unchanged = tuple(k for k, v in row.items() if v in _PLACEHOLDERS and type(v) is str)
        row = {k: v for k, v in row.items() if k not in unchanged}
    return FrozenRow(row), unchanged


def _convert(name: str, value: Any, converters: Mapping[str, Converter]) -> Any:
    if value is None or (type(value) is str and value in _PLACEHOLDERS):
        return value
    converter = converters.get(name)
    try:
        return converter(value) if converter else native_value(value)
    except DecodeError as exc:
        raise DecodeError(f"column {name!r}: {exc.reason}") from None


def _row_struct(value_schema: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for field in _fields(value_schema):
        if isinstance(field, dict) and field.get("field") in ("after", "before"):
            return field
    return None


def _schema_fingerprint(struct: Mapping[str, Any] | None) -> Any:
    """The cache key of a row struct: its exact JSON (orjson, microseconds; a struct orjson
    cannot write, e.g. an integer over 64 bits, is keyed by its field summary)."""
    if not struct:
        return None
    try:
        return orjson.dumps(struct)
    except TypeError:
        return _field_summary(struct)


def _field_summary(struct: Mapping[str, Any]) -> Any:
    items = tuple(
        (
            str(f.get("field")),
            str(f.get("type")),
            str(f.get("name")),
            str(f.get("parameters")),
            str(f.get("items")),
        )
        for f in _fields(struct)
        if isinstance(f, dict)
    )
    return (str(struct.get("name")), items)


def _fields(struct: Mapping[str, Any]) -> list[Any]:
    fields = struct.get("fields")
    if fields is None:
        return []
    if not isinstance(fields, list):
        raise DecodeError(
            f"Connect schema {str(struct.get('name'))!r:.100} has 'fields' that is not a list"
        )
    return fields


def _schema_table(
    source: Mapping[str, Any], topic: str | None, kind: SourceKind
) -> tuple[str, str]:
    schema, table = source.get("schema"), source.get("table")
    if isinstance(schema, str) and isinstance(table, str) and schema and table:
        return schema, table
    parts = (topic or "").split(".")
    if len(parts) >= 3:
        return parts[-2], parts[-1]
    raise DecodeError(
        f"cannot tell the table: source.schema={schema!r}, source.table={table!r}, topic={topic!r}"
    )


def _source_name(source: Mapping[str, Any], topic: str | None) -> str:
    name = source.get("name")
    if isinstance(name, str) and name:
        return name
    if topic:
        return topic.split(".")[0]
    raise DecodeError("no source name: source.name is missing; pass --source NAME")


def _commit_ts_us(source: Mapping[str, Any]) -> int | None:
    if source.get("ts_us") is not None:
        return checked_ts_us(to_int(source["ts_us"]))
    if source.get("ts_ms") is not None:
        return checked_ts_us(to_int(source["ts_ms"]) * 1000)
    return None


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _no_op_reason(payload: Mapping[str, Any]) -> str:
    if "op" not in payload:
        fields = ", ".join(sorted(map(str, payload))[:8])
        return (
            f"not a Debezium change event: no 'op' field (fields: {fields}); is this a record key?"
        )
    return f"unknown Debezium op {payload.get('op')!r}; expected one of r, c, u, d, t"
