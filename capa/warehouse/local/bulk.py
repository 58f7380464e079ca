"""Bulk loads of snapshot reads: Arrow rows appended to a replica and its changelog.

The fast initial sync (``connectors.pgsync``) copies a source table in ranges; each range
arrives here as one Arrow table of source columns already typed for the raw layer. Every
row becomes a snapshot read (op ``r``) at the range's snapshot ``position``, which sorts
before every streamed change of the slot (``capa.position``: phase 0 before phase 1), so
the apply rules' stale guard keeps the replica correct when streaming starts.

A range is encoded to Parquet once: appended to the replica, then the same file is
hard-linked into the changelog and committed there (the changelog's extra column,
``_capa_unchanged``, is absent from it, which Delta readers take as NULL). Each commit is
tagged with a Delta application transaction (``txn`` action, app id
``capa-bulk:<load_id>``): a range that is written again after a crash finds its transaction
and writes nothing, so a resumed copy never duplicates a committed range. A range copied
again from a *later* snapshot (a resumed sync) is merged by key with the stale guard instead
of appended (``merge=True``; the changelog gets its own file), because a row moved by an
update may already be in the replica from an earlier range.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.transaction import AddAction

from capa.warehouse.base import (
    META_COMMIT_TS,
    META_DELETED,
    META_EVENT_ID,
    META_INGESTED_AT,
    META_OP,
    META_POSITION,
)
from capa.warehouse.local import delta_io
from capa.warehouse.local.arrow_types import arrow_type
from capa.warehouse.local.plan import (
    CHANGELOG_META,
    META_UNCHANGED,
    REPLICA_META,
    TIMESTAMP_US,
)
from capa.warehouse.types import ColumnType

APP_PREFIX = "capa-bulk:"
_BACKGROUND = ThreadPoolExecutor(max_workers=4, thread_name_prefix="capa-bulk-changelog")
_KEY_SEPARATOR = "\x1f"


def snapshot_meta(
    data: pa.Table, primary_key: Sequence[str], position: str, commit_ts: datetime
) -> dict[str, pa.Array]:
    """The metadata columns of snapshot reads. The event id is ``<position>/<key values>``
    (unique per row of one snapshot; never equal to a streamed event's hex id)."""
    rows = data.num_rows
    keys = [pc.cast(data[k], pa.string()) for k in primary_key]
    event_ids = (
        pc.binary_join_element_wise(pa.scalar(position + "/"), *keys, _KEY_SEPARATOR)
        if keys
        else pa.repeat(pa.scalar(position + "/", pa.string()), rows)
    )
    return {
        META_POSITION: pa.repeat(pa.scalar(position, pa.string()), rows),
        META_OP: pa.repeat(pa.scalar("r", pa.string()), rows),
        META_COMMIT_TS: pa.repeat(pa.scalar(commit_ts, TIMESTAMP_US), rows),
        META_INGESTED_AT: pa.repeat(pa.scalar(datetime.now(UTC), TIMESTAMP_US), rows),
        META_EVENT_ID: event_ids,
        META_DELETED: pa.repeat(pa.scalar(False), rows),
    }


def conform(data: pa.Table, meta: Mapping[str, pa.Array], table: DeltaTable) -> pa.Table:
    """``data`` plus ``meta`` in the table's column order and types (absent columns NULL)."""
    types = delta_io.table_types(table)
    schema: pa.Schema = table.schema().to_arrow()  # type: ignore[assignment]
    arrays = []
    for field in schema:
        name = field.name
        if name in meta:
            arrays.append(meta[name])
        elif name in data.column_names:
            arrays.append(data[name].cast(arrow_type(types[name])))
        else:
            arrays.append(pa.nulls(data.num_rows, pa.field(field).type))
    return pa.table(arrays, names=[f.name for f in schema])


def ensure_tables(
    replica_path: Path,
    changelog_path: Path,
    types: Mapping[str, ColumnType | None],
    replica_properties: Mapping[str, str],
) -> tuple[DeltaTable, DeltaTable]:
    """(replica, changelog), created or evolved to hold ``types``."""
    log = delta_io.ensure_table(changelog_path, CHANGELOG_META, types)
    replica = delta_io.ensure_table(replica_path, REPLICA_META, types, replica_properties)
    return replica, log


def load_snapshot_rows(
    replica_path: Path,
    changelog_path: Path,
    data: pa.Table,
    *,
    types: Mapping[str, ColumnType | None],
    primary_key: Sequence[str],
    position: str,
    commit_ts: datetime,
    load_id: str,
    replica_properties: Mapping[str, str],
    schema_lock: AbstractContextManager[Any] | None = None,
    merge: bool = False,
) -> int:
    """Write one range (see the module docstring); returns the rows it holds.

    ``schema_lock`` is held while the tables are created or evolved (writers of other ranges
    of the same table share it); the appends themselves run without it.
    """
    schema_lock = schema_lock or nullcontext()
    with schema_lock:  # creating or evolving a table: one writer at a time
        replica, log = ensure_tables(replica_path, changelog_path, types, replica_properties)
    meta = snapshot_meta(data, primary_key, position, commit_ts)
    source = conform(data, meta, replica)
    if not merge:
        _append_once(replica, source, load_id)
        if not _link_once(log, changelog_path, replica_path, load_id):
            _append_once(log, conform(data, _changelog_meta(meta, data.num_rows), log), load_id)
        return data.num_rows
    # the changelog append runs beside the merge (delta-rs writes outside the GIL)
    log_rows = conform(data, _changelog_meta(meta, data.num_rows), log)
    appending = _BACKGROUND.submit(_append_once, log, log_rows, load_id)
    try:
        with schema_lock:  # merges of one table rewrite the same files: one at a time
            _merge_once(DeltaTable(replica.table_uri), source, primary_key, load_id)
    finally:
        wait([appending])
    appending.result()
    return data.num_rows


def _changelog_meta(meta: Mapping[str, pa.Array], rows: int) -> dict[str, pa.Array]:
    return {**meta, META_UNCHANGED: pa.nulls(rows, CHANGELOG_META[META_UNCHANGED])}


def _link_once(log: DeltaTable, log_path: Path, replica_path: Path, load_id: str) -> bool:
    """Commit the replica's files of ``load_id`` to the changelog too, hard-linked (one
    Parquet encoding for both tables); False when they cannot be found (then the caller
    writes the changelog's own copy).

    The files lack the changelog's ``_capa_unchanged`` column, which Delta readers take as
    NULL (as for any column added after a file was written): a snapshot read has none.
    """
    if written(log, load_id):
        return True
    adds = _added_files(replica_path, load_id)
    relative = [unquote(add.path) for add in adds]  # the log's paths are URL-encoded
    if not adds or not all((replica_path / r).exists() for r in relative):
        return False  # the commit left the JSON log, or its files were vacuumed
    for path in relative:
        target = log_path / path
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(replica_path / path, target)
            except OSError:  # another file system: a copy still saves the encoding
                shutil.copyfile(replica_path / path, target)
    log.create_write_transaction(
        [*adds], "append", log.schema(), commit_properties=_commit(load_id)
    )
    return True


def _added_files(table_path: Path, load_id: str) -> list[AddAction]:
    """The files added by the commit tagged ``load_id`` (newest commits first; local
    tables only), or [] when that commit is no longer in the JSON log."""
    app_id = APP_PREFIX + load_id
    log_dir = table_path / "_delta_log"
    for commit in sorted(log_dir.glob("*.json"), reverse=True):
        actions = [json.loads(line) for line in commit.read_text().splitlines() if line]
        if not any(a.get("txn", {}).get("appId") == app_id for a in actions):
            continue
        return [
            AddAction(
                a["add"]["path"],
                a["add"]["size"],
                a["add"].get("partitionValues") or {},
                a["add"]["modificationTime"],
                True,
                a["add"].get("stats") or "",
            )
            for a in actions
            if "add" in a
        ]
    return []


def commit_once(load_id: str) -> CommitProperties:
    """The commit properties of a write done once per ``load_id``."""
    return _commit(load_id)


def append_once(table: DeltaTable, rows: pa.Table | None, load_id: str) -> None:
    """Append ``rows`` (None: nothing) unless the table holds ``load_id``'s transaction."""
    if rows is not None:
        _append_once(table, rows, load_id)


def _commit(load_id: str) -> CommitProperties:
    return CommitProperties(app_transactions=[Transaction(APP_PREFIX + load_id, 1)])


def written(table: DeltaTable, load_id: str) -> bool:
    return table.transaction_version(APP_PREFIX + load_id) is not None


def _append_once(table: DeltaTable, rows: pa.Table, load_id: str) -> None:
    if not written(table, load_id):
        write_deltalake(table, rows, mode="append", commit_properties=_commit(load_id))


def _merge_once(
    table: DeltaTable, rows: pa.Table, primary_key: Sequence[str], load_id: str
) -> None:
    if written(table, load_id):
        return
    ident = delta_io.ident
    columns = {ident(c): f"s.{ident(c)}" for c in rows.column_names}
    on = " AND ".join(f"t.{ident(k)} = s.{ident(k)}" for k in primary_key)
    guard = f"s.{ident(META_POSITION)} > t.{ident(META_POSITION)}"
    table.merge(
        rows, on, source_alias="s", target_alias="t", commit_properties=_commit(load_id)
    ).when_matched_update(columns, predicate=guard).when_not_matched_insert(columns).execute()
