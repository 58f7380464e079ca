"""The replication slot continuity decision (connectors/debezium/slot_guard.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.debezium.slot_guard import (
    ResumePoint,
    SlotState,
    offsets_lsn,
    resume_point,
    slot_gap,
)
from connectors.pgsync.progress import SyncState

# the offsets file the embedded engine (Debezium 3.6.3, FileOffsetBackingStore) really wrote
# here after streaming, byte for byte (a Java-serialised HashMap<byte[], byte[]>)
OFFSETS = (
    b"\xac\xed\x00\x05sr\x00\x11java.util.HashMap\x05\x07\xda\xc1\xc3\x16`\xd1\x03\x00\x02F"
    b"\x00\nloadFactorI\x00\tthresholdxp?@\x00\x00\x00\x00\x00\x0cw\x08\x00\x00\x00\x10\x00"
    b"\x00\x00\x01ur\x00\x02[B\xac\xf3\x17\xf8\x06\x08T\xe0\x02\x00\x00xp\x00\x00\x00\x1f"
    b'["scr-7f98b5",{"server":"scr"}]uq\x00~\x00\x02\x00\x00\x00w{"lsn_proc":26460280,'
    b'"messageType":"COMMIT","lsn_commit":26460280,"lsn":26460280,"txId":734,'
    b'"ts_usec":1796698097239509}x'
)
AT = 26460280  # 0/193C078


def test_the_offsets_lsn_is_read_from_the_engines_file() -> None:
    assert offsets_lsn(OFFSETS) == AT
    assert offsets_lsn(b"") is None


def test_the_highest_of_the_offsets_lsns_is_the_resume_point() -> None:
    assert offsets_lsn(b'w{"lsn_proc":10,"lsn_commit":12,"lsn":11}x') == 12


def test_an_unfinished_debezium_snapshot_is_no_resume_point() -> None:
    """Debezium takes an unfinished snapshot again: nothing is lost without the slot."""
    unfinished = b'w{"last_snapshot_record":false,"lsn":500,"snapshot":true,"txId":9}x'
    finished = b'w{"last_snapshot_record":true,"lsn":500,"snapshot":true,"txId":9}x'
    assert offsets_lsn(unfinished) is None
    assert offsets_lsn(finished) == 500


def test_nothing_captured_yet_is_never_a_gap() -> None:
    assert slot_gap("s", None, None) is None


@pytest.mark.parametrize("source", ["Debezium offsets", "initial sync"])
def test_a_missing_slot_after_capture_started_is_a_gap(source: str) -> None:
    reason = slot_gap("capa_slot", ResumePoint(AT, source), None)
    assert reason is not None
    assert "'capa_slot' is gone" in reason and "0/193C078" in reason and source in reason


def test_a_slot_made_again_past_the_resume_point_is_a_gap_with_its_range() -> None:
    later = SlotState(confirmed_flush_lsn=AT + 0x100, restart_lsn=AT + 0xC8)
    reason = slot_gap("capa_slot", ResumePoint(AT, "Debezium offsets"), later)
    assert reason is not None
    assert "(0/193C078, 0/193C178] are lost" in reason


@pytest.mark.parametrize("confirmed", [AT, AT - 1, 0])
def test_a_slot_at_or_before_the_resume_point_is_whole(confirmed: int) -> None:
    slot = SlotState(confirmed_flush_lsn=confirmed, restart_lsn=confirmed)
    assert slot_gap("s", ResumePoint(AT, "Debezium offsets"), slot) is None


def test_the_resume_point_is_the_offsets_else_a_finished_initial_sync(tmp_path: Path) -> None:
    offsets = tmp_path / "engine.offsets"
    done = SyncState("s", "0/16B6C50", status="done")
    copying = SyncState("s", "0/16B6C50")
    assert resume_point(offsets, None) is None
    assert resume_point(offsets, copying) is None  # the sync's own resume checks its slot
    assert resume_point(offsets, done) == ResumePoint(0x16B6C50, "initial sync")
    offsets.write_bytes(OFFSETS)
    assert resume_point(offsets, done) == ResumePoint(AT, "Debezium offsets")
