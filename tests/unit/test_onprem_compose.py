"""docker-compose.yml runs the onprem process profile service for service.

Every component of ``capa up --profile onprem`` (capa_app.stack.PROFILES) is a compose service
of the same name whose image and command agree with the process: same program, same option
names, the same versions (Kafka's from capa's config, PostgreSQL's major from its binaries,
the capa image built from the same lock files). Services compose has beyond the profile are
named here with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from capa.config import AirflowConfig, KafkaConfig, SparkClusterConfig, load_settings
from capa_app.stack import CAPA_IMAGE, COMPONENTS, PROFILES, containers
from capa_app.stack.airflow import AirflowApiServer, AirflowDagProcessor, AirflowScheduler
from capa_app.stack.base import StateDirs
from capa_app.stack.spark import SparkMaster, SparkWorker

ROOT = Path(__file__).resolve().parents[2]
ONPREM = PROFILES["onprem"]
# Compose services that are not process components of the onprem profile, and why.
COMPOSE_ONLY = {
    "sqlserver": "source F3 (SQL Server runs in Docker only; no Debian/PyPI package)",
    "sqlserver-init": "one-shot: enables CDC on SQL Server",
    "connect-init": "one-shot: registers the connectors (the process worker does it itself)",
    "airflow-init": "one-shot: `airflow db migrate` (the process profile's prepare step)",
    "capa-bridge": "the embedded Debezium alternative (compose profile `embedded`)",
    "flink-jobmanager": "Beam on Flink: blocked, no Beam Flink job-server jar here",
    "flink-taskmanager": "Beam on Flink: blocked, no Beam Flink job-server jar here",
    "capa-beam-worker": "Beam on Flink: blocked, no Beam Flink job-server jar here",
    "capa-apply": "Beam on Flink: blocked, no Beam Flink job-server jar here",
}


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return dict(loaded["services"])


def command_tokens(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else [str(t) for t in command]


def option_names(argv: list[str]) -> list[str]:
    return [t for t in argv if t.startswith("--") and t != "--properties-file"]


def test_every_compose_service_is_a_profile_component_or_named_with_its_reason(
    services: dict[str, Any],
) -> None:
    assert set(services) == set(containers()) | set(COMPOSE_ONLY)
    assert set(ONPREM) == set(containers())


def test_every_onprem_component_is_registered_and_runs_in_compose(
    services: dict[str, Any],
) -> None:
    for name in ONPREM:
        assert name in COMPONENTS and name in services, name
        container = containers()[name]
        assert services[name]["image"].split(":")[0] == container.image.split(":")[0], name
        tokens = command_tokens(services[name])
        assert tokens[: len(container.program)] == list(container.program), name


def test_image_tags_are_the_versions_the_processes_run(services: dict[str, Any]) -> None:
    assert services["kafka"]["image"] == f"apache/kafka:{KafkaConfig().version}"
    kafka_pom = (ROOT / "scripts" / "jars" / "kafka.pom").read_text()
    assert f"<kafka.version>{KafkaConfig().version}</kafka.version>" in kafka_pom
    assert services["postgres"]["image"] == containers()["postgres"].image == "postgres:15"
    for name in ("spark-master", "spark-worker", *[n for n in ONPREM if "airflow" in n]):
        assert services[name]["image"] == CAPA_IMAGE
        dockerfile = ROOT / services[name]["build"]["dockerfile"]
        assert "scripts/setup.sh beam spark airflow" in dockerfile.read_text()
    assert services["connect"]["image"].startswith(containers()["connect"].image)


def test_spark_daemons_take_the_same_options_as_the_processes(
    services: dict[str, Any], tmp_path: Path
) -> None:
    config = SparkClusterConfig()
    for cls in (SparkMaster, SparkWorker):
        process = cls(StateDirs(tmp_path), config).argv()
        compose = command_tokens(services[cls.name])
        assert option_names(compose) == option_names(process), cls.name
        for option in ("--port", "--webui-port", "--cores", "--memory"):
            if option in process:  # same ports and sizing, hosts differ (service names)
                assert compose[compose.index(option) + 1] == process[process.index(option) + 1]
    worker = command_tokens(services["spark-worker"])
    assert worker[-1] == f"spark://spark-master:{config.master_port}"
    defaults = services["spark-master"]["environment"]["SPARK_MASTER_OPTS"]
    assert f"-Dspark.deploy.defaultCores={config.default_cores}" in defaults


def test_airflow_processes_share_one_configuration_with_the_process_profile(
    services: dict[str, Any], tmp_path: Path
) -> None:
    settings = load_settings(state_dir=tmp_path)
    config = AirflowConfig()
    for cls in (AirflowApiServer, AirflowScheduler, AirflowDagProcessor):
        assert command_tokens(services[cls.name]) == list(cls.program())
        compose_env = services[cls.name]["environment"]
        process_env = cls(StateDirs(tmp_path), settings, spark_master=True).environment()
        for key in (
            "AIRFLOW__CORE__EXECUTOR",
            "AIRFLOW__CORE__PARALLELISM",
            "AIRFLOW__CORE__LOAD_EXAMPLES",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS",
            "AIRFLOW__API__PORT",
            "AIRFLOW__API__WORKERS",
            "CAPA__DAGS__PROFILE",
        ):
            assert str(compose_env[key]) == process_env[key], (cls.name, key)
        for key in ("CAPA__SPARK__MASTER", "AIRFLOW_CONN_SPARK_DEFAULT"):
            assert compose_env[key].startswith("spark://spark-master:")
            assert process_env[key] == SparkClusterConfig().master_url
        assert str(config.port) in compose_env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]


def test_mounted_files_of_the_profile_services_exist(services: dict[str, Any]) -> None:
    mounted = []
    for name in ONPREM:
        for volume in services[name].get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                mounted.append(ROOT / source)
    assert ROOT / "dags" in mounted and ROOT / "capa_app/stack/sample_f2.sql" in mounted
    assert [str(p) for p in mounted if not p.exists()] == []
