"""Spark model builds on real Spark + Delta (one long-lived `spark_jobs.build serve` process).

Raw replicas are written with delta-rs in the raw-table contract (spark_jobs.sample); rounds of
inserts, updates, key moves and deletes (tombstones) are applied; after every round the
incremental build (recomputed keys replaced by one overwrite, or by MERGE) must equal a full
rebuild, table by table.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from deltalake import DeltaTable
from service_support import MODELS, assert_same_tables, read_model

from spark_jobs import sample

ROOT = Path(__file__).resolve().parents[2]
SPARK_PYTHON = ROOT / ".venvs" / "spark" / "bin" / "python"
PAIR = ["customer_orders", "customer_360", "customer_features"]


class SparkServer:
    """Talks JSON lines to `python -m spark_jobs.build serve` (one SparkSession for all tests)."""

    def __init__(self, log: Path) -> None:
        self.log_path = log
        self._log = log.open("wb")
        env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [str(SPARK_PYTHON), "-m", "spark_jobs.build", "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=ROOT,
            env=env,
        )
        ready = self._read(timeout=300)
        assert ready == {"ready": True}, self.tail()

    def _read(self, timeout: float) -> dict[str, Any]:
        box: list[bytes] = []
        reader = threading.Thread(
            target=lambda: box.append(self.proc.stdout.readline()), daemon=True
        )  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        if not box or not box[0]:
            pytest.fail(f"spark server gave no answer in {timeout}s:\n{self.tail()}")
        return json.loads(box[0])

    def build(
        self,
        lakehouse: Path,
        consumption: Path,
        *,
        full: bool = False,
        select: list[str] | None = None,
        overwrite_below: int | None = None,
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            "rebuild_above": 1.0,  # exercise the incremental path even when many keys changed
            "lakehouse": str(lakehouse),
            "consumption": str(consumption),
            "full": full,
            "select": select or [],
        }
        if overwrite_below is not None:  # 0: replace keys by MERGE instead of one overwrite
            request["overwrite_below"] = overwrite_below
        self.proc.stdin.write((json.dumps(request) + "\n").encode())  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self._read(timeout=600)

    def tail(self) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-60:])

    def stop(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture(scope="session")
def spark_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkServer]:
    if not SPARK_PYTHON.exists():
        pytest.fail(f"{SPARK_PYTHON} missing: run `bash scripts/setup.sh spark`")
    server = SparkServer(tmp_path_factory.mktemp("spark") / "spark-server.log")
    yield server
    server.stop()


def ok(result: dict[str, Any], server: SparkServer) -> dict[str, dict[str, Any]]:
    assert result["ok"], f"{result}\n{server.tail()}"
    return {r["model"]: r for r in result["reports"]}


def change_round(lake: sample.RawLakehouse, n: int) -> None:
    """Updates, inserts, key moves and deletes across every source."""
    order_and_invoice_changes(lake, n)
    crm_and_customer_changes(lake, n)


def order_and_invoice_changes(lake: sample.RawLakehouse, n: int) -> None:
    """Orders updated (one moves to another customer), inserted and deleted; invoices too."""
    base = 1000 * n
    lake.upsert(
        "f2_public_orders",
        [
            {
                "id": 1 + n,
                "customer_id": 2,
                "status": "paid",
                "amount": Decimal("11.11"),
                "currency": "EUR",
                "ordered_at": sample._ts(sample.random.Random(n)),
                "notes": None,
            },  # update + customer move
            {
                "id": 40 + n,
                "customer_id": 5,
                "status": "cancelled",
                "amount": Decimal("5.00"),
                "currency": "EUR",
                "ordered_at": sample._ts(sample.random.Random(n + 1)),
                "notes": None,
            },
            {
                "id": base + 1,
                "customer_id": 7,
                "status": "new",
                "amount": Decimal("99.99"),
                "currency": "EUR",
                "ordered_at": sample._ts(sample.random.Random(n + 2)),
                "notes": None,
            },  # insert
        ],
    )
    lake.delete("f2_public_orders", [10 + n, 20 + n])
    lake.upsert(
        "f3_dbo_invoices",
        [
            {
                "invoice_id": 3 + n,
                "customer_id": 9,
                "amount": Decimal("1234.50"),
                "issued_at": sample._ts(sample.random.Random(n + 3)),
                "status": "paid",
            }
        ],
    )
    lake.delete("f3_dbo_invoices", [30 + n])


def crm_and_customer_changes(lake: sample.RawLakehouse, n: int) -> None:
    """A CRM account moves, contacts go, F2 customers are deleted (the customer_360 driver)."""
    lake.upsert(
        "crm_crm_accounts",
        [
            {
                "account_id": f"A{n:05d}",
                "name": "Moved",
                "industry": "retail",
                "country": "FR",
                "customer_id": 11 + n,
                "last_modified": sample._ts(sample.random.Random(n + 4)),
            }
        ],
    )
    lake.delete("crm_crm_contacts", [f"K{n + 1:06d}", f"K{n + 2:06d}"])
    lake.delete("f2_public_customers", [30 + n])


def test_incremental_equals_full_after_rounds_of_changes(
    spark_server: SparkServer, tmp_path: Path
) -> None:
    lake = sample.seed(tmp_path / "lh", customers=60, orders=300, invoices=120)
    inc, full = tmp_path / "incremental", tmp_path / "full"
    first = ok(spark_server.build(lake.root, inc), spark_server)
    assert {m: r["mode"] for m, r in first.items()} == dict.fromkeys(MODELS, "full")
    for n, overwrite_below in ((1, None), (2, 0)):  # round 2 writes by MERGE
        change_round(lake, n)
        reports = ok(
            spark_server.build(lake.root, inc, overwrite_below=overwrite_below), spark_server
        )
        ok(spark_server.build(lake.root, full, full=True), spark_server)
        assert {m: r["mode"] for m, r in reports.items()} == dict.fromkeys(MODELS, "incremental")
        assert 0 < reports["customer_360"]["keys"] < reports["customer_360"]["rows"]
        assert_same_tables(inc, full)
    customers = set(read_model(inc, "customer_360")["customer_id"])
    assert {31, 32}.isdisjoint(customers) and 33 in customers  # 31 and 32 were deleted
    unchanged = ok(spark_server.build(lake.root, inc), spark_server)
    assert {m: r["mode"] for m, r in unchanged.items()} == dict.fromkeys(MODELS, "unchanged")


def test_only_the_columns_of_changed_parts_are_recomputed(
    spark_server: SparkServer, tmp_path: Path
) -> None:
    """Orders and invoices change, the customers (customer_360's driver) do not: customer_360
    recomputes just its order and invoice columns over its current rows (spark_jobs.parts),
    by one overwrite and then by MERGE, and still equals a full build."""
    lake = sample.seed(tmp_path / "lh", customers=40, orders=200, invoices=80)
    inc, full = tmp_path / "incremental", tmp_path / "full"
    ok(spark_server.build(lake.root, inc), spark_server)
    for n, overwrite_below in ((1, None), (2, 0)):
        order_and_invoice_changes(lake, n)
        reports = ok(
            spark_server.build(lake.root, inc, overwrite_below=overwrite_below), spark_server
        )
        ok(spark_server.build(lake.root, full, full=True), spark_server)
        c360 = reports["customer_360"]
        assert c360["mode"] == "incremental" and 0 < c360["keys"] < c360["rows"]
        assert c360["columns"] == [
            "orders",
            "order_amount",
            "last_order_at",
            "invoices",
            "invoice_amount",
            "last_invoice_at",
        ]
        assert reports["customer_features"]["mode"] == "incremental"
        assert reports["customer_features"]["columns"] is None  # its driver changed
        assert_same_tables(inc, full)


def test_a_served_build_reads_tables_made_again_to_the_same_versions_anew(
    spark_server: SparkServer, tmp_path: Path
) -> None:
    """One serve process runs many builds, each with its own build context: nothing one build
    read or wrote may leak into the next. Here the consumption folder is removed and built
    again up to the same version numbers, from other input. The next incremental build must
    read the new tables, not anything of the old ones: it still equals a full build."""
    lake = sample.seed(tmp_path / "lh", customers=40, orders=200, invoices=80)
    inc, full = tmp_path / "incremental", tmp_path / "full"
    ok(spark_server.build(lake.root, inc), spark_server)  # version 0, full
    order_and_invoice_changes(lake, 1)
    kept = ok(spark_server.build(lake.root, inc), spark_server)  # version 1, kept
    assert {r["mode"] for r in kept.values()} == {"incremental"}
    shutil.rmtree(inc)
    order_and_invoice_changes(lake, 2)
    ok(spark_server.build(lake.root, inc), spark_server)  # version 0 again
    again = ok(spark_server.build(lake.root, inc, full=True), spark_server)  # version 1
    assert {m: r["version"] for m, r in again.items()} == {m: 1 for m in MODELS}
    order_and_invoice_changes(lake, 3)
    reports = ok(spark_server.build(lake.root, inc), spark_server)
    assert reports["customer_360"]["mode"] == "incremental"
    ok(spark_server.build(lake.root, full, full=True), spark_server)
    assert_same_tables(inc, full)


def test_failing_check_restores_table_and_stops_the_build(
    spark_server: SparkServer, tmp_path: Path
) -> None:
    lake = sample.seed(tmp_path / "lh", customers=20, orders=60, invoices=20)
    out = tmp_path / "consumption"
    built = ok(spark_server.build(lake.root, out, select=PAIR), spark_server)
    before = read_model(out, "customer_360")
    lake.upsert(
        "crm_crm_accounts",
        [
            {
                "account_id": "A00001",
                "name": "Bad",
                "industry": "aerospace",
                "country": "DE",
                "customer_id": 3,
                "last_modified": None,
            }
        ],
    )
    lake.upsert(
        "f2_public_orders",
        [
            {
                "id": 999,
                "customer_id": 3,
                "status": "new",
                "amount": Decimal("1.00"),
                "currency": "EUR",
                "ordered_at": None,
                "notes": None,
            }
        ],
    )
    failed = spark_server.build(lake.root, out, select=PAIR)  # incremental: checked in Arrow
    assert not failed["ok"]
    assert ["customer_360", "accepted_values", "industry", 1, "aerospace"] in failed["failures"]
    by_spark = spark_server.build(lake.root, tmp_path / "fresh", select=PAIR)  # full: Spark SQL
    assert not by_spark["ok"] and by_spark["failures"] == failed["failures"]
    assert not (tmp_path / "fresh" / "customer_360").exists()  # a first build that failed
    assert (
        DeltaTable(str(out / "customer_360")).version() > built["customer_360"]["version"]
    )  # restore commit
    assert (
        DeltaTable(str(out / "customer_features")).version()
        == built["customer_features"]["version"]
    )
    pd.testing.assert_frame_equal(read_model(out, "customer_360"), before)
    lake.upsert(
        "crm_crm_accounts",
        [
            {
                "account_id": "A00001",
                "name": "Good",
                "industry": "energy",
                "country": "DE",
                "customer_id": 3,
                "last_modified": None,
            }
        ],
    )
    fixed = ok(spark_server.build(lake.root, out, select=PAIR), spark_server)
    assert fixed["customer_360"]["mode"] == "incremental"
    row = read_model(out, "customer_360").set_index("customer_id").loc[3]
    assert row["orders"] == before.set_index("customer_id").loc[3, "orders"] + 1


def test_additive_model_follows_emptied_days_and_a_truncate(
    spark_server: SparkServer, tmp_path: Path
) -> None:
    """sales_daily is maintained as current row + signed sums of the changed rows: a day whose
    last order goes must disappear, a truncated input must subtract everything it held."""
    lake = sample.seed(tmp_path / "lh", customers=20, orders=40, invoices=20)
    inc, full = tmp_path / "incremental", tmp_path / "full"
    ok(spark_server.build(lake.root, inc, select=["sales_daily"]), spark_server)
    orders = DeltaTable(str(lake.path("f2_public_orders"))).to_pandas()
    orders["day"] = orders["ordered_at"].dt.date
    per_day = orders.groupby("day")["id"].apply(list)
    day = per_day[per_day.map(len) == per_day.map(len).min()].index[0]
    moved = next(i for d, ids in per_day.items() if d != day for i in ids)
    lake.delete("f2_public_orders", [int(i) for i in per_day[day]])  # the day loses its orders
    DeltaTable(str(lake.path("f3_dbo_invoices"))).delete()  # ... and every invoice (truncate)
    row = orders.set_index("id").loc[moved]
    lake.upsert(
        "f2_public_orders",
        [
            {  # an update that moves an order to another day with a new amount
                "id": int(moved),
                "customer_id": int(row["customer_id"]),
                "status": "paid",
                "amount": Decimal("7.77"),
                "currency": "EUR",
                "ordered_at": sample._ts(sample.random.Random(99)),
                "notes": None,
            }
        ],
    )
    report = ok(spark_server.build(lake.root, inc, select=["sales_daily"]), spark_server)
    ok(spark_server.build(lake.root, full, full=True, select=["sales_daily"]), spark_server)
    assert report["sales_daily"]["mode"] == "incremental"
    built = read_model(inc, "sales_daily")
    pd.testing.assert_frame_equal(built, read_model(full, "sales_daily"), check_like=True)
    assert day not in set(built["sales_date"]) and (built["invoices"] == 0).all()
    again = ok(spark_server.build(lake.root, inc, select=["sales_daily"]), spark_server)
    assert again["sales_daily"]["mode"] == "unchanged"
