"""The replication slot's continuity: capture stops, loudly, when the slot lost changes.

A logical replication slot holds every change after its ``confirmed_flush_lsn`` until capa
has it. If the slot is dropped behind capa's back (``pg_drop_replication_slot``, a failover
to a server without it, a DBA cleaning up "unused" slots), the changes written before it is
made again are gone from PostgreSQL's point of view. Where capture resumes is known here:

* the Debezium offsets (``<state>/debezium/<engine>.offsets``): the LSNs of the last change
  whose event Kafka acknowledged;
* else, after the fast initial sync (``connectors/pgsync``, state ``done``), the slot's
  consistent point L: the copy holds everything up to L;
* else nothing was captured yet and Debezium's snapshot (or the fast sync) starts afresh.

:func:`slot_gap` decides from that position and the slot as it is now: a missing slot, or a
slot whose ``confirmed_flush_lsn`` is past the position (one made again later: PostgreSQL
would stream from there and skip the rest), means lost changes. The bridge checks before
Debezium starts (so a missing slot is never silently made again, e.g. by ``no_data``
after the initial sync) and again when the engine fails (a slot dropped while streaming)
and then stops with :class:`~capa.errors.SlotLost`. The remedy is a re-sync of the tables
(docs/architecture.md, "A lost replication slot").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capa.config import CapaSettings
from capa.errors import SlotLost
from capa.position import parse_pg_lsn, pg_lsn_text

# a Debezium PostgreSQL offset inside the engine's Java-serialised offsets file
_OFFSET_JSON = re.compile(rb'\{[^{}]*"lsn[a-z_]*"\s*:\s*\d+[^{}]*\}')
_LSN_KEYS = ("lsn", "lsn_proc", "lsn_commit")

REMEDY = (
    "re-sync the tables: stop capa, delete the bridge's offsets ({offsets}) and initial-sync "
    "state ({sync}), drop the replicas of the captured tables, and start again so the "
    "initial sync copies them anew (docs/architecture.md, 'A lost replication slot')"
)


@dataclass(frozen=True)
class SlotState:
    """A row of ``pg_replication_slots``, as far as the check needs it."""

    confirmed_flush_lsn: int
    restart_lsn: int


@dataclass(frozen=True)
class ResumePoint:
    """Where capture resumes, and what says so."""

    lsn: int
    source: str  # "Debezium offsets" or "initial sync"


def offsets_lsn(content: bytes) -> int | None:
    """The highest LSN in Debezium's offsets file content (None: no streaming offset).

    An offset written during an unfinished Debezium snapshot does not count: Debezium
    takes the snapshot again on restart, so nothing is lost whatever became of the slot.
    """
    best: int | None = None
    for match in _OFFSET_JSON.finditer(content):
        try:
            offset = json.loads(match.group(0))
        except ValueError:
            continue
        if offset.get("snapshot") is True and not offset.get("last_snapshot_record"):
            continue
        for key in _LSN_KEYS:
            value = offset.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                best = value if best is None else max(best, value)
    return best


def slot_gap(slot_name: str, resume: ResumePoint | None, slot: SlotState | None) -> str | None:
    """Why resuming at ``resume`` from ``slot`` (None: missing) loses changes; None if not."""
    if resume is None:
        return None  # nothing captured yet: the first copy starts afresh
    at = pg_lsn_text(resume.lsn)
    if slot is None:
        return (
            f"replication slot {slot_name!r} is gone: capture resumes at LSN {at} "
            f"({resume.source}), and the changes written after it until a new slot is made "
            "are lost"
        )
    if slot.confirmed_flush_lsn > resume.lsn:
        return (
            f"replication slot {slot_name!r} starts at LSN "
            f"{pg_lsn_text(slot.confirmed_flush_lsn)}, after capa's resume point {at} "
            f"({resume.source}): it was dropped and made again, and the changes in "
            f"({at}, {pg_lsn_text(slot.confirmed_flush_lsn)}] are lost"
        )
    return None


def resume_point(offsets: Path, sync_state: Any) -> ResumePoint | None:
    """The position capture resumes at: Debezium's offsets, else a finished initial sync."""
    if offsets.exists():
        lsn = offsets_lsn(offsets.read_bytes())
        if lsn is not None:
            return ResumePoint(lsn, "Debezium offsets")
    if sync_state is not None and sync_state.status == "done":
        return ResumePoint(parse_pg_lsn(sync_state.lsn), "initial sync")
    return None


def read_slot(dsn: str, slot_name: str) -> SlotState | None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn::text, restart_lsn::text FROM pg_replication_slots "
            "WHERE slot_name = %s",
            [slot_name],
        ).fetchone()
    if row is None:
        return None
    confirmed, restart = (parse_pg_lsn(v) if v else 0 for v in row)
    return SlotState(confirmed_flush_lsn=confirmed, restart_lsn=restart)


def check_slot(settings: CapaSettings, offsets: Path, sync_state_file: Path) -> None:
    """Raise :class:`SlotLost` if the configured slot lost changes capa has not captured."""
    from connectors.pgsync.progress import StateFile

    slot_name = settings.debezium.slot_name
    # the slot first: Debezium writes its offsets before it confirms the LSN to the slot, so
    # offsets read after the slot are never behind its confirmed_flush_lsn while all is well
    slot = read_slot(settings.postgres.dsn(), slot_name)
    resume = resume_point(offsets, StateFile(sync_state_file).load())
    reason = slot_gap(slot_name, resume, slot)
    if reason is not None:
        raise SlotLost(f"{reason}; {REMEDY.format(offsets=offsets, sync=sync_state_file)}")
