"""Concurrent model builds (spark_jobs.schedule): refs first, independent models side by side,
the first failure starts nothing new (plain callables, no Spark)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from spark_jobs.project import Model, parse_model
from spark_jobs.schedule import run_in_order


def models(tmp_path: Path, refs: dict[str, list[str]]) -> list[Model]:
    """Models named after ``refs`` (name -> the models it refs), in a dependency order."""
    out = []
    for name, parents in refs.items():
        reads = " ".join(f"JOIN {{{{ ref('{p}') }}}} {p} ON {p}.k = r.k" for p in parents)
        sql = f"-- capa:\n--   key: [k]\nSELECT r.k FROM {{{{ raw('t') }}}} r {reads}\n"
        path = tmp_path / f"{name}.sql"
        path.write_text(sql)
        out.append(parse_model(path))
    return out


class Recorder:
    def __init__(self, delay: float = 0.05, fail: str | None = None) -> None:
        self.delay, self.fail = delay, fail
        self.spans: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self.running = self.peak = 0

    def __call__(self, model: Model) -> str:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        started = time.monotonic()
        time.sleep(self.delay)
        with self._lock:
            self.running -= 1
            self.spans[model.name] = (started, time.monotonic())
        if model.name == self.fail:
            raise RuntimeError(f"{model.name} failed")
        return model.name


DAG = {"orders": [], "daily": [], "c360": ["orders"], "features": ["c360", "orders"]}


def test_each_model_starts_after_its_refs_and_results_keep_the_order(tmp_path: Path) -> None:
    built = Recorder()
    result = run_in_order(models(tmp_path, DAG), built, workers=2)
    assert result == list(DAG)
    for name, parents in DAG.items():
        for parent in parents:
            assert built.spans[parent][1] <= built.spans[name][0], (parent, name)


def test_independent_models_run_side_by_side_up_to_the_worker_count(tmp_path: Path) -> None:
    wide = {f"m{i}": [] for i in range(6)}
    for workers, peak in ((1, 1), (2, 2), (4, 4)):
        built = Recorder()
        run_in_order(models(tmp_path, wide), built, workers=workers)
        assert built.peak == peak


def test_a_failure_starts_nothing_new_and_is_raised_after_running_ones(tmp_path: Path) -> None:
    built = Recorder(fail="orders")
    with pytest.raises(RuntimeError, match="orders failed"):
        run_in_order(models(tmp_path, DAG), built, workers=2)
    assert "daily" in built.spans  # it was running beside orders: it finished
    assert "c360" not in built.spans and "features" not in built.spans


def test_refs_outside_the_selection_are_not_waited_for(tmp_path: Path) -> None:
    selected = [m for m in models(tmp_path, DAG) if m.name in ("c360", "features")]
    assert run_in_order(selected, Recorder(), workers=2) == ["c360", "features"]


def test_workers_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        run_in_order(models(tmp_path, DAG), Recorder(), workers=0)
