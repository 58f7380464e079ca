"""Read-at-scrape-time metrics that no data-path process owns: replication slots and builds.

* :class:`SlotCollector` asks PostgreSQL, on every scrape, how much WAL each logical slot
  pins (``pg_current_wal_lsn() - restart_lsn``) and how far the consumer's confirmed
  flush is behind (``pg_current_wal_lsn() - confirmed_flush_lsn``). A slot nobody reads
  grows without bound and eventually fills the source's disk: the 3 a.m. page.
* :class:`BuildCollector` reads the consumption builds' state files (written by the Spark
  job, whose environment has no Prometheus client) for each model's last success.

Both are registered by ``capa serve`` (:func:`register_collectors`), which exposes them on
its ``/metrics`` beside the status page.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from capa import metrics
from capa.config import CapaSettings

logger = logging.getLogger(__name__)

SLOT_SQL = """
SELECT slot_name,
       active,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,
       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
FROM pg_replication_slots
WHERE slot_type = 'logical'
ORDER BY slot_name
"""


@dataclass(frozen=True)
class SlotStatus:
    slot: str
    active: bool
    retained_wal_bytes: int | None  # None: the slot has no restart_lsn yet
    confirmed_flush_lag_bytes: int | None


def read_slots(dsn: str, timeout_s: int = 3) -> list[SlotStatus]:
    """Every logical slot of the server (raises psycopg.Error when it is unreachable)."""
    import psycopg

    with psycopg.connect(dsn, connect_timeout=timeout_s, autocommit=True) as conn:
        rows = conn.execute(SLOT_SQL).fetchall()
    return [SlotStatus(str(r[0]), bool(r[1]), r[2], r[3]) for r in rows]


class SlotCollector:
    """Slot gauges from ``pg_replication_slots``, read when Prometheus scrapes."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def collect(self) -> Iterator[Any]:
        import psycopg

        try:
            slots = read_slots(self.dsn)
        except psycopg.Error as exc:
            # No series rather than stale ones: absent() alerts see the gap.
            logger.warning("replication slots not readable: %s", exc)
            return
        retained = metrics.snapshot_family("capa_replication_slot_retained_wal_bytes")
        lag = metrics.snapshot_family("capa_replication_slot_confirmed_flush_lag_bytes")
        active = metrics.snapshot_family("capa_replication_slot_active")
        for s in slots:
            if s.retained_wal_bytes is not None:
                retained.add_metric([s.slot], s.retained_wal_bytes)
            if s.confirmed_flush_lag_bytes is not None:
                lag.add_metric([s.slot], s.confirmed_flush_lag_bytes)
            active.add_metric([s.slot], 1.0 if s.active else 0.0)
        yield from (retained, lag, active)


def last_builds(consumption: Path) -> dict[str, float]:
    """Model -> Unix time of its last successful build (models without a time left out)."""
    from spark_jobs.state import iter_states

    builds = {}
    for state in iter_states(consumption):
        if state.built_at:
            builds[state.model] = datetime.fromisoformat(state.built_at).timestamp()
    return builds


class BuildCollector:
    """``capa_consumption_last_success_timestamp_seconds`` from the builds' state files."""

    def __init__(self, consumption: Path) -> None:
        self.consumption = consumption

    def collect(self) -> Iterator[Any]:
        family = metrics.snapshot_family("capa_consumption_last_success_timestamp_seconds")
        for model, ts in sorted(last_builds(self.consumption).items()):
            family.add_metric([model], ts)
        yield family


def consumption_dir(settings: CapaSettings) -> Path | None:
    """Where the local lakehouse keeps consumption tables (None for BigQuery)."""
    warehouse = settings.warehouse
    if warehouse.type != "local":
        return None
    return Path(warehouse.path) / "consumption"


def register_collectors(settings: CapaSettings, registry: Any = None) -> list[Any]:
    """Register the slot and build collectors (default registry); returns them."""
    from prometheus_client import REGISTRY

    target = registry or REGISTRY
    collectors: list[Any] = [SlotCollector(settings.postgres.dsn())]
    consumption = consumption_dir(settings)
    if consumption is not None:
        collectors.append(BuildCollector(consumption))
    for collector in collectors:
        target.register(collector)
    return collectors
