"""The native (Rust) columnar batch decoder, when built: ``decode_batch`` or ``None``.

``capa_native`` is the extension in ``native/`` (PyO3, built into ``.venvs/beam`` by
``scripts/setup.sh beam``). Without it ``decode_batch`` is ``None`` and callers decode event by
event (:class:`connectors.kafka.wire.ChangeEventDecoder`) and split with
:func:`capa.columnar.split_plain`.

Contract::

    decode_batch(values, fingerprint, rare_value) -> (tables, fallback)

``values``: Kafka values, each ``C3 01`` + the 8-byte ``fingerprint``
(:func:`capa.codec.schema_fingerprint`) + a schemaless ``change_event.v1`` body.
``rare_value``: :func:`capa.avro_reader._value`; it is called as ``rare_value(message, pos)``
with the original ``values[i]`` object and the absolute offset of a row value's union branch
byte, for the branches built in Python (Time, Uuid, JsonDoc, Array, and a Decimal whose
unscaled value is longer than 16 bytes) and returns ``(value, next_pos)``.

Decimal, Timestamp, TimestampTz and Date are built natively, equal in value and type to the
reader's: ``Decimal(f"{unscaled}E{-scale}")`` (the same string, so the same exponent), a naive
``datetime``, a ``datetime`` with ``tzinfo=datetime.UTC``, a ``date``. Where the reader raises
(a timestamp or date outside years 1..9999, an exponent ``Decimal`` rejects) the record falls
back.

``fallback``: sorted indices of the records to decode in Python (which also gives the exact
DecodeError for the dead-letter queue): None/empty/non-bytes values, other framing or
fingerprint, anything :mod:`capa.avro_reader` rejects (plus a varint past the 64-bit range),
``rare_value`` or a native Decimal/datetime/date constructor raising an ``Exception`` (a
``BaseException`` such as KeyboardInterrupt propagates), and every record of an ineligible
table.

``tables``: one tuple per table ((source, schema, table) triple), in order of first
appearance, whose every record is eligible::

    (source, source_kind, database, schema, table, primary_key, columns,
     indices, event_ids, positions, ops, commit_ts_us, images)

``source_kind`` is the index into (postgres, sqlserver, crm); ``primary_key`` a tuple of names;
``columns`` a tuple of ``(name, source_type)``; ``indices`` the records' positions in
``values`` (ascending); ``event_ids``/``positions``/``ops`` (``"r"``, ``"c"``, ``"u"``,
``"d"``)/``commit_ts_us`` one per record; ``images`` maps each column name (in order of first
appearance) to one value per record, ``None`` where the record's image lacks it. The image is
``after`` for r/c/u, and ``before`` (when non-null and non-empty, else ``key``) for d; its
values are exactly what :mod:`capa.avro_reader` gives (bool, int, float, str, bytes, Decimal,
datetime, date, or the ``rare_value`` result; a repeated map name: the last value wins).

A table is ineligible (all its records fall back) when one of its records does not decode
here, or has an empty event_id, op ``t``, ``unchanged`` columns, an empty primary key, a
primary-key, columns, source_kind or database different from the table's first record, key
names other than the primary-key names (each once), an upsert without ``after`` or whose
``after`` lacks a key value or holds another one, an update whose ``before`` holds the whole key
with another value (a key move), or a delete whose non-empty ``before`` does not hold the key.
Values compare by their encoding (union branch + payload), doubles as floats (NaN is never
equal), arrays also as Python objects. Bad input never raises and a panic never reaches Python.

Rules that need the values are checked on the returned tables in Python:
:func:`capa.columnar.applicable_tables` sends a table with a NULL key value (or an unusable raw
table name) back to the event path, where each such record dead-letters with its reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

DecodeBatch = Callable[
    [Iterable[bytes | None], bytes, Callable[[bytes, int], tuple[Any, int]]],
    tuple[list[tuple[Any, ...]], list[int]],
]


def _load() -> DecodeBatch | None:
    try:
        import capa_native
    except ImportError:
        return None
    return capa_native.decode_batch  # type: ignore[no-any-return]


decode_batch: DecodeBatch | None = _load()
