"""Keyless tables: the replica of a table without a primary key is a multiset of rows.

The rules are stated in :mod:`capa.apply` (rule "Keyless tables"); this module holds their
mechanics, used by :class:`capa.merge_rule.ReplicaState` and by every warehouse adapter:

* each occurrence of a row is one replica row with a synthetic key ``_capa_row_id``: the
  ``event_id`` of the insert (or snapshot read, or update) that added it, so a redelivered
  insert finds its row and is a no-op; ``_capa_row_hash`` is the hash of its image;
* an update or delete removes ONE live occurrence whose image equals its ``before`` image
  (the oldest by position below the change's own), leaving a tombstone that carries the
  change's ``event_id``, so a redelivered delete finds it and is a no-op;
* a change whose ``before`` matches no live occurrence (no ``before``: the source lacks
  ``REPLICA IDENTITY FULL``; or a row the replica never held) is *unmatched*: the changelog
  keeps it, an update still adds its new image, and the table is reported diverged.

Resolving needs what the target holds (:class:`KeylessTarget`), so a keyless plan is
completed by :func:`resolve_keyless` against the replica before it is written, and then
applies as a keyed plan on ``_capa_row_id``.
"""

from __future__ import annotations

import hashlib
from bisect import insort
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from capa.events import ChangeEvent, FrozenRow, Op, stable_json

ROW_ID = "_capa_row_id"
ROW_HASH = "_capa_row_hash"
KEYLESS_KEY = (ROW_ID,)  # the replica's key columns for a keyless table
KEYLESS_COLUMNS = (ROW_ID, ROW_HASH)
# the replica's record of unmatched changes (JSON: count, first_position, reason)
UNMATCHED_PROPERTY = "capa.keyless.unmatched"

_REMOVES = frozenset({Op.UPDATE, Op.DELETE})
_ADDS = frozenset({Op.INSERT, Op.READ, Op.UPDATE})


def row_hash(image: Mapping[str, Any]) -> str:
    """The hash of a row image: equal images, equal hashes. NULL and absent columns hash
    alike (a column added at the source is NULL in older images) and metadata columns are
    ignored, so a replica row hashes as the event image that wrote it."""
    values = {
        name: value
        for name, value in image.items()
        if value is not None and not name.startswith("_capa_")
    }
    return hashlib.blake2b(stable_json(values).encode(), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True, order=True)
class Occurrence:
    """One live row of a keyless replica (ordered by position, then row id)."""

    position: str
    row_id: str


@dataclass(frozen=True, slots=True)
class KeylessTarget:
    """What the replica holds for a keyless batch: the ids it already applied (every row's
    ``_capa_row_id`` and ``_capa_event_id``) and its live occurrences per row hash."""

    applied: frozenset[str] = frozenset()
    live: Mapping[str, Sequence[Occurrence]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KeylessStep:
    """One event's effect: the occurrence it removes (row id, before image) and/or the one it
    adds (its own event id, the new image)."""

    event: ChangeEvent
    removed: tuple[str, Mapping[str, Any]] | None
    added: Mapping[str, Any] | None
    matched: bool  # False: it had to remove an occurrence and found none


def batch_needs(events: Iterable[ChangeEvent]) -> tuple[set[str], str | None]:
    """(row hashes whose live occurrences the batch may remove, lowest position): what a
    target must read. An already applied event's rows all sit at or above its position."""
    hashes: set[str] = set()
    lowest: str | None = None
    for event in events:
        if event.op in _REMOVES and event.before:
            hashes.add(row_hash(event.before))
        lowest = event.position if lowest is None else min(lowest, event.position)
    return hashes, lowest


def resolve_keyless(events: Sequence[ChangeEvent], target: KeylessTarget) -> list[KeylessStep]:
    """The steps of ``events`` (distinct, live, in position order) against ``target``;
    events the target already applied are left out."""
    live = {h: sorted(occurrences) for h, occurrences in target.live.items()}
    steps: list[KeylessStep] = []
    for event in events:
        if event.event_id in target.applied:
            continue
        removed = _remove(event, live) if event.op in _REMOVES else None
        added = _image(event) if event.op in _ADDS else None
        if added is not None:
            insort(live.setdefault(row_hash(added), []), Occurrence(event.position, event.event_id))
        matched = removed is not None or event.op not in _REMOVES
        steps.append(KeylessStep(event, removed, added, matched))
    return steps


def _remove(
    event: ChangeEvent, live: dict[str, list[Occurrence]]
) -> tuple[str, Mapping[str, Any]] | None:
    """Take the oldest live occurrence equal to ``event.before`` below the event's position."""
    before = event.before
    if not before:
        return None
    occurrences = live.get(row_hash(before))
    if not occurrences or occurrences[0].position >= event.position:
        return None
    return occurrences.pop(0).row_id, before


def _image(event: ChangeEvent) -> Mapping[str, Any] | None:
    """The new row: ``after``, with TOAST-unchanged columns taken from a full ``before``."""
    after = event.after
    if after is None or not event.unchanged:
        return after
    before = event.before or {}
    kept = {name: before[name] for name in event.unchanged if name in before}
    return FrozenRow({**after, **kept})


def with_identity(image: Mapping[str, Any], row_id: str) -> FrozenRow:
    """The replica row of an occurrence: its image plus the synthetic key and its hash."""
    return FrozenRow({**image, ROW_ID: row_id, ROW_HASH: row_hash(image)})


def unmatched_reason(event: ChangeEvent) -> str:
    """Why a keyless change matched no replica row, and what the operator should do."""
    where = f"{event.op.name.lower()} on {event.source}.{event.schema}.{event.table}"
    if not event.before:
        return (
            f"{where} has no primary key and the source sent no before image, so the "
            "changed row cannot be found in the replica; run ALTER TABLE ... REPLICA "
            "IDENTITY FULL at the source (or add a primary key) and resync the table"
        )
    return (
        f"{where} names a row (its before image) that the replica does not hold; "
        "resync the table (the changelog keeps every change)"
    )
