"""``capa serve``'s page in a real headless Chromium, against a running capture.

The Debezium bridge runs as a real process on two fresh tables of the session's
PostgreSQL, exposing its metrics; the status server (the ``capa serve`` server) runs in
this process. Chromium loads the page once; the test then writes to the second table and
waits for the page to show it and the first table's count to grow, with no navigation
(a marker set on ``window`` after load survives) and no console error or exception.
The screenshot is left in the test's temp dir (``CAPA_SCREENSHOT=path`` copies it).
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from chromium_support import running_chromium
from service_support import drop_capture, start_bridge

from capa.config import CapaSettings
from capa_app.observe.server import StatusServer
from capa_app.stack.base import free_port, tail, wait_for
from capa_app.stack.kafka import ensure_topics
from spark_jobs.state import ModelState, save_state

WAIT_S = 120
ROWS_JS = "[...document.querySelectorAll('#tables tbody tr')].map(r => r.dataset.key)"


def row_cells(table: str) -> str:
    return (
        f"(() => {{ const r = document.querySelector('#tables tbody tr[data-key=\"{table}\"]');"
        " return r ? [...r.cells].map(c => c.textContent) : null; })()"
    )


@pytest.fixture()
def capture(
    capa_settings: CapaSettings, kafka: Any, postgres: Any, tmp_path: Path
) -> Iterator[tuple[CapaSettings, list[str]]]:
    suffix = uuid.uuid4().hex[:8]
    tables = [f"page_{suffix}_orders", f"page_{suffix}_refunds"]
    kafka_config = kafka.config.model_copy(
        update={"topic": f"it.page.{suffix}", "dlq_topic": f"it.page.dlq.{suffix}"}
    )
    ensure_topics(kafka.admin(), {kafka_config.topic: 3, kafka_config.dlq_topic: 1})
    debezium = capa_settings.debezium.model_copy(
        update={
            "source_name": f"pg{suffix}",
            "engine_name": f"capa-page-{suffix}",
            "slot_name": f"capa_page_{suffix}",
            "publication": f"capa_page_{suffix}",
            "table_include_list": ",".join(f"public.{t}" for t in tables),
            "heartbeat_interval_ms": 1000,
        }
    )
    observe = capa_settings.observe.model_copy(
        update={
            "bridge_metrics_port": free_port(),
            "datastream_metrics_port": None,
            "apply_metrics_port": None,
        }
    )
    state = tmp_path / "state"
    state.mkdir()
    settings = capa_settings.model_copy(
        update={
            "state_dir": state,
            "kafka": kafka_config,
            "debezium": debezium,
            "observe": observe,
            "warehouse": capa_settings.warehouse.model_copy(update={"path": tmp_path / "lake"}),
        }
    )
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        for table in tables:
            conn.execute(f'CREATE TABLE "public"."{table}" (id int PRIMARY KEY, v text)')
        conn.execute(f'INSERT INTO "public"."{tables[0]}" VALUES (1, %s)', ("first",))
    yield settings, tables
    for table in tables[1:]:
        with psycopg.connect(postgres.dsn, autocommit=True) as conn:
            conn.execute(f'DROP TABLE IF EXISTS "public"."{table}"')
    drop_capture(postgres.dsn, debezium.slot_name, debezium.publication, tables[0])


def test_page_shows_the_running_tables_and_updates_without_reload(
    capture: tuple[CapaSettings, list[str]], postgres: Any, tmp_path: Path
) -> None:
    settings, tables = capture
    source = settings.debezium.source_name
    first, second = (f"{source}.public.{t}" for t in tables)
    save_state(
        tmp_path / "lake" / "consumption",
        ModelState(
            model="orders_daily",
            fingerprint="f",
            target_version=1,
            inputs={},
            built_at="2026-12-07T10:00:00+00:00",
        ),
    )
    bridge = start_bridge(settings, tmp_path / "bridge.log")
    server = StatusServer(settings, free_port())
    server.start_background()
    try:
        with running_chromium(tmp_path / "chromium") as browser:
            browser.navigate(server.url + "/")
            browser.evaluate("window.__capaLoaded = 1")
            assert wait_for(lambda: first in (browser.evaluate(ROWS_JS) or []), WAIT_S), (
                browser.evaluate(ROWS_JS)
            )
            assert second not in browser.evaluate(ROWS_JS)
            slot_row = f'#slots tbody tr[data-key="{settings.debezium.slot_name}"]'
            assert browser.evaluate(f"!!document.querySelector('{slot_row}')")
            assert browser.evaluate("document.querySelector('#models tbody').textContent").count(
                "orders_daily"
            )
            captured = browser.evaluate(row_cells(first))[1]

            with psycopg.connect(postgres.dsn, autocommit=True) as conn:
                for i in range(2, 6):
                    conn.execute(f'INSERT INTO "public"."{tables[0]}" VALUES (%s, %s)', (i, "x"))
                conn.execute(f'INSERT INTO "public"."{tables[1]}" VALUES (1, %s)', ("refund",))

            assert wait_for(lambda: second in browser.evaluate(ROWS_JS), WAIT_S)
            assert wait_for(lambda: browser.evaluate(row_cells(first))[1] != captured, WAIT_S)
            assert browser.evaluate(row_cells(first))[1] == "5"
            assert browser.evaluate("window.__capaLoaded") == 1, "the page was reloaded"
            browser.screenshot(tmp_path / "capa-serve.png")
            assert browser.errors == []
    finally:
        server.shutdown()
        server.server_close()
        bridge.terminate()
        bridge.wait(90)
        sys.stderr.write(f"\n--- bridge log tail ---\n{tail(tmp_path / 'bridge.log', 30)}\n")
    if os.environ.get("CAPA_SCREENSHOT"):
        shutil.copy(tmp_path / "capa-serve.png", os.environ["CAPA_SCREENSHOT"])
