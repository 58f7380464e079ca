"""The consumption and maintenance DAGs: clean import (DagBag) and `airflow dags test` runs.

Airflow lives in .venvs/airflow and is driven by subprocess with a temporary AIRFLOW_HOME
(SQLite); the DAG tasks themselves start the spark environment as subprocesses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from deltalake import DeltaTable
from service_support import AIRFLOW_BIN, ROOT, airflow_environment, run_checked

from spark_jobs import sample


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    yield airflow_environment(tmp_path_factory.mktemp("airflow_home"))


DAGBAG = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dags = {d: {t.task_id: sorted(t.upstream_task_ids) for t in bag.dags[d].tasks} for d in bag.dags}
heavy = [m for m in ("pyspark", "apache_beam", "delta") if m in sys.modules]
errors = {k: str(v) for k, v in bag.import_errors.items()}
print(json.dumps({"errors": errors, "dags": dags, "heavy": heavy}))
"""


def test_dags_import_cleanly_and_wire_models_in_dependency_order(
    airflow_env: dict[str, str], tmp_path: Path
) -> None:
    result = {}
    for name in ("consumption", "maintenance"):
        proc = run_checked(
            [str(AIRFLOW_BIN / "python"), "-c", DAGBAG, str(ROOT / "dags" / f"{name}.py")],
            airflow_env,
            tmp_path,
        )
        result[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result[name]["errors"] == {} and result[name]["heavy"] == []
    consumption = result["consumption"]["dags"]["consumption"]
    assert consumption["build_customer_orders"] == ["raw_freshness"]
    assert consumption["build_sales_daily"] == ["raw_freshness"]
    assert consumption["build_customer_360"] == ["build_customer_orders"]
    assert consumption["build_customer_features"] == [
        "build_customer_360",
        "build_customer_orders",
    ]
    assert consumption["publish_bigquery"] == [
        "build_customer_360",
        "build_customer_features",
        "build_customer_orders",
        "build_sales_daily",
    ]
    assert result["maintenance"]["dags"]["maintenance"] == {
        "changelog_retention": [],
        "compact_raw": ["changelog_retention"],
        "vacuum_raw": ["compact_raw"],
    }


def test_dags_test_consumption_builds_every_model(
    airflow_env: dict[str, str], tmp_path: Path
) -> None:
    lake = sample.seed(tmp_path / "lh", customers=15, orders=40, invoices=20)
    env = {**airflow_env, "CAPA__DAGS__LAKEHOUSE": str(lake.root)}
    proc = run_checked([str(AIRFLOW_BIN / "airflow"), "dags", "test", "consumption"], env, tmp_path)
    output = proc.stdout + proc.stderr
    assert "state=success" in output or "DagRunState.SUCCESS" in output, output[-3000:]
    for model, rows in {"customer_360": 15, "customer_features": 15}.items():
        assert len(DeltaTable(str(lake.root / "consumption" / model)).to_pyarrow_table()) == rows
    assert len(DeltaTable(str(lake.root / "consumption" / "sales_daily")).to_pyarrow_table()) > 0


def test_dags_test_maintenance_enforces_changelog_retention(
    airflow_env: dict[str, str], tmp_path: Path
) -> None:
    lake = sample.seed(tmp_path / "lh", customers=10, orders=20, invoices=5)
    lake.delete("f2_public_orders", [1, 2])
    lake.upsert(
        "f2_public_orders", [{**sample.order(sample.random.Random(1), 3, 10), "status": "paid"}]
    )
    for new_id in (21, 22):  # insert-only merges add files
        lake.upsert("f2_public_orders", [sample.order(sample.random.Random(new_id), new_id, 10)])
    changelog = lake.path("f2_public_orders").with_name("f2_public_orders_changelog")
    assert len(DeltaTable(str(changelog)).to_pyarrow_table()) == 25
    assert len(DeltaTable(str(lake.path("f2_public_orders"))).file_uris()) > 1
    env = {
        **airflow_env,
        "CAPA__DAGS__LAKEHOUSE": str(lake.root),
        "CAPA__DAGS__CHANGELOG_RETENTION_DAYS": "0",
    }
    run_checked([str(AIRFLOW_BIN / "airflow"), "dags", "test", "maintenance"], env, tmp_path)
    assert len(DeltaTable(str(changelog)).to_pyarrow_table()) == 0
    replica = DeltaTable(str(lake.path("f2_public_orders")))
    assert len(replica.to_pyarrow_table()) == 22  # replica (with 2 tombstones) untouched
    assert len(replica.file_uris()) == 1  # compacted
