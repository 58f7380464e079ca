"""Reference oracle: a pure-Python Avro binary reader for ``change_event.v1``.

capa's production decoder is native (``capa_native.decode_event`` / ``decode_batch``, see
capa/native.py); this reader was production until 2026-12-07 and is now the independent
implementation the tests compare the native one with, value for value and error for error.

The mirror of :mod:`capa.avro_writer`. fastavro's generic reader builds a dict per record and
per union branch, which ``oracles.fastavro_codec.event_from_avro_record`` then converts again; here one
pass over the bytes builds the :class:`~capa.events.ChangeEvent` directly. Measured on the
streaming benchmark's events: about 4x faster than fastavro + conversion (docs/benchmarks.md).
The property tests check it against the fastavro path on generated events and on corrupt bytes.

Every malformed input raises :class:`~capa.errors.DecodeError` (never IndexError & co.), and
bytes left over after the record are an error too: a reader that ignores them would accept a
record written with another schema.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from capa.errors import DecodeError
from capa.events import ChangeEvent, Column, FrozenRow, Json, Op, SourceKind

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_EPOCH_DATE = date(1970, 1, 1)
_UNPACK_DOUBLE = struct.Struct("<d").unpack_from
_SOURCE_KINDS = (SourceKind.POSTGRES, SourceKind.SQLSERVER, SourceKind.CRM)
_OPS = (Op.READ, Op.INSERT, Op.UPDATE, Op.DELETE, Op.TRUNCATE)
_EMPTY = FrozenRow()
_COLUMNS: dict[bytes, tuple[Column, ...]] = {}  # the encoded columns section -> its tuple
_CACHE_MAX = 10_000


class _Corrupt(Exception):
    """Internal: a structural error found while reading (turned into DecodeError)."""


def _long(data: bytes, pos: int) -> tuple[int, int]:
    """Zig-zag varint at ``pos`` -> (value, next position)."""
    b = data[pos]
    pos += 1
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos
    n, shift = b & 0x7F, 7
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7
        if shift > 63:
            raise _Corrupt("varint longer than 10 bytes")


def _raw(data: bytes, pos: int) -> tuple[bytes, int]:
    """Length-prefixed bytes."""
    size, pos = _long(data, pos)
    end = pos + size
    if size < 0 or end > len(data):
        raise _Corrupt(f"length {size} runs past the end of the record")
    return data[pos:end], end


def _text(data: bytes, pos: int) -> tuple[str, int]:
    size = data[pos]
    if size < 0x80 and not size & 1:  # fast path: a length below 64 is one even byte
        end = pos + 1 + (size >> 1)  # overruns surface as "bytes left" / IndexError later
        return data[pos + 1 : end].decode(), end
    raw, pos = _raw(data, pos)
    return raw.decode(), pos


def _block_count(data: bytes, pos: int) -> tuple[int, int]:
    """Item count of the next array/map block (a negative count is followed by a byte size)."""
    count = data[pos]
    if count < 0x80 and not count & 1:  # fast path: 0..63 items, one even byte
        return count >> 1, pos + 1
    count, pos = _long(data, pos)
    if count < 0:
        count = -count
        _, pos = _long(data, pos)
    return count, pos


def _array(
    data: bytes, pos: int, read_item: Callable[[bytes, int], tuple[Any, int]]
) -> tuple[tuple[Any, ...], int]:
    """An Avro array (blocks of items until a zero count) as a tuple."""
    out: list[Any] = []
    count, pos = _block_count(data, pos)
    while count:
        for _ in range(count):
            item, pos = read_item(data, pos)
            out.append(item)
        count, pos = _block_count(data, pos)
    return tuple(out), pos


def _texts(data: bytes, pos: int) -> tuple[tuple[str, ...], int]:
    if data[pos] == 0:  # empty array: no unchanged columns, the common case
        return (), pos + 1
    return _array(data, pos, _text)


def _columns(data: bytes, pos: int) -> tuple[tuple[Column, ...], int]:
    if data[pos] == 0:  # empty array: the common schemaless case
        return (), pos + 1
    start = pos
    items: list[Column] = []
    count, pos = _block_count(data, pos)
    while count:
        for _ in range(count):
            name, pos = _text(data, pos)
            source_type, pos = _text(data, pos)
            items.append(Column(name, source_type))
        count, pos = _block_count(data, pos)
    section = data[start:pos]
    cached = _COLUMNS.get(section)
    if cached is None:
        cached = tuple(items)
        if len(_COLUMNS) < _CACHE_MAX:
            _COLUMNS[section] = cached
    return cached, pos


def _value(data: bytes, pos: int) -> tuple[Any, int]:
    """One row value: the union branch index (one zig-zag byte: index * 2), then the branch."""
    branch = data[pos]
    pos += 1
    if branch == 8:  # string (union index 4, zig-zag encoded as byte 8)
        return _text(data, pos)
    if branch == 4:  # long
        return _long(data, pos)
    if branch == 0:
        return None, pos
    if branch == 12:  # Decimal
        unscaled, pos = _raw(data, pos)
        scale, pos = _long(data, pos)
        return Decimal(f"{int.from_bytes(unscaled, 'big', signed=True)}E{-scale}"), pos
    if branch == 6:  # double
        if pos + 8 > len(data):
            raise _Corrupt("double runs past the end of the record")
        return _UNPACK_DOUBLE(data, pos)[0], pos + 8
    if branch == 16:  # TimestampTz
        micros, pos = _long(data, pos)
        return _EPOCH + timedelta(microseconds=micros), pos
    if branch == 14:  # Timestamp
        micros, pos = _long(data, pos)
        return _EPOCH_NAIVE + timedelta(microseconds=micros), pos
    if branch == 2:  # boolean
        flag = data[pos]
        if flag > 1:
            raise _Corrupt(f"boolean byte {flag}")
        return flag == 1, pos + 1
    return _rare_value(branch, data, pos)


def _rare_value(branch: int, data: bytes, pos: int) -> tuple[Any, int]:
    if branch == 10:  # bytes
        return _raw(data, pos)
    if branch == 18:  # Date
        days, pos = _long(data, pos)
        return _EPOCH_DATE + timedelta(days=days), pos
    if branch == 20:  # Time
        micros, pos = _long(data, pos)
        seconds, micro = divmod(micros, 1_000_000)
        minutes, second = divmod(seconds, 60)
        hour, minute = divmod(minutes, 60)
        return time(hour, minute, second, micro), pos
    if branch == 22:  # Uuid
        text, pos = _text(data, pos)
        return uuid.UUID(text), pos
    if branch == 24:  # JsonDoc
        text, pos = _text(data, pos)
        return Json(text), pos
    if branch == 26:  # Array
        return _array(data, pos, _value)
    raise _Corrupt(f"row value union branch byte {branch} is not in change_event.v1")


def _row(data: bytes, pos: int) -> tuple[FrozenRow, int]:
    row: dict[str, Any] = {}
    count, pos = _block_count(data, pos)
    while count:
        for _ in range(count):
            size = data[pos]  # the column name: _text's fast path, inlined
            if size < 0x80 and not size & 1:
                end = pos + 1 + (size >> 1)
                name = data[pos + 1 : end].decode()
                pos = end
            else:
                name, pos = _text(data, pos)
            branch = data[pos]  # the commonest values: _value's first branches, inlined
            if branch == 8:
                size = data[pos + 1]
                if size < 0x80 and not size & 1:
                    end = pos + 2 + (size >> 1)
                    row[name] = data[pos + 2 : end].decode()
                    pos = end
                    continue
            elif branch == 4:
                small = data[pos + 1]
                if small < 0x80:
                    row[name] = (small >> 1) ^ -(small & 1)
                    pos += 2
                    continue
            elif branch == 0:
                row[name] = None
                pos += 1
                continue
            row[name], pos = _value(data, pos)
        count, pos = _block_count(data, pos)
    return FrozenRow(row), pos


def _opt_row(data: bytes, pos: int) -> tuple[FrozenRow | None, int]:
    branch = data[pos]
    if branch == 0:
        return None, pos + 1
    if branch != 2:
        raise _Corrupt(f"row image union branch byte {branch}")
    return _row(data, pos + 1)


def _opt_text(data: bytes, pos: int) -> tuple[str | None, int]:
    branch = data[pos]
    if branch == 0:
        return None, pos + 1
    if branch != 2:
        raise _Corrupt(f"optional string union branch byte {branch}")
    return _text(data, pos + 1)


def _enum(symbols: tuple[Any, ...], data: bytes, pos: int, what: str) -> tuple[Any, int]:
    index, pos = _long(data, pos)
    if not 0 <= index < len(symbols):
        raise _Corrupt(f"{what} enum index {index}")
    return symbols[index], pos


def _read(data: bytes) -> ChangeEvent:
    version, pos = _long(data, 0)
    if version != 1:
        raise _Corrupt(f"schema_version {version}, expected 1")
    event_id, pos = _text(data, pos)
    source, pos = _text(data, pos)
    source_kind, pos = _enum(_SOURCE_KINDS, data, pos, "source_kind")
    origin, pos = _text(data, pos)
    database, pos = _opt_text(data, pos)
    schema, pos = _text(data, pos)
    table, pos = _text(data, pos)
    op, pos = _enum(_OPS, data, pos, "op")
    position, pos = _text(data, pos)
    commit_ts_us: int | None = None
    branch = data[pos]
    pos += 1
    if branch == 2:
        commit_ts_us, pos = _long(data, pos)
    elif branch != 0:
        raise _Corrupt(f"commit_ts_us union branch byte {branch}")
    transaction_id, pos = _opt_text(data, pos)
    primary_key, pos = _texts(data, pos)
    columns, pos = _columns(data, pos)
    key, pos = _row(data, pos)
    before, pos = _opt_row(data, pos)
    after, pos = _opt_row(data, pos)
    unchanged, pos = _texts(data, pos)
    if pos != len(data):
        raise _Corrupt(f"{len(data) - pos} bytes left after the record")
    return ChangeEvent(
        source, source_kind, database, schema, table, op, position, commit_ts_us,
        primary_key, key or _EMPTY, before, after, columns, unchanged, transaction_id,
        origin, event_id,
    )  # fmt: skip


def read_event(body: bytes) -> ChangeEvent:
    """Schemaless Avro body of ``change_event.v1`` -> event; :class:`DecodeError` if malformed."""
    try:
        return _read(body)
    except (_Corrupt, IndexError, UnicodeDecodeError, ValueError, ArithmeticError) as exc:
        raise DecodeError(
            f"not a canonical Avro change event: {type(exc).__name__}: {exc}"
        ) from None
