"""Google Datastream (PostgreSQL source) records -> canonical change events.

Reads the JSON format (``.jsonl``/``.jsonl.gz``: timestamps are ISO text, jsonb arrives
as a nested object, ``{"__bytes_hex__": "..."}`` marks bytes in capa's derived files) and
the Avro format (fastavro has already decoded logical types; json columns are named by the
file reader's hints; arrays are ``{nestedArray, elementValue}`` records). Also unwraps a
Pub/Sub CloudEvent (``{"specversion", "data": {...}}``) or push message
(``{"message": {"data": "<base64>"}}``) around one record.

Position: ``source_metadata.lsn`` (``"16/CB002DB0"``) through :func:`capa.position.pg_position`,
so the same PostgreSQL change read by Debezium and by Datastream gets the same position and
event id (given the same ``source`` name). Backfill reads use the snapshot phase.

JSON-format values are kept as given (Datastream's JSON carries no column types): use the
Avro format for typed timestamps/decimals.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import UUID

from capa.apply import require_key_values
from capa.codec import datetime_to_us, to_json_value
from capa.columnar import TableColumns
from capa.errors import DecodeError
from capa.events import ChangeEvent, FrozenRow, Json, Op, SourceKind, identity_of, raw_table_name
from capa.position import pg_position
from capa.values import date_from_days, float32_value, timestamp_from_us
from connectors.base import RawRecord, Skip, SnapshotOrdinals, checked_ts_us, event_id_for

_BACKFILL = "postgresql-backfill"
_CDC = "postgresql-cdc"
_CHANGE_TYPES = {
    "INSERT": Op.INSERT,
    "UPDATE": Op.UPDATE,
    "UPDATE-INSERT": Op.INSERT,
    "UPDATE-DELETE": Op.DELETE,
    "DELETE": Op.DELETE,
}
_MAX_DEPTH = 64


class DatastreamNormalizer:
    """Datastream record (dict from JSON or Avro) -> :class:`ChangeEvent` (no I/O; its only
    state numbers duplicate rows of a keyless backfill, see :class:`SnapshotOrdinals`).

    ``source`` names the source; without it the stream name's last path part is used
    (``projects/p/locations/l/streams/f2`` -> ``f2``), else ``"datastream"``.
    """

    origin = "datastream"

    def __init__(self, source: str | None = None) -> None:
        self.source = source
        self._ordinals = SnapshotOrdinals()  # duplicate rows of a keyless backfill

    def normalize(self, record: Any, hints: Mapping[str, str] | None = None) -> ChangeEvent | Skip:
        record = unwrap_transport(record)
        meta = record.get("source_metadata")
        if not isinstance(meta, dict):
            raise DecodeError("Datastream record has no 'source_metadata' object")
        op, snapshot = _operation(record, meta)
        payload = record.get("payload")
        if payload is not None and not isinstance(payload, dict):
            raise DecodeError(
                f"Datastream payload must be an object or null, got {type(payload).__name__}"
            )
        row = None if payload is None else FrozenRow(_row(payload, hints or {}))
        primary_key, key = _key(meta, row, op)
        name = self.source or _source_name(record.get("stream_name"))
        schema, table = _text(meta, "schema"), _text(meta, "table")
        position = pg_position(_lsn(record, meta, snapshot), snapshot=snapshot)
        event = ChangeEvent(
            source=name,
            source_kind=SourceKind.POSTGRES,
            database=None,
            schema=schema,
            table=table,
            op=op,
            position=position,
            commit_ts_us=checked_ts_us(_timestamp_us(record.get("source_timestamp"))),
            primary_key=primary_key,
            key=FrozenRow(key),
            before=row if op is Op.DELETE else None,
            after=None if op is Op.DELETE else row,
            transaction_id=None if meta.get("tx_id") is None else str(meta["tx_id"]),
            origin=self.origin,
            event_id=event_id_for(
                name, schema, table, position, op.value, identity_of(primary_key, key, row, op)
            )
            or "",
        )
        event.table_id  # noqa: B018 - an unusable raw table name (TableNameError) is refused here
        if row:  # so is a NULL key value; an empty delete is kept (see _key)
            require_key_values(event)
        return self._ordinals.number(event)

    def backfill_columns(self, records: Sequence[RawRecord]) -> TableColumns | None:
        """A file of backfill reads of ONE keyed table, column-wise, or None.

        The same values, keys, positions, commit times and event ids as :meth:`normalize`
        per record followed by :func:`capa.columnar.split_plain` (the rules are the helpers
        both call), without an event object per record. None for anything else: a CDC or
        keyless record, several tables, key lists or sources, a NULL key value, a key type
        the fast event id does not take, or a record that does not normalise; the caller
        then normalises the file record by record (where a bad record gets its reason).
        """
        try:
            return self._backfill_columns(records)
        except (DecodeError, ValueError, TypeError, KeyError, AttributeError, ArithmeticError):
            return None  # the record-by-record path names the reason
        except RecursionError:
            return None

    def _backfill_columns(self, records: Sequence[RawRecord]) -> TableColumns | None:
        if not records:
            return None
        first = unwrap_transport(records[0].value)
        meta = _metadata(first)
        names = meta.get("primary_keys")
        if not names or not isinstance(names, list) or not all(type(n) is str for n in names):
            return None
        primary_key = tuple(names)
        source = self.source or _source_name(first.get("stream_name"))
        schema, table = _text(meta, "schema"), _text(meta, "table")
        raw_table_name(source, schema, table)  # TableNameError (a DecodeError) -> None
        positions: dict[Any, str] = {}
        stamps: dict[Any, int | None] = {}
        ids: list[str] = []
        at: list[str] = []
        commit: list[int | None] = []
        rows: list[dict[str, Any]] = []
        for raw in records:
            record = unwrap_transport(raw.value)
            meta = _metadata(record)
            if record.get("read_method") != _BACKFILL or meta.get("primary_keys") != names:
                return None
            if meta.get("schema") != schema or meta.get("table") != table:
                return None
            if not self.source and _source_name(record.get("stream_name")) != source:
                return None
            payload = record.get("payload")
            if not isinstance(payload, dict) or not payload:
                return None
            row = _row(payload, raw.hints or {})
            key = {n: row[n] for n in names}  # KeyError (missing key column) -> None
            if any(v is None or v != v for v in key.values()):  # NULL (or NaN) key: event path
                return None
            lsn = _lsn(record, meta, True)
            position = positions.get(lsn)
            if position is None:
                position = positions[lsn] = pg_position(lsn, snapshot=True)
            stamp = record.get("source_timestamp")
            if stamp not in stamps:
                stamps[stamp] = checked_ts_us(_timestamp_us(stamp))
            event_id = event_id_for(source, schema, table, position, "r", key)
            if event_id is None:
                return None
            ids.append(event_id)
            at.append(position)
            commit.append(stamps[stamp])
            rows.append(row)
        columns = dict.fromkeys(name for row in rows for name in row)
        return TableColumns(
            source,
            SourceKind.POSTGRES,
            None,
            schema,
            table,
            primary_key,
            (),
            list(range(len(rows))),
            ids,
            at,
            [Op.READ.value] * len(rows),
            commit,
            {name: [row.get(name) for row in rows] for name in columns},
        )


def _metadata(record: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = record.get("source_metadata")
    if not isinstance(meta, dict):
        raise DecodeError("Datastream record has no 'source_metadata' object")
    return meta


def unwrap_transport(record: Any) -> Mapping[str, Any]:
    """Find the Datastream record inside a CloudEvent / Pub/Sub push envelope."""
    for _ in range(3):
        if not isinstance(record, dict):
            raise DecodeError(
                f"a Datastream record must be a JSON object, got {type(record).__name__}"
            )
        if "source_metadata" in record:
            return record
        inner = record.get("data", record.get("message"))
        if isinstance(inner, dict) and "data" in inner and "source_metadata" not in inner:
            inner = inner["data"]
        if isinstance(inner, str):
            inner = _base64_json(inner)
        if inner is None:
            break
        record = inner
    fields = ", ".join(sorted(map(str, record))[:8]) if isinstance(record, dict) else ""
    raise DecodeError(f"not a Datastream record: no 'source_metadata' (fields: {fields})")


def _base64_json(text: str) -> Any:
    try:
        return json.loads(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError, RecursionError):
        raise DecodeError("CloudEvent data is text but not base64-encoded JSON") from None


def _operation(record: Mapping[str, Any], meta: Mapping[str, Any]) -> tuple[Op, bool]:
    method = record.get("read_method")
    if method == _BACKFILL:
        return Op.READ, True
    if method != _CDC:
        raise DecodeError(
            f"Datastream read_method {method!r} is not supported; "
            f"capa reads {_BACKFILL!r} and {_CDC!r}"
        )
    if meta.get("is_deleted") is True:
        return Op.DELETE, False
    change = meta.get("change_type")
    try:
        return _CHANGE_TYPES[str(change).upper()], False
    except KeyError:
        known = ", ".join(_CHANGE_TYPES)
        raise DecodeError(
            f"Datastream change_type {change!r} is unknown; expected one of {known}"
        ) from None


def _lsn(record: Mapping[str, Any], meta: Mapping[str, Any], snapshot: bool) -> str | int:
    lsn = meta.get("lsn")
    if lsn is None:
        keys = record.get("sort_keys")
        if isinstance(keys, list) and len(keys) > 1 and isinstance(keys[1], str) and "/" in keys[1]:
            lsn = keys[1]
    if lsn is None:
        if snapshot:
            return 0
        raise DecodeError(
            "Datastream CDC record has no source_metadata.lsn, so it cannot be ordered"
        )
    if isinstance(lsn, bool) or not isinstance(lsn, str | int):
        raise DecodeError(f"Datastream lsn {lsn!r} is not 'X/Y' text")
    return lsn


def _key(
    meta: Mapping[str, Any], row: FrozenRow | None, op: Op
) -> tuple[tuple[str, ...], dict[str, Any]]:
    names = meta.get("primary_keys") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DecodeError(f"source_metadata.primary_keys {names!r} is not a list of column names")
    if not row:
        if op is Op.DELETE:
            # Kept, never dropped (Google's template drops these): the event carries what the
            # source said; applying it needs key values, so the apply step dead-letters it
            # with that reason if they are missing.
            return tuple(names), {}
        raise DecodeError(f"Datastream {op.name.lower()} record has an empty/null payload")
    missing = [n for n in names if n not in row]
    if missing:
        raise DecodeError(f"primary-key columns {missing} are missing from the payload")
    return tuple(names), {n: row[n] for n in names}


# Values that are canonical as read (fastavro / json.loads give them): no conversion needed.
_AS_IS = frozenset({str, int, float, bool, type(None), Decimal, bytes, date, time, UUID})


def _row(payload: Mapping[str, Any], hints: Mapping[str, str]) -> dict[str, Any]:
    as_is = _AS_IS
    row: dict[str, Any] = {}
    for name, value in payload.items():
        if type(value) in as_is and type(name) is str and not (hints and name in hints):
            row[name] = value  # the common case, without a call per value
        else:
            row[str(name)] = _value(value, hints.get(name), 0)
    return row


def _value(value: Any, hint: str | None, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise DecodeError("value nested too deeply (more than 64 levels)")
    if value is None:
        return None
    if hint == "json" and isinstance(value, str):
        return Json(value)
    if type(value) is int and hint in _TEMPORAL:
        return _TEMPORAL[hint](value)
    if hint == "float32" and type(value) is float:
        return float32_value(value)
    if isinstance(value, dict):
        return _mapping_value(value, hint, depth)
    if isinstance(value, list):
        return tuple(_value(v, hint, depth + 1) for v in value)
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC)
    return value


# Avro temporal logical types whose number fastavro could not turn into a Python value
# (outside years 1..9999, e.g. PostgreSQL ``infinity``): saturated as capa.values says.
_TEMPORAL: dict[str, Any] = {
    "date": date_from_days,
    "local-timestamp-micros": timestamp_from_us,
    "local-timestamp-millis": lambda ms: timestamp_from_us(ms * 1000),
    "timestamp-micros": lambda us: timestamp_from_us(us).replace(tzinfo=UTC),
    "timestamp-millis": lambda ms: timestamp_from_us(ms * 1000).replace(tzinfo=UTC),
}


def _mapping_value(value: Mapping[str, Any], hint: str | None, depth: int) -> Any:
    if set(value) == {"__bytes_hex__"}:
        try:
            return bytes.fromhex(str(value["__bytes_hex__"]))
        except ValueError:
            raise DecodeError(
                f"__bytes_hex__ value {value['__bytes_hex__']!r:.100} is not hex"
            ) from None
    if set(value) == {"nestedArray", "elementValue"}:  # Avro multidimensional array
        nested = value["nestedArray"]
        if nested is None:
            return _value(value["elementValue"], hint, depth + 1)
        if not isinstance(nested, list):
            raise DecodeError("Avro array record: nestedArray is not a list")
        return tuple(_value(v, hint, depth + 1) for v in nested)
    try:
        return Json(json.dumps(to_json_value(value), separators=(",", ":"), ensure_ascii=False))
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"nested value cannot be kept as a JSON document: {exc}") from None


def _text(meta: Mapping[str, Any], name: str) -> str:
    value = meta.get(name)
    if not isinstance(value, str) or not value:
        raise DecodeError(f"source_metadata.{name} is missing or not text: {value!r}")
    return value


def _source_name(stream_name: Any) -> str:
    if isinstance(stream_name, str) and stream_name.strip("/"):
        return stream_name.rstrip("/").rsplit("/", 1)[-1]
    return "datastream"


def _timestamp_us(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return datetime_to_us(value if value.tzinfo else value.replace(tzinfo=UTC))
    if isinstance(value, int) and not isinstance(value, bool):
        return value * 1000  # epoch milliseconds
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise DecodeError(
                f"source_timestamp {value!r:.100} is not an ISO-8601 timestamp"
            ) from None
        return datetime_to_us(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))
    raise DecodeError(f"source_timestamp {value!r:.100} is neither a timestamp nor epoch millis")
