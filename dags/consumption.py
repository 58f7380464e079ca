"""Consumption DAG: raw freshness check, then one Spark build per model in dependency order,
then the publish step.

Wiring only (STYLE rule 22): the profile (``CAPA__DAGS__PROFILE``: local | onprem | gcp, see
``capa_dags/profiles.py``) picks each task's operator; the task ids and the model order (the
refs between the model files, ``spark_jobs.project``, pure Python) are the same in every
profile. In the local profile (default) every task runs a module of ``spark_jobs`` in the spark
environment as a subprocess; Airflow never imports Spark. Settings are Airflow Variables, read
at run time through templates, with defaults from the environment and then the repository
layout (the env names before ``CAPA__...``, ``CAPA_<NAME>``, still work but are deprecated):

* ``capa_lakehouse``   (env ``CAPA__DAGS__LAKEHOUSE``, default ``<repo>/.state/lakehouse``)
* ``capa_spark_python`` (env ``CAPA__DAGS__SPARK_PYTHON``, default
  ``<repo>/.venvs/spark/bin/python``)
* ``capa_freshness_minutes`` (env ``CAPA__DAGS__FRESHNESS_MINUTES``, default 60)
* ``capa_bigquery_project`` / ``capa_bigquery_dataset`` (env ``CAPA__DAGS__BIGQUERY_PROJECT`` /
  ``CAPA__DAGS__BIGQUERY_DATASET``): publish target; no project = skipped (local, onprem).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG
from capa_dags.profiles import load_profile
from capa_dags.settings import REPO

from spark_jobs.project import load_project

profile = load_profile()
project = load_project()

with DAG(
    dag_id="consumption",
    description="raw replicas -> Spark SQL consumption models -> BigQuery",
    schedule="@hourly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=2), "cwd": str(REPO)},
    tags=["capa", "spark", profile.name],
) as dag:
    freshness = profile.raw_freshness("raw_freshness", project.raw_tables())
    models = project.order()
    publish = profile.publish("publish_bigquery", [m.name for m in models])
    tasks = {}
    for model in models:
        tasks[model.name] = profile.build_model(f"build_{model.name}", model.name)
        upstream = [tasks[r] for r in model.refs] or [freshness]
        upstream >> tasks[model.name] >> publish
