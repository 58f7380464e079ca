"""Run by ``.venvs/airflow/bin/python`` (not collected by pytest): import the DAG files of
``sys.argv[1]`` with Airflow's DagBag, render every task's template fields with the real
Variable accessor (test Variables come from ``AIRFLOW_VAR_*`` env) and print one JSON document:
per DAG and task, the operator class, upstream ids, the rendered template fields and, for
spark-submit and Beam tasks, the command line their hook would run.

Stand-ins, because no task instance runs: ``ti.xcom_pull`` returns ``RENDER_XCOM``,
``ti.try_number`` is 1 and the run started at ``RUN_START``.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.execution_time.context import VariableAccessor

RENDER_XCOM = "crm-load-0007"
RUN_START = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


class StandInTaskInstance:
    try_number = 1

    def xcom_pull(self, task_ids: str | None = None, **_: Any) -> str:
        return RENDER_XCOM


class StandInDagRun:
    start_date = RUN_START
    run_id = "manual__2026-12-01T06:00:00+00:00"


def context(dag: Any) -> dict[str, Any]:
    return {
        "var": {"value": VariableAccessor(deserialize_json=False)},
        "params": {k: dag.params[k] for k in dag.params},
        "ds": "2026-12-01",
        "ds_nodash": "20261201",
        "ts_nodash": "20261201T060000",
        "ti": StandInTaskInstance(),
        "dag_run": StandInDagRun(),
    }


def command(task: Any) -> list[str] | None:
    """The command line of a spark-submit or Beam Python task, as its hook builds it."""
    kind = type(task).__name__
    if kind == "SparkSubmitOperator":
        return list(task._get_hook()._build_spark_submit_command(task.application))
    if kind == "BeamRunPythonPipelineOperator":
        from airflow.providers.apache.beam.hooks.beam import beam_options_to_args

        options = {**task.default_pipeline_options, **task.pipeline_options}
        prefix = [task.py_interpreter, *task.py_options, task.py_file]
        return [*prefix, f"--runner={task.runner}", *beam_options_to_args(options)]
    return None


def render(task: Any, ctx: dict[str, Any]) -> dict[str, Any]:
    task.render_template_fields(ctx)
    fields = {name: getattr(task, name) for name in task.template_fields}
    return {
        "class": type(task).__name__,
        "upstream": sorted(task.upstream_task_ids),
        "fields": fields,
        "command": command(task),
        "py_interpreter": getattr(task, "py_interpreter", None),
        "location": getattr(task, "location", None),
    }


def main() -> None:
    bag = DagBag(dag_folder=sys.argv[1])
    out: dict[str, Any] = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
    for dag_id, dag in bag.dags.items():
        ctx = context(dag)
        out["dags"][dag_id] = {t.task_id: render(t, ctx) for t in dag.tasks}
    heavy = [m for m in ("pyspark", "apache_beam") if m in sys.modules]
    out["heavy"] = heavy
    # where capa's own modules came from (a Composer-like dags folder must hold all of them)
    ours = ("capa", "capa_app", "connectors", "beam_jobs", "spark_jobs")
    out["capa_files"] = sorted(
        module.__file__
        for name, module in list(sys.modules.items())
        if name.split(".")[0] in ours and getattr(module, "__file__", None)  # not namespaces
    )
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
