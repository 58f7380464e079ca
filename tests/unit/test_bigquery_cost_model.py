"""scripts/bigquery_cost_model.py: the committed docs/bigquery-costs.md is its output, and
the model keeps the properties the docs state."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cost_model():
    spec = importlib.util.spec_from_file_location(
        "bigquery_cost_model", ROOT / "scripts" / "bigquery_cost_model.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def measured(cost_model):
    return cost_model.measure()


def test_committed_report_is_the_scripts_output(cost_model, measured) -> None:
    committed = (ROOT / "docs" / "bigquery-costs.md").read_text()
    assert committed == cost_model.report(measured), "rerun scripts/bigquery_cost_model.py"


def test_measured_figures_come_from_the_write_path(measured) -> None:
    assert measured.row_bytes > 0 and measured.cdc_payload_bytes > 0
    assert 1.0 < measured.replica_rows_per_change < 1.2  # key moves write two rows


def test_dml_counts_and_full_scans(cost_model, measured) -> None:
    costs = {c.system: c for c in cost_model.model(measured, 10**11, 1_000, 1.0)}
    assert costs["capa cdc"].dml_per_hour == 0
    assert costs["capa merge"].dml_per_hour == 12
    assert costs["Datastream template"].dml_per_hour == 12
    assert costs["Kafka Connect sink"].dml_per_hour == 60
    assert costs["Kafka Connect sink"].scanned_per_hour >= 60 * 10**11  # unclustered target
    local = {c.system: c for c in cost_model.model(measured, 10**12, 100, 0.05)}
    assert local["capa merge"].scanned_per_hour < local["Datastream template"].scanned_per_hour
