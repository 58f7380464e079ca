"""Source positions as byte-comparable strings.

For one source table, sorting events by ``position`` (plain string comparison) gives
source order. Never compare raw LSN text: ``"0/FFFFFF" > "0/1000000"`` as strings, which
is the bug in Google's Datastream-to-BigQuery template.

PostgreSQL: ``<lsn:016x>.<phase>`` - the change's WAL position as a 64-bit number in
fixed-width hex, then ``0`` for snapshot/backfill reads and ``1`` for streamed changes, so
a snapshot read sorts before a change at the same LSN. Debezium's int64 ``lsn`` and
Datastream's ``"16/CB002DB0"`` text map to the same string.

SQL Server: ``<commit_lsn:20x>.<change_lsn:20x>.<event_serial_no:08x>`` from the
``xxxxxxxx:xxxxxxxx:xxxx`` LSN text (snapshot reads have no change_lsn: zeros).

BigQuery CDC: :func:`change_sequence_number` maps a log position to BigQuery's
``_CHANGE_SEQUENCE_NUMBER`` (a STRING of at most 4 '/'-separated sections of at most 16 hex
digits each, compared section by section as integers). The mapping drops the dots and cuts
the remaining fixed-width lowercase hex digits into 16-digit sections from the left:

* PostgreSQL (Debezium and Datastream alike) ``0000000016cb002d.1`` ->
  ``0000000016cb002d/1`` (LSN, then phase);
* SQL Server ``<20 hex>.<20 hex>.<8 hex>`` (48 digits) -> three 16-digit sections.

Every position of one source kind has the same digit count, so equal-width sections compare
as integers exactly as the digit strings compare as text, which is how the positions
themselves sort. Batch positions (CRM: a load id that is not hex) have no such mapping.
"""

from __future__ import annotations

import re

from capa.errors import DecodeError

SNAPSHOT_PHASE = "0"
STREAM_PHASE = "1"
_PG_LSN_TEXT = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
_MSSQL_LSN = re.compile(r"^([0-9A-Fa-f]{8}):([0-9A-Fa-f]{8}):([0-9A-Fa-f]{4})$")
_MAX_U64 = (1 << 64) - 1
_LOG_POSITION = re.compile(r"^[0-9a-f.]+$")
_CSN_SECTION = 16  # hex digits per _CHANGE_SEQUENCE_NUMBER section (64 bits)
_CSN_SECTIONS = 4


def parse_pg_lsn(value: str | int) -> int:
    """``"16/CB002DB0"`` or an int64 -> the LSN as an unsigned 64-bit integer."""
    if isinstance(value, bool):
        raise DecodeError(f"PostgreSQL LSN must be 'X/Y' text or an integer, got {value!r}")
    if isinstance(value, int):
        lsn = value
    else:
        text = str(value).strip()
        match = _PG_LSN_TEXT.match(text)
        if match:
            lsn = (int(match.group(1), 16) << 32) | int(match.group(2), 16)
        elif text.isdigit():
            lsn = int(text)
        else:
            raise DecodeError(f"PostgreSQL LSN {value!r} is neither 'X/Y' hex text nor an integer")
    if not 0 <= lsn <= _MAX_U64:
        raise DecodeError(f"PostgreSQL LSN {value!r} is outside the 64-bit range")
    return lsn


def pg_position(lsn: str | int, *, snapshot: bool) -> str:
    phase = SNAPSHOT_PHASE if snapshot else STREAM_PHASE
    return f"{parse_pg_lsn(lsn):016x}.{phase}"


def pg_position_lsn(position: str) -> int | None:
    """The LSN of a PostgreSQL position (the inverse of :func:`pg_position`); None for the
    positions of other source kinds."""
    head, _, phase = position.partition(".")
    if len(head) != 16 or phase not in (SNAPSHOT_PHASE, STREAM_PHASE):
        return None
    return int(head, 16)


def pg_lsn_text(lsn: int) -> str:
    """The LSN in PostgreSQL's own ``X/Y`` notation."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_mssql_lsn(value: str | None) -> int:
    """``"0000002d:00000a48:0003"`` -> an 80-bit integer; None -> 0."""
    if value is None:
        return 0
    match = _MSSQL_LSN.match(str(value).strip())
    if not match:
        raise DecodeError(
            f"SQL Server LSN {value!r} is not of the form 'xxxxxxxx:xxxxxxxx:xxxx' (hex)"
        )
    vlf, block, slot = (int(g, 16) for g in match.groups())
    return (vlf << 48) | (block << 16) | slot


def mssql_position(
    commit_lsn: str | None, change_lsn: str | None, event_serial_no: int | None
) -> str:
    if commit_lsn is None and change_lsn is None:
        raise DecodeError("SQL Server event has neither commit_lsn nor change_lsn")
    serial = int(event_serial_no or 0)
    if serial < 0:
        raise DecodeError(f"SQL Server event_serial_no {event_serial_no!r} is negative")
    commit = parse_mssql_lsn(commit_lsn)
    change = parse_mssql_lsn(change_lsn)
    return f"{commit:020x}.{change:020x}.{serial:08x}"


def batch_position(load_ts_us: int, load_id: str, row_number: int) -> str:
    """Position for batch sources (CRM): last-modified µs, then load id, then row."""
    return f"{load_ts_us:016x}.{load_id}.{row_number:010d}"


def change_sequence_number(position: str) -> str:
    """A log position -> BigQuery's ``_CHANGE_SEQUENCE_NUMBER`` (see the module docstring)."""
    digits = position.replace(".", "")
    if not digits or not _LOG_POSITION.match(position):
        raise DecodeError(
            f"position {position!r} is not a log position (lowercase hex fields joined by '.'); "
            "only PostgreSQL and SQL Server positions map to a BigQuery change sequence number"
        )
    if len(digits) > _CSN_SECTION * _CSN_SECTIONS:
        raise DecodeError(
            f"position {position!r} has {len(digits)} hex digits; a BigQuery change sequence "
            f"number holds at most {_CSN_SECTION * _CSN_SECTIONS}"
        )
    return "/".join(digits[i : i + _CSN_SECTION] for i in range(0, len(digits), _CSN_SECTION))
