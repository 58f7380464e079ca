"""The ``crm_batch`` Airflow DAG: it imports cleanly and ``airflow dags test`` loads an extract.

Airflow lives in its own env (.venvs/airflow); these tests drive it by subprocess with a
temporary AIRFLOW_HOME (SQLite), as a scheduler host would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_support import AIRFLOW_BIN, ROOT, airflow_environment, run_checked

from capa.warehouse import open_warehouse
from connectors.crm.filestore import LocalFileStore
from connectors.crm.generator import GeneratorConfig, generate_extract


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("airflow_home")
    yield airflow_environment(home, CAPA__STATE_DIR=str(home / "state"))


def test_dag_imports_cleanly(airflow_env: dict[str, str], tmp_path: Path) -> None:
    script = (
        "import json; from airflow.dag_processing.dagbag import DagBag; "
        f"b = DagBag(dag_folder={str(ROOT / 'dags' / 'crm_batch.py')!r}); "
        "d = b.dags.get('crm_batch'); "
        "print(json.dumps({'errors': {k: str(v) for k, v in b.import_errors.items()}, "
        "'tasks': sorted(t.task_id for t in d.tasks) if d else None}))"
    )
    proc = run_checked([str(AIRFLOW_BIN / "python"), "-c", script], airflow_env, tmp_path)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"errors": {}, "tasks": ["load_extract", "record_load", "wait_for_extract"]}
    modules = run_checked(
        [
            str(AIRFLOW_BIN / "python"),
            "-c",
            f"import runpy, sys; runpy.run_path({str(ROOT / 'dags' / 'crm_batch.py')!r}); "
            "print('apache_beam' in sys.modules)",
        ],
        airflow_env,
        tmp_path,
    )
    assert modules.stdout.strip().splitlines()[-1] == "False"  # Beam never imported into Airflow


def test_dags_test_loads_a_generated_extract(airflow_env: dict[str, str], tmp_path: Path) -> None:
    extract, lake = tmp_path / "extract", tmp_path / "lake"
    manifest = generate_extract(
        LocalFileStore(extract), GeneratorConfig(accounts=200, seed=5, load_id="dag-test-1")
    )
    env = {
        **airflow_env,
        "CAPA__DAGS__CRM_EXTRACT": str(extract),
        "CAPA__DAGS__CRM_WAREHOUSE": f"local:{lake}",
    }
    proc = run_checked([str(AIRFLOW_BIN / "airflow"), "dags", "test", "crm_batch"], env, tmp_path)
    assert "state=success" in proc.stdout + proc.stderr
    record = json.loads(
        (Path(env["CAPA__STATE_DIR"]) / "crm" / "loads" / "dag-test-1.json").read_text()
    )
    assert record["load_id"] == manifest.load_id and record["rows_valid"] > 2000
    wh = open_warehouse(f"local:{lake}")
    loads = list(wh.query("SELECT load_id, status FROM raw.crm_crm_loads"))
    assert loads == [{"load_id": "dag-test-1", "status": "completed"}]
    assert next(iter(wh.query("SELECT count(*) AS n FROM raw.crm_crm_accounts")))["n"] > 190
