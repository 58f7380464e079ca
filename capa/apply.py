"""Apply semantics, pure: turn a batch of change events into what a warehouse must write.

Every warehouse adapter plans a batch with :func:`plan_table` and then writes the plan in
one atomic step per table (a Delta MERGE commit, a BigQuery MERGE script). The rules:

* Events are ordered by source ``position`` (byte-comparable), never by arrival; a batch
  is first de-duplicated by ``event_id`` (redelivery is harmless).
* Per primary key only the latest event of the batch is written, folded over the older
  ones of the batch (so "unchanged" TOAST columns take the value of an earlier event of
  the same batch, else the target row keeps its value: ``RowChange.keep``).
* The target applies a change only if ``change.position > row._capa_position`` (the stale
  guard inside the merge predicate): older events are no-ops, replays change nothing.
* A delete writes a tombstone (``_capa_deleted=true``, the delete's ``before`` image and
  its position) so later-arriving older events stay no-ops.
* An update whose ``before`` image carries a different key moves the row: a delete of the
  old key plus an upsert of the new key (Debezium already sends delete + create).
* Every change names its row by a value for each primary-key column: a NULL or missing
  key value is a terminal error (:func:`require_key_values`; the event dead-letters) and
  no row with a NULL key is ever written. Fast paths that skip the event model send such
  records here (:mod:`capa.columnar`), normalisers refuse them first.
* A truncate at position P removes every row with position < P and raises the table's
  truncate watermark to P; events at or below the watermark are no-ops from then on.
* **Keyless tables** (an empty primary key; only adapters that pass ``keyless=True`` to
  :func:`plan_table` accept them) replicate as a multiset, exactly as the source holds
  duplicates (mechanics in :mod:`capa.keyless`). Each occurrence of a row is one replica
  row keyed by ``_capa_row_id``, the ``event_id`` of the insert, read or update that added
  it. An update or delete removes one live occurrence whose image equals its ``before``
  image (the oldest below its position) by a tombstone carrying its ``event_id``; an update
  then adds its new image. The batch is resolved against what the replica holds
  (:func:`resolve_plan`): an event whose id is already a row id or tombstone id there is a
  no-op, so redelivering any prefix is harmless. A change whose ``before`` matches no live
  occurrence (the source lacks ``REPLICA IDENTITY FULL``, or the replica never held the
  row) is *unmatched*: the changelog keeps it, an update still adds its new image (a row
  that exists at the source exists in the replica), an unmatched delete leaves a tombstone
  of its own (so its redelivery is a no-op too), and the plan lists it in ``unmatched`` so
  the adapter marks the table diverged and tells the operator once. Keyless
  events are applied in position order (one Kafka partition per table: their Kafka key has
  no key values), not in any permutation; a delete never removes a later insert.

Together: applying any permutation of a set of events, with any duplicates and in any
batching, gives the replica that applying them once in position order gives. The one
exception is "unchanged" columns, whose previous value only exists if the events of a key
arrive in position order (a Kafka partition per key guarantees that); a reordered TOAST
update can only keep what the replica holds.

How a planned row change merges into the target (stale guard, latest wins, keep, truncate)
is :mod:`capa.merge_rule`, whose :class:`~capa.merge_rule.ReplicaState` is the executable
specification (a dict) the property tests check the adapters against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import Any

from capa.errors import CapaError, DecodeError, TransientError
from capa.events import ChangeEvent, FrozenRow, Op
from capa.keyless import (
    KEYLESS_KEY,
    ROW_HASH,
    ROW_ID,
    KeylessTarget,
    Occurrence,
    batch_needs,
    resolve_keyless,
    with_identity,
)

KeyTuple = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class RowChange:
    """What to write for one primary key: the latest event of the batch, folded."""

    key: KeyTuple
    position: str
    op: Op
    deleted: bool
    values: FrozenRow  # columns to write (the full image; absent columns become NULL)
    keep: frozenset[str]  # columns whose value stays as the target row has it
    event_id: str
    commit_ts_us: int | None


@dataclass(frozen=True, slots=True)
class TablePlan:
    table: str
    primary_key: tuple[str, ...]
    changes: tuple[RowChange, ...]  # one per key, position order
    changelog: tuple[ChangeEvent, ...]  # distinct events, position order
    truncate_position: str | None  # the watermark after this batch, if a truncate raised it
    events: int  # events received (with duplicates)
    stale: int  # distinct events at or below the truncate watermark
    source_types: Mapping[str, str] = field(default_factory=dict)
    keyless: tuple[ChangeEvent, ...] = ()  # a keyless table's live events (resolve_plan)
    unmatched: tuple[ChangeEvent, ...] = ()  # resolved keyless changes that matched no row

    @property
    def needs_target(self) -> bool:
        """True for a keyless plan not yet resolved against its replica."""
        return not self.primary_key and bool(self.keyless)

    @property
    def keep_columns(self) -> frozenset[str]:
        return frozenset().union(*(c.keep for c in self.changes))


def distinct_events(events: Iterable[ChangeEvent]) -> list[ChangeEvent]:
    """De-duplicated by ``event_id``, sorted by (position, event_id)."""
    unique = {e.event_id: e for e in events}
    return sorted(unique.values(), key=_POSITION_ORDER)


_POSITION_ORDER = attrgetter("position", "event_id")
_NO_COLUMNS: frozenset[str] = frozenset()


def plan_table(
    events: Sequence[ChangeEvent], watermark: str | None = None, *, keyless: bool = False
) -> TablePlan:
    """Plan one table's batch against its current truncate ``watermark``. ``keyless``: the
    caller resolves keyless plans (:func:`resolve_plan`); without it a table without a
    primary key is refused (DecodeError), so an adapter never drops its rows silently."""
    if not events:
        raise ValueError("plan_table needs at least one event")
    distinct = distinct_events(events)
    primary_key = _primary_key(distinct, keyless=keyless)
    truncates = [e.position for e in distinct if e.op is Op.TRUNCATE]
    new_watermark = max([*truncates, *([watermark] if watermark else [])], default=None)
    live = [e for e in distinct if e.op is not Op.TRUNCATE]
    if new_watermark is not None:
        live = [e for e in live if e.position > new_watermark]
    stale = len(distinct) - len(truncates) - len(live)
    folded = fold_changes(live, primary_key) if primary_key else {}
    return TablePlan(
        table=distinct[0].table_id,
        primary_key=primary_key,
        changes=tuple(sorted(folded.values(), key=_POSITION_ORDER)),
        changelog=tuple(distinct),
        truncate_position=new_watermark if truncates and new_watermark != watermark else None,
        events=len(events),
        stale=stale,
        source_types=_source_types(distinct),
        keyless=() if primary_key else tuple(live),
    )


def resolve_plan(plan: TablePlan, target: KeylessTarget) -> TablePlan:
    """A keyless plan resolved against what its replica holds (``target``, read for the
    needs of :func:`capa.keyless.batch_needs`): a keyed plan on ``_capa_row_id`` with one
    row change per touched occurrence, plus the unmatched events. Other plans unchanged."""
    if not plan.needs_target:
        return plan
    changes: dict[KeyTuple, RowChange] = {}
    unmatched: list[ChangeEvent] = []
    for step in resolve_keyless(plan.keyless, target):
        event = step.event
        if step.removed is not None:
            row_id, before = step.removed
            image = with_identity(before, row_id)
            changes[(row_id,)] = _change(
                event, (row_id,), image, deleted=True, keep=(), op=Op.DELETE
            )
        if step.added is not None:
            image = with_identity(step.added, event.event_id)
            changes[(event.event_id,)] = _change(
                event, (event.event_id,), image, deleted=False, keep=()
            )
        if not step.matched:
            unmatched.append(event)
            if step.added is None:  # a tombstone of its own: its id marks it applied
                image = with_identity(event.before or {}, event.event_id)
                changes[(event.event_id,)] = _change(
                    event, (event.event_id,), image, deleted=True, keep=()
                )
    return replace(
        plan,
        primary_key=KEYLESS_KEY,
        changes=tuple(sorted(changes.values(), key=_POSITION_ORDER)),
        source_types={**plan.source_types, ROW_ID: "text", ROW_HASH: "text"},
        unmatched=tuple(unmatched),
    )


def keyless_target(plan: TablePlan, rows: Iterable[Mapping[str, Any]]) -> KeylessTarget:
    """The :class:`KeylessTarget` of ``plan`` from replica rows (any superset of the rows
    at or above the batch's lowest position and the live rows of the hashes it removes)."""
    hashes, lowest = batch_needs(plan.keyless)
    cut = plan.truncate_position  # rows below it are gone once the plan is written
    applied: set[str] = set()
    live: dict[str, list[Occurrence]] = {}
    for row in rows:
        position = row["_capa_position"]
        if cut is not None and position < cut:
            continue
        if lowest is not None and position >= lowest:
            applied.update((row[ROW_ID], row["_capa_event_id"]))
        if not row["_capa_deleted"] and row[ROW_HASH] in hashes:
            live.setdefault(row[ROW_HASH], []).append(Occurrence(position, row[ROW_ID]))
    return KeylessTarget(frozenset(applied), live)


def _primary_key(events: Sequence[ChangeEvent], *, keyless: bool) -> tuple[str, ...]:
    keyed = [e for e in events if e.op is not Op.TRUNCATE]
    keys = {e.primary_key for e in keyed}
    if len(keys) > 1:
        raise DecodeError(
            f"table {keyed[0].table_id!r} has events with different primary keys {sorted(keys)}; "
            "a primary-key change needs a new raw table (or a migration) before replay"
        )
    primary_key = keys.pop() if keys else ()
    if keyed and not primary_key and not keyless:
        raise DecodeError(
            f"table {keyed[0].table_id!r} has no primary key and this warehouse does not "
            "replicate keyless tables yet: add a primary key at the source, or use the local "
            "warehouse"
        )
    return primary_key


def _source_types(events: Iterable[ChangeEvent]) -> dict[str, str]:
    types: dict[str, str] = {}
    previous: tuple[Any, ...] | None = None
    for event in events:
        if event.columns is previous:
            continue
        previous = event.columns
        for column in previous:
            if column.source_type:
                types[column.name] = column.source_type
    return types


def key_of(row: Mapping[str, Any], primary_key: Sequence[str]) -> KeyTuple:
    return tuple(row.get(name) for name in primary_key)


def fold_changes(
    events: Sequence[ChangeEvent], primary_key: Sequence[str]
) -> dict[KeyTuple, RowChange]:
    """Key -> the folded latest change, over events already in position order."""
    state: dict[KeyTuple, RowChange] = {}
    for event in events:
        plain = _plain_upsert(event, primary_key)
        if plain is not None:
            key, image = plain
            if None in key:  # a NULL or missing key value: refused with its reason
                require_key_values(event, primary_key)
            previous = state.get(key)
            if previous is None or event.position >= previous.position:
                state[key] = _change(event, key, image, deleted=False, keep=())
            continue
        for change in expand_event(event, primary_key):
            state[change.key] = _fold(state.get(change.key), change)
    return state


_UPSERTS = frozenset({Op.INSERT, Op.READ, Op.UPDATE})


def _plain_upsert(
    event: ChangeEvent, primary_key: Sequence[str]
) -> tuple[KeyTuple, Mapping[str, Any]] | None:
    """(key, image) of an upsert without TOAST columns or key move whose ``after`` already
    holds its key (the common case, planned without copies); None for everything else."""
    after = event.after
    if event.op not in _UPSERTS or event.unchanged or after is None:
        return None
    key_row = event.key
    key = tuple([key_row.get(name) for name in primary_key])
    for name, value in key_row.items():
        held = after.get(name, _MISSING)
        if held is not value and (type(held) is not type(value) or held != value):
            return None
    if event.before and _moved_from(event, primary_key, key) is not None:
        return None
    return key, after


_MISSING = object()


def expand_event(event: ChangeEvent, primary_key: Sequence[str]) -> list[RowChange]:
    """One event -> row changes (two for an update that moves the primary key)."""
    require_key_values(event, primary_key)
    key = key_of(event.key, primary_key)
    if event.op is Op.DELETE:
        image = dict(event.key) | dict(event.before or {})
        return [_change(event, key, image, deleted=True, keep=())]
    image = dict(event.after or {}) | dict(event.key)
    upsert = _change(event, key, image, deleted=False, keep=event.unchanged)
    old_key = _moved_from(event, primary_key, key)
    if old_key is None:
        return [upsert]
    old_image = dict(zip(primary_key, old_key, strict=True))
    return [_change(event, old_key, old_image, deleted=True, keep=(), op=Op.DELETE), upsert]


def check_applicable(event: ChangeEvent) -> None:
    """Raise DecodeError for an event no apply can ever write: its raw table name is unusable
    (:class:`~capa.errors.TableNameError`) or a key value is NULL or missing. Decoders call
    it so that such a record dead-letters alone, before its table's batch is planned."""
    event.table_id  # noqa: B018 - raises TableNameError
    require_key_values(event)


def require_key_values(event: ChangeEvent, primary_key: Sequence[str] | None = None) -> None:
    """Raise DecodeError unless ``event.key`` holds a non-NULL value for every primary-key
    column (``primary_key``, default the event's own); truncates name no row."""
    if event.op is Op.TRUNCATE:
        return
    names = event.primary_key if primary_key is None else primary_key
    key = event.key
    if all(key.get(name) is not None for name in names):
        return  # the common case, without building a message
    missing = [name for name in names if name not in key]
    where = f"{event.op.name.lower()} on {_table_label(event)} at position {event.position}"
    if missing and event.op is Op.DELETE:
        raise DecodeError(
            f"{where} lacks the values of key column(s) {missing} (the source sent an empty "
            "payload), so the deleted row cannot be identified; find the row at the source "
            "and replay it, or delete it by hand"
        )
    if missing:
        raise DecodeError(f"{where} lacks the values of key column(s) {missing}; {_KEY_FIX}")
    nulls = [name for name in names if key[name] is None]
    if nulls:
        raise DecodeError(f"{where} has NULL in key column(s) {nulls}; {_KEY_FIX}")


_KEY_FIX = (
    "a replica row is identified by its primary key, so this change cannot be applied: "
    "make the key columns NOT NULL at the source (or configure primary_keys that are) "
    "and replay the row"
)


def _table_label(event: ChangeEvent) -> str:
    # the source spelling, not the raw name: this also reports events whose name is invalid
    return repr(f"{event.source}.{event.schema}.{event.table}")


def _moved_from(event: ChangeEvent, primary_key: Sequence[str], key: KeyTuple) -> KeyTuple | None:
    before: Mapping[str, Any] = event.before or {}
    if event.op is not Op.UPDATE or not all(name in before for name in primary_key):
        return None
    old = key_of(before, primary_key)
    if old == key:
        return None
    if None in old:
        raise DecodeError(
            f"update on {_table_label(event)} at position {event.position} moves the row from "
            f"a key with NULL values {dict(zip(primary_key, old, strict=True))}; {_KEY_FIX}"
        )
    return old


def _change(
    event: ChangeEvent,
    key: KeyTuple,
    image: Mapping[str, Any],
    *,
    deleted: bool,
    keep: Iterable[str],
    op: Op | None = None,
) -> RowChange:
    return RowChange(
        key=key,
        position=event.position,
        op=op or event.op,
        deleted=deleted,
        values=image if isinstance(image, FrozenRow) else FrozenRow(image),
        keep=frozenset(keep) - image.keys() if keep else _NO_COLUMNS,
        event_id=event.event_id,
        commit_ts_us=event.commit_ts_us,
    )


def _fold(previous: RowChange | None, change: RowChange) -> RowChange:
    if previous is None or not change.keep or change.position <= previous.position:
        return change if previous is None or change.position >= previous.position else previous
    values = dict(change.values)
    for name in change.keep - previous.keep:
        values[name] = None if previous.deleted else previous.values.get(name)
    return RowChange(
        key=change.key,
        position=change.position,
        op=change.op,
        deleted=change.deleted,
        values=FrozenRow(values),
        keep=change.keep & previous.keep,
        event_id=change.event_id,
        commit_ts_us=change.commit_ts_us,
    )


# --- dead letters ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadLetter:
    event: ChangeEvent
    reason: str


def apply_isolating_failures(
    apply: Callable[[Sequence[ChangeEvent]], Any], events: Sequence[ChangeEvent]
) -> list[DeadLetter]:
    """Apply ``events``; on a failure bisect the batch so only the bad events dead-letter.

    Safe because apply is idempotent: parts that already succeeded are no-ops when replayed.
    A :class:`~capa.errors.TransientError` propagates (the caller retries, or stops without
    committing); any other error (terminal, or one nobody classified: a writer library
    refusing a value) rejects the events it comes from, so no single record can stop the
    stream. Without failures this is one ``apply`` call.
    """
    if not events:
        return []
    try:
        apply(events)
        return []
    except TransientError:
        raise
    except Exception as exc:
        if len(events) == 1:
            return [DeadLetter(events[0], rejection_reason(exc))]
    middle = len(events) // 2
    return apply_isolating_failures(apply, events[:middle]) + apply_isolating_failures(
        apply, events[middle:]
    )


def rejection_reason(exc: BaseException) -> str:
    """A dead letter's reason: capa's own message, or an unclassified error with its type."""
    return str(exc) if isinstance(exc, CapaError) else f"{type(exc).__name__}: {exc}"
