"""Debezium incremental snapshots ('capa resync'): the source signalling table and the
notifications that report progress.

Debezium's PostgreSQL connector re-reads chosen tables while streaming goes on with the
DBLog watermark algorithm: for each chunk of primary keys it writes a low watermark row into
the signalling table, SELECTs the chunk, writes a high watermark row, and, when the
streamed WAL reaches the high watermark, emits the chunk's rows (op ``r``,
``source.snapshot = "incremental"``) minus the keys changed between the two watermarks.
Signal and watermarks go through the same table, read from the WAL (the ``source``
channel), so they are ordered with the data and survive restarts of the capture. The
embedded bridge gives the reads their position (see ``DebeziumNormalizer.stream_lsn``).

Everything here is plain SQL on the source (identifiers quoted, values bound) or parsing of
Debezium's notification records; the orchestration is ``capa_app/commands/resync.py``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from capa.errors import ConfigError, DecodeError, ServiceUnavailable

SIGNAL_COLUMNS = "id varchar(64) PRIMARY KEY, type varchar(32) NOT NULL, data varchar(2048)"
INCREMENTAL = "Incremental Snapshot"  # aggregate_type of the incremental snapshot notifications


def split_name(name: str, default_schema: str = "public") -> tuple[str, str]:
    """``"schema.table"`` or ``"table"`` -> (schema, table)."""
    schema, dot, table = name.partition(".")
    return (schema, table) if dot else (default_schema, name)


def _qualified(name: str) -> sql.Identifier:
    return sql.Identifier(*split_name(name))


def slot_active(conn: Any, slot: str) -> bool:
    """True while a capture (the bridge or Connect) streams from the replication slot."""
    row = conn.execute(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s AND active", (slot,)
    ).fetchone()
    return bool(row and row[0])


def table_keys(conn: Any, schema: str, table: str) -> tuple[str, ...] | None:
    """Primary-key columns of a source table, in key order; None if there is no such table."""
    exists = conn.execute(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
        (schema, table),
    ).fetchone()
    if exists is None:
        return None
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i "
        "JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) ON true "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.n",
        (exists[0],),
    ).fetchall()
    return tuple(r[0] for r in rows)


def ensure_signal_table(conn: Any, signal_table: str, publication: str) -> None:
    """Create the signalling table if needed and make sure the publication carries it
    (a publication ``FOR ALL TABLES`` does by itself)."""
    schema, table = split_name(signal_table)
    conn.execute(
        sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
            _qualified(signal_table), sql.SQL(SIGNAL_COLUMNS)
        )
    )
    row = conn.execute(
        "SELECT puballtables FROM pg_publication WHERE pubname = %s", (publication,)
    ).fetchone()
    if row is None:
        raise ConfigError(
            f"publication {publication!r} does not exist; is the capture running "
            "(capa up / the Connect connector)?"
        )
    if row[0]:
        return
    member = conn.execute(
        "SELECT 1 FROM pg_publication_tables WHERE pubname = %s AND schemaname = %s "
        "AND tablename = %s",
        (publication, schema, table),
    ).fetchone()
    if member is None:
        conn.execute(
            sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                sql.Identifier(publication), _qualified(signal_table)
            )
        )


def start_point(conn: Any, timeout_s: float = 300.0) -> int:
    """The WAL position a resync starts at, once every transaction open at that moment has
    ended: any change that commits later is then written after it (see docs/architecture.md,
    "Re-syncing a table")."""
    row = conn.execute(
        "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn, pg_snapshot_xmax(pg_current_snapshot())"
    ).fetchone()
    lsn, xmax = int(row[0]), row[1]
    deadline = time.monotonic() + timeout_s
    while True:
        done = conn.execute(
            "SELECT pg_snapshot_xmin(pg_current_snapshot()) >= %s::xid8", (str(xmax),)
        ).fetchone()
        if done and done[0]:
            return lsn
        if time.monotonic() > deadline:
            raise ServiceUnavailable(
                f"a transaction open since before the resync (xid < {xmax}) has not ended "
                f"within {timeout_s:.0f} s; end it (pg_stat_activity) and run capa resync again"
            )
        time.sleep(0.2)


def send_execute_snapshot(conn: Any, signal_table: str, tables: Sequence[str]) -> str:
    """Insert Debezium's ``execute-snapshot`` signal (incremental) for ``tables``
    (``schema.table``); returns the signal id, which names the snapshot's notifications."""
    signal_id = f"capa-resync-{uuid.uuid4().hex[:16]}"
    data = json.dumps({"data-collections": list(tables), "type": "incremental"})
    conn.execute(
        sql.SQL("INSERT INTO {} (id, type, data) VALUES (%s, %s, %s)").format(
            _qualified(signal_table)
        ),
        (signal_id, "execute-snapshot", data),
    )
    return signal_id


@dataclass(frozen=True, slots=True)
class Notification:
    """One Debezium notification (``aggregate_type``, ``type``, ``additional_data``)."""

    id: str
    aggregate_type: str
    type: str
    data: Mapping[str, str]


def parse_notification(value: bytes | str) -> Notification:
    """A notification record's value (JsonConverter, with or without schemas)."""
    try:
        doc = json.loads(value)
    except ValueError as exc:
        raise DecodeError(f"notification is not JSON: {exc}") from None
    if isinstance(doc, dict) and "payload" in doc and "schema" in doc:
        doc = doc["payload"]
    if not isinstance(doc, dict):
        raise DecodeError(f"notification is not a JSON object: {doc!s:.200}")
    data = doc.get("additional_data") or {}
    return Notification(
        id=str(doc.get("id", "")),
        aggregate_type=str(doc.get("aggregate_type", "")),
        type=str(doc.get("type", "")),
        data={str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {},
    )
