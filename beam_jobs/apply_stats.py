"""Rates, lag and latency of the streaming apply loop: metrics, a log line, a status file.

The metrics go to an :class:`ApplyMetrics` port (the Beam job plugs in Beam's ``Metrics``;
without one they are only in the status file and the log). Every call comes from the thread
that drives the loop: Beam counts a metric in the bundle that updates it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

logger = logging.getLogger(__name__)


class ApplyMetrics(Protocol):
    """Where the loop's counters, distributions and gauges go (names are stable)."""

    def count(self, name: str, value: int) -> None: ...

    def distribution(self, name: str, value: int) -> None: ...

    def gauge(self, name: str, value: int) -> None: ...


class NoMetrics:
    """The status file and the log line only."""

    def count(self, name: str, value: int) -> None:
        pass

    def distribution(self, name: str, value: int) -> None:
        pass

    def gauge(self, name: str, value: int) -> None:
        pass


#: the window of the status file's ``latency_recent_*`` (a live p99, not one since start)
RECENT_S = 30.0


class ApplyStats:
    """Rates, lag and latency of the apply loop: metrics (a port), a log line, a status file."""

    def __init__(
        self, status_file: str | None, log_interval_s: float, metrics: ApplyMetrics | None = None
    ) -> None:
        self.status_file = Path(status_file) if status_file else None
        self.log_interval_s = log_interval_s
        self.started = time.time()
        self.applied = 0
        self.dead_letters = 0
        self.batches = 0
        self.last_batch_at: float | None = None
        self.lag_events: int | None = None
        self.last_commit_ts_us: int | None = None
        self.latencies: deque[float] = deque(maxlen=100_000)
        self.visible: deque[float] = deque(maxlen=100_000)  # when each latency sample was seen
        self._window = (time.monotonic(), 0)
        self._last_log = time.monotonic()
        self.metrics: ApplyMetrics = metrics or NoMetrics()

    def record_batch(
        self, applied: int, commit_stamps: Sequence[int], seconds: float, visible_at: float
    ) -> None:
        """``commit_stamps``: the source commit times (µs) of the batch's changes (snapshot
        reads excluded)."""
        self.applied += applied
        self.batches += 1
        self.last_batch_at = visible_at
        self.metrics.count("events_applied", applied)
        self.metrics.count("batches", 1)
        self.metrics.distribution("batch_latency_ms", int(seconds * 1000))
        stamps = self.recent(commit_stamps)
        if not stamps:
            return
        latencies = [visible_at - ts / 1e6 for ts in stamps]
        self.latencies.extend(latencies)
        self.visible.extend([visible_at] * len(latencies))
        for latency in spread(latencies, LATENCY_METRIC_SAMPLES):
            self.metrics.distribution("commit_to_visible_ms", int(latency * 1000))
        self.last_commit_ts_us = max(self.last_commit_ts_us or 0, max(stamps))

    def recent(self, commit_stamps: Sequence[int]) -> list[int]:
        """The commit stamps that count for latency (see HISTORY_HORIZON_S)."""
        horizon_us = (self.started - HISTORY_HORIZON_S) * 1e6
        return [ts for ts in commit_stamps if ts >= horizon_us]

    def record_dead_letters(self, count: int) -> None:
        self.dead_letters += count
        self.metrics.count("dead_letters", count)

    def record_lag(self, lag_events: int) -> None:
        self.lag_events = lag_events
        self.metrics.gauge("lag_events", lag_events)
        self.metrics.gauge("lag_seconds", int(self.lag_seconds()))

    def lag_seconds(self) -> float:
        if not self.lag_events or self.last_commit_ts_us is None:
            return 0.0
        return max(time.time() - self.last_commit_ts_us / 1e6, 0.0)

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        since, applied_then = self._window
        rate = (self.applied - applied_then) / max(now - since, 1e-6)
        if now - since > 10:
            self._window = (now, self.applied)
        ordered = sorted(self.latencies)
        since = time.time() - RECENT_S
        recent = sorted(
            x for x, at in zip(self.latencies, self.visible, strict=True) if at >= since
        )
        return {
            "updated_at": time.time(),
            "pid": os.getpid(),
            "events_applied": self.applied,
            "last_batch_at": self.last_batch_at,  # when the last batch became visible (epoch s)
            "dead_letters": self.dead_letters,
            "batches": self.batches,
            "events_per_s": round(rate, 1),
            "lag_events": self.lag_events,
            "lag_s": round(self.lag_seconds(), 3),
            "latency_p50_s": _quantile(ordered, 0.50),
            "latency_p99_s": _quantile(ordered, 0.99),
            "latency_samples": len(ordered),
            # the same over the changes made visible in the last RECENT_S seconds
            "latency_recent_p99_s": _quantile(recent, 0.99),
            "latency_recent_samples": len(recent),
        }

    def publish(self) -> None:
        """Rewrite the status file (atomically) and log a progress line now and then."""
        if self.status_file is None and time.monotonic() - self._last_log < self.log_interval_s:
            return
        status = self.snapshot()
        if self.status_file is not None:
            self.status_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.status_file.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(status))
            tmp.replace(self.status_file)
        if time.monotonic() - self._last_log >= self.log_interval_s:
            self._last_log = time.monotonic()
            logger.info(
                "applied %d events (%.0f/s), lag %s events / %.1fs, p99 %.3fs, dead letters %d",
                status["events_applied"],
                status["events_per_s"],
                status["lag_events"],
                status["lag_s"],
                status["latency_p99_s"] or 0.0,
                status["dead_letters"],
            )


# Snapshot reads and replays of history (committed more than an hour before the job started,
# e.g. recorded F3 events or an old Datastream backfill) say nothing about the pipeline's
# latency, so they are left out of the latency figures.
HISTORY_HORIZON_S = 3600.0
# The Beam distribution of commit -> visible latency gets at most this many values per batch
# (the batch's smallest, largest and evenly spaced ones between): one update per event cost
# about 1 µs each on the apply thread. The status file's percentiles use every event.
LATENCY_METRIC_SAMPLES = 64


T = TypeVar("T", int, float)


def spread(values: Sequence[T], most: int) -> Sequence[T]:
    if len(values) <= most:
        return values
    ordered = sorted(values)
    step = (len(ordered) - 1) / (most - 1)
    return [ordered[round(i * step)] for i in range(most)]


def _quantile(ordered: Sequence[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(int(q * len(ordered)), len(ordered) - 1)], 4)
