"""capa/lineage.py and spark_jobs/build_lineage.py: the run events, written by OpenLineage's own
file transport (configured through its environment variables) and read back as JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from capa import lineage
from capa.config import BigQueryWarehouseConfig, LocalWarehouseConfig
from spark_jobs.build_lineage import model_run
from spark_jobs.project import load_project


@pytest.fixture
def events_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """OpenLineage configured with a file transport appending to one JSON-lines file."""
    path = tmp_path / "events.jsonl"
    monkeypatch.chdir(tmp_path)  # no openlineage.yml of the checkout's working directory
    for name in ("OPENLINEAGE_CONFIG", "OPENLINEAGE_URL", "OPENLINEAGE_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__TYPE", "file")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__LOG_FILE_PATH", str(path))
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__APPEND", "true")
    return path


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def names(datasets: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(d["namespace"], d["name"]) for d in datasets]


def test_not_configured_means_no_client_and_no_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("OPENLINEAGE_CONFIG", "OPENLINEAGE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name in [k for k in os.environ if k.startswith("OPENLINEAGE__")]:
        monkeypatch.delenv(name)
    emitter = lineage.emitter()
    assert not emitter.enabled
    run = lineage.apply_run(emitter, "127.0.0.1:9092", "t", LocalWarehouseConfig(path=tmp_path))
    run.start()
    run.wrote(["f2_public_orders"])
    run.end(failed=False)
    assert run.run_id == "" and run.written == {}
    assert list(tmp_path.iterdir()) == []


def test_disabled_flag_wins_over_a_configured_transport(
    events_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENLINEAGE_DISABLED", "true")
    assert not lineage.emitter().enabled


def test_apply_run_starts_reports_each_new_table_once_and_completes(
    events_file: Path, tmp_path: Path
) -> None:
    warehouse = LocalWarehouseConfig(path=tmp_path / "lake")
    run = lineage.apply_run(lineage.emitter(), "127.0.0.1:19092,h2:9093", "capa.changes", warehouse)
    run.start()
    run.wrote(["f2_public_orders", "f2_public_customers"])
    run.wrote(["f2_public_orders"])  # nothing new: no event
    run.wrote(["f2_public_orders", "f3_dbo_invoices"])
    run.end(failed=False)

    events = read_events(events_file)
    assert [e["eventType"] for e in events] == ["START", "RUNNING", "RUNNING", "COMPLETE"]
    assert {e["run"]["runId"] for e in events} == {run.run_id}
    assert {(e["job"]["namespace"], e["job"]["name"]) for e in events} == {("capa", "apply")}
    for e in events:
        assert names(e["inputs"]) == [("kafka://127.0.0.1:19092", "capa.changes")]
    raw = (tmp_path / "lake" / "raw").resolve()
    assert names(events[0]["outputs"]) == []
    assert names(events[1]["outputs"]) == [
        ("file", str(raw / "f2_public_customers")),
        ("file", str(raw / "f2_public_orders")),
    ]
    assert names(events[3]["outputs"]) == [
        *names(events[1]["outputs"]),
        ("file", str(raw / "f3_dbo_invoices")),
    ]
    assert all(e["producer"] == lineage.PRODUCER for e in events)


def test_apply_run_that_stops_on_an_error_ends_with_fail(events_file: Path, tmp_path: Path) -> None:
    warehouse = BigQueryWarehouseConfig(project="p1", raw_dataset="replicas")
    run = lineage.apply_run(lineage.emitter(), "broker:9092", "topic", warehouse)
    run.start()
    run.wrote(["f2_public_orders"])
    run.end(failed=True)
    events = read_events(events_file)
    assert [e["eventType"] for e in events] == ["START", "RUNNING", "FAIL"]
    assert names(events[-1]["outputs"]) == [("bigquery", "p1.replicas.f2_public_orders")]


def test_model_run_names_every_table_the_sql_reads(events_file: Path, tmp_path: Path) -> None:
    model = load_project().models["customer_360"]

    def table(layer: str, name: str) -> lineage.Dataset:
        return lineage.delta_table(tmp_path / layer / name)

    with model_run(lineage.emitter(), model, table) as run_id:
        pass
    events = read_events(events_file)
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    assert {e["run"]["runId"] for e in events} == {run_id}
    assert events[0]["job"]["name"] == "consumption.customer_360"
    inputs = {name for _, name in names(events[0]["inputs"])}
    root = tmp_path.resolve()
    expected_raw = {
        "f2_public_customers",
        "crm_crm_accounts",
        "crm_crm_contacts",
        "f3_dbo_invoices",
    }
    assert inputs == {str(root / "raw" / n) for n in expected_raw} | {
        str(root / "consumption" / "customer_orders")
    }
    assert len(events[0]["inputs"]) == len(inputs)  # raw and raw_history of a table: once
    assert names(events[1]["outputs"]) == [("file", str(root / "consumption" / "customer_360"))]


def test_a_failing_build_ends_with_fail_and_raises(events_file: Path) -> None:
    model = load_project().models["customer_orders"]

    def table(layer: str, name: str) -> lineage.Dataset:
        return lineage.bigquery_table("p", layer, name)

    with pytest.raises(ValueError, match="checks"), model_run(lineage.emitter(), model, table):
        raise ValueError("checks failed")
    events = read_events(events_file)
    assert [e["eventType"] for e in events] == ["START", "FAIL"]
    assert names(events[0]["inputs"]) == [("bigquery", "p.raw.f2_public_orders")]
    assert names(events[0]["outputs"]) == [("bigquery", "p.consumption.customer_orders")]


def test_a_transport_error_is_logged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__TYPE", "file")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__LOG_FILE_PATH", str(tmp_path / "missing" / "x"))
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__APPEND", "true")
    emitter = lineage.emitter()
    emitter.emit("START", lineage.new_run_id(), "apply")
    assert "OpenLineage START event of apply not sent" in caplog.text
