"""Rows that differ between two versions of a Delta table, read with delta-rs and Arrow.

Only the data files that differ between the versions are read: files of the old version that
the new one removed, and files the new one added (a file present in both holds the same rows).
A row counts as changed when its identity is not on the other side: for raw replicas the
identity is ``_capa_event_id`` (the event that last wrote the row), for model tables the whole
row. The result is every row of the added files whose identity the removed files lack (inserts,
updates, tombstones) plus every row of the removed files whose identity the added files lack
(the replaced versions, and rows a truncate or delete removed), in the new version's schema
plus ``_capa_sign``: +1 for the added rows, -1 for the removed ones (so that new table = old
table + the signed rows, which additive models rely on).

Runs in the driver without a Spark job: a merge that rewrote a replica's data file costs one
read of each side and two Arrow hash anti-joins on the identity, not a shuffle join of two
table versions.
``None`` means "cannot tell here" (deletion vectors, column mapping, partitioned tables, nested
identity columns):
the caller then diffs with Spark.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from capa.warehouse.base import CHANGE_FEED_PROPERTY, META_DELETED
from spark_jobs.project import SIGN

logger = logging.getLogger(__name__)

_UNSUPPORTED_FEATURES = {"deletionVectors", "columnMapping"}
_CHANGE_TYPE = "_change_type"
_ADDS = pa.array(["insert", "update_postimage"])
_REMOVES = pa.array(["delete", "update_preimage"])
_SEPARATOR = "\x1f"
_ID = "__capa_identity"


class DeltaTables:
    """The Delta table handles of one build (owned by its :class:`~spark_jobs.context.
    BuildContext`): a table at a version is opened once (a version never changes), a table's
    latest version is brought up to date from its log instead of opened again. Models build in
    threads, and bringing a handle up to date mutates it: one lock guards both."""

    def __init__(self) -> None:
        self._pinned: dict[tuple[str, int], Any] = {}
        self._latest: dict[str, Any] = {}
        self._lock = threading.Lock()

    def at(self, path: Path | str, version: int) -> Any:
        """The Delta table at ``version``."""
        from deltalake import DeltaTable

        key = (str(path), int(version))
        with self._lock:
            if key not in self._pinned:
                self._pinned[key] = DeltaTable(key[0], version=key[1])
            return self._pinned[key]

    def version(self, path: Path | str) -> int | None:
        """The table's latest version (None: not a Delta table yet)."""
        from deltalake import DeltaTable

        key = str(path)
        with self._lock:
            try:
                table = self._latest.get(key)
                if table is None:
                    table = self._latest[key] = DeltaTable(key)
                else:
                    table.update_incremental()
                return int(table.version())
            except Exception:  # not a Delta table (yet), or it went away
                self._latest.pop(key, None)
                return None

    def forget(self, path: Path | str) -> None:
        """Drop the handles of a table that was removed (made again, it restarts at 0)."""
        with self._lock:
            self._latest.pop(str(path), None)
            for key in [k for k in self._pinned if k[0] == str(path)]:
                del self._pinned[key]


def changed_rows(
    path: str,
    old_version: int,
    new_version: int,
    identity: Sequence[str] | None,
    tables: DeltaTables | None = None,
    key: Sequence[str] | None = None,
) -> pa.Table | None:
    """Rows added or removed between ``old_version`` and ``new_version`` (see module doc).

    ``identity``: columns naming a row version (``None``: the whole row). ``key``: columns
    each version is unique on (a model table's key): rows are then paired by key and compared
    column by column (:func:`keyed_rows_changed`) instead of by a string per row. ``tables``:
    the build's table handles (else the versions are opened here).
    """
    tables = tables or DeltaTables()
    old, new = tables.at(path, old_version), tables.at(path, new_version)
    if not (_readable(old) and _readable(new)):
        return None
    schema = spark_schema(new.to_pyarrow_dataset().schema)
    removed, added = _files_only_in(old, new), _files_only_in(new, old)
    columns = list(identity) if identity else schema.names
    if any(c not in schema.names for c in [*columns, *(key or ())]):
        return None
    if key:
        keyed = keyed_rows_changed(_rows(removed, schema), _rows(added, schema), key)
        if keyed is not None:
            return keyed
    left, right = _read(removed, columns, schema), _read(added, columns, schema)
    if left is None or right is None:
        return None
    fresh = _signed(_anti(right, left), 1, schema)
    gone = _signed(_anti(left, right), -1, schema)
    return pa.concat_tables([fresh, gone])


def feed_rows(
    path: str,
    old_version: int,
    new_version: int,
    identity: str,
    tables: DeltaTables | None = None,
) -> pa.Table | None:
    """The changed rows between the versions (as :func:`changed_rows`) from the table's Delta
    change data feed: inserts and post-images +1, deletes and pre-images -1, in the new
    version's schema plus ``_capa_sign``. A row version that several commits of the range
    add and then replace again (same ``identity``, signs summing to 0) is left out, so the
    result equals the file diff. None when the table records no feed at either version,
    or cannot be read this way: the caller diffs the files instead.

    Reads only the feed's files (the rows that changed), however large the rewritten data
    files are.
    """
    tables = tables or DeltaTables()
    old, new = tables.at(path, old_version), tables.at(path, new_version)
    if not (_feeds(old) and _feeds(new) and _readable(new)):
        return None
    try:
        feed = pa.table(
            new.load_cdf(starting_version=old_version + 1, ending_version=new_version).read_all()
        )
    except Exception as exc:  # e.g. feed files vacuumed: the file diff may still work
        logger.info(
            "%s: no change data feed for versions %d-%d (%s)",
            path,
            old_version + 1,
            new_version,
            exc,
        )
        return None
    kinds = pc.cast(feed.column(_CHANGE_TYPE), pa.string())
    plus, minus = pc.is_in(kinds, _ADDS), pc.is_in(kinds, _REMOVES)
    if not pc.all(pc.or_(plus, minus), min_count=0).as_py():
        return None  # a change type this reader does not know
    schema = spark_schema(new.to_pyarrow_dataset().schema)
    if identity not in schema.names:
        return None
    rows = _conform(feed, schema, schema.names)
    signs = pc.if_else(plus, 1, -1).cast(pa.int32())
    return _netted(rows.append_column(SIGN, signs), identity)


def _feeds(table: Any) -> bool:
    return str(table.metadata().configuration.get(CHANGE_FEED_PROPERTY, "")).lower() == "true"


def _netted(rows: pa.Table, identity: str) -> pa.Table:
    """One row per identity whose signs do not cancel out, carrying their sum."""
    index = pa.array(range(rows.num_rows), pa.int64())
    net = (
        pa.table({"id": rows.column(identity), "sign": rows.column(SIGN), "row": index})
        .group_by("id")
        .aggregate([("sign", "sum"), ("row", "min")])
    )
    net = net.filter(pc.not_equal(net.column("sign_sum"), 0))
    kept = rows.take(net.column("row_min")).drop_columns([SIGN])
    return kept.append_column(SIGN, net.column("sign_sum").cast(pa.int32()))


def rows_changed(old: pa.Table, new: pa.Table) -> pa.Table | None:
    """Whole-row difference of two tables of one schema, signed like :func:`changed_rows`:
    rows of ``new`` that ``old`` lacks (+1), rows of ``old`` that ``new`` lacks (-1); None
    for nested columns."""
    schema = new.schema
    old_ids, new_ids = fingerprint(old), fingerprint(new)
    if old_ids is None or new_ids is None:
        return None
    left, right = old.append_column(_ID, old_ids), new.append_column(_ID, new_ids)
    fresh = _signed(_anti(right, left), 1, schema)
    gone = _signed(_anti(left, right), -1, schema)
    return pa.concat_tables([fresh, gone])


def keyed_rows_changed(
    old: pa.Table, new: pa.Table, key: Sequence[str], compare: Sequence[str] | None = None
) -> pa.Table | None:
    """:func:`rows_changed` for two tables of one schema that are each unique on ``key``:
    rows are paired by key and compared column by column (NULL equals NULL), without a string
    per row. ``compare``: the only
    columns that can differ between paired rows (the others were copied), else all. None when
    a side is not unique on ``key``, or a column cannot be compared this way (nested types)."""
    if any(pa.types.is_nested(f.type) for f in new.schema) or not key:
        return None
    if not (_unique_on(old, key) and _unique_on(new, key)):
        return None
    pairs = _pair_by_key(old, new, key)
    old_i, new_i = pairs.column("old"), pairs.column("new")
    both = pc.and_(pc.is_valid(old_i), pc.is_valid(new_i))
    paired, unpaired = pairs.filter(both), pairs.filter(pc.invert(both))
    names = list(compare) if compare is not None else new.column_names
    differs = _rows_differ(
        old.select(names).take(paired.column("old")), new.select(names).take(paired.column("new"))
    )
    changed = paired.filter(differs)
    gone = pa.concat_arrays([_chunk(changed, "old"), _chunk(unpaired, "old")])
    fresh = pa.concat_arrays([_chunk(changed, "new"), _chunk(unpaired, "new")])
    schema = new.schema
    plus = _signed(new.take(pc.drop_null(fresh)), 1, schema)
    minus = _signed(old.take(pc.drop_null(gone)), -1, schema)
    return pa.concat_tables([plus, minus])


def _unique_on(rows: pa.Table, key: Sequence[str]) -> bool:
    if not rows.num_rows:
        return True
    if len(key) == 1:
        return pc.count_distinct(rows.column(key[0]), mode="all").as_py() == rows.num_rows
    return rows.select(list(key)).group_by(list(key)).aggregate([]).num_rows == rows.num_rows


def _pair_by_key(old: pa.Table, new: pa.Table, key: Sequence[str]) -> pa.Table:
    """(old row index, new row index) per key present on either side (full outer join)."""
    names = list(key)
    left = old.select(names).append_column("old", pa.array(range(old.num_rows), pa.int64()))
    right = new.select(names).append_column("new", pa.array(range(new.num_rows), pa.int64()))
    return left.join(right, names, join_type="full outer", coalesce_keys=True)


def _chunk(pairs: pa.Table, side: str) -> pa.Array:
    return pairs.column(side).combine_chunks().cast(pa.int64())


def _rows_differ(old: pa.Table, new: pa.Table) -> pa.Array:
    """Per row pair: does any column differ (NULL equals NULL)."""
    differs = pa.array([False] * new.num_rows, pa.bool_())
    for name in new.column_names:
        a, b = old.column(name), new.column(name)
        same = pc.fill_null(pc.equal(a, b), False)
        both_null = pc.and_(pc.is_null(a), pc.is_null(b))
        differs = pc.or_(differs, pc.invert(pc.or_(same, both_null)))
    return differs


def _signed(rows: pa.Table, sign: int, schema: pa.Schema) -> pa.Table:
    """``rows`` in ``schema`` plus ``_capa_sign`` (+1 new row version, -1 replaced one)."""
    signs = pa.array([sign] * rows.num_rows, pa.int32())
    return rows.select(schema.names).append_column(SIGN, signs)


def plain_files(table: Any) -> tuple[list[str], str] | None:
    """(the data files of the opened Delta ``table``, its Delta schema as JSON, which is
    Spark's StructType JSON) when that version is plain Parquet (no deletion vectors, column
    mapping or partitions), else None: Spark can then read it as Parquet without replaying
    the log."""
    if not _readable(table):
        return None
    return [str(f) for f in table.file_uris()], table.schema().to_json()


def column_values(table: Any, column: str, live_only: bool) -> pa.Array | None:
    """One column of the opened Delta ``table`` (rows with ``_capa_deleted`` left out when
    ``live_only``), or None when delta-rs cannot read that version as plain Parquet or the
    column is missing."""
    if not _readable(table):
        return None
    dataset = table.to_pyarrow_dataset()
    if column not in dataset.schema.names:
        return None
    deleted = live_only and META_DELETED in dataset.schema.names
    data = dataset.to_table(columns=[column, META_DELETED] if deleted else [column])
    if deleted:
        data = data.filter(pc.invert(pc.fill_null(data.column(META_DELETED), False)))
    plain = spark_schema(data.schema).field(column).type
    return data.column(column).combine_chunks().cast(plain)


def _readable(table: Any) -> bool:
    protocol = table.protocol()
    features = set(protocol.reader_features or ()) | set(protocol.writer_features or ())
    return not features & _UNSUPPORTED_FEATURES and not table.metadata().partition_columns


def _files_only_in(table: Any, other: Any) -> ds.Dataset:
    """The dataset of ``table``'s data files that ``other`` does not hold."""
    dataset = table.to_pyarrow_dataset()
    keep = set(_relative_paths(table)) - set(_relative_paths(other))
    # plain fragments: delta-rs attaches file statistics as guarantees, whose Arrow types
    # need not match a filter's (string vs string_view)
    fragments = [
        dataset.format.make_fragment(f.path, dataset.filesystem)
        for f in dataset.get_fragments()
        if f.path in keep
    ]
    return ds.FileSystemDataset(fragments, dataset.schema, dataset.format, dataset.filesystem)


def _relative_paths(table: Any) -> list[str]:
    actions = pa.table(table.get_add_actions(flatten=True))
    return [str(p) for p in actions.column("path").to_pylist()]


def _rows(dataset: ds.Dataset, schema: pa.Schema) -> pa.Table:
    """Every row of ``dataset`` in ``schema``."""
    present = [c for c in schema.names if c in dataset.schema.names]
    return _conform(dataset.to_table(columns=present), schema, schema.names)


def _read(dataset: ds.Dataset, columns: list[str], schema: pa.Schema) -> pa.Table | None:
    """Every row of ``dataset`` in ``schema`` plus its identity string (``_ID``, from
    ``columns``), or None for nested identity columns."""
    data = _rows(dataset, schema)
    ids = fingerprint(data.select(columns))
    return None if ids is None else data.append_column(_ID, ids)


def _anti(mine: pa.Table, theirs: pa.Table) -> pa.Table:
    """Rows of ``mine`` whose identity ``theirs`` lacks (one hash join in Arrow)."""
    if not mine.num_rows or not theirs.num_rows:
        return mine
    return mine.join(theirs.select([_ID]), _ID, join_type="left anti", use_threads=True)


def fingerprint(data: pa.Table) -> pa.Array | None:
    """A string per row that equal rows share (NULL-safe); None for nested column types."""
    if data.num_columns == 1 and pa.types.is_string(data.schema.field(0).type):
        return pc.fill_null(data.column(0).combine_chunks(), "")
    parts = []
    for column in data.columns:
        if pa.types.is_nested(column.type):
            return None
        text = pc.cast(column, pa.string())
        parts.append(
            pc.if_else(pc.is_null(column), "n", pc.binary_join_element_wise("v", text, ""))
        )
    if not parts:
        return pa.array([""] * data.num_rows, pa.string())
    joined = pc.binary_join_element_wise(*parts, _SEPARATOR)
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined


def _conform(data: pa.Table, schema: pa.Schema, columns: list[str]) -> pa.Table:
    """``data`` with ``columns`` of ``schema`` (missing ones NULL), cast to their types."""
    arrays = []
    for name in columns:
        field = schema.field(name)
        if name in data.column_names:
            arrays.append(data.column(name).cast(field.type))
        else:
            arrays.append(pa.nulls(data.num_rows, field.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema([schema.field(c) for c in columns]))


def spark_schema(schema: pa.Schema) -> pa.Schema:
    """Arrow view types -> plain types (Spark's Arrow conversion does not take views)."""
    plain = {pa.string_view(): pa.string(), pa.large_string(): pa.string()}
    plain |= {pa.binary_view(): pa.binary(), pa.large_binary(): pa.binary()}
    return pa.schema([f.with_type(plain.get(f.type, f.type)) for f in schema])
