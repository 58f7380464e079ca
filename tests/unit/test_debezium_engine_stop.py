"""A close() that interrupts the engine mid-batch is a clean stop; other errors are failures."""

from __future__ import annotations

from connectors.debezium.engine import _is_interruption


def test_interruption_is_recognised_directly_and_as_a_cause() -> None:
    assert _is_interruption(
        RuntimeError("java.lang.InterruptedException: java.lang.InterruptedException")
    )
    try:
        try:
            raise RuntimeError("java.lang.InterruptedException")
        except RuntimeError as inner:
            raise ValueError("Java Exception") from inner
    except ValueError as outer:
        assert _is_interruption(outer)


def test_other_errors_are_not_interruptions() -> None:
    assert not _is_interruption(RuntimeError("org.apache.kafka.common.errors.TimeoutException"))
