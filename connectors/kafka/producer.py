"""The Kafka producer of canonical change events (adapter: confluent-kafka).

All events go to ONE shared topic (``kafka.topic``), keyed by ``event.kafka_key()``
(source + table + primary key, so one row's changes stay in one partition and in order).
The producer is idempotent with ``acks=all``; :meth:`KafkaChangeProducer.flush` waits for
every acknowledgement and raises :class:`~capa.errors.TransientError` if any record was
not acknowledged, so callers only commit their source offset after a clean flush.

:func:`flush_with_retry` retries a failed flush with backoff. A batch of change events is
retried until it is acknowledged or the caller stops (its source offset stays uncommitted
meanwhile); a batch that carries dead letters gives up after ``kafka.dlq_retry_attempts``
attempts or ``kafka.dlq_retry_timeout_s`` seconds with :class:`DeadLetterDeliveryFailed`,
so a dead-letter topic that cannot be written stops the pipeline loudly instead of looping
forever (as Google's Datastream template does) or dropping the records.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from capa.config import KafkaConfig
from capa.errors import ServiceUnavailable
from capa.events import ChangeEvent
from connectors.kafka.clients import client_config
from connectors.kafka.dlq import DeadLetter
from connectors.kafka.wire import EventEncoder, build_encoder

logger = logging.getLogger(__name__)

_BASE_SETTINGS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "lz4",
    "linger.ms": 5,
}


_STOP_GRACE_S = 5.0


class DeliveryFailed(ServiceUnavailable):
    """Some records were not acknowledged by Kafka; resend them (the batch) later."""


class DeadLetterDeliveryFailed(DeliveryFailed):
    """Dead letters stayed unacknowledged through every bounded retry; nothing was committed."""


class KafkaChangeProducer:
    """Produces canonical events and dead letters; ``flush`` is the acknowledgement point."""

    def __init__(
        self,
        config: KafkaConfig,
        *,
        topic: str | None = None,
        dlq_topic: str | None = None,
        encoder: EventEncoder | None = None,
        client_settings: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.topic = topic or config.topic
        self.dlq_topic = dlq_topic or config.dlq_topic
        self.encoder = encoder or build_encoder(config, self.topic)
        self._settings = client_config(
            config,
            {
                **_BASE_SETTINGS,
                "delivery.timeout.ms": config.delivery_timeout_ms,
                **(client_settings or {}),
            },
        )
        self._lock = threading.Lock()
        self._failures: list[str] = []
        self._last_error = ""
        self._fatal = False
        self._producer: Any = None
        self.sent = 0
        self.dead_lettered = 0
        self._dead_letters_in_flight = 0  # since the last clean flush

    # --- producing ---------------------------------------------------------------

    def send(self, event: ChangeEvent) -> None:
        """Queue one event (non-blocking unless the local queue is full)."""
        self._produce(self.topic, self.encoder.encode(event), event.kafka_key(), None)
        self.sent += 1

    def send_dead_letter(self, letter: DeadLetter) -> None:
        """Queue one dead letter: original bytes as value, reason + origin in headers."""
        raw = letter.raw or b""
        limit = self.config.dlq_max_value_bytes
        value = raw[:limit]
        headers = letter.headers(truncated=len(raw) > limit)
        self._produce(self.dlq_topic, value, letter.kafka_key(), headers)
        self.dead_lettered += 1
        self._dead_letters_in_flight += 1
        logger.warning(
            "dead-lettered %s bytes from %s (%s): %s",
            len(raw),
            letter.location or letter.origin,
            letter.origin,
            letter.reason,
        )

    def flush(self, timeout_s: float | None = None, stop: threading.Event | None = None) -> None:
        """Wait for all acknowledgements; :class:`DeliveryFailed` if any record is not acked.

        With ``stop`` set, waiting ends after a short grace period (the caller is
        shutting down and must not commit what is still unacknowledged).
        """
        if self._producer is None:
            return
        timeout = timeout_s if timeout_s is not None else self.config.delivery_timeout_ms / 1000 + 5
        remaining = self._wait_for_acks(timeout, stop)
        failures = self._take_failures()
        if not remaining and not failures:
            self._dead_letters_in_flight = 0
            return
        if self._fatal:
            self._reset()
        raise DeliveryFailed(
            f"Kafka at {self.config.bootstrap} did not acknowledge {remaining + len(failures)} "
            f"record(s): {'; '.join(failures[:3]) or 'flush timed out'}{self._error_note()}"
        )

    def _wait_for_acks(self, timeout_s: float, stop: threading.Event | None) -> int:
        started = time.monotonic()
        while True:
            remaining = int(self._producer.flush(0.5))
            elapsed = time.monotonic() - started
            if not remaining or elapsed >= timeout_s:
                return remaining
            if stop is not None and stop.is_set() and elapsed >= _STOP_GRACE_S:
                return remaining

    @property
    def carries_dead_letters(self) -> bool:
        """Dead letters were queued since the last clean flush."""
        return self._dead_letters_in_flight > 0

    def close(self) -> None:
        if self._producer is not None:
            try:
                self._producer.flush(5)
            finally:
                self._producer = None

    # --- internals -----------------------------------------------------------------

    def _client(self) -> Any:
        if self._producer is None:
            from confluent_kafka import Producer

            self._producer = Producer({**self._settings, "error_cb": self._on_error})
        return self._producer

    def _produce(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]] | None
    ) -> None:
        client = self._client()
        while True:
            try:
                client.produce(topic, value, key, headers=headers, on_delivery=self._on_delivery)
                client.poll(0)
                return
            except BufferError:  # local queue full: let deliveries drain, then retry
                client.poll(0.1)

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            with self._lock:
                self._failures.append(f"{msg.topic()}: {err.str()}")
                self._fatal = self._fatal or bool(err.fatal())

    def _on_error(self, err: Any) -> None:
        logger.warning("Kafka client error: %s", err.str())
        self._last_error = err.str()  # e.g. a SASL authentication failure, for the report
        if err.fatal():
            with self._lock:
                self._fatal = True
                self._failures.append(f"fatal: {err.str()}")

    def _error_note(self) -> str:
        return f" (last client error: {self._last_error})" if self._last_error else ""

    def _take_failures(self) -> list[str]:
        with self._lock:
            failures, self._failures = self._failures, []
        return failures

    def _reset(self) -> None:
        """After a fatal idempotence error the client must be replaced."""
        logger.warning("replacing the Kafka producer after a fatal error")
        self._producer = None
        self._fatal = False


def flush_with_retry(
    producer: KafkaChangeProducer,
    resend: Any,
    *,
    stop: threading.Event | None = None,
    max_backoff_s: float = 30.0,
) -> None:
    """Flush; on failure call ``resend()`` (queue the batch again) and retry with backoff.

    Returns only when everything is acknowledged. Raises :class:`DeliveryFailed` if
    ``stop`` is set while Kafka is still failing, and :class:`DeadLetterDeliveryFailed` once
    a batch with dead letters has used up ``kafka.dlq_retry_attempts`` /
    ``kafka.dlq_retry_timeout_s``; either way the caller does not commit.
    """
    backoff = 0.5
    started = time.monotonic()
    attempts = 0
    while True:
        try:
            producer.flush(stop=stop)
            return
        except DeliveryFailed as exc:
            attempts += 1
            if stop is not None and stop.is_set():
                raise
            if producer.carries_dead_letters:
                _check_dead_letter_budget(producer, exc, attempts, started, backoff)
            logger.warning("%s; retrying in %.1fs", exc, backoff)
            if stop is not None:
                stop.wait(backoff)
            else:
                time.sleep(backoff)
            backoff = min(backoff * 2, max_backoff_s)
            resend()


def _check_dead_letter_budget(
    producer: KafkaChangeProducer,
    failure: DeliveryFailed,
    attempts: int,
    started: float,
    backoff: float,
) -> None:
    """Raise :class:`DeadLetterDeliveryFailed` if another attempt would exceed the budget."""
    config = producer.config
    elapsed = time.monotonic() - started
    if attempts < config.dlq_retry_attempts and elapsed + backoff < config.dlq_retry_timeout_s:
        return
    raise DeadLetterDeliveryFailed(
        f"dead letters for {producer.dlq_topic!r} were not acknowledged after {attempts} "
        f"attempt(s) in {elapsed:.0f}s ({failure}); fix Kafka and restart - nothing was "
        "committed (CAPA__KAFKA__DLQ_RETRY_ATTEMPTS / CAPA__KAFKA__DLQ_RETRY_TIMEOUT_S)"
    ) from failure
