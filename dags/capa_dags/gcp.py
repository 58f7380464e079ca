"""The GCP profile (Cloud Composer): Google's operators, configured from ``deploy/``.

* model builds: ``DataprocCreateBatchOperator``, one Serverless for Apache Spark batch per
  model. The batch body is the spec ``deploy/gcp/dataproc.tf`` renders from
  ``deploy/dataproc/consumption_models.json.tftpl`` into the Composer data folder
  (``CAPA_DATAPROC_SPECS``), with ``--select <model>`` added to its args: image (runtime), args,
  service account and subnetwork come from Terraform, never from this file.
* CRM load: ``DataflowStartFlexTemplateOperator`` launching the CRM batch Flex Template
  (``deploy/dataflow/crm_batch_metadata.json``); template path, service account, network and
  temp/staging locations are the Composer env variables ``deploy/gcp/composer.tf`` sets from
  the same Terraform locals as the streaming apply job.
* raw freshness, the publish gate and the CRM ledger check: ``BigQueryInsertJobOperator``
  scripts (``ASSERT``) over table metadata, values bound as query parameters.

None of these has run against real GCP: the tests render every task and compare it with
``deploy/`` (docs/emulated.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from airflow.providers.google.cloud.operators.bigquery import BigQueryInsertJobOperator
from airflow.providers.google.cloud.operators.dataflow import DataflowStartFlexTemplateOperator
from airflow.providers.google.cloud.operators.dataproc import DataprocCreateBatchOperator

from capa_dags import crm
from capa_dags.local import extract_sensor
from capa_dags.settings import FRESHNESS_MINUTES, required_env

MODELS_SPEC = "consumption_models.json"
FRESHNESS_SQL = """ASSERT NOT EXISTS (
  SELECT name FROM UNNEST(@tables) AS name
  LEFT JOIN `{dataset}.__TABLES__` AS t ON t.table_id = name
  WHERE t.table_id IS NULL
     OR TIMESTAMP_MILLIS(t.last_modified_time)
        < TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL @max_age_minutes MINUTE)
) AS 'a raw table the models read is missing or older than the freshness limit: check the apply job (capa status)'"""
PUBLISH_SQL = """ASSERT NOT EXISTS (
  SELECT name FROM UNNEST(@models) AS name
  LEFT JOIN `{dataset}.__TABLES__` AS t ON t.table_id = name
  WHERE t.table_id IS NULL OR TIMESTAMP_MILLIS(t.last_modified_time) < @run_start
) AS 'a consumption table was not replaced by this run: see the build tasks'"""
LEDGER_SQL = """ASSERT EXISTS (
  SELECT 1 FROM `{table}` WHERE load_id = @load_id AND status = 'completed'
) AS 'the CRM load is not recorded as completed: see the Dataflow job of load_extract'"""


def _param(name: str, kind: str, value: str) -> dict[str, Any]:
    return {"name": name, "parameterType": {"type": kind}, "parameterValue": {"value": value}}


def _array_param(name: str, values: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "parameterType": {"type": "ARRAY", "arrayType": {"type": "STRING"}},
        "parameterValue": {"arrayValues": [{"value": v} for v in values]},
    }


def dataset(key: str) -> str:
    """``project.dataset`` of a warehouse dataset (``CAPA__WAREHOUSE__<KEY>``)."""
    return f"{required_env('CAPA__WAREHOUSE__PROJECT')}.{required_env(f'CAPA__WAREHOUSE__{key}')}"


def models_batch(model: str) -> dict[str, Any]:
    """The Terraform-rendered batch spec, building ``model`` only."""
    path = Path(required_env("CAPA_DATAPROC_SPECS")) / MODELS_SPEC
    spec = {k: v for k, v in json.loads(path.read_text()).items() if k != "_comment"}
    pyspark = dict(spec["pyspark_batch"])
    pyspark["args"] = [*pyspark["args"], "--select", model]
    return {**spec, "pyspark_batch": pyspark}


def crm_launch_parameter() -> dict[str, Any]:
    """Flex Template launch of the CRM batch pipeline (Dataflow ``LaunchFlexTemplateParameter``)."""
    return {
        "jobName": "capa-crm-batch",
        "containerSpecGcsPath": required_env("CAPA__DAGS__DATAFLOW_CRM_TEMPLATE"),
        "parameters": {
            "extract": "{{ params.extract }}",
            "warehouse": "{{ params.warehouse }}",
            "max_reject_share": "{{ params.max_reject_share }}",
            "full": "{{ params.full | lower }}",
        },
        "environment": {
            "serviceAccountEmail": required_env("CAPA__DAGS__DATAFLOW_SERVICE_ACCOUNT"),
            "subnetwork": required_env("CAPA__DAGS__DATAFLOW_SUBNETWORK"),
            "ipConfiguration": "WORKER_IP_PRIVATE",
            "tempLocation": required_env("CAPA__DAGS__DATAFLOW_TEMP_LOCATION"),
            "stagingLocation": required_env("CAPA__DAGS__DATAFLOW_STAGING_LOCATION"),
        },
    }


def crm_loads_table() -> str:
    from capa.events import raw_table_name
    from connectors.crm.contract import load_contract
    from connectors.crm.load import LOADS_TABLE

    contract = load_contract()
    return (
        f"{dataset('RAW_DATASET')}.{raw_table_name(contract.source, contract.schema_, LOADS_TABLE)}"
    )


class GcpProfile:
    name = "gcp"

    def __init__(self) -> None:
        self.project = required_env("CAPA_GCP_PROJECT")
        self.region = required_env("CAPA_GCP_REGION")
        self.location = required_env("CAPA__WAREHOUSE__LOCATION")

    def query(self, task_id: str, sql: str, parameters: list[dict[str, Any]]) -> Any:
        """A BigQuery script job in the warehouse location; fails when its ASSERT fails."""
        return BigQueryInsertJobOperator(
            task_id=task_id,
            project_id=self.project,
            location=self.location,
            configuration={
                "query": {
                    "query": sql,
                    "useLegacySql": False,
                    "parameterMode": "NAMED",
                    "queryParameters": parameters,
                }
            },
        )

    def raw_freshness(self, task_id: str, tables: list[str]) -> Any:
        return self.query(
            task_id,
            FRESHNESS_SQL.format(dataset=dataset("RAW_DATASET")),
            [_array_param("tables", tables), _param("max_age_minutes", "INT64", FRESHNESS_MINUTES)],
        )

    def build_model(self, task_id: str, model: str) -> Any:
        return DataprocCreateBatchOperator(
            task_id=task_id,
            project_id=self.project,
            region=self.region,
            batch=models_batch(model),
            batch_id=f"capa-{model.replace('_', '-')}-"
            + "{{ ts_nodash | lower }}-{{ ti.try_number }}",
        )

    def publish(self, task_id: str, models: list[str]) -> Any:
        return self.query(
            task_id,
            PUBLISH_SQL.format(dataset=dataset("CONSUMPTION_DATASET")),
            [
                _array_param("models", models),
                _param("run_start", "TIMESTAMP", "{{ dag_run.start_date }}"),
            ],
        )

    def wait_for_extract(self, task_id: str) -> Any:
        return extract_sensor(task_id, crm.extract_load_id)

    def load_extract(self, task_id: str) -> Any:
        return DataflowStartFlexTemplateOperator(
            task_id=task_id,
            project_id=self.project,
            location=self.region,
            body={"launchParameter": crm_launch_parameter()},
            wait_until_finished=True,
        )

    def record_load(self, task_id: str, load_task_id: str, wait_task_id: str) -> Any:
        load_id = "{{ ti.xcom_pull(task_ids='" + wait_task_id + "') }}"
        return self.query(
            task_id,
            LEDGER_SQL.format(table=crm_loads_table()),
            [_param("load_id", "STRING", load_id)],
        )
