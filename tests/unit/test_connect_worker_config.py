"""The on-prem Connect worker's properties and the connector files' substitution at
registration (no JVM: the worker itself runs in tests/integration/test_connect_capture.py)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from capa.config import CapaSettings, load_settings
from capa.errors import ConfigError, EnvironmentProblem
from capa_app.stack import ONPREM_COMPONENTS, Stack, connect
from capa_app.stack.base import StateDirs
from capa_app.stack.connect import (
    CONNECTORS_DIR,
    ConnectWorker,
    connector_config,
    load_connector_file,
    worker_properties,
)
from capa_app.stack.normalizer import NormalizerService


@pytest.fixture()
def settings(tmp_path: Path) -> CapaSettings:
    return load_settings(
        state_dir=tmp_path,
        kafka={"port": 29092},
        postgres={"host": "127.0.0.1", "port": 25432, "password": "s3cret"},
        connect={"port": 28083},
    )


def test_worker_properties_keep_everything_local_and_on_capa_kafka(
    settings: CapaSettings, tmp_path: Path
) -> None:
    props = worker_properties(settings, tmp_path / "plugins", tmp_path / "secrets")
    assert props["bootstrap.servers"] == "127.0.0.1:29092"
    assert props["listeners"] == "http://127.0.0.1:28083"
    assert props["plugin.path"] == str((tmp_path / "plugins").resolve())
    assert props["config.providers.dir.param.allowed.paths"] == str(
        (tmp_path / "secrets").resolve()
    )
    assert props["exactly.once.source.support"] == "enabled"
    for role in ("config", "offset", "status"):
        assert props[f"{role}.storage.replication.factor"] == "1"
    assert props["offset.storage.topic"] == "capa.connect.offsets"


def test_postgres_file_is_pointed_at_this_machine_and_keeps_its_secret_reference(
    settings: CapaSettings, tmp_path: Path
) -> None:
    raw = load_connector_file("postgres-f2")
    config = connector_config(raw, settings, tmp_path / "secrets")
    assert raw["database.hostname"] == "postgres"  # compose's host, in the one shared file
    assert (config["database.hostname"], config["database.port"]) == ("127.0.0.1", "25432")
    assert config["database.dbname"] == settings.postgres.database
    secrets = (tmp_path / "secrets").resolve()
    assert config["database.password"] == f"${{dir:{secrets}:capa_postgres_password}}"
    assert "s3cret" not in config.values()
    assert "name" not in config
    assert config["slot.name"] == raw["slot.name"]


def test_sqlserver_schema_history_goes_to_capa_kafka(
    settings: CapaSettings, tmp_path: Path
) -> None:
    config = connector_config(load_connector_file("sqlserver-f3"), settings, tmp_path)
    assert config["schema.history.internal.kafka.bootstrap.servers"] == "127.0.0.1:29092"
    assert config["database.hostname"] == "sqlserver"  # no SQL Server runs here: unchanged


def test_a_missing_connector_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.json"):
        load_connector_file("nope", tmp_path)


def test_every_connector_file_uses_the_json_converter_with_schemas() -> None:
    for path in sorted(CONNECTORS_DIR.glob("*.json")):
        config = load_connector_file(path.stem)
        assert config["value.converter.schemas.enable"] == "true", path
        assert config["topic.creation.default.replication.factor"] == "-1", path


def test_prepare_writes_the_password_file_private_and_links_one_folder_per_plugin(
    settings: CapaSettings, tmp_path: Path
) -> None:
    worker = ConnectWorker(StateDirs(tmp_path).create(), settings)
    worker.prepare()
    secret = worker.secrets_dir / "capa_postgres_password"
    assert secret.read_text() == "s3cret"
    assert secret.stat().st_mode & 0o077 == 0
    assert worker.properties_path.stat().st_mode & 0o077 == 0
    assert sorted(p.name for p in worker.plugins_root.iterdir()) == [
        "debezium-postgres",
        "debezium-sqlserver",
    ]


def test_onprem_components_are_services_outside_the_default_stack(settings: CapaSettings) -> None:
    stack = Stack(settings)
    services = {name: make(stack.state, settings) for name, make in ONPREM_COMPONENTS.items()}
    assert isinstance(services["connect"], ConnectWorker)
    assert isinstance(services["normalizer"], NormalizerService)
    assert services["normalizer"].port == settings.observe.normalizer_metrics_port
    assert all(s.health() == "stopped" for s in services.values())
    assert not set(ONPREM_COMPONENTS) & {r["component"] for r in stack.status()}


class _RebalancingWorker(http.server.BaseHTTPRequestHandler):
    """Answers PUTs like a Connect worker in a rebalance: 409 ``busy_answers`` times, then 201."""

    busy_answers = 2
    puts: list[dict[str, str]] = []

    def do_PUT(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).puts.append(body)
        if len(type(self).puts) <= type(self).busy_answers:
            self.send_response(409)
            self.end_headers()
            self.wfile.write(b'{"error_code":409,"message":"rebalance is in progress"}')
            return
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"name": "postgres-f2", "config": body}).encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def rebalancing_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ConnectWorker]:
    monkeypatch.setattr(
        connect, "REGISTER_POLICY", replace(connect.REGISTER_POLICY, first_wait_s=0.01)
    )
    _RebalancingWorker.puts = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _RebalancingWorker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings = load_settings(
        state_dir=tmp_path,
        postgres={"password": "s3cret"},
        connect={"port": server.server_address[1]},
    )
    try:
        yield ConnectWorker(StateDirs(tmp_path).create(), settings)
    finally:
        server.shutdown()


def test_register_waits_out_a_rebalance(rebalancing_worker: ConnectWorker) -> None:
    answer = rebalancing_worker.register("postgres-f2", {"slot.name": "capa_x"})
    assert answer["name"] == "postgres-f2"
    assert len(_RebalancingWorker.puts) == 3
    assert all(put["slot.name"] == "capa_x" for put in _RebalancingWorker.puts)


def test_register_gives_up_with_a_clear_error_when_the_worker_stays_busy(
    rebalancing_worker: ConnectWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_RebalancingWorker, "busy_answers", 1000)
    monkeypatch.setattr(connect, "REGISTER_POLICY", replace(connect.REGISTER_POLICY, attempts=3))
    with pytest.raises(EnvironmentProblem, match=r"409.*still busy"):
        rebalancing_worker.register("postgres-f2")
    assert len(_RebalancingWorker.puts) == 3
