"""capa's Avro decoder: the Rust extension ``capa_native`` (``native/``), required.

``capa_native`` is built into ``.venvs/beam`` by ``scripts/setup.sh beam`` (PyO3, abi3).
Importing this module without it raises ImportError saying so: there is no Python fallback.
:mod:`capa.codec` imports it on the first decode, so environments that never decode Avro
(Spark, Airflow) do not need the extension.

Two functions share one reader (``native/src/lib.rs``)::

    decode_event(data, start=0) -> ChangeEvent

The schemaless ``change_event.v1`` body ``data[start:]`` as a
:class:`~capa.events.ChangeEvent`, or :class:`~capa.errors.DecodeError` ("not a canonical
Avro change event: <why>", e.g. "3 bytes left after the record", "row value union branch
byte 30 is not in change_event.v1", "ValueError: hour must be in 0..23"). It decodes every
single event, through :func:`capa.codec.decode_avro`: dead letters, replay, ``capa apply``
inputs, Confluent-framed records and the batch decoder's fallback records.

::

    decode_batch(values, fingerprint) -> (tables, fallback)

``values``: Kafka values, each ``C3 01`` + the 8-byte ``fingerprint``
(:func:`capa.codec.schema_fingerprint`) + a schemaless ``change_event.v1`` body.

Row values are equal in value and type in both functions (and to the reference reader's,
``tests/oracles/avro_reader.py``): bool, int, float, str, bytes,
``Decimal(f"{unscaled}E{-scale}")`` (the same string, so the same exponent), a naive
``datetime``, a ``datetime`` with ``tzinfo=datetime.UTC``, a ``date``, a ``time``, a
``uuid.UUID``, a :class:`~capa.events.Json`, a tuple for an array. Where a constructor raises
(a timestamp or date outside years 1..9999, an exponent ``Decimal`` rejects, a time past 24 h,
a malformed UUID) the record is corrupt.

``fallback``: sorted indices of the records to decode event by event (which also gives the
exact DecodeError for the dead-letter queue): None/empty/non-bytes values, other framing or
fingerprint, any corrupt record (``decode_event`` raises for exactly these), a Python
constructor raising an ``Exception`` (a ``BaseException`` such as KeyboardInterrupt
propagates), and every record of an ineligible table.

``tables``: one tuple per table ((source, schema, table) triple), in order of first
appearance, whose every record is eligible::

    (source, source_kind, database, schema, table, primary_key, columns,
     indices, event_ids, positions, ops, commit_ts_us, images)

``source_kind`` is the index into (postgres, sqlserver, crm); ``primary_key`` a tuple of names;
``columns`` a tuple of ``(name, source_type)``; ``indices`` the records' positions in
``values`` (ascending); ``event_ids``/``positions``/``ops`` (``"r"``, ``"c"``, ``"u"``,
``"d"``)/``commit_ts_us`` one per record; ``images`` maps each column name (in order of first
appearance) to one value per record, ``None`` where the record's image lacks it. The image is
``after`` for r/c/u, and ``before`` (when non-null and non-empty, else ``key``) for d (a
repeated map name: the last value wins).

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

from capa.events import ChangeEvent

try:
    import capa_native
except ImportError as exc:
    raise ImportError(
        "capa_native (native/, Rust) is not installed in this Python environment; capa decodes "
        "Avro only through it. Build it with scripts/setup.sh beam (needs a Rust toolchain)."
    ) from exc
if not hasattr(capa_native, "decode_event"):  # a build from before 2026-12-07
    raise ImportError(
        "capa_native is older than this checkout (it has no decode_event); rebuild it with "
        "scripts/setup.sh beam"
    )

DecodeBatch = Callable[[Iterable[bytes | None], bytes], tuple[list[tuple[Any, ...]], list[int]]]
DecodeEvent = Callable[[bytes, int], ChangeEvent]

decode_batch: DecodeBatch = capa_native.decode_batch
decode_event: DecodeEvent = capa_native.decode_event
