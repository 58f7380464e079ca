"""The DAG profiles, rendered: every task of every DAG imported by Airflow's DagBag in
.venvs/airflow (tests/airflow_render.py, a subprocess), its template fields rendered with test
Variables, and compared with what the deployment files say.

* gcp: the Composer env is ``local.composer_dag_env`` of deploy/gcp/composer.tf evaluated with
  test variables (tests/terraform_support.py), the Dataproc spec is rendered with
  ``local.dataproc_spec_vars`` of dataproc.tf; the Dataproc batches, the Flex Template launch
  and the BigQuery jobs must carry exactly the values Terraform gives (image/runtime, args,
  jars, service accounts, network, locations), so a drift between deploy/ and the DAGs fails.
* onprem: the spark-submit and Beam command lines their hooks build; their flags must parse
  with the jobs' own parsers (spark_jobs.build, beam_jobs.crm_batch + Beam's PipelineOptions).
* every profile: the same DAGs, task ids and dependencies (the model order).

Nothing here reaches GCP: these operators have never run against it (docs/emulated.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from functools import cache
from pathlib import Path
from string import Template
from typing import Any

import pytest
from terraform_support import TerraformValues, config, resource

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_PYTHON = ROOT / ".venvs" / "airflow" / "bin" / "python"
TEST_VARIABLES = {
    "project_id": "capa-test-7",
    "region": "europe-west4",
    "subnetwork": "projects/capa-test-7/regions/europe-west4/subnetworks/capa-private",
    "bq_location": "europe-west4",
}
XCOM = "crm-load-0007"  # what tests/airflow_render.py's stand-in xcom_pull returns
EXTRACT = "gs://capa-test-7-crm/2026-12-01"
FRESHNESS = "45"  # Airflow Variable capa_freshness_minutes
SPARK_MASTER = "spark://127.0.0.1:7077"
BEAM_RUNNER = "PortableRunner"


def render_dags(
    profile: str, env: dict[str, str], home: Path, dags: Path | None = None
) -> dict[str, Any]:
    """Import the DAG files with CAPA__DAGS__PROFILE=profile in the airflow env and render every
    task: from dags/ with the repository on the path, or from ``dags`` alone (a Composer-like
    dags folder holding everything the DAGs import)."""
    path = [str(dags)] if dags else [str(ROOT / "dags"), str(ROOT)]
    folder = dags or ROOT / "dags"
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CAPA_", "AIRFLOW"))},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": os.pathsep.join(path),
        "CAPA__DAGS__PROFILE": profile,
        "CAPA__DAGS__CRM_EXTRACT": EXTRACT,
        "AIRFLOW_VAR_CAPA_FRESHNESS_MINUTES": FRESHNESS,
        **env,
    }
    home.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [str(AIRFLOW_PYTHON), str(ROOT / "tests" / "airflow_render.py"), str(folder)],
        env=full_env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}, result["errors"]
    assert result["heavy"] == [], "Airflow must not import Spark or Beam"
    return result if dags else result["dags"]


@cache
def terraform() -> TerraformValues:
    return TerraformValues(TEST_VARIABLES)


@cache
def composer_env() -> dict[str, str]:
    settings = json.loads((ROOT / "deploy" / "composer" / "environment.json").read_text())
    env = {**settings["env_variables"], **terraform().value(config()["locals"]["composer_dag_env"])}
    return {k: str(v) for k, v in env.items()}


@cache
def dataproc_spec() -> dict[str, Any]:
    """consumption_models.json as dataproc.tf renders it (templatefile with dataproc_spec_vars)."""
    spec_vars = terraform().value(config()["locals"]["dataproc_spec_vars"])
    text = (ROOT / "deploy" / "dataproc" / "consumption_models.json.tftpl").read_text()
    rendered: dict[str, Any] = json.loads(Template(text).substitute(spec_vars))
    return rendered


@pytest.fixture(scope="module")
def gcp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("gcp")
    env = composer_env()
    # Composer mounts gs://<composer bucket>/data at /home/airflow/gcs/data; dataproc.tf writes
    # the specs under data/dataproc/: put the rendered spec where the env points, in tmp.
    obj = resource("google_storage_bucket_object", "dataproc_specs")
    folder = re.match(r'"(data/[^$]+)/\$', obj["name"])
    assert folder, obj["name"]
    assert env["CAPA_DATAPROC_SPECS"] == f"/home/airflow/gcs/{folder.group(1)}"
    specs = tmp / folder.group(1)
    specs.mkdir(parents=True)
    (specs / "consumption_models.json").write_text(json.dumps(dataproc_spec()))
    dags = composer_dags_folder(tmp / "dags")
    rendered = render_dags("gcp", {**env, "CAPA_DATAPROC_SPECS": str(specs)}, tmp / "home", dags)
    outside = [f for f in rendered["capa_files"] if not f.startswith(str(dags))]
    assert rendered["capa_files"] and not outside, f"imported from outside the upload: {outside}"
    return rendered["dags"]


def composer_dags_folder(folder: Path) -> Path:
    """What composer.tf uploads to the bucket's dags/ folder (locals dag_globs under dags/,
    dag_code_globs under the repository root), copied into ``folder``: the gcp DAGs are imported
    from it alone, as Composer does, so a module they need and Terraform misses fails here."""
    locals_ = config()["locals"]
    uploads = [(ROOT / "dags", glob.strip('"')) for glob in locals_["dag_globs"]]
    uploads += [(ROOT, glob.strip('"')) for glob in locals_["dag_code_globs"]]
    for base, glob in uploads:
        for source in base.glob(glob):
            if source.is_file() and "__pycache__" not in source.parts:
                target = folder / source.relative_to(base)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
    return folder


@pytest.fixture(scope="module")
def onprem(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    env = {
        "AIRFLOW_CONN_SPARK_DEFAULT": SPARK_MASTER,
        "AIRFLOW_VAR_CAPA_LAKEHOUSE": "/data/capa/lakehouse",
        "AIRFLOW_VAR_CAPA_BEAM_RUNNER": BEAM_RUNNER,
        "AIRFLOW_VAR_CAPA_BEAM_JOB_ENDPOINT": "spark-jobserver.internal:8099",
        "CAPA__DAGS__CRM_WAREHOUSE": "local:/data/capa/lakehouse",
    }
    return render_dags("onprem", env, tmp_path_factory.mktemp("onprem"))


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return render_dags("local", {}, tmp_path_factory.mktemp("local"))


def models() -> list[str]:
    from spark_jobs.project import load_project

    return [m.name for m in load_project().order()]


# --- every profile ---------------------------------------------------------------------------


def test_profiles_share_dags_task_ids_and_model_order(
    local: dict[str, Any], onprem: dict[str, Any], gcp: dict[str, Any]
) -> None:
    rendered = {"local": local, "onprem": onprem, "gcp": gcp}
    shapes = {
        name: {dag: {t: r["upstream"] for t, r in tasks.items()} for dag, tasks in dags.items()}
        for name, dags in rendered.items()
    }
    assert shapes["onprem"] == shapes["local"]
    assert shapes["gcp"]["consumption"] == shapes["local"]["consumption"]
    assert shapes["gcp"]["crm_batch"] == shapes["local"]["crm_batch"]
    builds = {t for t in shapes["local"]["consumption"] if t.startswith("build_")}
    assert builds == {f"build_{m}" for m in models()}
    classes = {
        name: {t: r["class"] for t, r in dags["consumption"].items()}
        for name, dags in rendered.items()
    }
    assert set(classes["local"].values()) == {"BashOperator"}
    assert {classes["onprem"][b] for b in builds} == {"SparkSubmitOperator"}
    assert {classes["gcp"][b] for b in builds} == {"DataprocCreateBatchOperator"}


# --- gcp -------------------------------------------------------------------------------------


def test_gcp_dataproc_batches_are_the_terraform_spec_one_model_each(gcp: dict[str, Any]) -> None:
    tasks = gcp["consumption"]
    spec = {k: v for k, v in dataproc_spec().items() if k != "_comment"}
    tv = terraform()
    for model in models():
        fields = tasks[f"build_{model}"]["fields"]
        assert fields["project_id"] == TEST_VARIABLES["project_id"]
        assert fields["region"] == TEST_VARIABLES["region"]
        assert re.fullmatch(r"[a-z0-9-]{4,63}", fields["batch_id"]), fields["batch_id"]
        batch = fields["batch"]
        expected = json.loads(json.dumps(spec))
        expected["pyspark_batch"]["args"] += ["--select", model]
        assert batch == expected
        execution = batch["environment_config"]["execution_config"]
        assert execution["service_account"] == tv.expression(
            "google_service_account.dataproc.email"
        )
        assert execution["subnetwork_uri"] == TEST_VARIABLES["subnetwork"]
        assert execution["staging_bucket"] == tv.expression("google_storage_bucket.artifacts.name")
        assert batch["runtime_config"]["version"] == tv.variables["dataproc_runtime_version"]
        pyspark = batch["pyspark_batch"]
        bucket = f"gs://{tv.expression('google_storage_bucket.artifacts.name')}"
        entry = tv.value(resource("google_storage_bucket_object", "spark_entrypoint")["name"])
        code = tv.value(resource("google_storage_bucket_object", "spark_code")["name"])
        assert pyspark["main_python_file_uri"] == f"{bucket}/{entry}"
        assert pyspark["python_file_uris"] == [f"{bucket}/{code}"]
        assert "jar_file_uris" not in pyspark, "runtime 3.0 bundles the BigQuery connector"


def test_gcp_dataproc_batch_args_parse_as_builder_flags_for_one_model(gcp: dict[str, Any]) -> None:
    from spark_jobs.build import build_parser

    tasks = gcp["consumption"]
    for model in models():
        args = build_parser().parse_args(
            tasks[f"build_{model}"]["fields"]["batch"]["pyspark_batch"]["args"]
        )
        assert (args.select, args.session, args.warehouse) == (
            model,
            "managed",
            f"bigquery:{TEST_VARIABLES['project_id']}",
        )


def test_gcp_crm_load_is_a_flex_template_launch_as_terraform_configures_dataflow(
    gcp: dict[str, Any],
) -> None:
    fields = gcp["crm_batch"]["load_extract"]
    tv = terraform()
    assert fields["class"] == "DataflowStartFlexTemplateOperator"
    assert (fields["fields"]["project_id"], fields["fields"]["location"]) == (
        TEST_VARIABLES["project_id"],
        TEST_VARIABLES["region"],
    )
    launch = fields["fields"]["body"]["launchParameter"]
    assert launch["containerSpecGcsPath"] == tv.expression("local.crm_template_gcs_path")
    apply_job = resource("google_dataflow_flex_template_job", "apply")
    environment = launch["environment"]
    assert environment == {
        "serviceAccountEmail": tv.value(apply_job["service_account_email"]),
        "subnetwork": tv.value(apply_job["subnetwork"]),
        "ipConfiguration": tv.value(apply_job["ip_configuration"]),
        "tempLocation": tv.value(apply_job["temp_location"]),
        "stagingLocation": tv.value(apply_job["staging_location"]),
    }
    assert launch["parameters"] == {
        "extract": EXTRACT,
        "warehouse": f"bigquery:{TEST_VARIABLES['project_id']}",
        "max_reject_share": "0.05",
        "full": "false",
    }


def test_gcp_crm_template_parameters_are_declared_and_are_job_flags(gcp: dict[str, Any]) -> None:
    """Every launch parameter is declared in the template metadata (and matches its regexes),
    every required one is passed, and each declared one is a flag of beam_jobs.crm_batch."""
    import argparse

    from beam_jobs.crm_batch import add_arguments

    metadata = json.loads((ROOT / "deploy" / "dataflow" / "crm_batch_metadata.json").read_text())
    declared = {p["name"]: p for p in metadata["parameters"]}
    params = gcp["crm_batch"]["load_extract"]["fields"]["body"]["launchParameter"]["parameters"]
    assert set(params) <= set(declared)
    assert {n for n, p in declared.items() if not p["isOptional"]} <= set(params)
    for name, value in params.items():
        for regex in declared[name].get("regexes", []):
            assert re.fullmatch(regex, value), (name, value, regex)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parsed, unknown = parser.parse_known_args([f"--{k}={v}" for k, v in params.items()])
    assert unknown == []
    assert (parsed.extract, parsed.full, parsed.max_reject_share) == (EXTRACT, False, 0.05)
    flags = {a.dest for a in parser._actions}
    assert set(declared) <= flags, set(declared) - flags


def test_gcp_checks_and_publish_are_bigquery_jobs_on_the_terraform_datasets(
    gcp: dict[str, Any],
) -> None:
    from capa.events import raw_table_name
    from connectors.crm.contract import load_contract
    from connectors.crm.load import LOADS_TABLE
    from spark_jobs.project import load_project

    dags = gcp
    tv = terraform()
    project = TEST_VARIABLES["project_id"]
    raw = tv.expression("google_bigquery_dataset.raw.dataset_id")
    consumption = tv.expression("google_bigquery_dataset.consumption.dataset_id")
    contract = load_contract()
    cases = {
        ("consumption", "raw_freshness"): (
            f"`{project}.{raw}.__TABLES__`",
            {"tables": load_project().raw_tables(), "max_age_minutes": FRESHNESS},
        ),
        ("consumption", "publish_bigquery"): (
            f"`{project}.{consumption}.__TABLES__`",
            {"models": models(), "run_start": "2026-12-01 06:00:00+00:00"},
        ),
        ("crm_batch", "record_load"): (
            f"`{project}.{raw}.{raw_table_name(contract.source, contract.schema_, LOADS_TABLE)}`",
            {"load_id": XCOM},
        ),
    }
    for (dag, task), (table, params) in cases.items():
        rendered = dags[dag][task]
        assert rendered["class"] == "BigQueryInsertJobOperator"
        assert rendered["fields"]["project_id"] == project
        assert rendered["location"] == tv.variables["bq_location"]
        query = rendered["fields"]["configuration"]["query"]
        assert query["useLegacySql"] is False and query["parameterMode"] == "NAMED"
        assert query["query"].startswith("ASSERT ") and table in query["query"]
        bound = {
            p["name"]: p["parameterValue"].get("value")
            or [v["value"] for v in p["parameterValue"]["arrayValues"]]
            for p in query["queryParameters"]
        }
        assert bound == params
        assert all(f"@{name}" in query["query"] for name in params), "every value is bound"


# --- onprem ----------------------------------------------------------------------------------


def spark_pom_artifacts() -> set[str]:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    pom = ET.parse(ROOT / "scripts" / "jars" / "spark.pom")
    return {a.text or "" for a in pom.findall(".//m:dependency/m:artifactId", ns)}


def test_onprem_builds_are_spark_submits_to_the_standalone_master(onprem: dict[str, Any]) -> None:
    from spark_jobs.build import build_parser

    tasks = onprem["consumption"]
    for model in models():
        task = tasks[f"build_{model}"]
        cmd = task["command"]
        assert cmd[0] == "spark-submit" and cmd[cmd.index("--master") + 1] == SPARK_MASTER
        path = task["fields"]["env_vars"]["PATH"].split(os.pathsep)[0]
        assert (Path(path) / "spark-submit").is_file(), "spark-submit of the spark env on PATH"
        jars = cmd[cmd.index("--jars") + 1].split(",")
        assert all(Path(j).is_file() for j in jars)
        for artifact in spark_pom_artifacts():
            assert any(Path(j).name.startswith(artifact) for j in jars), artifact
        app = cmd.index(str(ROOT / "deploy" / "dataproc" / "run_models.py"))
        args = build_parser().parse_args(cmd[app + 1 :])
        assert (args.select, args.session, args.lakehouse) == (
            model,
            "managed",
            Path("/data/capa/lakehouse"),
        )
        conf = dict(cmd[i + 1].split("=", 1) for i, c in enumerate(cmd) if c == "--conf")
        assert Path(conf["spark.pyspark.python"]).is_file()


def test_onprem_crm_load_is_a_beam_python_pipeline_with_a_configurable_runner(
    onprem: dict[str, Any],
) -> None:
    from apache_beam.options.pipeline_options import (
        PipelineOptions,
        PortableOptions,
        StandardOptions,
    )

    from beam_jobs.crm_batch import add_arguments

    dag = onprem["crm_batch"]
    load = dag["load_extract"]
    assert load["class"] == "BeamRunPythonPipelineOperator"
    cmd = load["command"]
    assert cmd[:3] == [
        str(ROOT / ".venvs" / "beam" / "bin" / "python"),
        "-m",
        "beam_jobs.crm_batch",
    ]
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args, beam_args = parser.parse_known_args(cmd[3:])
    assert (args.extract, args.warehouse, args.full) == (
        EXTRACT,
        "local:/data/capa/lakehouse",
        False,
    )
    options = PipelineOptions(beam_args)
    assert options.view_as(StandardOptions).runner == BEAM_RUNNER
    assert options.view_as(PortableOptions).job_endpoint == "spark-jobserver.internal:8099"
    record = dag["record_load"]["fields"]["bash_command"]
    assert f"crm status --warehouse 'local:/data/capa/lakehouse' --load-id '{XCOM}'" in record
