"""The one retry policy of capa: bounded exponential backoff on the errors that may heal.

A :class:`RetryPolicy` says which errors retry (usually a :class:`~capa.errors.TransientError`
subclass), the bound (attempts, or patience in seconds, or neither: until ``stop`` is set)
and the backoff (first wait, doubling up to a ceiling, optionally jittered). :func:`call`
runs a callable under it (on tenacity) and re-raises the last error once the bound is hit,
so the caller sees the real error, never a wrapper. Every retry is logged with its wait.

tenacity is imported when a policy first runs: the Spark environment imports the local
warehouse module for its constants and does not install it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Which errors retry, how often, and how long to wait in between."""

    retry_on: type[BaseException] | tuple[type[BaseException], ...]
    first_wait_s: float
    max_wait_s: float = 30.0
    attempts: int | None = None  # stop after this many calls (None: no count bound)
    patience_s: float | None = None  # never start a wait that would end past this
    jitter: bool = False  # each wait is multiplied by a random factor in [1, 2)

    def wait_s(self, attempt: int) -> float:
        """The wait after the ``attempt``-th failed call (1-based)."""
        base = min(self.first_wait_s * 2 ** (attempt - 1), self.max_wait_s)
        return base * (1 + random.random()) if self.jitter else base


def call(
    fn: Callable[[], T],
    policy: RetryPolicy,
    what: str,
    *,
    stop: threading.Event | None = None,
    before_retry: Callable[[], Any] | None = None,
) -> T:
    """``fn()`` retried under ``policy``; ``what`` names it in the log.

    ``stop``: a shutdown signal; waits end early when it is set, and a failure seen while
    it is set is raised at once. ``before_retry``: called before every call but the first
    (e.g. queue again what a failed flush did not deliver).
    """
    import tenacity

    def _stopped(state: tenacity.RetryCallState) -> bool:
        if stop is not None and stop.is_set():
            return True
        if policy.attempts is not None and state.attempt_number >= policy.attempts:
            return True
        if policy.patience_s is None:
            return False
        # tenacity computes the wait before it asks whether to stop
        return (state.seconds_since_start or 0.0) + state.upcoming_sleep > policy.patience_s

    def _log(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        logger.warning(
            "%s: attempt %d failed (%s); retrying in %.2fs",
            what,
            state.attempt_number,
            exc,
            state.upcoming_sleep,
        )

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(policy.retry_on),
        stop=_stopped,
        wait=lambda state: policy.wait_s(state.attempt_number),
        sleep=_sleeper(stop),
        before_sleep=_log,
        reraise=True,
    )
    for attempt in retrying:
        with attempt:
            if before_retry is not None and attempt.retry_state.attempt_number > 1:
                before_retry()
            return fn()
    raise AssertionError("unreachable: tenacity re-raises the last error")


def _sleeper(stop: threading.Event | None) -> Callable[[float], None]:
    """``time.sleep``, or a wait that ends early when ``stop`` is set."""
    if stop is None:
        return time.sleep

    def wait(seconds: float) -> None:
        stop.wait(seconds)

    return wait
