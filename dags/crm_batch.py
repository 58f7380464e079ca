"""Airflow DAG ``crm_batch``: wait for a CRM extract, load it with the Beam batch job, record it.

Wiring only (STYLE rule 22): the sensor asks ``connectors.crm`` whether the extract's
``_SUCCESS`` marker is there; the load runs ``beam_jobs.crm_batch`` as a subprocess of the
beam environment (Beam is never imported into Airflow); the last task writes the load's
summary (the job's JSON output line) to ``<state_dir>/crm/loads/<load_id>.json``.

Configuration (DAG params, defaults from the environment; the names before ``CAPA__...``,
in parentheses, still work but are deprecated):

* ``extract``: ``CAPA__DAGS__CRM_EXTRACT`` (``CAPA_CRM_EXTRACT``): folder or
  gs://bucket/prefix; ``{{ ds }}`` allowed
* ``warehouse``: ``CAPA__DAGS__CRM_WAREHOUSE`` (``CAPA_CRM_WAREHOUSE``): ``local:DIR`` or
  ``bigquery:PROJECT``
* ``full``: ``CAPA__DAGS__CRM_FULL`` (``CAPA_CRM_FULL``): "1" = full snapshot, missing rows
  become deletes
* ``max_reject_share``: ``CAPA__CRM__MAX_REJECT_SHARE`` (``CAPA_CRM_MAX_REJECT_SHARE``),
  default 0.05
* ``CAPA__DAGS__BEAM_PYTHON`` (``CAPA_BEAM_PYTHON``): the beam env's python (default
  ``<repo>/.venvs/beam/bin/python``)
* ``CAPA__STATE_DIR`` (``CAPA_STATE_DIR``): where load records go (default ``<repo>/.state``)
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.providers.standard.sensors.python import PythonSensor
from airflow.sdk import DAG, Param

from capa.config import env_setting

REPO = Path(__file__).resolve().parent.parent
BEAM_PYTHON = env_setting(
    "CAPA__DAGS__BEAM_PYTHON",
    str(REPO / ".venvs" / "beam" / "bin" / "python"),
    deprecated="CAPA_BEAM_PYTHON",
)
STATE_DIR = env_setting("CAPA__STATE_DIR", str(REPO / ".state"), deprecated="CAPA_STATE_DIR")


def extract_ready(extract: str) -> bool:
    from connectors.crm.extract import SUCCESS_MARKER
    from connectors.crm.filestore import open_filestore

    return bool(open_filestore(extract).exists(SUCCESS_MARKER))


def record_load(summary_line: str | None, state_dir: str) -> dict[str, Any]:
    if not summary_line:
        raise ValueError("the load task printed no summary line; see its log")
    summary = json.loads(summary_line)
    target = Path(state_dir) / "crm" / "loads" / f"{summary['load_id']}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(summary, indent=2, sort_keys=True))
    return dict(summary)


LOAD_COMMAND = (
    "cd {{ params.repo }} && {{ params.beam_python }} -m beam_jobs.crm_batch"
    " --extract '{{ params.extract }}' --warehouse '{{ params.warehouse }}'"
    " --max_reject_share {{ params.max_reject_share }}"
    "{% if params.full %} --full{% endif %}"
)

with DAG(
    dag_id="crm_batch",
    description="CRM extract -> raw layer (Beam batch job in the beam env)",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["capa", "crm"],
    params={
        "extract": Param(
            env_setting("CAPA__DAGS__CRM_EXTRACT", "", deprecated="CAPA_CRM_EXTRACT"),
            type="string",
        ),
        "warehouse": Param(
            env_setting(
                "CAPA__DAGS__CRM_WAREHOUSE",
                f"local:{STATE_DIR}/lakehouse",
                deprecated="CAPA_CRM_WAREHOUSE",
            ),
            type="string",
        ),
        "full": Param(
            env_setting("CAPA__DAGS__CRM_FULL", "", deprecated="CAPA_CRM_FULL") == "1",
            type="boolean",
        ),
        "max_reject_share": Param(
            float(
                env_setting(
                    "CAPA__CRM__MAX_REJECT_SHARE", "0.05", deprecated="CAPA_CRM_MAX_REJECT_SHARE"
                )
            ),
            type="number",
        ),
        "repo": Param(str(REPO), type="string"),
        "beam_python": Param(BEAM_PYTHON, type="string"),
    },
) as dag:
    wait = PythonSensor(
        task_id="wait_for_extract",
        python_callable=extract_ready,
        op_kwargs={"extract": "{{ params.extract }}"},
        poke_interval=10,
        timeout=6 * 3600,
        mode="reschedule",
    )
    load = BashOperator(task_id="load_extract", bash_command=LOAD_COMMAND, do_xcom_push=True)
    record = PythonOperator(
        task_id="record_load",
        python_callable=record_load,
        op_kwargs={
            "summary_line": "{{ ti.xcom_pull(task_ids='load_extract') }}",
            "state_dir": STATE_DIR,
        },
    )
    wait >> load >> record
