"""Unwrapping Debezium records: the ``{destination, key, value}`` wrapper, the JSON
converter's ``{schema, payload}`` envelope, Avro-JSON unions, and record classification
(row change vs heartbeat / transaction boundary / logical message / tombstone).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from capa.errors import DecodeError

_AVRO_PRIMITIVES = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Unwrapped:
    """A Debezium record split into its parts."""

    topic: str | None
    key: Any  # record key payload (dict / None / _MISSING when the input had no key)
    key_schema: Mapping[str, Any] | None
    value: Any  # the envelope payload (dict) or None for a tombstone
    value_schema: Mapping[str, Any] | None
    has_key: bool


def unwrap(record: Any) -> Unwrapped:
    if not isinstance(record, dict):
        raise DecodeError(f"a Debezium record must be a JSON object, got {type(record).__name__}")
    if "value" in record and ("key" in record or "destination" in record or "topic" in record):
        topic = record.get("destination") or record.get("topic")
        key_payload, key_schema = split_envelope(_maybe_json(record.get("key")))
        value_payload, value_schema = split_envelope(_maybe_json(record.get("value")))
        return Unwrapped(
            topic if isinstance(topic, str) else None,
            key_payload,
            key_schema,
            value_payload,
            value_schema,
            "key" in record,
        )
    payload, schema = split_envelope(record)
    return Unwrapped(None, None, None, payload, schema, False)


def _maybe_json(value: Any) -> Any:
    """Keys/values given as JSON text (e.g. a console-consumer dump) are parsed."""
    if isinstance(value, str | bytes):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            raise DecodeError(
                f"record key/value is a string but not JSON: {value[:200]!r}"
            ) from None
    return value


def split_envelope(doc: Any) -> tuple[Any, Mapping[str, Any] | None]:
    """``{"schema": ..., "payload": ...}`` -> (payload, schema); anything else unchanged."""
    if isinstance(doc, dict) and "payload" in doc and "schema" in doc and len(doc) == 2:
        schema = doc["schema"]
        return doc["payload"], schema if isinstance(schema, dict) else None
    return doc, None


# --- Avro-JSON (kafka-avro-console-consumer output) --------------------------------------


def is_avro_json(payload: Mapping[str, Any]) -> bool:
    """Unions are wrapped (``{"long": 1}``) and rows are ``{"<ns>.Value": {...}}``."""
    for name in ("after", "before"):
        image = payload.get(name)
        if isinstance(image, dict) and len(image) == 1:
            (only,) = image
            if str(only).endswith(".Value"):
                return True
    ts = payload.get("ts_ms")
    return isinstance(ts, dict) and len(ts) == 1 and next(iter(ts)) in _AVRO_PRIMITIVES


def unwrap_union(value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1:
        (branch,) = value
        if branch in _AVRO_PRIMITIVES or "." in str(branch):
            return value[branch]
    return value


def unwrap_avro_json(payload: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: unwrap_union(v) for k, v in payload.items()}
    for name in ("source", "transaction"):
        if isinstance(out.get(name), dict):
            out[name] = {k: unwrap_union(v) for k, v in out[name].items()}
    for name in ("before", "after"):
        if isinstance(out.get(name), dict):
            out[name] = {k: unwrap_union(v) for k, v in out[name].items()}
    return out


# --- classification ---------------------------------------------------------------------------


def skip_kind(unwrapped: Unwrapped) -> str | None:
    """The kind of non-change record, or None for a row change."""
    value, topic = unwrapped.value, unwrapped.topic or ""
    if value is None:
        if unwrapped.has_key:
            return "tombstone"
        raise DecodeError(
            "record is null: a tombstone needs its record key ({destination, key, value})"
        )
    if not isinstance(value, dict):
        raise DecodeError(f"Debezium value must be a JSON object, got {type(value).__name__}")
    if topic.startswith("__debezium-heartbeat") or (set(value) == {"ts_ms"} and "op" not in value):
        return "heartbeat"
    if value.get("status") in ("BEGIN", "END") and "id" in value and "op" not in value:
        return "transaction"
    if value.get("op") == "m" or ("message" in value and "op" not in value):
        return "message"
    if "tableChanges" in value or ("ddl" in value and "op" not in value):
        return "schema_change"
    return None
