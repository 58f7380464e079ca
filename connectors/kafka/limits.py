"""The record-size policy: one limit (``kafka.max_message_bytes``) sized onto every Kafka piece.

capa checks each event's encoded size (value + key) against the limit BEFORE producing it;
an event above it becomes a dead letter and is never produced (see
:mod:`connectors.kafka.producer`). Everything that carries records is configured a little
above the limit (:data:`FRAMING_HEADROOM` for record and batch framing and headers), so an
event that passed the check is never refused by the client or the broker capa configures:

* broker ``message.max.bytes`` (local stack) and topic ``max.message.bytes`` (topics capa
  creates): the largest record batch accepted;
* producer ``message.max.bytes``: librdkafka refuses larger records in ``produce()``;
* consumer ``fetch.max.bytes`` / ``max.partition.fetch.bytes``: a fetch can hold the
  largest record (``receive.message.max.bytes`` must exceed ``fetch.max.bytes``).
"""

from __future__ import annotations

FRAMING_HEADROOM = 64 * 1024
"""Bytes allowed above the limit for batch/record framing and headers."""

_LIBRDKAFKA_FETCH_MAX = 52_428_800  # librdkafka's default fetch.max.bytes (kept when larger)
_LIBRDKAFKA_RECEIVE_MAX = 100_000_000  # its default receive.message.max.bytes
_RECEIVE_MARGIN = 1024  # librdkafka wants receive.message.max.bytes >= fetch.max.bytes + 512


def wire_limit(max_message_bytes: int) -> int:
    """What brokers, topics and clients are set to: the limit plus framing headroom."""
    return max_message_bytes + FRAMING_HEADROOM


def broker_properties(max_message_bytes: int) -> dict[str, str]:
    """``server.properties`` entries of a broker capa runs."""
    return {
        "message.max.bytes": str(wire_limit(max_message_bytes)),
        "replica.fetch.max.bytes": str(wire_limit(max_message_bytes)),
    }


def topic_config(max_message_bytes: int) -> dict[str, str]:
    """Topic-level config for topics capa creates (overrides a lower broker default)."""
    return {"max.message.bytes": str(wire_limit(max_message_bytes))}


def producer_settings(max_message_bytes: int) -> dict[str, int]:
    """librdkafka producer settings: accept every event that passed the size check."""
    return {"message.max.bytes": wire_limit(max_message_bytes)}


def consumer_settings(max_message_bytes: int) -> dict[str, int]:
    """librdkafka consumer settings: one fetch can always return the largest record."""
    fetch_max = max(wire_limit(max_message_bytes), _LIBRDKAFKA_FETCH_MAX)
    return {
        "fetch.max.bytes": fetch_max,
        "max.partition.fetch.bytes": wire_limit(max_message_bytes),
        "receive.message.max.bytes": max(fetch_max + _RECEIVE_MARGIN, _LIBRDKAFKA_RECEIVE_MAX),
    }
