"""The status file's live latency: ``latency_recent_*`` covers only the changes made visible
in the last ``RECENT_S`` seconds, while ``latency_p99_s`` keeps every sample since start."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from beam_jobs.apply_stats import RECENT_S, ApplyStats

pytestmark = pytest.mark.unit


def test_recent_latency_forgets_batches_older_than_the_window(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    stats = ApplyStats(str(status), log_interval_s=3600)
    now = time.time()
    old_visible = now - RECENT_S - 5
    # an old batch, slow (10 s from commit to visible), then a recent fast one (0.5 s)
    stats.record_batch(100, [int((old_visible - 10) * 1e6)] * 100, 1.0, old_visible)
    stats.record_batch(100, [int((now - 0.5) * 1e6)] * 100, 1.0, now)
    stats.publish()
    snap = json.loads(status.read_text())
    assert snap["latency_samples"] == 200
    assert snap["latency_p99_s"] == pytest.approx(10.0, abs=0.01)
    assert snap["latency_recent_samples"] == 100
    assert snap["latency_recent_p99_s"] == pytest.approx(0.5, abs=0.01)


def test_no_recent_batch_means_no_recent_latency(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    stats = ApplyStats(str(status), log_interval_s=3600)
    long_ago = time.time() - RECENT_S - 60
    stats.record_batch(10, [int((long_ago - 1) * 1e6)] * 10, 1.0, long_ago)
    stats.publish()
    snap = json.loads(status.read_text())
    assert snap["latency_recent_samples"] == 0
    assert snap["latency_recent_p99_s"] is None
