"""Changed rows of a raw replica between two Delta versions: the change-data-feed reader must
give exactly what the file diff gives (delta-rs only, no Spark)."""

from __future__ import annotations

import random
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from capa.warehouse.base import META_EVENT_ID
from capa.warehouse.local import delta_io
from spark_jobs import sample
from spark_jobs.diff import changed_rows, feed_rows
from spark_jobs.project import SIGN

ORDERS = "f2_public_orders"


def order(i: int, customer: int, amount: str = "1.00") -> dict:
    return sample.order(random.Random(i), i, 10) | {
        "customer_id": customer,
        "amount": Decimal(amount),
    }


def signed(rows: pa.Table) -> Counter:
    """(row without sign, sign) pairs, as a multiset."""
    names = [n for n in rows.column_names if n != SIGN]
    return Counter(
        (tuple(sorted((k, str(v)) for k, v in r.items() if k in names)), r[SIGN])
        for r in rows.to_pylist()
    )


def rows_of(path: Path, version: int) -> Counter:
    data = DeltaTable(str(path), version=version).to_pyarrow_dataset().to_table()
    return Counter(tuple(sorted((k, str(v)) for k, v in r.items())) for r in data.to_pylist())


def replay(old: Counter, change: pa.Table) -> Counter:
    """old + the signed rows (must give the new version)."""
    out = Counter(old)
    for (row, sign), n in signed(change).items():
        out[row] += sign * n
    return +out


@pytest.fixture
def lake(tmp_path: Path) -> sample.RawLakehouse:
    return sample.seed(tmp_path / "lh", customers=10, orders=50, invoices=5)


def test_feed_equals_file_diff_over_updates_moves_deletes_and_inserts(
    lake: sample.RawLakehouse,
) -> None:
    path = lake.path(ORDERS)
    start = DeltaTable(str(path)).version()
    lake.upsert(ORDERS, [order(1, 9, "5.55"), order(2, 3), order(100, 4)])  # moves + insert
    lake.delete(ORDERS, [5, 6])  # tombstones
    lake.upsert(ORDERS, [order(1, 8, "6.66")])  # the same row again: its middle version nets out
    end = DeltaTable(str(path)).version()
    feed = feed_rows(str(path), start, end, META_EVENT_ID)
    files = changed_rows(str(path), start, end, [META_EVENT_ID])
    assert feed is not None and files is not None
    assert signed(feed) == signed(files)
    assert Counter(feed.column(SIGN).to_pylist()) == {1: 5, -1: 4}  # 1, 2, 100, 5, 6 / 1, 2, 5, 6
    assert replay(rows_of(path, start), feed) == rows_of(path, end)


def test_feed_of_a_truncate_removes_every_row(lake: sample.RawLakehouse) -> None:
    path = lake.path(ORDERS)
    start = DeltaTable(str(path)).version()
    DeltaTable(str(path)).delete()
    end = DeltaTable(str(path)).version()
    feed = feed_rows(str(path), start, end, META_EVENT_ID)
    assert feed is not None and feed.num_rows == 50
    assert set(feed.column(SIGN).to_pylist()) == {-1}
    assert signed(feed) == signed(changed_rows(str(path), start, end, [META_EVENT_ID]))


def test_compaction_changes_nothing(lake: sample.RawLakehouse) -> None:
    path = lake.path(ORDERS)
    lake.upsert(ORDERS, [order(200, 2)])  # inserts: a small file each
    lake.upsert(ORDERS, [order(201, 3)])
    start = DeltaTable(str(path)).version()
    DeltaTable(str(path)).optimize.compact()
    end = DeltaTable(str(path)).version()
    assert end > start
    feed = feed_rows(str(path), start, end, META_EVENT_ID)
    assert feed is not None and feed.num_rows == 0


def test_replica_without_a_feed_is_left_to_the_file_diff(tmp_path: Path) -> None:
    path = tmp_path / "plain"
    stamped = sample.RawLakehouse(tmp_path)._stamp([order(1, 1)], "r", deleted=False)
    write_deltalake(str(path), pa.Table.from_pylist(stamped, schema=sample.schema(ORDERS)))
    write_deltalake(
        str(path),
        pa.Table.from_pylist(
            sample.RawLakehouse(tmp_path)._stamp([order(2, 1)], "c", deleted=False),
            schema=sample.schema(ORDERS),
        ),
        mode="append",
    )
    assert feed_rows(str(path), 0, 1, META_EVENT_ID) is None
    files = changed_rows(str(path), 0, 1, [META_EVENT_ID])
    assert files is not None and files.column("id").to_pylist() == [2]


def test_ensure_table_turns_the_feed_on_for_an_existing_replica(tmp_path: Path) -> None:
    path = tmp_path / "old_replica"
    write_deltalake(str(path), pa.table({"id": pa.array([1], pa.int64())}))
    table = delta_io.ensure_table(path, {"id": pa.int64()}, {}, delta_io.REPLICA_PROPERTIES)
    assert table.metadata().configuration == delta_io.REPLICA_PROPERTIES
    again = delta_io.ensure_table(path, {"id": pa.int64()}, {}, delta_io.REPLICA_PROPERTIES)
    assert again.version() == table.version()  # set once
