"""capa_app/observe: the status document from a real metrics endpoint, and the HTTP routes."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from kafka_support import make_event

from capa import metrics
from capa.config import load_settings
from capa.events import Op
from capa.warehouse import open_warehouse
from capa_app.observe.server import StatusServer
from capa_app.observe.status import StatusBuilder, histogram_quantile
from capa_app.stack.base import free_port
from spark_jobs.state import ModelState, save_state


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = {0.1: 50.0, 1.0: 90.0, 10.0: 100.0, math.inf: 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.99, buckets) == pytest.approx(1.0 + 9.0 * 0.9)
    assert histogram_quantile(0.99, {1.0: 0.0, math.inf: 0.0}) is None
    assert histogram_quantile(0.99, {1.0: 1.0, math.inf: 10.0}) == 1.0  # beyond the last bound


@pytest.fixture()
def settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    port = metrics.serve_metrics("127.0.0.1", 0)  # this process's registry, as the apply job's
    return load_settings(
        state_dir=tmp_path,
        postgres={"port": free_port()},  # nobody there: reported as a problem
        observe={
            "bridge_metrics_port": None,
            "datastream_metrics_port": None,
            "apply_metrics_port": port,
            "freshness_slo_s": 60.0,
        },
        warehouse={"type": "local", "path": str(tmp_path / "lakehouse")},
    )


def test_status_reads_tables_from_the_metrics_and_builds_from_state(settings) -> None:  # type: ignore[no-untyped-def]
    import time

    table = "f2.public.orders"
    replica = open_warehouse(settings.warehouse)
    replica.apply([make_event(pk, Op.INSERT) for pk in (1, 2, 3)])
    replica.close()
    metrics.configure_slos(60.0, {})
    now = time.time()
    metrics.record_applied(table, 4, [int((now - 0.2) * 1e6)] * 4, {"bad value 'x'": 1}, now=now)
    metrics.record_applied("f2.public.status_stale", 1, [], now=now - 3600)
    save_state(
        Path(settings.warehouse.path) / "consumption",
        ModelState(
            model="daily",
            fingerprint="f",
            target_version=1,
            inputs={},
            built_at="2026-12-07T10:00:00+00:00",
        ),
    )
    status = StatusBuilder(settings).build()

    rows = {t["table"]: t for t in status["tables"]}
    orders = rows[table]
    assert orders["applied"] == 4 and orders["fresh"] is True and orders["slo_s"] == 60.0
    assert 0.1 < orders["p99_s"] <= 0.25
    assert orders["dead_letters"] == {"bad_value": 1}
    assert orders["slot"] == settings.debezium.slot_name
    assert orders["replica_rows"] == 3
    assert rows["f2.public.status_stale"]["fresh"] is False
    assert [m["model"] for m in status["models"]] == ["daily"]
    assert any("replication slots not readable" in p for p in status["problems"])
    assert {c["component"]: c["up"] for c in status["components"]} == {"apply": True}


def test_server_routes(settings) -> None:  # type: ignore[no-untyped-def]
    server = StatusServer(settings, 0)
    server.start_background()
    try:
        with urllib.request.urlopen(server.url + "/", timeout=10) as page:
            assert b"/api/status" in page.read()
        with urllib.request.urlopen(server.url + "/api/status", timeout=10) as api:
            assert set(json.loads(api.read())) >= {"tables", "slots", "models", "problems"}
        with urllib.request.urlopen(server.url + "/metrics", timeout=10) as scrape:
            assert b"capa_consumption_last_success_timestamp_seconds" in scrape.read()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(server.url + "/nope", timeout=10)
        assert missing.value.code == 404
    finally:
        server.shutdown()
        server.server_close()
