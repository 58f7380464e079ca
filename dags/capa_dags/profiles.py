"""The deployment profiles of the DAGs: one factory per kind of task, chosen by name.

=========  =========================================  ==========================================
profile    consumption (freshness, builds, publish)   crm_batch (load)
=========  =========================================  ==========================================
local      BashOperator: spark env subprocesses       BashOperator: beam env subprocess
onprem     SparkSubmitOperator (spark:// standalone)  BeamRunPythonPipelineOperator (runner set
           for builds; freshness/publish as local     by Variables: portable job server, ...)
gcp        DataprocCreateBatchOperator (Serverless)   DataflowStartFlexTemplateOperator
           for builds; BigQueryInsertJobOperator for  (deploy/dataflow/crm_batch_metadata.json);
           the freshness check and the publish gate   BigQueryInsertJobOperator checks the ledger
=========  =========================================  ==========================================

Each profile module imports only its own provider, so the local DAGs never import Google's.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from capa_dags.settings import profile_name

PROFILES = {
    "local": "capa_dags.local:LocalProfile",
    "onprem": "capa_dags.onprem:OnPremProfile",
    "gcp": "capa_dags.gcp:GcpProfile",
}


class DagProfile(Protocol):
    """What a DAG file asks of a profile; every method returns one operator (inside a DAG)."""

    name: str

    def raw_freshness(self, task_id: str, tables: list[str]) -> Any: ...

    def build_model(self, task_id: str, model: str) -> Any: ...

    def publish(self, task_id: str, models: list[str]) -> Any: ...

    def wait_for_extract(self, task_id: str) -> Any: ...

    def load_extract(self, task_id: str) -> Any: ...

    def record_load(self, task_id: str, load_task_id: str, wait_task_id: str) -> Any: ...


def load_profile(name: str | None = None) -> DagProfile:
    """The profile ``name`` (default: ``CAPA__DAGS__PROFILE``, else ``local``)."""
    chosen = name or profile_name()
    target = PROFILES.get(chosen)
    if target is None:
        raise ValueError(
            f"unknown DAG profile {chosen!r}: set CAPA__DAGS__PROFILE to one of {sorted(PROFILES)}"
        )
    module, cls = target.split(":")
    profile: DagProfile = getattr(importlib.import_module(module), cls)()
    return profile
