"""What ``capa serve`` shows: one JSON document built from the metrics and the state.

Per source table (label ``source.schema.table``): replica rows, when the last change was
applied and how that age compares with the table's freshness objective, the p99
commit-to-visible latency, dead letters by reason class, and the WAL its source's
replication slot retains; per consumption model its last successful build.

The sources are the ones Prometheus uses: the components' ``/metrics`` endpoints (ports
from :class:`capa.config.ObserveConfig`), ``pg_replication_slots`` and the builds' state
files; replica rows come from the warehouse port. Anything unreachable is reported as
such in ``problems`` instead of failing the page.
"""

from __future__ import annotations

import logging
import math
import time
import urllib.request
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from capa.config import CapaSettings
from capa.events import raw_table_name
from capa.metrics import UNKNOWN_TABLE
from capa_app.observe.exporter import consumption_dir, last_builds, read_slots
from connectors.pgsync.progress import initial_sync_status

logger = logging.getLogger(__name__)

Labels = tuple[tuple[str, str], ...]


@dataclass
class Scrape:
    """Samples of every component endpoint: name -> labels -> value."""

    samples: dict[str, dict[Labels, float]] = field(default_factory=lambda: defaultdict(dict))
    problems: list[str] = field(default_factory=list)

    def by(self, name: str, label: str, **match: str) -> dict[str, float]:
        """Values of ``name`` summed by ``label``, over samples whose labels match."""
        out: dict[str, float] = defaultdict(float)
        for labels, value in self.samples.get(name, {}).items():
            found = dict(labels)
            if all(found.get(k) == v for k, v in match.items()) and label in found:
                out[found[label]] += value
        return dict(out)


def endpoints(settings: CapaSettings) -> dict[str, str]:
    """Component -> its metrics URL (the configured ones)."""
    observe = settings.observe
    ports = {
        "debezium-bridge": observe.bridge_metrics_port,
        "datastream-reader": observe.datastream_metrics_port,
        "apply": observe.apply_metrics_port,
    }
    return {c: f"http://{observe.host}:{p}/metrics" for c, p in ports.items() if p}


def scrape(urls: Mapping[str, str], timeout_s: float = 2.0) -> Scrape:
    from prometheus_client.parser import text_string_to_metric_families

    result = Scrape()
    for component, url in urls.items():
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                text = response.read().decode()
        except OSError as exc:
            result.problems.append(f"{component} metrics not reachable at {url} ({exc})")
            continue
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                key = tuple(sorted(s.labels.items()))
                result.samples[s.name][key] = result.samples[s.name].get(key, 0.0) + s.value
    return result


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile`` over cumulative buckets (upper bound -> count)."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in ordered:
        if count >= rank:
            if math.isinf(upper):
                return lower  # beyond the last finite bucket: its bound is all we know
            share = (rank - below) / (count - below) if count > below else 0.0
            return lower + (upper - lower) * share
        lower, below = upper, count
    return lower


def p99_by_table(s: Scrape) -> dict[str, float | None]:
    buckets: dict[str, dict[float, float]] = defaultdict(dict)
    for labels, value in s.samples.get("capa_apply_commit_to_visible_seconds_bucket", {}).items():
        found = dict(labels)
        bound = float(found["le"])
        table = found["table"]
        buckets[table][bound] = buckets[table].get(bound, 0.0) + value
    return {t: histogram_quantile(0.99, b) for t, b in buckets.items()}


def dead_letters_by_table(s: Scrape) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for labels, value in s.samples.get("capa_dead_letters_total", {}).items():
        found = dict(labels)
        reasons = out[found.get("table", UNKNOWN_TABLE)]
        reason = found.get("reason", "other")
        reasons[reason] = reasons.get(reason, 0.0) + value
    return dict(out)


class ReplicaCounter:
    """Replica row counts, recounted at most every ``ttl_s`` (a count reads the table)."""

    def __init__(self, settings: CapaSettings, ttl_s: float = 10.0) -> None:
        self.settings = settings
        self.ttl_s = ttl_s
        self._counted: dict[str, tuple[float, int | None]] = {}
        self._warehouse: Any = None

    def rows(self, table_label: str) -> int | None:
        now = time.monotonic()
        cached = self._counted.get(table_label)
        if cached is not None and now - cached[0] < self.ttl_s:
            return cached[1]
        count = self._count(table_label)
        self._counted[table_label] = (now, count)
        return count

    def _count(self, table_label: str) -> int | None:
        parts = table_label.split(".", 2)
        if len(parts) != 3 or self.settings.warehouse.type != "local":
            return None
        from capa.errors import CapaError
        from capa.warehouse import open_warehouse

        if self._warehouse is None:
            self._warehouse = open_warehouse(self.settings.warehouse)
        try:
            return int(self._warehouse.row_count(f"raw.{raw_table_name(*parts)}"))
        except (CapaError, OSError) as exc:
            logger.debug("no row count for %s: %s", table_label, exc)
            return None


class StatusBuilder:
    """Builds the ``/api/status`` document; one per ``capa serve`` process."""

    def __init__(self, settings: CapaSettings) -> None:
        self.settings = settings
        self.replicas = ReplicaCounter(settings)

    def build(self) -> dict[str, Any]:
        now = time.time()
        s = scrape(endpoints(self.settings))
        slots, slot_problem = self._slots()
        problems = s.problems + ([slot_problem] if slot_problem else [])
        return {
            "generated_at": now,
            "tables": self._tables(s, slots, now),
            "slots": slots,
            "models": self._models(now),
            "components": self._components(s),
            "initial_sync": initial_sync_status(self.settings),
            "problems": problems,
        }

    def _tables(self, s: Scrape, slots: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
        applied = s.by("capa_apply_events_applied_total", "table")
        last = s.by("capa_apply_last_applied_timestamp_seconds", "table")
        slo = s.by("capa_table_freshness_slo_seconds", "table")
        received = s.by("capa_ingest_records_received_total", "table")
        produced = s.by("capa_ingest_events_produced_total", "table")
        p99 = p99_by_table(s)
        letters = dead_letters_by_table(s)
        retained = {x["slot"]: x["retained_wal_bytes"] for x in slots}
        names = set(applied) | set(last) | set(received) | set(produced) | set(letters)
        names.discard(UNKNOWN_TABLE)
        rows = []
        for table in sorted(names):
            objective = slo.get(table, self._slo(table))
            age = now - last[table] if table in last else None
            rows.append(
                {
                    "table": table,
                    "replica_rows": self.replicas.rows(table),
                    "received": received.get(table, 0),
                    "produced": produced.get(table, 0),
                    "applied": applied.get(table, 0),
                    "last_applied_at": last.get(table),
                    "age_s": age,
                    "slo_s": objective,
                    "fresh": None if age is None else age <= objective,
                    "p99_s": p99.get(table),
                    "dead_letters": letters.get(table, {}),
                    "slot": self._slot_of(table),
                    "slot_retained_wal_bytes": retained.get(self._slot_of(table) or ""),
                }
            )
        return rows

    def _slo(self, table: str) -> float:
        observe = self.settings.observe
        return observe.table_freshness_slo_s.get(table, observe.freshness_slo_s)

    def _slot_of(self, table: str) -> str | None:
        dbz = self.settings.debezium
        return dbz.slot_name if table.split(".", 1)[0] == dbz.source_name else None

    def _slots(self) -> tuple[list[dict[str, Any]], str | None]:
        import psycopg

        try:
            found = read_slots(self.settings.postgres.dsn())
        except psycopg.Error as exc:
            return [], f"replication slots not readable: {str(exc).strip()}"
        limit = self.settings.observe.slot_wal_alert_bytes
        return [
            {
                "slot": x.slot,
                "active": x.active,
                "retained_wal_bytes": x.retained_wal_bytes,
                "confirmed_flush_lag_bytes": x.confirmed_flush_lag_bytes,
                "over_limit": (x.retained_wal_bytes or 0) > limit,
            }
            for x in found
        ], None

    def _models(self, now: float) -> list[dict[str, Any]]:
        consumption = consumption_dir(self.settings)
        builds = last_builds(consumption) if consumption is not None else {}
        return [
            {"model": m, "last_build_at": ts, "age_s": now - ts} for m, ts in sorted(builds.items())
        ]

    def _components(self, s: Scrape) -> list[dict[str, Any]]:
        down = {p.split(" ", 1)[0] for p in s.problems}
        return [{"component": c, "up": c not in down} for c in endpoints(self.settings)]
