"""Process-level tuning shared by capa's long-running processes (bridge, apply job, readers)."""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Fewer cyclic-GC passes for batch-at-a-time event processing.

    A batch holds thousands of events (hundreds of thousands of small objects, none in
    reference cycles); with the default thresholds (700, 10, 10) the collector re-scans
    them over and over. Measured: decode + plan 20-35% slower in the apply job, normalise
    about 40% slower in the bridge (docs/benchmarks.md). Start-up objects (modules, Beam,
    the JVM bridge) are frozen: they are never garbage and are never scanned again.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
