"""capa's Prometheus metrics: every family defined once, here.

:data:`FAMILIES` is the single list of metric names, types, help texts and labels; the
table in ``docs/observability.md`` is checked against it by a unit test. The Prometheus
objects are created lazily (:func:`metric`) in the default registry, so importing this
module costs nothing in environments without ``prometheus_client`` (the Spark one), and
each process exposes only the families it actually touches.

Cardinality stays bounded: labels are source tables (``f2.public.orders``), models,
partitions, slots and dead-letter *reason classes* (:func:`reason_label`), never keys,
offsets or raw error texts.

The apply job reports through two functions: :func:`record_applied` once per applied
batch and :func:`record_lag` per partition after reading (see their docstrings).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

logger = logging.getLogger(__name__)

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class Family:
    """One metric family: what Prometheus shows (``name`` has no ``_total`` for counters)."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...]
    emitted_by: str  # the component exposing it (documentation)

    @property
    def exposed_name(self) -> str:
        return f"{self.name}_total" if self.kind == "counter" else self.name


# commit-to-visible seconds: sub-second (streaming) up to the 10 min of a stuck batch
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

INGEST = "Debezium bridge, normaliser service, Datastream reader"

FAMILIES: tuple[Family, ...] = (
    Family(
        "capa_ingest_records_received",
        "counter",
        "Source records read by an ingest component (before normalising).",
        ("component", "table"),
        INGEST,
    ),
    Family(
        "capa_ingest_events_produced",
        "counter",
        "Canonical change events produced to the change topic.",
        ("component", "table"),
        INGEST,
    ),
    Family(
        "capa_ingest_records_skipped",
        "counter",
        "Source records that carry no row change (heartbeat, transaction, tombstone ...).",
        ("component", "kind"),
        INGEST,
    ),
    Family(
        "capa_ingest_values_nulled",
        "counter",
        "Values the source connector could not convert and sent as NULL (numeric NaN/Infinity).",
        ("component", "table", "column"),
        "Debezium bridge",
    ),
    Family(
        "capa_dead_letters",
        "counter",
        "Records sent to the dead-letter topic, by source table and reason class.",
        ("component", "table", "reason"),
        INGEST + ", apply job",
    ),
    Family(
        "capa_datastream_files_pending",
        "gauge",
        "Datastream files listed in the bucket and not yet processed (at the last poll).",
        ("source",),
        "Datastream reader",
    ),
    Family(
        "capa_datastream_late_files",
        "counter",
        "Datastream files that arrived below their table's checkpoint watermark (read late).",
        ("source",),
        "Datastream reader",
    ),
    Family(
        "capa_datastream_files_processed",
        "counter",
        "Datastream files processed, by outcome (produced, bulk-loaded, dead-lettered, missing).",
        ("source", "status"),
        "Datastream reader",
    ),
    Family(
        "capa_apply_events_applied",
        "counter",
        "Change events applied to the raw replicas and changelogs.",
        ("table",),
        "apply job",
    ),
    Family(
        "capa_apply_commit_to_visible_seconds",
        "histogram",
        "Seconds from the source commit to the change being visible in the replica.",
        ("table",),
        "apply job",
    ),
    Family(
        "capa_apply_last_applied_timestamp_seconds",
        "gauge",
        "Unix time the last change of the table was applied (age = time() - value).",
        ("table",),
        "apply job",
    ),
    Family(
        "capa_apply_consumer_lag_records",
        "gauge",
        "Records in the partition not yet read by the apply job (end offset - position).",
        ("topic", "partition"),
        "apply job",
    ),
    Family(
        "capa_table_freshness_slo_seconds",
        "gauge",
        "Freshness objective of the table: the most its last applied change may age.",
        ("table",),
        "apply job",
    ),
    Family(
        "capa_replication_slot_retained_wal_bytes",
        "gauge",
        "WAL the slot keeps on the source: pg_current_wal_lsn() - restart_lsn.",
        ("slot",),
        "capa serve (exporter)",
    ),
    Family(
        "capa_replication_slot_confirmed_flush_lag_bytes",
        "gauge",
        "WAL not yet confirmed by the consumer: pg_current_wal_lsn() - confirmed_flush_lsn.",
        ("slot",),
        "capa serve (exporter)",
    ),
    Family(
        "capa_replication_slot_active",
        "gauge",
        "1 while a consumer (the Debezium bridge) is connected to the slot.",
        ("slot",),
        "capa serve (exporter)",
    ),
    Family(
        "capa_consumption_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful build of the consumption model.",
        ("model",),
        "capa serve (exporter)",
    ),
)

BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES}


def docs_table() -> str:
    """The Markdown table of every family (``docs/observability.md`` holds it verbatim)."""
    lines = [
        "| Metric | Type | Labels | Exposed by | Meaning |",
        "|---|---|---|---|---|",
    ]
    for f in FAMILIES:
        labels = ", ".join(f"`{label}`" for label in f.labels)
        lines.append(f"| `{f.exposed_name}` | {f.kind} | {labels} | {f.emitted_by} | {f.help} |")
    return "\n".join(lines) + "\n"


_lock = threading.Lock()
_objects: dict[str, Any] = {}


def metric(name: str) -> Any:
    """The prometheus_client object of family ``name`` (created once, default registry)."""
    found = _objects.get(name)
    if found is not None:
        return found
    with _lock:
        if name not in _objects:
            _objects[name] = _create(BY_NAME[name])
        return _objects[name]


def _create(family: Family) -> Any:
    import prometheus_client as prom

    if family.kind == "histogram":
        return prom.Histogram(family.name, family.help, family.labels, buckets=LATENCY_BUCKETS)
    factory = prom.Counter if family.kind == "counter" else prom.Gauge
    return factory(family.name, family.help, family.labels)


# --- labels ---------------------------------------------------------------------------

UNKNOWN_TABLE = "unknown"
OTHER_REASON = "other"
MAX_REASONS = 30  # distinct reason classes per process; later ones count as "other"

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|`[^`]*`|\([^)]*\)|\[[^\]]*\]|\{[^}]*\}")
_VALUE = re.compile(r"[^a-z ]+")
_reasons: set[str] = set()


def table_label(source: str, schema: str | None, table: str) -> str:
    """``source.schema.table``: the one table label every component uses."""
    return ".".join(part for part in (source, schema, table) if part)


def reason_label(reason: str) -> str:
    """A bounded class for a dead-letter reason: its first words, values removed.

    Reasons quote the bad value ("column 'x' ... 4.5e300"); the label keeps the wording
    ("column is out of range") so one kind of failure is one series, and after
    :data:`MAX_REASONS` distinct classes everything else is ``other``.
    """
    text = _QUOTED.sub(" ", reason.split(":", 1)[0].lower())
    words = [w for w in _VALUE.sub(" ", text).split() if len(w) > 1][:6]
    label = "_".join(words) or OTHER_REASON
    with _lock:
        if label in _reasons or len(_reasons) < MAX_REASONS:
            _reasons.add(label)
            return label
    return OTHER_REASON


# --- ingest components ------------------------------------------------------------------


def record_received(component: str, table: str, count: int = 1) -> None:
    metric("capa_ingest_records_received").labels(component, table).inc(count)


def record_produced(component: str, table: str, count: int = 1) -> None:
    metric("capa_ingest_events_produced").labels(component, table).inc(count)


def record_skipped(component: str, kind: str) -> None:
    metric("capa_ingest_records_skipped").labels(component, kind).inc()


def record_nulled_value(component: str, table: str, column: str) -> None:
    metric("capa_ingest_values_nulled").labels(component, table, column).inc()


def record_dead_letter(component: str, table: str, reason: str, count: int = 1) -> None:
    metric("capa_dead_letters").labels(component, table, reason_label(reason)).inc(count)


# --- the apply job ------------------------------------------------------------------------

_slo_default_s: float = 300.0
_slo_by_table: dict[str, float] = {}


def configure_slos(default_s: float, by_table: Mapping[str, float]) -> None:
    """Freshness objectives exported beside each applied table (from ObserveConfig)."""
    global _slo_default_s
    _slo_default_s = default_s
    _slo_by_table.clear()
    _slo_by_table.update(by_table)


def record_applied(
    table: str,
    count: int,
    commit_ts_us: Iterable[int | None] = (),
    dead_letters: Mapping[str, int] | None = None,
    *,
    now: float | None = None,
) -> None:
    """Report one applied batch of ``table`` (call after the warehouse commit returned).

    ``count`` events were applied; ``commit_ts_us`` are their source commit times (µs since
    the epoch; None entries are ignored) and give the commit-to-visible latencies;
    ``dead_letters`` maps a reason to how many of the batch's events were dead-lettered.
    ``now`` (Unix seconds, default the clock) is when the batch became visible.
    """
    visible = time.time() if now is None else now
    if count:
        metric("capa_apply_events_applied").labels(table).inc(count)
        metric("capa_apply_last_applied_timestamp_seconds").labels(table).set(visible)
    histogram = metric("capa_apply_commit_to_visible_seconds").labels(table)
    for ts in commit_ts_us:
        if ts is not None:
            histogram.observe(max(0.0, visible - ts / 1_000_000))
    for reason, n in (dead_letters or {}).items():
        record_dead_letter("apply", table, reason, n)
    slo = _slo_by_table.get(table, _slo_default_s)
    metric("capa_table_freshness_slo_seconds").labels(table).set(slo)


def record_lag(topic: str, partition: int, lag: int) -> None:
    """Report the apply consumer's lag on one partition (end offset - next offset to read)."""
    metric("capa_apply_consumer_lag_records").labels(topic, str(partition)).set(max(0, lag))


# --- exposition ---------------------------------------------------------------------------


def serve_metrics(host: str, port: int | None) -> int | None:
    """Expose the default registry over HTTP on ``host:port``; returns the bound port.

    ``port`` None disables it; 0 picks a free port. A port already taken is logged, not
    fatal: losing metrics must never stop the data path.
    """
    if port is None:
        return None
    if port and (host, port) in _serving:  # one endpoint per process (DoFn setups repeat)
        return _serving[(host, port)]
    import prometheus_client as prom

    try:
        server, _thread = prom.start_http_server(port, addr=host)
    except OSError as exc:
        logger.warning("metrics endpoint %s:%s not started: %s", host, port, exc)
        return None
    bound = int(server.server_address[1])
    _serving[(host, port)] = bound
    logger.info("metrics on http://%s:%d/metrics", host, bound)
    return bound


_serving: dict[tuple[str, int], int] = {}


def snapshot_family(name: str) -> Any:
    """An empty family of ``name`` for a collector that reads its values at scrape time."""
    from prometheus_client.core import GaugeMetricFamily

    family = BY_NAME[name]
    if family.kind != "gauge":
        raise ValueError(f"{name!r} is a {family.kind}; only gauges are read at scrape time")
    return GaugeMetricFamily(family.name, family.help, labels=list(family.labels))
