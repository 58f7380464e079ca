"""The onprem profile's Spark standalone cluster and running Airflow (``capa up --profile onprem``).

Real processes, started through :class:`capa_app.stack.Stack` on free loopback ports in a
throwaway state dir: a Spark master and worker from .venvs/spark, and Airflow's API server,
scheduler and DAG processor from .venvs/airflow (SQLite, LocalExecutor, DAGs folder dags/).

* ``spark-submit --master spark://...`` of the consumption build (spark_jobs/build.py, Delta
  jars from .cache/jars/spark) builds the demo models on the cluster; its tables equal those
  of a local[2] build of the same raw lakehouse.
* Airflow, triggered through its REST API, runs the consumption DAG to success; its Spark
  tasks run as applications of the cluster (the master lists them) and write the same
  tables. The scheduler creates no runs of its own here
  (``max_dagruns_to_create_per_loop=0``), so the triggered run is the only one.

Marked ``onprem`` (own command: ``make test-onprem``): minutes on 2 cores (every DAG task is a
Spark application with its own driver and executor JVMs), beyond the default run's budget.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from service_support import MODELS, ROOT, assert_same_tables, run_checked

from capa.config import AirflowConfig, LocalWarehouseConfig, SparkClusterConfig, load_settings
from capa_app.stack import Stack
from capa_app.stack.airflow import AirflowApiServer
from capa_app.stack.base import free_port, tail, wait_for
from capa_app.stack.spark import SparkMaster, submit_argv
from capa_app.stack.spark import spark_env as spark_home_env
from capa_app.stack.throwaway import throwaway_state_dir
from spark_jobs import sample
from spark_jobs.session import delta_jars

pytestmark = pytest.mark.onprem

SPARK = ["spark-master", "spark-worker"]
AIRFLOW = ["airflow-api-server", "airflow-scheduler", "airflow-dag-processor"]
SIZES = {"customers": 15, "orders": 40, "invoices": 20}
SPARK_PYTHON = ROOT / ".venvs" / "spark" / "bin" / "python"


@pytest.fixture(scope="module")
def onprem() -> Iterator[Stack]:
    """The profile's Spark cluster (running) and Airflow (started by the test needing it)."""
    state_dir = throwaway_state_dir("capa-onprem-")
    cluster = SparkClusterConfig(
        master_port=free_port(),
        master_webui_port=free_port(),
        worker_port=free_port(),
        worker_webui_port=free_port(),
    )
    settings = load_settings(
        state_dir=state_dir,
        spark_cluster=cluster,
        airflow=AirflowConfig(port=free_port()),
        warehouse=LocalWarehouseConfig(path=state_dir / "lakehouse"),
    )
    sample.seed(state_dir / "lakehouse", **SIZES)  # the raw layer Airflow's DAG builds from
    stack = Stack(settings)
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("AIRFLOW__SCHEDULER__MAX_DAGRUNS_TO_CREATE_PER_LOOP", "0")
            stack.up(SPARK, strict=True, profile="onprem")
            yield stack
    except BaseException:
        for log in sorted(stack.state.logs.glob("*.log")):
            sys.stderr.write(f"\n----- {log} -----\n{tail(log, 40)}\n")
        raise
    finally:
        stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def local_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The consumption tables of a local[2] build of the sample raw lakehouse."""
    lake = sample.seed(tmp_path_factory.mktemp("local") / "lakehouse", **SIZES)
    cmd = [str(SPARK_PYTHON), "-m", "spark_jobs.build", "run", "--lakehouse", str(lake.root)]
    run_checked(cmd, spark_env(), ROOT)
    return lake.root / "consumption"


def spark_env() -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("CAPA_")},
        **spark_home_env(),
        "PYTHONPATH": str(ROOT),
    }


def completed_apps(stack: Stack) -> list[str]:
    master = stack.service("spark-master")
    assert isinstance(master, SparkMaster)
    state = master.master_state() or {}
    return sorted(app["id"] for app in state.get("completedapps", []))


def test_spark_submit_builds_the_models_on_the_cluster_like_a_local_build(
    onprem: Stack, local_build: Path, tmp_path: Path
) -> None:
    lake = sample.seed(tmp_path / "lakehouse", **SIZES)
    before = completed_apps(onprem)
    script = ROOT / "spark_jobs" / "build.py"
    args = ("run", "--session", "managed", "--lakehouse", str(lake.root))
    argv = submit_argv(onprem.settings.spark_cluster, delta_jars(), script, *args)
    run_checked(argv, spark_env(), ROOT)
    # the build was an application of the cluster (listed once its driver unregistered)
    assert wait_for(lambda: len(completed_apps(onprem)) == len(before) + 1, timeout=30)
    assert_same_tables(lake.root / "consumption", local_build)


class AirflowApi:
    """Airflow's REST API as the profile's admin user (a JWT from /auth/token)."""

    def __init__(self, server: AirflowApiServer) -> None:
        self.url = server.base_url
        login = {"username": server.config.username, "password": server.admin_password()}
        self.token = self.call("POST", "/auth/token", login, auth=False)["access_token"]

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, auth: bool = True
    ) -> Any:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def dag_parsed(self, dag_id: str) -> bool:
        try:
            self.call("GET", f"/api/v2/dags/{dag_id}")
        except OSError:
            return False
        return True


def test_airflow_runs_the_triggered_consumption_dag_on_the_cluster(
    onprem: Stack, local_build: Path
) -> None:
    started = time.monotonic()
    onprem.up(AIRFLOW, strict=True, profile="onprem")
    up_seconds = time.monotonic() - started
    server = onprem.service("airflow-api-server")
    assert isinstance(server, AirflowApiServer)
    api = AirflowApi(server)
    assert wait_for(lambda: api.dag_parsed("consumption"), timeout=120, interval=1)
    before = completed_apps(onprem)

    api.call("PATCH", "/api/v2/dags/consumption", {"is_paused": False})
    run = api.call(
        "POST", "/api/v2/dags/consumption/dagRuns", {"logical_date": None, "dag_run_id": "it-1"}
    )
    assert run["state"] == "queued"
    states: list[str] = []

    def finished() -> bool:
        states.append(api.call("GET", "/api/v2/dags/consumption/dagRuns/it-1")["state"])
        return states[-1] in ("success", "failed")

    assert wait_for(finished, timeout=900, interval=2)
    tasks = api.call("GET", "/api/v2/dags/consumption/dagRuns/it-1/taskInstances")
    outcome = {t["task_id"]: t["state"] for t in tasks["task_instances"]}
    assert states[-1] == "success", outcome
    sys.stderr.write(
        f"\nairflow up {up_seconds:.0f}s, dag run {time.monotonic() - started - up_seconds:.0f}s\n"
    )
    assert {outcome[f"build_{m}"] for m in MODELS} == {"success"}
    assert outcome["publish_bigquery"] == "skipped"  # no BigQuery project configured

    def builds_on_cluster() -> int:
        return len(completed_apps(onprem)) - len(before)

    assert wait_for(lambda: builds_on_cluster() == len(MODELS), timeout=30), builds_on_cluster()
    warehouse = onprem.settings.warehouse
    assert isinstance(warehouse, LocalWarehouseConfig)
    assert_same_tables(warehouse.path / "consumption", local_build)

    pids = [onprem.service(name).running() for name in AIRFLOW]
    assert sorted(onprem.down(AIRFLOW)) == sorted(AIRFLOW)
    for record in pids:
        assert record is not None
        with pytest.raises(ProcessLookupError):  # the whole group went: task runners too
            os.killpg(record.pid, 0)
