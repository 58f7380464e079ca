"""The consumption and maintenance DAGs: clean import (DagBag) and `airflow dags test` runs.

Airflow lives in .venvs/airflow and is driven by subprocess with a temporary AIRFLOW_HOME
(SQLite); the DAG tasks themselves start the spark environment as subprocesses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def lineage_env(airflow_events: Path, build_events: Path) -> dict[str, str]:
    """OpenLineage on, file transports: the Airflow provider's ``[openlineage] transport`` for
    the task events, OpenLineage's own variables for the Spark builds the tasks start."""
    transport = {"type": "file", "log_file_path": str(airflow_events), "append": True}
    return {
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(transport),
        "OPENLINEAGE__TRANSPORT__TYPE": "file",
        "OPENLINEAGE__TRANSPORT__LOG_FILE_PATH": str(build_events),
        "OPENLINEAGE__TRANSPORT__APPEND": "true",
    }


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def runs_by_job(events: list[dict[str, Any]]) -> dict[str, dict[str, list[str]]]:
    """job name -> run id -> its event types in the order written."""
    runs: dict[str, dict[str, list[str]]] = {}
    for e in events:
        job = runs.setdefault(e["job"]["name"], {})
        job.setdefault(e["run"]["runId"], []).append(e["eventType"])
    return runs


def test_dags_test_consumption_builds_every_model(
    airflow_env: dict[str, str], tmp_path: Path
) -> None:
    lake = sample.seed(tmp_path / "lh", customers=15, orders=40, invoices=20)
    airflow_events, build_events = tmp_path / "airflow.jsonl", tmp_path / "builds.jsonl"
    env = {
        **airflow_env,
        "CAPA__DAGS__LAKEHOUSE": str(lake.root),
        **lineage_env(airflow_events, build_events),
    }
    proc = run_checked([str(AIRFLOW_BIN / "airflow"), "dags", "test", "consumption"], env, tmp_path)
    output = proc.stdout + proc.stderr
    assert "state=success" in output or "DagRunState.SUCCESS" in output, output[-3000:]
    for model, rows in {"customer_360": 15, "customer_features": 15}.items():
        assert len(DeltaTable(str(lake.root / "consumption" / model)).to_pyarrow_table()) == rows
    assert len(DeltaTable(str(lake.root / "consumption" / "sales_daily")).to_pyarrow_table()) > 0

    models = ("customer_orders", "customer_360", "sales_daily", "customer_features")
    # the Airflow provider: one run per task, started then completed
    tasks = runs_by_job(read_events(airflow_events))
    for task in [f"consumption.build_{m}" for m in models] + ["consumption.raw_freshness"]:
        runs = tasks.get(task, {})
        assert len(runs) == 1, (task, runs)
        types = next(iter(runs.values()))
        assert types[0] == "START" and types[-1] == "COMPLETE", (task, types)
    # the Spark builds the tasks ran: one run per model, raw -> consumption edges
    builds = read_events(build_events)
    for model, runs in runs_by_job(builds).items():
        assert list(runs.values()) == [["START", "COMPLETE"]], model
    edges = {
        (i["name"], o["name"])
        for e in builds
        if e["eventType"] == "COMPLETE"
        for i in e["inputs"]
        for o in e["outputs"]
    }
    raw, consumption = lake.root.resolve() / "raw", lake.root.resolve() / "consumption"
    assert (str(raw / "f2_public_customers"), str(consumption / "customer_360")) in edges
    assert (str(raw / "f2_public_orders"), str(consumption / "customer_orders")) in edges
    assert (str(consumption / "customer_orders"), str(consumption / "customer_360")) in edges
    assert (str(consumption / "customer_360"), str(consumption / "customer_features")) in edges
    assert {e["job"]["name"] for e in builds} == {f"consumption.{m}" for m in models}


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
