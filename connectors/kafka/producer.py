"""The Kafka producer of canonical change events (adapter: confluent-kafka).

All events go to ONE shared topic (``kafka.topic``), keyed by ``event.kafka_key()``
(source + table + primary key, so one row's changes stay in one partition and in order).
The producer is idempotent with ``acks=all``; :meth:`KafkaChangeProducer.flush` waits for
every acknowledgement and raises :class:`~capa.errors.TransientError` if any record was
not acknowledged, so callers only commit their source offset after a clean flush.

Size policy (:mod:`connectors.kafka.limits`): an event whose encoded value + key exceeds
``kafka.max_message_bytes`` is never produced; it becomes a dead letter (table, key,
position, sizes, the start of the original record). Should Kafka still refuse an event as
too large (``MSG_SIZE_TOO_LARGE``: a broker or topic set lower than capa's limit), that
event is dead-lettered the same way with Kafka's reason, in ``produce()`` or when its
delivery report arrives, before ``flush`` returns. Either way the caller's batch completes
and its source offset moves past the record: a large row never stalls capture.

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
from dataclasses import dataclass
from functools import partial
from typing import Any

from capa import retry
from capa.config import KafkaConfig
from capa.errors import ConfigError, ServiceUnavailable, TerminalError
from capa.events import ChangeEvent
from capa.retry import RetryPolicy
from connectors.kafka.clients import client_config
from connectors.kafka.dlq import DeadLetter, Provenance, oversize_letter
from connectors.kafka.limits import producer_settings
from connectors.kafka.wire import EventEncoder, build_encoder

logger = logging.getLogger(__name__)

_BASE_SETTINGS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "lz4",
    "linger.ms": 5,
}


_STOP_GRACE_S = 5.0
_MSG_SIZE_TOO_LARGE = 10  # librdkafka/Kafka error code, local (produce) and broker alike


class DeliveryFailed(ServiceUnavailable):
    """Some records were not acknowledged by Kafka; resend them (the batch) later."""


@dataclass(frozen=True)
class _Refused:
    """An event Kafka refused as too large, waiting to be dead-lettered by ``flush``."""

    event: ChangeEvent
    provenance: Provenance | None
    encoded: bytes
    reason: str


class DeadLetterDeliveryFailed(ServiceUnavailable):
    """Dead letters stayed unacknowledged through every bounded retry; nothing was committed.

    Not a :class:`DeliveryFailed`: the flush retry must not retry it."""


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
                **producer_settings(config.max_message_bytes),
                **(client_settings or {}),
            },
        )
        self._lock = threading.Lock()
        self._failures: list[str] = []
        self._last_error = ""
        self._refused: list[_Refused] = []
        self._fatal = False
        self._producer: Any = None
        self._kafka_exception: type[Exception] = Exception  # set with the client
        self.sent = 0
        self.dead_lettered = 0
        self.oversized = 0
        self._dead_letters_in_flight = 0  # since the last clean flush

    # --- producing ---------------------------------------------------------------

    def send(self, event: ChangeEvent, provenance: Provenance | None = None) -> bool:
        """Queue one event (non-blocking unless the local queue is full).

        Returns False when the event is over ``max_message_bytes`` and was dead-lettered
        instead; ``provenance`` says where it came from (location, original bytes).
        """
        value, key = self.encoder.encode(event), event.kafka_key()
        size = len(value) + len(key)
        if size > self.config.max_message_bytes:
            reason = (
                f"change event of {size} bytes (encoded value + key) is over "
                f"kafka.max_message_bytes={self.config.max_message_bytes}; not produced"
            )
            self._dead_letter_oversize(_Refused(event, provenance, value, reason))
            return False
        report = partial(self._on_event_delivery, event, provenance)
        refused = self._produce(self.topic, value, key, None, report)
        if refused is not None:
            self._dead_letter_oversize(_Refused(event, provenance, value, refused))
            return False
        self.sent += 1
        return True

    def send_record(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        """Queue one record as it is on another topic (Debezium's notifications); ``flush``
        waits for it like for the events."""
        self._produce(topic, value, key, None, self._on_delivery)

    def _dead_letter_oversize(self, refused: _Refused) -> None:
        event, encoded = refused.event, refused.encoded
        size = len(encoded) + len(event.kafka_key())
        self.send_dead_letter(
            oversize_letter(event, size, refused.reason, refused.provenance, encoded)
        )
        self.oversized += 1

    def send_dead_letter(self, letter: DeadLetter) -> None:
        """Queue one dead letter: original bytes as value, reason + origin in headers."""
        raw = letter.raw or b""
        limit = self.config.dlq_max_value_bytes
        value = raw[:limit]
        headers = letter.headers(truncated=len(raw) > limit)
        refused = self._produce(
            self.dlq_topic, value, letter.kafka_key(), headers, self._on_delivery
        )
        if refused is not None:  # only if client settings put the limit below the cap
            raise ConfigError(
                f"a dead letter of {len(value)} bytes was refused ({refused}); lower "
                "kafka.dlq_max_value_bytes below the producer's message.max.bytes"
            )
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
        while not remaining and (refused := self._take_refused()):
            for item in refused:  # refused as too large: dead letters, then wait for those
                self._dead_letter_oversize(item)
            remaining = self._wait_for_acks(timeout, stop)
        failures = self._take_failures()
        if remaining or failures:
            self._take_refused()  # the caller resends the batch: they will be refused again
            if self._fatal:
                self._reset()
            raise DeliveryFailed(
                f"Kafka at {self.config.bootstrap} did not acknowledge {remaining + len(failures)} "
                f"record(s): {'; '.join(failures[:3]) or 'flush timed out'}{self._error_note()}"
            )
        self._dead_letters_in_flight = 0

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
            from confluent_kafka import KafkaException, Producer

            self._kafka_exception = KafkaException
            self._producer = Producer({**self._settings, "error_cb": self._on_error})
        return self._producer

    def _produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]] | None,
        on_delivery: Any,
    ) -> str | None:
        """Queue one record; returns Kafka's reason if the client refuses it as too large."""
        client = self._client()
        while True:
            try:
                client.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
                client.poll(0)
                return None
            except BufferError:  # local queue full: let deliveries drain, then retry
                client.poll(0.1)
            except self._kafka_exception as exc:
                error = exc.args[0]
                if error.code() != _MSG_SIZE_TOO_LARGE:
                    raise
                return f"Kafka producer refused the event: {error.str()}"

    def _on_event_delivery(
        self, event: ChangeEvent, provenance: Provenance | None, err: Any, msg: Any
    ) -> None:
        if err is not None and err.code() == _MSG_SIZE_TOO_LARGE:
            refused = _Refused(
                event, provenance, msg.value(), f"Kafka refused the event: {err.str()}"
            )
            with self._lock:
                self._refused.append(refused)
            return
        self._on_delivery(err, msg)

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

    def _take_refused(self) -> list[_Refused]:
        with self._lock:
            refused, self._refused = self._refused, []
        return refused

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
    policy = RetryPolicy(DeliveryFailed, first_wait_s=0.5, max_wait_s=max_backoff_s)
    started = time.monotonic()
    attempts = 0

    def flush() -> None:
        nonlocal attempts
        try:
            producer.flush(stop=stop)
        except DeliveryFailed as exc:
            attempts += 1
            if producer.carries_dead_letters and not (stop is not None and stop.is_set()):
                _check_dead_letter_budget(producer, exc, attempts, started, policy.wait_s(attempts))
            raise

    retry.call(flush, policy, "Kafka flush", stop=stop, before_retry=resend)


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


class TransactionalChangeProducer(KafkaChangeProducer):
    """A :class:`KafkaChangeProducer` whose records commit in Kafka transactions.

    For a consume-transform-produce loop: :meth:`begin`, then ``send`` /
    ``send_dead_letter`` as usual, then :meth:`commit` with the consumer's next offsets and
    group metadata, so the produced records and the source offsets become visible together
    (to ``read_committed`` readers) or not at all. ``transactional_id`` is stable across
    restarts: :meth:`init` fences a killed predecessor and aborts its open transaction.

    An event over ``kafka.max_message_bytes`` is still dead-lettered before it is produced
    (in the same transaction). Any error inside a transaction surfaces from :meth:`commit`
    as :class:`TransactionAborted` (the transaction was aborted: rewind the consumer and
    redo the batch) or as a fatal :class:`TransactionFenced`.
    """

    def __init__(self, config: KafkaConfig, transactional_id: str, **kwargs: Any) -> None:
        settings = {"transactional.id": transactional_id, **kwargs.pop("client_settings", {})}
        super().__init__(config, client_settings=settings, **kwargs)
        self.transactional_id = transactional_id

    def init(self, timeout_s: float = 30.0) -> None:
        self._call("init_transactions", timeout_s)

    def begin(self) -> None:
        self._call("begin_transaction")

    def commit(self, offsets: list[Any], group_metadata: Any, timeout_s: float = 30.0) -> None:
        """Add ``offsets`` (the consumer's next positions) and commit the transaction."""
        try:
            self._call("send_offsets_to_transaction", offsets, group_metadata, timeout_s)
            self._call("commit_transaction", timeout_s)
        except TransactionAborted:
            self.abort(timeout_s)
            raise
        finally:
            self._take_failures()
            self._take_refused()
        self._dead_letters_in_flight = 0

    def abort(self, timeout_s: float = 30.0) -> None:
        try:
            self._call("abort_transaction", timeout_s)
        except TransactionAborted as exc:  # nothing open any more (the broker aborted it)
            logger.info("abort: %s", exc)

    def _call(self, method: str, *args: Any) -> None:
        client = self._client()
        try:
            getattr(client, method)(*args)
        except self._kafka_exception as exc:
            error = exc.args[0]
            if error.fatal() or error.code() in _FENCED:
                self._producer = None
                raise TransactionFenced(
                    f"{method} failed for transactional.id {self.transactional_id!r}: "
                    f"{error.str()}; another instance took over, or the producer is unusable"
                ) from exc
            raise TransactionAborted(f"{method} failed: {error.str()}") from exc


_FENCED = frozenset({90, 47})  # PRODUCER_FENCED, INVALID_PRODUCER_EPOCH


class TransactionAborted(ServiceUnavailable):
    """The transaction did not commit (it was aborted); redo its input."""


class TransactionFenced(TerminalError):
    """This producer was fenced (a newer instance with the same transactional.id) or
    hit a fatal error: stop the process; its successor redoes the open work."""
