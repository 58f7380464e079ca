"""Consumption DAG: raw freshness check, then one Spark build per model in dependency order,
then an optional BigQuery publish.

Wiring only (STYLE rule 22): every task runs a module of ``spark_jobs`` in the spark environment
as a subprocess; Airflow never imports Spark. Model order comes from the refs between the model
files (``spark_jobs.project``, pure Python). Settings are Airflow Variables, read at run time
through templates, with defaults from the environment and then the repository layout (the
env names before ``CAPA__...``, ``CAPA_<NAME>``, still work but are deprecated):

* ``capa_lakehouse``   (env ``CAPA__DAGS__LAKEHOUSE``, default ``<repo>/.state/lakehouse``)
* ``capa_spark_python`` (env ``CAPA__DAGS__SPARK_PYTHON``, default
  ``<repo>/.venvs/spark/bin/python``)
* ``capa_freshness_minutes`` (env ``CAPA__DAGS__FRESHNESS_MINUTES``, default 60)
* ``capa_bigquery_project`` / ``capa_bigquery_dataset`` (env ``CAPA__DAGS__BIGQUERY_PROJECT`` /
  ``CAPA__DAGS__BIGQUERY_DATASET``): publish target; no project = skipped.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

from capa.config import env_setting
from spark_jobs.project import load_project

REPO = Path(__file__).resolve().parent.parent
SKIPPED = 99  # exit code that marks a task skipped


def setting(name: str, default: str) -> str:
    """Jinja: Airflow Variable ``capa_<name>``, else env ``CAPA__DAGS__<NAME>`` (the older
    ``CAPA_<NAME>`` still works, deprecated), else ``default``."""
    env = f"CAPA__DAGS__{name.upper()}"
    fallback = env_setting(env, default, deprecated=f"CAPA_{name.upper()}").replace("'", "")
    return "{{ var.value.get('capa_" + name + "', '" + fallback + "') }}"


LAKEHOUSE = setting("lakehouse", str(REPO / ".state" / "lakehouse"))
PYTHON = setting("spark_python", str(REPO / ".venvs" / "spark" / "bin" / "python"))
FRESHNESS = setting("freshness_minutes", "60")
BQ_PROJECT = setting("bigquery_project", "")
BQ_DATASET = setting("bigquery_dataset", "consumption")
ENV = {"SPARK_LOCAL_IP": "127.0.0.1", "PYTHONPATH": str(REPO)}

with DAG(
    dag_id="consumption",
    description="raw Delta replicas -> Spark SQL consumption models -> BigQuery",
    schedule="@hourly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=2), "cwd": str(REPO)},
    tags=["capa", "spark"],
) as dag:
    freshness = BashOperator(
        task_id="raw_freshness",
        bash_command=f"{PYTHON} -m spark_jobs.maintain freshness --lakehouse {LAKEHOUSE} "
        f"--max-age-minutes {FRESHNESS}",
        env=ENV,
        append_env=True,
    )
    publish = BashOperator(
        task_id="publish_bigquery",
        bash_command=f"[ -n '{BQ_PROJECT}' ] || exit {SKIPPED}; {PYTHON} -m spark_jobs.publish "
        f"--lakehouse {LAKEHOUSE} --project '{BQ_PROJECT}' --dataset '{BQ_DATASET}'",
        env=ENV,
        append_env=True,
        skip_on_exit_code=SKIPPED,
    )
    tasks: dict[str, BashOperator] = {}
    for model in load_project().order():
        tasks[model.name] = BashOperator(
            task_id=f"build_{model.name}",
            bash_command=f"{PYTHON} -m spark_jobs.build run --lakehouse {LAKEHOUSE} "
            f"--select {model.name}",
            env=ENV,
            append_env=True,
        )
        upstream = [tasks[r] for r in model.refs] or [freshness]
        upstream >> tasks[model.name] >> publish
