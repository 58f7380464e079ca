"""The local profile (default): every task is a subprocess of capa's own environments.

Spark builds and raw upkeep run ``spark_jobs`` in the spark env, the CRM load runs
``beam_jobs.crm_batch`` in the beam env (on the in-process FnApiRunner); Airflow never imports
Spark or Beam. ``make demo`` and the integration tests run this profile.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.providers.standard.sensors.python import PythonSensor

from capa_dags import crm
from capa_dags.settings import (
    FRESHNESS_MINUTES,
    LAKEHOUSE,
    REPO,
    SPARK_PYTHON,
    STATE_DIR,
    setting,
)

SKIPPED = 99  # exit code that marks a task skipped
SPARK_ENV = {"SPARK_LOCAL_IP": "127.0.0.1", "PYTHONPATH": str(REPO)}
BQ_PROJECT = setting("bigquery_project", "")
BQ_DATASET = setting("bigquery_dataset", "consumption")
LOAD_COMMAND = (
    "cd {{ params.repo }} && {{ params.beam_python }} -m beam_jobs.crm_batch"
    " --extract '{{ params.extract }}' --warehouse '{{ params.warehouse }}'"
    " --max_reject_share {{ params.max_reject_share }}"
    "{% if params.full %} --full{% endif %}"
)


def spark_task(task_id: str, command: str, **kwargs: Any) -> Any:
    """A spark-env subprocess: ``<spark python> -m spark_jobs.<command>``."""
    return BashOperator(
        task_id=task_id,
        bash_command=f"{SPARK_PYTHON} -m spark_jobs.{command}",
        env=SPARK_ENV,
        append_env=True,
        **kwargs,
    )


def freshness_task(task_id: str) -> Any:
    """Lakehouse freshness (delta-rs): shared by the local and on-prem profiles."""
    return spark_task(
        task_id,
        f"maintain freshness --lakehouse {LAKEHOUSE} --max-age-minutes {FRESHNESS_MINUTES}",
    )


def publish_task(task_id: str) -> Any:
    """Lakehouse consumption tables -> BigQuery (skipped without a project): local and on-prem."""
    return BashOperator(
        task_id=task_id,
        bash_command=f"[ -n '{BQ_PROJECT}' ] || exit {SKIPPED}; {SPARK_PYTHON} -m spark_jobs.publish "
        f"--lakehouse {LAKEHOUSE} --project '{BQ_PROJECT}' --dataset '{BQ_DATASET}'",
        env=SPARK_ENV,
        append_env=True,
        skip_on_exit_code=SKIPPED,
    )


def extract_sensor(task_id: str, callable_: Any) -> Any:
    """Wait (reschedule mode) until the extract's ``_SUCCESS`` marker is there."""
    return PythonSensor(
        task_id=task_id,
        python_callable=callable_,
        op_kwargs={"extract": "{{ params.extract }}"},
        poke_interval=10,
        timeout=6 * 3600,
        mode="reschedule",
    )


class LocalProfile:
    name = "local"

    def raw_freshness(self, task_id: str, tables: list[str]) -> Any:
        return freshness_task(task_id)

    def build_model(self, task_id: str, model: str) -> Any:
        return spark_task(task_id, f"build run --lakehouse {LAKEHOUSE} --select {model}")

    def publish(self, task_id: str, models: list[str]) -> Any:
        return publish_task(task_id)

    def wait_for_extract(self, task_id: str) -> Any:
        return extract_sensor(task_id, crm.extract_ready)

    def load_extract(self, task_id: str) -> Any:
        return BashOperator(task_id=task_id, bash_command=LOAD_COMMAND, do_xcom_push=True)

    def record_load(self, task_id: str, load_task_id: str, wait_task_id: str) -> Any:
        return PythonOperator(
            task_id=task_id,
            python_callable=crm.record_load,
            op_kwargs={
                "summary_line": "{{ ti.xcom_pull(task_ids='" + load_task_id + "') }}",
                "state_dir": STATE_DIR,
            },
        )
