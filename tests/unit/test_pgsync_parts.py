"""The fast initial sync's pure parts and its bulk writer: CTID range splitting, the durable
state file, per-table progress (rows done/total, rate, ETA), the readers' column specs, and
snapshot rows written once per range into a real local Delta replica and changelog, then
changed by streamed events through the ordinary apply path."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from capa.events import ChangeEvent, Op, SourceKind
from capa.position import pg_position
from capa.verify_source import SourceColumn
from capa.warehouse.local.warehouse import LocalWarehouse
from capa.warehouse.types import ColumnType
from connectors.pgsync.progress import (
    RangeState,
    StateFile,
    SyncState,
    TableState,
    progress_line,
    status_document,
    table_progress,
)
from connectors.pgsync.ranges import MIN_RANGE_PAGES, PageRange, split_pages
from connectors.pgsync.reader import column_specs, declared_numeric, range_query, typed_columns


@given(
    relpages=st.integers(0, 2_000_000),
    workers=st.integers(1, 64),
    max_pages=st.integers(64, 50_000),
)
def test_ranges_cover_every_page_once_and_respect_the_size_bound(
    relpages: int, workers: int, max_pages: int
) -> None:
    ranges = split_pages(relpages, workers, max_pages)
    assert ranges[0].start_page == 0 and ranges[-1].end_page is None  # the last is open
    for before, after in pairwise(ranges):
        assert before.end_page == after.start_page  # contiguous, no gap, no overlap
        assert 0 < before.end_page - before.start_page <= max_pages  # type: ignore[operator]
    assert [r.index for r in ranges] == list(range(len(ranges)))


def test_range_count_balances_workers_within_bounds() -> None:
    assert len(split_pages(16_394, 2, 8192)) == 8  # four ranges per worker
    assert len(split_pages(163_935, 2, 8192)) == 21  # capped at 8192 pages each
    assert len(split_pages(100, 8, 8192)) == 1  # never below MIN_RANGE_PAGES
    assert MIN_RANGE_PAGES == 128
    assert len(split_pages(0, 4, 8192)) == 1  # an empty table: one open range


def test_range_predicates_are_tid_range_conditions() -> None:
    assert PageRange(0, 10, 20).predicate() == ("ctid >= '(10,0)'::tid AND ctid < '(20,0)'::tid")
    assert PageRange(1, 20, None).predicate() == "ctid >= '(20,0)'::tid"


def _table(done: list[tuple[bool, int]], estimate: int) -> TableState:
    ranges = [RangeState(i, i * 10, i * 10 + 10, d, n) for i, (d, n) in enumerate(done)]
    return TableState("public", "t", "f2_public_t", ["id"], estimate, ranges)


def test_progress_rate_eta_and_estimate() -> None:
    table = _table([(True, 400), (True, 600), (False, 0), (False, 0)], estimate=4000)
    progress = table_progress(table, elapsed_s=10.0)
    assert progress["rows_done"] == 1000 and progress["rows_total"] == 4000
    assert progress["rows_per_s"] == 100.0 and progress["eta_s"] == 30.0
    assert progress["ranges_done"] == 2 and progress["ranges_total"] == 4
    assert progress_line(progress) == (
        "public.t: 1000/4000 rows (25%), ranges 2/4, 100 rows/s, ETA 30 s"
    )
    # reltuples was low: the total is at least what is done; a finished table has ETA 0
    done = table_progress(_table([(True, 700)], estimate=500), elapsed_s=7.0)
    assert done["rows_total"] == 700 and done["eta_s"] == 0.0 and done["done"]
    # nothing done yet: the ETA is unknown, not a division by zero
    fresh = table_progress(_table([(False, 0)], estimate=10), elapsed_s=0.0)
    assert fresh["eta_s"] is None and "ETA unknown" in progress_line(fresh)
    # a resumed run's rate counts only its own rows
    resumed = table_progress(table, elapsed_s=10.0, rows_at_start=400)
    assert resumed["rows_per_s"] == 60.0


def test_state_file_round_trips_atomically(tmp_path: Path) -> None:
    path = tmp_path / "debezium" / "e.initial-sync.json"
    state = SyncState("slot", "0/16B3748", tables={"public.t": _table([(True, 5)], 5)})
    StateFile(path).save(state)
    assert not path.with_suffix(".tmp").exists()
    loaded = StateFile(path).load()
    assert loaded == state and json.loads(path.read_text())["lsn"] == "0/16B3748"
    document = status_document(loaded, now=state.started_at + 4)
    assert document is not None and document["status"] == "copying"
    assert document["tables"][0]["rows_done"] == 5
    assert StateFile(tmp_path / "none.json").load() is None
    assert status_document(None) is None


def _column(name: str, typname: str, element: str = "", typmod: int = -1) -> SourceColumn:
    return SourceColumn(name, typname, "b", element, "b" if element else "", typmod)


def test_column_specs_read_plain_types_natively_and_parse_the_rest() -> None:
    columns = [
        _column("Id", "int4"),
        _column("amount", "numeric", typmod=(12 << 16 | 2) + 4),
        _column("d", "date"),
        _column("u", "uuid"),
    ]
    specs = column_specs(columns)
    assert [s.fast for s in specs] == [ColumnType("int"), None, None, None]
    assert specs[0].expression == '"Id"' and specs[1].source_type == "numeric(12,2)"
    assert declared_numeric(_column("n", "numeric")) == ""  # unconstrained
    query = range_query("My Schema", 'we"ird', specs, PageRange(0, 0, 8))
    assert query.startswith('SELECT "Id" AS "Id", ')
    assert 'FROM "My Schema"."we""ird" WHERE ctid >= ' in query


def test_typed_columns_cast_fast_columns_and_parse_special_values() -> None:
    specs = column_specs([_column("id", "int4"), _column("d", "date"), _column("e", "text")])
    raw = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int32()),
            "d": pa.array(["infinity", "2024-02-29", None]),
            "e": pa.array([None, None, None], pa.string()),
        }
    )
    typed, types = typed_columns(raw, specs)
    assert types == {"id": ColumnType("int"), "d": ColumnType("date"), "e": ColumnType("string")}
    assert typed.schema.field("id").type == pa.int64()
    assert typed["d"].to_pylist()[1].isoformat() == "2024-02-29"
    assert typed["d"].to_pylist()[0].year == 9999  # 'infinity' saturates, as when streamed


def test_snapshot_ranges_load_once_and_streamed_changes_apply_on_top(tmp_path: Path) -> None:
    lake = LocalWarehouse(tmp_path)
    position = pg_position("0/5000", snapshot=True)
    types = {"id": ColumnType("int"), "name": ColumnType("string")}
    rows = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "name": ["a", "b", "c"]})
    load = {
        "position": position,
        "commit_ts": datetime(2026, 12, 7, tzinfo=UTC),
        "load_id": "t:0",
    }
    assert lake.load_snapshot("f2_public_t", rows, types, ["id"], **load) == 3
    lake.load_snapshot("f2_public_t", rows, types, ["id"], **load)  # a crash's retry: no-op
    assert lake.row_count("raw.f2_public_t") == 3
    assert lake.row_count("raw.f2_public_t_changelog") == 3
    replica = {r["id"]: r for r in lake.rows("raw.f2_public_t")}
    assert replica[1]["_capa_op"] == "r" and replica[1]["_capa_position"] == position
    assert len({r["_capa_event_id"] for r in replica.values()}) == 3

    def change(op: Op, lsn: str, row: dict[str, object]) -> ChangeEvent:
        return ChangeEvent(
            "f2", SourceKind.POSTGRES, "shop", "public", "t", op,
            pg_position(lsn, snapshot=False), None, ("id",), {"id": row["id"]},
            row if op is Op.DELETE else None, None if op is Op.DELETE else row,
        )  # fmt: skip

    lake.apply(
        [
            change(Op.UPDATE, "0/4000", {"id": 1, "name": "older than the snapshot"}),
            change(Op.UPDATE, "0/6000", {"id": 2, "name": "b2"}),
            change(Op.DELETE, "0/6001", {"id": 3, "name": "c"}),
        ]
    )
    names = {r["id"]: r["name"] for r in lake.rows("raw.f2_public_t")}
    assert names == {1: "a", 2: "b2"}  # the stale change is ignored, the later ones apply

    # a range copied again from a later snapshot (a resumed sync) merges by key
    later = pg_position("0/7000", snapshot=True)
    again = pa.table({"id": pa.array([2, 4], pa.int64()), "name": ["b3", "d"]})
    lake.load_snapshot(
        "f2_public_t", again, types, ["id"], **{**load, "position": later, "load_id": "t:1"},
        merge=True,
    )  # fmt: skip
    names = {r["id"]: r["name"] for r in lake.rows("raw.f2_public_t")}
    assert names == {1: "a", 2: "b3", 4: "d"}


def test_raised_watermark_turns_earlier_changes_into_no_ops(tmp_path: Path) -> None:
    lake = LocalWarehouse(tmp_path)
    rows = pa.table({"id": pa.array([1], pa.int64())})
    lake.load_snapshot(
        "f2_public_k", rows, {"id": ColumnType("int")}, ["id"],
        position=pg_position("0/9000", snapshot=True), commit_ts=datetime.now(UTC),
        load_id="k:0",
    )  # fmt: skip
    lake.raise_watermark("f2_public_k", pg_position("0/9000", snapshot=True))
    lake.raise_watermark("f2_public_k", pg_position("0/1000", snapshot=True))  # never lowers
    assert lake.watermark("raw.f2_public_k") == pg_position("0/9000", snapshot=True)
    event = ChangeEvent(
        "f2", SourceKind.POSTGRES, "shop", "public", "k", Op.DELETE,
        pg_position("0/8000", snapshot=False), None, ("id",), {"id": 1}, {"id": 1}, None,
    )  # fmt: skip
    lake.apply([event])
    assert lake.row_count("raw.f2_public_k") == 1


def test_discarding_snapshot_reads_leaves_streamed_rows(tmp_path: Path) -> None:
    lake, name = LocalWarehouse(tmp_path), "f2_public_k"
    rows = pa.table({"id": pa.array([1, 2], pa.int64())})
    lake.load_snapshot(
        name, rows, {"id": ColumnType("int")}, ["id"],
        position=pg_position("0/10", snapshot=True), commit_ts=datetime.now(UTC), load_id="x",
    )  # fmt: skip
    insert = ChangeEvent(
        "f2", SourceKind.POSTGRES, "shop", "public", "k", Op.INSERT,
        pg_position("0/20", snapshot=False), None, ("id",), {"id": 3}, None, {"id": 3},
    )  # fmt: skip
    lake.apply([insert])
    lake.discard_snapshot_reads(name)
    assert [r["id"] for r in lake.rows(f"raw.{name}")] == [3]
    assert lake.row_count(f"raw.{name}_changelog") == 1


def _data_files(table: Path) -> dict[str, int]:
    return {f.name: f.stat().st_ino for f in table.glob("*.parquet")}


def test_changelog_shares_the_replicas_file_and_a_crash_between_commits_heals(
    tmp_path: Path,
) -> None:
    lake, name = LocalWarehouse(tmp_path), "f2_public_s"
    types = {"id": ColumnType("int"), "name": ColumnType("string")}
    load = {
        "position": pg_position("0/10", snapshot=True),
        "commit_ts": datetime.now(UTC),
        "load_id": "s:0",
    }
    rows = pa.table({"id": pa.array([1, 2], pa.int64()), "name": ["a", "b"]})
    lake.load_snapshot(name, rows, types, ["id"], **load)
    replica, changelog = tmp_path / "raw" / name, tmp_path / "raw" / f"{name}_changelog"
    shared = _data_files(replica).items() & _data_files(changelog).items()
    assert len(shared) == 1  # one Parquet file, hard-linked into both tables
    logged = lake.rows(f"raw.{name}_changelog")
    assert [r["_capa_unchanged"] for r in logged] == [None, None]  # absent from the file
    assert {r["name"] for r in logged} == {"a", "b"}

    # a crash after the replica's commit, before the changelog's: the retry commits it once
    commits = sorted((changelog / "_delta_log").glob("*.json"))
    commits[-1].unlink()
    assert lake.row_count(f"raw.{name}_changelog") == 0
    lake.load_snapshot(name, rows, types, ["id"], **load)
    assert lake.row_count(f"raw.{name}_changelog") == 2
    assert lake.row_count(f"raw.{name}") == 2

    # streamed changes (which carry _capa_unchanged) append beside the shared file
    update = ChangeEvent(
        "f2", SourceKind.POSTGRES, "shop", "public", "s", Op.UPDATE,
        pg_position("0/20", snapshot=False), None, ("id",), {"id": 1},
        None, {"id": 1, "name": "a2"},
    )  # fmt: skip
    lake.apply([update])
    assert {r["id"]: r["name"] for r in lake.rows(f"raw.{name}")} == {1: "a2", 2: "b"}
    assert lake.row_count(f"raw.{name}_changelog") == 3
