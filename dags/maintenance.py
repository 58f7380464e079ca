"""Maintenance DAG for the raw layer: compact (optimize) then vacuum every raw Delta table, and
delete changelog rows past their retention.

Wiring only: tasks run ``spark_jobs.maintain`` (delta-rs) in the spark environment as
subprocesses. Settings (Airflow Variables, else env, else defaults; the env names before
``CAPA__...``, ``CAPA_<NAME>``, still work but are deprecated):

* ``capa_lakehouse`` (env ``CAPA__DAGS__LAKEHOUSE``, default ``<repo>/.state/lakehouse``)
* ``capa_spark_python`` (env ``CAPA__DAGS__SPARK_PYTHON``, default
  ``<repo>/.venvs/spark/bin/python``)
* ``capa_vacuum_retention_hours`` (env ``CAPA__DAGS__VACUUM_RETENTION_HOURS``, default 168:
  keep it longer than the time between model builds, whose incremental diff reads the
  previous raw version)
* ``capa_changelog_retention_days`` (env ``CAPA__DAGS__CHANGELOG_RETENTION_DAYS``, default 30)
"""

from __future__ import annotations

from datetime import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG
from capa_dags.settings import LAKEHOUSE, REPO, setting
from capa_dags.settings import SPARK_PYTHON as PYTHON

MAINTAIN = f"{PYTHON} -m spark_jobs.maintain"
ENV = {"PYTHONPATH": str(REPO)}

with DAG(
    dag_id="maintenance",
    description="compact + vacuum raw Delta tables, enforce changelog retention",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "cwd": str(REPO)},
    tags=["capa", "maintenance"],
) as dag:
    retention = BashOperator(
        task_id="changelog_retention",
        bash_command=f"{MAINTAIN} retention --lakehouse {LAKEHOUSE} "
        f"--changelog-days {setting('changelog_retention_days', '30')}",
        env=ENV,
        append_env=True,
    )
    compact = BashOperator(
        task_id="compact_raw",
        bash_command=f"{MAINTAIN} compact --lakehouse {LAKEHOUSE}",
        env=ENV,
        append_env=True,
    )
    vacuum = BashOperator(
        task_id="vacuum_raw",
        bash_command=f"{MAINTAIN} vacuum --lakehouse {LAKEHOUSE} "
        f"--retention-hours {setting('vacuum_retention_hours', '168')}",
        env=ENV,
        append_env=True,
    )
    retention >> compact >> vacuum
