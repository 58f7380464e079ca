"""Where one normalised Debezium record goes, shared by the embedded bridge and the
normaliser service: a change event to the canonical topic, a dead letter to the DLQ
topic, or nowhere (a skip). :func:`route` queues it on the producer and says what it did;
:func:`count` turns that into the ``capa_ingest_*`` / ``capa_dead_letters`` metrics (the
caller decides when: the bridge at once, the service after its transaction committed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from capa import metrics
from capa.events import ChangeEvent
from connectors.base import DeadLetter as BaseDeadLetter
from connectors.base import RawRecord, Skip
from connectors.kafka.dlq import DeadLetter, Provenance
from connectors.kafka.producer import KafkaChangeProducer

ORIGIN = "debezium"
TOO_LARGE = "record too large for Kafka"

PRODUCED, SKIPPED, DEAD_LETTER = "produced", "skipped", "dead_letter"


@dataclass(frozen=True, slots=True)
class Routed:
    """What :func:`route` did with one record: ``kind`` and the skip kind / DLQ reason."""

    kind: str  # PRODUCED, SKIPPED or DEAD_LETTER
    detail: str = ""


def route(
    outcome: ChangeEvent | Skip | BaseDeadLetter,
    raw: RawRecord,
    producer: KafkaChangeProducer,
    source: str | None,
) -> Routed:
    """Queue ``outcome`` of ``raw`` on ``producer`` (event or dead letter)."""
    if isinstance(outcome, ChangeEvent):
        if producer.send(outcome, Provenance(raw.file, raw.raw_bytes)):
            return Routed(PRODUCED)
        return Routed(DEAD_LETTER, TOO_LARGE)  # the producer dead-lettered it
    if isinstance(outcome, Skip):
        return Routed(SKIPPED, outcome.kind)
    letter = DeadLetter(outcome.reason, outcome.raw, ORIGIN, source=source, location=outcome.file)
    producer.send_dead_letter(letter)
    return Routed(DEAD_LETTER, outcome.reason)


def count(component: str, table: str, routed: Routed) -> None:
    """The metrics of one routed record (received is counted by the caller)."""
    if routed.kind == PRODUCED:
        metrics.record_produced(component, table)
    elif routed.kind == SKIPPED:
        metrics.record_skipped(component, routed.detail)
    else:
        metrics.record_dead_letter(component, table, routed.detail)


def tally(routed: Any, totals: dict[str, int]) -> None:
    """Add ``routed`` to ``{"produced": n, "skipped": n, "dead_letter": n}``."""
    totals[routed.kind] = totals.get(routed.kind, 0) + 1
