"""capa/metrics.py: the family list, the docs table, reason classes and the apply helpers."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from capa import metrics

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_LABELS = {"key", "offset", "position", "event_id", "lsn", "pk", "file", "location"}
UNIT_SUFFIXES = ("_seconds", "_bytes", "_records", "_pending", "_active", "_total")


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_docs_table_is_the_family_list() -> None:
    doc = (ROOT / "docs" / "observability.md").read_text(encoding="utf-8")
    assert metrics.docs_table() in doc, "regenerate the table: capa.metrics.docs_table()"


@pytest.mark.parametrize("family", metrics.FAMILIES, ids=lambda f: f.name)
def test_names_follow_prometheus_conventions(family: metrics.Family) -> None:
    assert re.fullmatch(r"capa_[a-z][a-z0-9_]*", family.name)
    assert not family.name.endswith("_total"), "counters get _total from the client"
    if family.kind != "counter":
        assert family.name.endswith(UNIT_SUFFIXES), f"{family.name} names no unit"
    assert not FORBIDDEN_LABELS & set(family.labels), "unbounded label"
    assert family.help.endswith(".")


def test_reason_label_drops_values_and_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    a = metrics.reason_label("commit timestamp 99999999999 µs since epoch is outside years 1..9999")
    b = metrics.reason_label("commit timestamp 12 µs since epoch is outside years 1..9999")
    assert a == b == "commit_timestamp_since_epoch_is_outside"
    assert metrics.reason_label("column 'price' value [1, 2] not valid: 4.5") == (
        "column_value_not_valid"
    )
    assert metrics.reason_label("1234") == metrics.OTHER_REASON
    monkeypatch.setattr(metrics, "_reasons", set())
    labels = {
        metrics.reason_label(f"failure {'abcdefghijklmnopqrstuvwxyz'[i % 26]}{'q' * (i // 26 + 1)}")
        for i in range(80)
    }
    assert len(labels) == metrics.MAX_REASONS + 1
    assert metrics.OTHER_REASON in labels


def test_record_applied_counts_latency_freshness_and_dead_letters() -> None:
    table = "t1.public.applied"
    before = value("capa_apply_events_applied_total", table=table)
    metrics.configure_slos(300.0, {table: 42.0})
    now = 1_700_000_100.0
    commits = [1_700_000_099_000_000, 1_700_000_040_000_000, None]
    metrics.record_applied(table, 3, commits, {"bad decimal 'x'": 2}, now=now)

    assert value("capa_apply_events_applied_total", table=table) == before + 3
    assert value("capa_apply_last_applied_timestamp_seconds", table=table) == now
    assert value("capa_apply_commit_to_visible_seconds_count", table=table) == 2
    assert value("capa_apply_commit_to_visible_seconds_sum", table=table) == pytest.approx(61.0)
    assert value("capa_apply_commit_to_visible_seconds_bucket", table=table, le="1.0") == 1
    assert value("capa_apply_commit_to_visible_seconds_bucket", table=table, le="30.0") == 1
    assert value("capa_apply_commit_to_visible_seconds_bucket", table=table, le="60.0") == 2
    assert (
        value("capa_dead_letters_total", component="apply", table=table, reason="bad_decimal") == 2
    )
    assert value("capa_table_freshness_slo_seconds", table=table) == 42.0


def test_record_applied_of_an_empty_batch_keeps_the_last_applied_time() -> None:
    table = "t1.public.empty"
    metrics.record_applied(table, 1, [], now=100.0)
    metrics.record_applied(table, 0, [], now=200.0)
    assert value("capa_apply_last_applied_timestamp_seconds", table=table) == 100.0


def test_record_lag_never_negative() -> None:
    metrics.record_lag("capa.changes", 2, 17)
    assert value("capa_apply_consumer_lag_records", topic="capa.changes", partition="2") == 17
    metrics.record_lag("capa.changes", 2, -3)  # end offset read before the position moved
    assert value("capa_apply_consumer_lag_records", topic="capa.changes", partition="2") == 0


def test_serve_metrics_exposes_the_families_over_http() -> None:
    metrics.record_received("debezium-bridge", "t1.public.http")
    port = metrics.serve_metrics("127.0.0.1", 0)
    assert port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert "capa_ingest_records_received" in names
    assert 'table="t1.public.http"' in text


def test_serve_metrics_off_or_port_taken_is_not_fatal() -> None:
    assert metrics.serve_metrics("127.0.0.1", None) is None
    port = metrics.serve_metrics("127.0.0.1", 0)
    assert port
    assert metrics.serve_metrics("127.0.0.1", port) is None
