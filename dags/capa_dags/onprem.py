"""The on-prem profile: the provider operators an on-prem Airflow team expects.

* model builds: ``SparkSubmitOperator`` against a Spark standalone master. The master URL is
  the Airflow connection ``CAPA__DAGS__SPARK_CONN_ID`` (default ``spark_default``, e.g.
  ``AIRFLOW_CONN_SPARK_DEFAULT='spark://127.0.0.1:7077'``); the application is the entry point
  the Dataproc batches run (``deploy/dataproc/run_models.py`` -> ``spark_jobs.build``) in
  ``--session managed`` mode, with the Delta jars of ``scripts/jars/spark.pom``
  (``bash scripts/fetch_jars.sh spark``) on ``--jars``.
* CRM load: ``BeamRunPythonPipelineOperator`` running ``python -m beam_jobs.crm_batch`` with the
  beam env's interpreter. The runner and its options are Airflow Variables (``capa_beam_runner``,
  default ``PortableRunner`` against a job server at ``capa_beam_job_endpoint``): Beam's Spark
  and Flink job-server jars cannot be fetched here, so which runner runs is a deployment choice.
* raw freshness and publish: the lakehouse tasks of the local profile (delta-rs, no Spark).
"""

from __future__ import annotations

import os
from typing import Any

from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.bash import BashOperator

from capa.config import env_setting
from capa_dags import crm
from capa_dags.local import extract_sensor, freshness_task, publish_task
from capa_dags.settings import BEAM_PYTHON, LAKEHOUSE, REPO, SPARK_PYTHON, setting

SPARK_CONN_ID = env_setting("CAPA__DAGS__SPARK_CONN_ID", "spark_default")
SPARK_BIN = env_setting("CAPA__DAGS__SPARK_BIN", str(REPO / ".venvs" / "spark" / "bin"))
APPLICATION = str(REPO / "deploy" / "dataproc" / "run_models.py")


def delta_jars() -> str:
    """The pre-fetched Delta jars (``spark_jobs.session``), comma separated for ``--jars``."""
    from spark_jobs.session import delta_jars as find

    return ",".join(str(j) for j in find())


def spark_env() -> dict[str, str]:
    """Env of spark-submit: its own bin first on PATH, capa importable by the driver."""
    path = os.pathsep.join([SPARK_BIN, os.environ.get("PATH", os.defpath)])
    return {
        "PATH": path,
        "PYTHONPATH": str(REPO),
        "SPARK_LOCAL_IP": setting("spark_local_ip", "127.0.0.1"),
    }


def beam_options() -> dict[str, str]:
    """``beam_jobs.crm_batch`` flags (DAG params) plus the runner's options (Variables)."""
    return {
        "extract": "{{ params.extract }}",
        "warehouse": "{{ params.warehouse }}",
        "max_reject_share": "{{ params.max_reject_share }}",
        "full": "{{ params.full | lower }}",
        "job_endpoint": setting("beam_job_endpoint", "127.0.0.1:8099"),
        "environment_type": setting("beam_environment_type", "LOOPBACK"),
    }


class OnPremProfile:
    name = "onprem"

    def raw_freshness(self, task_id: str, tables: list[str]) -> Any:
        return freshness_task(task_id)

    def build_model(self, task_id: str, model: str) -> Any:
        return SparkSubmitOperator(
            task_id=task_id,
            conn_id=SPARK_CONN_ID,
            application=APPLICATION,
            application_args=[
                "run",
                "--session",
                "managed",
                "--lakehouse",
                LAKEHOUSE,
                "--select",
                model,
            ],
            jars=delta_jars(),
            conf={
                "spark.pyspark.python": SPARK_PYTHON,
                "spark.pyspark.driver.python": SPARK_PYTHON,
            },
            env_vars=spark_env(),
            name=f"capa-{model}",
        )

    def publish(self, task_id: str, models: list[str]) -> Any:
        return publish_task(task_id)

    def wait_for_extract(self, task_id: str) -> Any:
        return extract_sensor(task_id, crm.extract_load_id)

    def load_extract(self, task_id: str) -> Any:
        return BeamRunPythonPipelineOperator(
            task_id=task_id,
            py_file="beam_jobs.crm_batch",
            py_options=["-m"],
            py_interpreter=BEAM_PYTHON,
            runner=setting("beam_runner", "PortableRunner"),
            pipeline_options=beam_options(),
        )

    def record_load(self, task_id: str, load_task_id: str, wait_task_id: str) -> Any:
        """The pipeline records completed loads in ``raw.crm_crm_loads``; check this one is."""
        return BashOperator(
            task_id=task_id,
            bash_command=f"{BEAM_PYTHON} -m capa_app.cli crm status"
            " --warehouse '{{ params.warehouse }}'"
            " --load-id '{{ ti.xcom_pull(task_ids='" + wait_task_id + "') }}'",
            env={"PYTHONPATH": str(REPO)},
            append_env=True,
        )
