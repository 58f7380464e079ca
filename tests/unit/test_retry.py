"""The one retry policy (capa/retry.py): bounds, which errors retry, the stop signal."""

from __future__ import annotations

import threading

import pytest

from capa import retry
from capa.errors import ServiceUnavailable, TerminalError, TransientError
from capa.retry import RetryPolicy

NO_WAIT = RetryPolicy(TransientError, first_wait_s=0.0, attempts=3)


class Flaky:
    """Fails ``failures`` times with ``error``, then returns the number of calls."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.calls


def test_a_transient_error_is_retried_until_it_heals() -> None:
    flaky = Flaky(2, ServiceUnavailable("broker restarting"))
    assert retry.call(flaky, NO_WAIT, "test") == 3


def test_the_last_error_is_raised_once_the_attempts_are_spent() -> None:
    flaky = Flaky(5, ServiceUnavailable("still down"))
    with pytest.raises(ServiceUnavailable, match="still down"):
        retry.call(flaky, NO_WAIT, "test")
    assert flaky.calls == 3


def test_an_error_outside_the_policy_is_not_retried() -> None:
    flaky = Flaky(1, TerminalError("bad input"))
    with pytest.raises(TerminalError):
        retry.call(flaky, NO_WAIT, "test")
    assert flaky.calls == 1


def test_waits_double_up_to_the_ceiling() -> None:
    policy = RetryPolicy(TransientError, first_wait_s=0.5, max_wait_s=3.0)
    assert [policy.wait_s(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    jittered = RetryPolicy(TransientError, first_wait_s=1.0, jitter=True)
    assert all(4.0 <= jittered.wait_s(3) < 8.0 for _ in range(50))


def test_patience_stops_before_a_wait_that_would_end_past_it() -> None:
    policy = RetryPolicy(TransientError, first_wait_s=10.0, patience_s=5.0)
    flaky = Flaky(3, ServiceUnavailable("down"))
    with pytest.raises(ServiceUnavailable):
        retry.call(flaky, policy, "test")  # would wait 10 s: gives up at once
    assert flaky.calls == 1


def test_a_set_stop_signal_raises_and_before_retry_runs_between_calls() -> None:
    resent: list[int] = []
    flaky = Flaky(2, ServiceUnavailable("down"))
    unbounded = RetryPolicy(TransientError, first_wait_s=0.0)
    assert retry.call(flaky, unbounded, "test", before_retry=lambda: resent.append(1)) == 3
    assert resent == [1, 1]
    stop = threading.Event()
    stop.set()
    stopped = Flaky(2, ServiceUnavailable("down"))
    with pytest.raises(ServiceUnavailable):
        retry.call(stopped, unbounded, "test", stop=stop)
    assert stopped.calls == 1
