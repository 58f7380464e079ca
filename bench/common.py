"""Shared helpers for the benchmarks' machine-readable results (read by ``bench.run_all``).

Every benchmark can write ONE JSON result with ``--json-out PATH``::

    {"name": "streaming", "params": {"rows": 1000000, ...},
     "figures": {"sustained_apply": 5300.0, ...},
     "baselines": {"sustained_apply": 134000.0},
     "baseline_labels": {"sustained_apply": "bare confluent-kafka read of the same topic"},
     "units": {"sustained_apply": "events/s"},
     "checks": {"identical": true}}

``baselines`` are keyed by the figure they are the in-run reference for (the same reference
may serve several figures); a figure without a baseline has no ratio. ``checks`` are yes/no
correctness checks of the run (e.g. incremental and full builds gave the same tables).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REQUIRED_KEYS = ("name", "params", "figures")


class BenchResultError(ValueError):
    """A benchmark's JSON result is malformed."""


def add_json_out(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json-out",
        dest="json_out",
        default=None,
        help="also write the result as one JSON document to this path (read by bench.run_all)",
    )


def make_result(
    name: str,
    params: Mapping[str, Any],
    figures: Mapping[str, float],
    *,
    baselines: Mapping[str, float] | None = None,
    baseline_labels: Mapping[str, str] | None = None,
    units: Mapping[str, str] | None = None,
    checks: Mapping[str, bool] | None = None,
) -> dict[str, Any]:
    result = {
        "name": name,
        "params": dict(params),
        "figures": {k: float(v) for k, v in figures.items()},
        "baselines": {k: float(v) for k, v in (baselines or {}).items()},
        "baseline_labels": dict(baseline_labels or {}),
        "units": dict(units or {}),
        "checks": {k: bool(v) for k, v in (checks or {}).items()},
    }
    validate_result(result)
    return result


def validate_result(result: Any) -> dict[str, Any]:
    """Check the shape; raise :class:`BenchResultError` quoting what is wrong."""
    if not isinstance(result, dict):
        raise BenchResultError(f"a result must be a JSON object, got {type(result).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in result]
    if missing:
        raise BenchResultError(f"result is missing {missing}; keys present: {sorted(result)}")
    for section in ("figures", "baselines"):
        for metric, value in result.get(section, {}).items():
            if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
                raise BenchResultError(f"{section}[{metric!r}] = {value!r} is not a number")
    orphans = sorted(set(result.get("baselines", {})) - set(result["figures"]))
    if orphans:
        raise BenchResultError(
            f"baselines {orphans} name no figure; figures: {sorted(result['figures'])}"
        )
    return result


def write_result(path: str | Path, result: Mapping[str, Any]) -> None:
    validate_result(dict(result))
    Path(path).write_text(json.dumps(result, indent=2) + "\n")


def read_result(path: str | Path) -> dict[str, Any]:
    text = Path(path).read_text()
    try:
        return validate_result(json.loads(text))
    except json.JSONDecodeError as exc:
        raise BenchResultError(f"{path} is not JSON ({exc}): {text[:200]!r}") from exc
