"""Static checks of the GCP Terraform (deploy/gcp): no cloud and no provider binary here.

What runs: every .tf parses (python-hcl2), every reference resolves (var./local./data./
resource addresses), every resource has the arguments the google provider marks Required
(a schema table taken from the provider docs, below), the required resources and their
wiring are present, every repository file the configuration ships exists, and no secret
value is in the deployment files. ``terraform fmt -check`` runs in
tests/integration/test_terraform_fmt.py. ``terraform validate``/``plan`` need the google
provider, which cannot be downloaded here (see docs/emulated.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest
from terraform_support import (
    TF_DIR,
    TF_FILES,
    block,
    clean,
    config,
    parsed,
    resource,
    resources,
    unquote,
)

ROOT = Path(__file__).resolve().parents[2]

# Arguments and blocks the google/google-beta provider docs mark (Required), for the
# resource types used here (provider 6.x/7.x). Nested: "block.sub" = required inside block.
REQUIRED: dict[str, set[str]] = {
    "google_project_service": {"service"},
    "google_storage_bucket": {"name", "location"},
    "google_storage_bucket_iam_member": {"bucket", "role", "member"},
    "google_storage_bucket_object": {"bucket", "name"},
    "google_storage_notification": {"bucket", "payload_format", "topic"},
    "google_pubsub_topic": {"name"},
    "google_pubsub_topic_iam_member": {"topic", "role", "member"},
    "google_pubsub_subscription": {"name", "topic"},
    "google_pubsub_subscription_iam_member": {"subscription", "role", "member"},
    "google_secret_manager_secret": {"secret_id", "replication"},
    "google_secret_manager_secret_iam_member": {"secret_id", "role", "member"},
    "google_datastream_private_connection": {
        "private_connection_id",
        "display_name",
        "location",
        "vpc_peering_config",
        "vpc_peering_config.vpc",
        "vpc_peering_config.subnet",
    },
    "google_datastream_connection_profile": {"connection_profile_id", "display_name", "location"},
    "google_datastream_stream": {
        "stream_id",
        "display_name",
        "location",
        "source_config",
        "destination_config",
        "source_config.source_connection_profile",
        "destination_config.destination_connection_profile",
    },
    "google_bigquery_dataset": {"dataset_id"},
    "google_bigquery_dataset_iam_member": {"dataset_id", "role", "member"},
    "google_project_iam_member": {"project", "role", "member"},
    "google_service_account": {"account_id"},
    "google_service_account_iam_member": {"service_account_id", "role", "member"},
    "google_dataflow_flex_template_job": {"name", "container_spec_gcs_path"},
    "google_managed_kafka_cluster": {
        "cluster_id",
        "location",
        "capacity_config",
        "gcp_config",
        "capacity_config.vcpu_count",
        "capacity_config.memory_bytes",
        "gcp_config.access_config",
    },
    "google_managed_kafka_topic": {"topic_id", "cluster", "location", "replication_factor"},
    "google_composer_environment": {"name"},
}
# Sub-blocks of which exactly one is needed (oneof in the API).
ONE_OF: dict[str, tuple[str, ...]] = {
    "google_datastream_connection_profile": (
        "postgresql_profile",
        "gcs_profile",
        "mysql_profile",
        "oracle_profile",
        "bigquery_profile",
        "sql_server_profile",
    ),
}
META_ARGS = {"count", "for_each", "provider", "depends_on", "lifecycle"}


# --- loading ----------------------------------------------------------------------------


def walk_strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from walk_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk_strings(value)


def literal(value: Any) -> Any:
    return unquote(value) if isinstance(value, str) else value


# --- parsing and references ----------------------------------------------------------------


@pytest.mark.parametrize("path", TF_FILES, ids=lambda p: p.name)
def test_every_tf_file_parses(path: Path) -> None:
    tree = parsed(path)
    assert tree, f"{path} parsed to nothing"


def test_tf_files_are_small_and_one_concern_each() -> None:
    expected = {
        "versions.tf",
        "providers.tf",
        "variables.tf",
        "outputs.tf",
        "apis.tf",
        "secrets.tf",
        "storage.tf",
        "notifications.tf",
        "datastream.tf",
        "bigquery.tf",
        "dataflow.tf",
        "dataproc.tf",
        "composer.tf",
        "kafka.tf",
    }
    assert {p.name for p in TF_FILES} == expected
    for path in TF_FILES:
        assert len(path.read_text().splitlines()) < 300, f"{path.name} is over 300 lines: split it"


_REF = re.compile(
    r"(?<![\w.\"-])(var|local|data|google_[a-z0-9_]+)\.([a-z0-9_]+)(?:\.([a-z0-9_]+))?"
)


def _references() -> Iterator[tuple[str, str, str | None]]:
    for path in TF_FILES:
        for text in walk_strings(parsed(path)):
            for match in _REF.finditer(text):
                yield match.group(1), match.group(2), match.group(3)


def test_every_reference_resolves() -> None:
    cfg = config()
    problems = []
    for head, first, second in _references():
        if head == "var" and first not in cfg["variable"]:
            problems.append(f"var.{first} is not declared in variables.tf")
        elif head == "local" and first not in cfg["locals"]:
            problems.append(f"local.{first} is not defined in any locals block")
        elif head == "data" and (second is None or second not in cfg["data"].get(first, {})):
            problems.append(f"data.{first}.{second} is not declared")
        elif head.startswith("google_") and first not in cfg["resource"].get(head, {}):
            problems.append(f"{head}.{first} is not declared")
    assert not problems, "\n".join(sorted(set(problems)))


def test_every_declared_variable_is_used_and_described() -> None:
    cfg = config()
    used = {first for head, first, _ in _references() if head == "var"}
    for name, body in cfg["variable"].items():
        assert literal(body.get("description", "")).strip(), f"variable {name} has no description"
        assert name in used, f"variable {name} is declared but never used"


# --- schema (required arguments) -------------------------------------------------------------


def _has(body: dict[str, Any], dotted: str) -> bool:
    head, _, rest = dotted.partition(".")
    if head not in body and f"dynamic {head}" not in str(body.get("dynamic", "")):
        return False
    if not rest:
        return True
    inner = body[head]
    return isinstance(inner, list) and all(_has(b, rest) for b in inner)


def test_every_resource_type_is_in_the_schema_table() -> None:
    unknown = set(config()["resource"]) - set(REQUIRED)
    assert not unknown, f"add the provider's required arguments of {sorted(unknown)} to REQUIRED"


@pytest.mark.parametrize("rtype", sorted(REQUIRED))
def test_resources_have_the_required_arguments(rtype: str) -> None:
    for name, body in resources(rtype).items():
        missing = sorted(arg for arg in REQUIRED[rtype] if not _has(body, arg))
        assert not missing, f"{rtype}.{name} misses required {missing}"
        if rtype in ONE_OF:
            present = [b for b in ONE_OF[rtype] if b in body]
            assert len(present) == 1, (
                f"{rtype}.{name} needs exactly one of {ONE_OF[rtype]}, has {present}"
            )


# --- required resources and their wiring ------------------------------------------------------


def test_datastream_stream_reads_postgres_and_writes_avro_to_gcs_with_backfill_all() -> None:
    stream = resource("google_datastream_stream", "f2")
    source = block(stream, "source_config")
    assert (
        "google_datastream_connection_profile.f2_postgres.id" in source["source_connection_profile"]
    )
    pg = block(source, "postgresql_source_config")
    assert pg["publication"] == "${var.pg_publication}"
    assert pg["replication_slot"] == "${var.pg_replication_slot}"
    gcs = block(block(stream, "destination_config"), "gcs_destination_config")
    assert "avro_file_format" in gcs and "json_file_format" not in gcs
    assert "backfill_all" in stream and "backfill_none" not in stream
    assert literal(config()["variable"]["datastream_stream_state"]["default"]) == "NOT_STARTED"


def test_postgres_profile_takes_the_password_from_secret_manager() -> None:
    profile = block(
        resource("google_datastream_connection_profile", "f2_postgres"), "postgresql_profile"
    )
    assert "password" not in profile
    assert (
        "google_secret_manager_secret.pg_password.id" in profile["secret_manager_stored_password"]
    )
    gcs = block(resource("google_datastream_connection_profile", "landing_gcs"), "gcs_profile")
    assert gcs["bucket"] == "${google_storage_bucket.landing.name}"


def test_private_connectivity_and_ip_allowlist_are_both_supported() -> None:
    private = resource("google_datastream_private_connection", "f2")
    assert 'var.source_connectivity == "private"' in private["count"]
    validation = block(config()["variable"]["source_connectivity"], "validation")
    assert "ip_allowlist" in validation["condition"] and "private" in validation["condition"]


def test_landing_bucket_notifies_pubsub_on_object_finalize() -> None:
    note = resource("google_storage_notification", "datastream_files")
    assert note["bucket"] == "${google_storage_bucket.landing.name}"
    assert [literal(e) for e in note["event_types"]] == ["OBJECT_FINALIZE"]
    assert literal(note["payload_format"]) == "JSON_API_V1"
    assert note["topic"] == "${google_pubsub_topic.datastream_files.id}"
    sub = resource("google_pubsub_subscription", "datastream_files_reader")
    assert sub["topic"] == note["topic"]
    block(sub, "dead_letter_policy")
    publisher = resource("google_pubsub_topic_iam_member", "gcs_publishes_notifications")
    assert (
        publisher["member"] == "${local.gcs_agent}"
        and literal(publisher["role"]) == "roles/pubsub.publisher"
    )
    reader = resource("google_pubsub_subscription_iam_member", "reader_dataflow")
    assert "google_service_account.dataflow.email" in reader["member"]


def _members(rtype: str) -> set[tuple[str, str, str]]:
    """(target, role, member) of every IAM member resource, expanding for_each sets/maps.

    target is the dataset name (raw/consumption) for dataset IAM, the project expression otherwise.
    """
    out = set()
    for body in resources(rtype).values():
        each = str(body.get("for_each", ""))
        roles = (
            re.findall(r'"(roles/[^"]+)"', each)
            if body["role"] == "${each.value}"
            else [literal(body["role"])]
        )
        target = body.get("dataset_id", body.get("project", ""))
        source = each if target == "${each.value}" else target
        targets = re.findall(r"google_bigquery_dataset\.(\w+)\.dataset_id", source) or [target]
        for role in roles:
            for tgt in targets:
                out.add((tgt, role, literal(body["member"])))
    return out


def test_bigquery_datasets_and_group_iam() -> None:
    assert literal(resource("google_bigquery_dataset", "raw")["dataset_id"]) == "raw"
    assert (
        literal(resource("google_bigquery_dataset", "consumption")["dataset_id"]) == "consumption"
    )
    ops, ds = "group:${var.ops_users_group}", "group:${var.data_science_group}"
    dataset = _members("google_bigquery_dataset_iam_member")
    project = {(role, member) for _, role, member in _members("google_project_iam_member")}
    assert ("consumption", "roles/bigquery.dataViewer", ops) in dataset
    assert ("roles/bigquery.jobUser", ops) in project
    assert not any(m == ops and t == "raw" for t, _, m in dataset), "ops users must not read raw"
    assert ("consumption", "roles/bigquery.dataViewer", ds) in dataset
    assert ("raw", "roles/bigquery.dataViewer", ds) in dataset
    assert ("roles/bigquery.readSessionUser", ds) in project


def test_apply_job_is_a_flex_template_job_with_its_own_service_account() -> None:
    job = resource("google_dataflow_flex_template_job", "apply")
    assert job["provider"] == "google-beta"
    assert job["service_account_email"] == "${google_service_account.dataflow.email}"
    assert job["parameters"] == "${local.apply_parameters}"
    roles = {r for _, r, m in _members("google_project_iam_member") if "dataflow.email" in m}
    assert {"roles/dataflow.worker", "roles/bigquery.jobUser", "roles/managedkafka.client"} <= roles
    assert config()["locals"]["apply_template_metadata"].count("deploy/dataflow/metadata.json") == 1


def test_apply_job_parameters_are_declared_by_the_template_metadata() -> None:
    metadata = json.loads((ROOT / "deploy" / "dataflow" / "metadata.json").read_text())
    declared = {p["name"] for p in metadata["parameters"]}
    passed = set(config()["locals"]["apply_parameters"])
    assert passed <= declared, f"not in deploy/dataflow/metadata.json: {sorted(passed - declared)}"
    required = {p["name"] for p in metadata["parameters"] if not p.get("isOptional", False)}
    assert required <= passed, (
        f"required template parameters not passed: {sorted(required - passed)}"
    )


def test_apply_job_parameters_are_flags_of_the_apply_job() -> None:
    options = (ROOT / "beam_jobs" / "options.py").read_text()
    for name in config()["locals"]["apply_parameters"]:
        assert f'"--{name}"' in options, f"--{name} is not a flag of beam_jobs/options.py"


def test_composer_3_environment_carries_the_dags() -> None:
    env = resource("google_composer_environment", "capa")
    software = block(block(env, "config"), "software_config")
    assert software["image_version"] == "${var.composer_image_version}"
    assert literal(config()["variable"]["composer_image_version"]["default"]).startswith(
        "composer-3-"
    )
    dags = resource("google_storage_bucket_object", "dags")
    assert "local.dag_files" in dags["for_each"]
    assert 'fileset("${local.repo_root}/dags"' in config()["locals"]["dag_files"]


def test_secrets_are_named_containers_without_values() -> None:
    ids = {literal(b["secret_id"]) for b in resources("google_secret_manager_secret").values()}
    assert ids == {"${var.pg_password_secret_id}", "${var.sqlserver_password_secret_id}"}
    assert "google_secret_manager_secret_version" not in config()["resource"]
    assert "google_secret_manager_secret_version" not in config()["data"]


def test_canonical_topic_on_managed_kafka() -> None:
    resource("google_managed_kafka_cluster", "canonical")
    topic = resource("google_managed_kafka_topic", "canonical")
    assert topic["topic_id"] == "${var.kafka_topic}"
    from capa.config import KafkaConfig

    defaults = KafkaConfig()
    variables = config()["variable"]
    assert literal(variables["kafka_topic"]["default"]) == defaults.topic
    assert literal(variables["kafka_dlq_topic"]["default"]) == defaults.dlq_topic
    from connectors.kafka.limits import topic_config

    sized = topic_config(defaults.max_message_bytes)  # the same limit as topics capa creates
    for name in ("canonical", "dead_letter"):
        configs = resource("google_managed_kafka_topic", name)["configs"]
        assert {k: literal(configs[k]) for k in sized} == sized


def test_dataproc_specs_render_to_valid_batch_json() -> None:
    specs = sorted((ROOT / "deploy" / "dataproc").glob("*.json.tftpl"))
    assert specs, "deploy/dataproc has no batch spec"
    spec_vars = re.search(
        r"dataproc_spec_vars = \{(.*?)\n  \}", (TF_DIR / "dataproc.tf").read_text(), re.S
    )
    assert spec_vars, "dataproc_spec_vars not found in dataproc.tf"
    provided = set(re.findall(r"^\s*(\w+)\s*=", spec_vars.group(1), re.M))
    for spec in specs:
        text = spec.read_text()
        used = set(re.findall(r"\$\{(\w+)\}", text))
        assert used <= provided, (
            f"{spec.name} uses undefined template vars {sorted(used - provided)}"
        )
        rendered = json.loads(re.sub(r"\$\{(\w+)\}", lambda m: f"X-{m.group(1)}", text))
        batch = rendered["pyspark_batch"]
        assert batch["main_python_file_uri"].endswith("/run_models.py")
        assert batch["args"][0] == "run", "the entry point runs `spark_jobs.build run ...`"
        assert rendered["runtime_config"]["version"] == "X-runtime_version"
        assert rendered["environment_config"]["execution_config"]["service_account"]


def test_dataproc_batch_args_are_builder_flags_for_the_bigquery_mode() -> None:
    """The batch hands its args to `spark_jobs.build` (run_models.py): they must parse there,
    select the BigQuery mode on the Terraform datasets and keep the runtime's session."""
    from spark_jobs.build import build_parser
    from spark_jobs.io_bigquery import target_from_args

    text = (ROOT / "deploy" / "dataproc" / "consumption_models.json.tftpl").read_text()
    rendered = json.loads(re.sub(r"\$\{(\w+)\}", lambda m: f"X-{m.group(1)}", text))
    args = build_parser().parse_args(rendered["pyspark_batch"]["args"])
    target = target_from_args(args)
    assert target is not None, "the batch must run the BigQuery mode (--warehouse bigquery:...)"
    assert (target.project, target.raw_dataset, target.consumption_dataset) == (
        "X-project_id",
        "X-raw_dataset",
        "X-consumption_dataset",
    )
    assert target.location == "X-bq_location"
    assert args.session == "managed", "a local[2] session would ignore the Dataproc executors"
    assert not (target.http_endpoint or target.grpc_endpoint), "no emulator endpoints in GCP"
    options = target.connector_options()
    assert "gcpAccessToken" not in options, "GCP uses the batch service account's credentials"
    assert options["writeMethod"] == "direct" and options["readDataFormat"] == "ARROW"
    spec_vars = (TF_DIR / "dataproc.tf").read_text()
    for name, ref in [
        ("raw_dataset", "google_bigquery_dataset.raw"),
        ("consumption_dataset", "google_bigquery_dataset.consumption"),
    ]:
        assert re.search(rf"{name}\s*=\s*{re.escape(ref)}\.dataset_id", spec_vars)
    properties = rendered["runtime_config"]["properties"]
    assert not any("temporaryGcsBucket" in k for k in properties), "direct writes need no bucket"
    assert "jar_file_uris" not in rendered["pyspark_batch"], "the runtime bundles the connector"


# --- files the configuration ships -------------------------------------------------------------

_FILE_REF = re.compile(r"\$\{local\.repo_root\}/([A-Za-z0-9_./*-]+)")


def test_every_referenced_repository_file_exists(tmp_path: Path) -> None:
    text = "\n".join(p.read_text() for p in TF_FILES)
    refs = set(_FILE_REF.findall(text))
    assert {"deploy/dataflow/metadata.json", "dags", "deploy/composer/environment.json"} <= refs
    for rel in sorted(refs):
        if rel.startswith(".cache/"):
            continue  # build outputs, checked below
        path = ROOT / rel
        assert path.exists(), f"deploy/gcp references {rel}, which does not exist"
        if path.is_dir():
            pattern = "*.py" if rel == "dags" else "*"
            assert any(path.rglob(pattern)), f"{rel} is empty: nothing would be uploaded"


def test_spark_code_archive_is_built_by_the_package_script(tmp_path: Path) -> None:
    import importlib.util

    assert ".cache/deploy/capa_spark.zip" in (TF_DIR / "dataproc.tf").read_text()
    spec = importlib.util.spec_from_file_location("package", ROOT / "deploy/dataproc/package.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "capa_spark.zip"
    names = module.build(out)
    assert "capa/__init__.py" in names and "spark_jobs/__init__.py" in names
    assert "capa/schemas/change_event.v1.avsc" in names
    assert not any("__pycache__" in n for n in names)
    first = out.read_bytes()
    module.build(out)
    assert out.read_bytes() == first, "the archive must be deterministic"


# --- no secrets -------------------------------------------------------------------------------

_SECRET_ASSIGN = re.compile(
    r"""(?ix)(password|passwd|pwd|secret|token|api[_-]?key|private[_-]?key)["']?\s*[:=]\s*["']([^"'\n]*)["']"""
)
_SAFE_VALUE = re.compile(r"^$|^\$\{|^<.*>$|^(\*+|x+|changeme)$|^projects/|^capa-[a-z-]+$", re.I)
_HARD_SECRET = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----|\"private_key\"\s*:\s*\"-----|AKIA[0-9A-Z]{16}"
)


_SCANNED_SUFFIXES = {".tf", ".json", ".tftpl", ".md", ".example", ".yaml", ".yml", ".sql", ".sh"}
_SCANNED_SUFFIXES |= {".py", ".properties", ".env"}


def _deployment_files() -> list[Path]:
    roots = [ROOT / "deploy", ROOT / "docs"]
    files = [p for r in roots if r.is_dir() for p in r.rglob("*") if p.is_file()]
    return sorted(p for p in files if p.suffix in _SCANNED_SUFFIXES)


def test_no_secret_values_in_deployment_files() -> None:
    problems = []
    for path in _deployment_files():
        text = path.read_text(errors="replace")
        if _HARD_SECRET.search(text):
            problems.append(f"{path.relative_to(ROOT)}: private key material")
        for match in _SECRET_ASSIGN.finditer(text):
            value = match.group(2)
            if not _SAFE_VALUE.match(value) and " " not in value:
                problems.append(f"{path.relative_to(ROOT)}: {match.group(0)!r}")
    assert not problems, (
        "secret-looking literals (use Secret Manager / env / config providers):\n"
        + "\n".join(problems)
    )


def test_the_secret_scanner_catches_a_literal_password() -> None:
    assert _SECRET_ASSIGN.search('password = "hunter22"')
    assert _SECRET_ASSIGN.search('"database.password": "s3cr3t!"')
    match = _SECRET_ASSIGN.search(
        '"database.password": "${file:/opt/secrets/f2.properties:password}"'
    )
    assert match and _SAFE_VALUE.match(match.group(2))


def test_tfvars_example_sets_only_declared_variables_and_no_password() -> None:
    example = TF_DIR / "terraform.tfvars.example"
    tree = clean(hcl2.loads(example.read_text()))
    declared = config()["variable"]
    assert set(tree) <= set(declared), (
        f"unknown variables in the example: {sorted(set(tree) - set(declared))}"
    )
    required = {n for n, body in declared.items() if "default" not in body}
    assert required <= set(tree), (
        f"the example misses required variables {sorted(required - set(tree))}"
    )
    assert not any("password" in n and "secret_id" not in n for n in tree)
