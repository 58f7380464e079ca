"""Build models concurrently, each one after the models it reads (its refs).

Independent models (``customer_orders`` and ``sales_daily`` here) share the one SparkSession:
Spark runs their jobs side by side, and one model's driver-side work (diffs, delta-rs writes,
checks in Arrow) overlaps another's Spark jobs. The first failure (a failed check, a missing
input) starts nothing new; the models already running finish (each restores its own table when
its checks fail), then the failure is raised. ``workers=1`` is the plain sequential build.

Pure Python: no Spark import, unit-tested with plain callables.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

from spark_jobs.project import Model

logger = logging.getLogger(__name__)
R = TypeVar("R")


def run_in_order(models: Sequence[Model], build: Callable[[Model], R], workers: int) -> list[R]:
    """``build(model)`` for every model, each after the ones it refs among ``models``, at most
    ``workers`` at a time; the results in the order of ``models`` (a dependency order)."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    names = {m.name for m in models}
    waiting = {m.name: {r for r in m.refs if r in names} for m in models}
    by_name = {m.name: m for m in models}
    done: dict[str, R] = {}
    running: dict[Future[R], str] = {}
    failure: BaseException | None = None
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="capa-model") as pool:
        while waiting or running:
            if failure is None:
                for name in _ready(waiting, done, models, workers - len(running)):
                    del waiting[name]
                    running[pool.submit(build, by_name[name])] = name
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                error = future.exception()
                if error is None:
                    done[name] = future.result()
                elif failure is None:
                    failure = error
                    logger.info("%s failed; no further model starts", name)
    if failure is not None:
        raise failure
    return [done[m.name] for m in models]


def _ready(
    waiting: dict[str, set[str]], done: Mapping[str, object], models: Sequence[Model], slots: int
) -> list[str]:
    """Up to ``slots`` waiting models whose refs are all built, in dependency order."""
    ready = [m.name for m in models if m.name in waiting and waiting[m.name] <= done.keys()]
    return ready[: max(slots, 0)]
