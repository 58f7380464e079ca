"""docker-compose.yml (on-prem): parses, every local file it names exists, no secrets inline."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
CONNECT = ROOT / "deploy" / "onprem" / "connect"
PLACEHOLDER = re.compile(r"^\$\{[^}]+\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def local_paths(compose: dict[str, Any]) -> list[Path]:
    """Every host path the compose file refers to (build contexts, Dockerfiles, bind mounts...)."""
    paths: list[Path] = []
    for service in compose["services"].values():
        build = service.get("build")
        if isinstance(build, dict):
            context = ROOT / build.get("context", ".")
            paths += [context, context / build.get("dockerfile", "Dockerfile")]
        elif isinstance(build, str):
            paths.append(ROOT / build)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                paths.append(ROOT / source)
        env_file = service.get("env_file", [])
        paths += [ROOT / f for f in ([env_file] if isinstance(env_file, str) else env_file)]
    for section in ("secrets", "configs"):
        for item in (compose.get(section) or {}).values():
            if "file" in item:
                paths.append(ROOT / item["file"])
    return paths


def test_compose_has_the_on_prem_services(compose: dict[str, Any]) -> None:
    expected = {
        "kafka",
        "connect",
        "postgres",
        "sqlserver",
        "sqlserver-init",
        "connect-init",
        "flink-jobmanager",
        "flink-taskmanager",
        "capa-apply",
        "capa-bridge",
        "spark-master",
        "spark-worker",
        "normalizer",
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
    }
    assert expected <= set(compose["services"])


def test_every_referenced_local_file_exists(compose: dict[str, Any]) -> None:
    paths = local_paths(compose)
    assert len(paths) >= 6  # the walk really found the mounts / build files
    missing = [str(p.relative_to(ROOT)) for p in paths if not p.exists()]
    assert missing == []


def test_every_service_uses_an_image_or_a_build(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service.get("image") or service.get("build"), name


def test_ports_are_published_on_loopback_only(compose: dict[str, Any]) -> None:
    published = [p for s in compose["services"].values() for p in s.get("ports", [])]
    assert published
    assert all(str(p).startswith("127.0.0.1:") for p in published), published


def test_no_inline_secrets(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        for key, value in env.items():
            if "PASSWORD" in key and not key.endswith("_FILE"):
                assert PLACEHOLDER.match(str(value)), f"{name}.{key} must come from the env"


def test_postgres_has_logical_wal_and_the_sample_schema(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert "wal_level=logical" in postgres["command"]
    assert any("capa_app/stack/sample_f2.sql" in v for v in postgres["volumes"])


def test_sqlserver_runs_the_agent_and_the_cdc_script(compose: dict[str, Any]) -> None:
    assert compose["services"]["sqlserver"]["environment"]["MSSQL_AGENT_ENABLED"] == "true"
    init = compose["services"]["sqlserver-init"]
    assert "init-cdc.sql" in " ".join(init["command"])
    script = (ROOT / "deploy/onprem/sqlserver/init-cdc.sql").read_text()
    assert "sys.sp_cdc_enable_db" in script and script.count("sys.sp_cdc_enable_table") == 2


def test_apply_job_runs_streaming_apply_on_flink(compose: dict[str, Any]) -> None:
    command = compose["services"]["capa-apply"]["command"]
    assert command[1:3] == ["-m", "beam_jobs.streaming_apply"]
    assert "--runner=FlinkRunner" in command


@pytest.mark.parametrize("path", sorted(CONNECT.glob("*.json")), ids=lambda p: p.name)
def test_connector_configs_take_secrets_from_providers(path: Path) -> None:
    config = json.loads(path.read_text())
    assert config["name"] == path.stem  # register.sh PUTs /connectors/<file stem>/config
    secrets = {k: v for k, v in config.items() if "password" in k}
    assert secrets and all(PLACEHOLDER.match(v) for v in secrets.values())
    assert all(isinstance(v, str) for v in config.values())  # Connect wants strings


def test_connector_config_secrets_are_mounted_into_connect(compose: dict[str, Any]) -> None:
    mounted = set(compose["services"]["connect"]["secrets"])
    for path in CONNECT.glob("*.json"):
        for value in json.loads(path.read_text()).values():
            if value.startswith("${dir:/run/secrets:"):
                assert value.removeprefix("${dir:/run/secrets:").rstrip("}") in mounted
