"""Airflow DAG ``crm_batch``: wait for a CRM extract, load it with the Beam batch job, record it.

Wiring only (STYLE rule 22); the profile (``CAPA__DAGS__PROFILE``, ``capa_dags/profiles.py``)
picks the operators, the task ids are the same in every profile:

* ``wait_for_extract``: a sensor asks ``connectors.crm`` whether the extract's ``_SUCCESS``
  marker is there;
* ``load_extract``: local: ``beam_jobs.crm_batch`` as a subprocess of the beam environment
  (Beam is never imported into Airflow); onprem: ``BeamRunPythonPipelineOperator`` (runner from
  Variables); gcp: ``DataflowStartFlexTemplateOperator`` (the CRM Flex Template);
* ``record_load``: local: writes the load's summary (the job's JSON output line) to
  ``<state_dir>/crm/loads/<load_id>.json``; onprem and gcp: checks that the load ledger
  (``raw.crm_crm_loads``) records the extract's load as completed.

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

from datetime import datetime

from airflow.sdk import DAG, Param
from capa_dags.profiles import load_profile
from capa_dags.settings import BEAM_PYTHON, REPO, STATE_DIR

from capa.config import env_setting

profile = load_profile()

with DAG(
    dag_id="crm_batch",
    description="CRM extract -> raw layer (Beam batch job)",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["capa", "crm", profile.name],
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
    wait = profile.wait_for_extract("wait_for_extract")
    load = profile.load_extract("load_extract")
    record = profile.record_load("record_load", "load_extract", "wait_for_extract")
    wait >> load >> record
