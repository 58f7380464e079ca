"""capa_app/observe/exporter.py: build times from the Spark state files, slots when unreachable."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry

from capa_app.observe.exporter import BuildCollector, SlotCollector, last_builds
from capa_app.stack.base import free_port
from spark_jobs.state import ModelState, save_state


def state(model: str, built_at: str | None) -> ModelState:
    return ModelState(model=model, fingerprint="f", target_version=3, inputs={}, built_at=built_at)


def test_build_collector_reads_the_last_success_of_each_model(tmp_path: Path) -> None:
    save_state(tmp_path, state("orders_daily", "2026-12-07T10:00:00+00:00"))
    save_state(tmp_path, state("legacy", None))  # written before built_at existed
    (tmp_path / "_capa_state" / "broken.json").write_text("{not json")
    registry = CollectorRegistry()
    registry.register(BuildCollector(tmp_path))

    got = registry.get_sample_value(
        "capa_consumption_last_success_timestamp_seconds", {"model": "orders_daily"}
    )
    assert got == datetime(2026, 12, 7, 10, tzinfo=UTC).timestamp()
    assert last_builds(tmp_path).keys() == {"orders_daily"}


def test_build_collector_without_builds_is_empty(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    registry.register(BuildCollector(tmp_path / "missing"))
    names = [s.name for m in registry.collect() for s in m.samples]
    assert not any(n.startswith("capa_consumption") for n in names)


def test_slot_collector_with_postgres_down_reports_no_series() -> None:
    # a closed port: the scrape must still succeed, just without slot series
    collector = SlotCollector(f"host=127.0.0.1 port={free_port()} dbname=x user=postgres")
    assert list(collector.collect()) == []
