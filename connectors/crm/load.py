"""Turning validated CRM rows into canonical change events, and a load's bookkeeping.

Pure functions (no Beam): the batch pipeline (``beam_jobs/crm_batch.py``) wires them.

* Rows -> :class:`~capa.events.ChangeEvent` (source ``crm``, kind crm, schema ``crm``, table =
  object, op c/u, position ``batch_position(last_modified µs, load_id, row)``).
* Per key, against the replica's current state: a row whose version is not newer than the
  replica's is skipped (unchanged; re-sent rows of a full extract do not grow the changelog);
  in a full extract, live replica keys absent from the extract become deletes (keys of
  rejected rows are kept: a bad row never deletes its good predecessor).
* Rejects and the load record become events of the ``rejects`` and ``loads`` tables
  (``raw.crm_crm_rejects``, ``raw.crm_crm_loads``), through the same warehouse port.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from capa.codec import datetime_to_us, to_json_value
from capa.events import ChangeEvent, Column, FrozenRow, Op, SourceKind, freeze, stable_json
from capa.position import batch_position
from connectors.crm.contract import CrmContract, ObjectContract
from connectors.crm.readers import RawRecord

ORIGIN = "crm-batch"
REJECTS_TABLE = "rejects"
LOADS_TABLE = "loads"
FILE_STRIDE = 100_000_000  # row number = file index * stride + line number


class ValidRow(NamedTuple):
    object: str
    key: str  # stable JSON of the primary-key values
    row_number: int
    row: dict[str, Any]


class Reject(NamedTuple):
    object: str
    file: str
    line_no: int
    reason: str
    raw: str
    key: str | None  # stable JSON key if the key columns parse, else None


class ReplicaRow(NamedTuple):
    position: str
    deleted: bool


def key_of(obj: ObjectContract, row: Mapping[str, Any]) -> str:
    return stable_json([to_json_value(row[c]) for c in obj.primary_key])


def validate_record(contract: CrmContract, record: RawRecord, file_index: int) -> ValidRow | Reject:
    """One raw record -> a typed row or a reject (with reason and original line)."""
    obj = contract.object(record.object)
    if record.fields is None:
        return Reject(
            record.object,
            record.file,
            record.line_no,
            record.error or "unreadable",
            record.raw,
            None,
        )
    row, reasons = obj.validate_record(record.fields)
    number = file_index * FILE_STRIDE + record.line_no
    if row is None:
        return Reject(
            record.object,
            record.file,
            record.line_no,
            "; ".join(reasons),
            record.raw,
            _partial_key(obj, record.fields),
        )
    return ValidRow(record.object, key_of(obj, row), number, row)


def _partial_key(obj: ObjectContract, fields: Mapping[str, Any]) -> str | None:
    values: dict[str, Any] = {}
    for col in obj.primary_key:
        value, reason = obj._validate_value(col, fields.get(col))
        if reason:
            return None
        values[col] = value
    return key_of(obj, values)


def position_ts_us(position: str) -> int:
    """The µs timestamp prefix of a batch position."""
    return int(position.split(".", 1)[0], 16)


@dataclass(frozen=True)
class LoadContext:
    contract: CrmContract
    load_id: str
    mode: str  # "full" | "incremental"
    extracted_at_us: int

    def row_event(self, obj: ObjectContract, valid: ValidRow, op: Op) -> ChangeEvent:
        ts_us = datetime_to_us(valid.row[obj.last_modified])
        key = {c: valid.row[c] for c in obj.primary_key}
        return self._event(
            obj.name,
            op,
            batch_position(ts_us, self.load_id, valid.row_number),
            ts_us,
            obj.primary_key,
            key,
            valid.row,
            obj.event_columns,
        )

    def delete_event(self, obj: ObjectContract, key_json: str, replica: ReplicaRow) -> ChangeEvent:
        ts_us = max(self.extracted_at_us, position_ts_us(replica.position) + 1)
        key = dict(zip(obj.primary_key, json.loads(key_json), strict=True))
        return self._event(
            obj.name,
            Op.DELETE,
            batch_position(ts_us, self.load_id, 0),
            ts_us,
            obj.primary_key,
            key,
            None,
            obj.event_columns,
            before=key,
        )

    def _event(
        self,
        table: str,
        op: Op,
        position: str,
        ts_us: int | None,
        pk: tuple[str, ...],
        key: dict[str, Any],
        after: dict[str, Any] | None,
        columns: tuple[Column, ...],
        before: dict[str, Any] | None = None,
    ) -> ChangeEvent:
        return ChangeEvent(
            source=self.contract.source,
            source_kind=SourceKind.CRM,
            database=None,
            schema=self.contract.schema_,
            table=table,
            op=op,
            position=position,
            commit_ts_us=ts_us,
            primary_key=pk,
            key=FrozenRow(key),
            before=freeze(before),
            after=freeze(after),
            columns=columns,
            transaction_id=self.load_id,
            origin=ORIGIN,
        )

    def plan_key(
        self,
        obj: ObjectContract,
        key_json: str,
        rows: Iterable[ValidRow],
        replica: Iterable[ReplicaRow],
        rejected: bool,
    ) -> Iterator[tuple[str, ChangeEvent | None]]:
        """Events for one key: ("event", e) per change, ("unchanged", None) per skipped row."""
        current = max(replica, default=None)
        ordered = sorted(rows, key=lambda r: r.row_number)
        ordered.sort(key=lambda r: datetime_to_us(r.row[obj.last_modified]))
        live = current is not None and not current.deleted
        floor = position_ts_us(current.position) if current else -1
        for valid in ordered:
            if datetime_to_us(valid.row[obj.last_modified]) <= floor:
                yield "unchanged", None
                continue
            yield "event", self.row_event(obj, valid, Op.UPDATE if live else Op.INSERT)
            live = True
        if self.mode == "full" and not ordered and not rejected and current and not current.deleted:
            yield "event", self.delete_event(obj, key_json, current)

    def reject_event(self, reject: Reject, file_index: int) -> ChangeEvent:
        key = {
            "load_id": self.load_id,
            "object": reject.object,
            "file": reject.file,
            "line_no": reject.line_no,
        }
        row = {**key, "reason": reject.reason, "raw_line": reject.raw}
        position = batch_position(
            self.extracted_at_us, self.load_id, file_index * FILE_STRIDE + reject.line_no
        )
        return self._event(
            REJECTS_TABLE,
            Op.INSERT,
            position,
            self.extracted_at_us or None,
            tuple(key),
            key,
            row,
            REJECT_COLUMNS,
        )

    def load_event(self, summary: Mapping[str, Any], finished_at: datetime) -> ChangeEvent:
        key = {"load_id": self.load_id}
        row = {
            "load_id": self.load_id,
            "mode": self.mode,
            "status": "completed",
            "finished_at": finished_at,
            "summary": json.dumps(dict(summary), sort_keys=True),
        }
        position = batch_position(self.extracted_at_us, self.load_id, 0)
        return self._event(
            LOADS_TABLE,
            Op.INSERT,
            position,
            self.extracted_at_us or None,
            ("load_id",),
            key,
            row,
            LOAD_COLUMNS,
        )


REJECT_COLUMNS = (
    Column("load_id", "string"),
    Column("object", "string"),
    Column("file", "string"),
    Column("line_no", "int"),
    Column("reason", "string"),
    Column("raw_line", "string"),
)
LOAD_COLUMNS = (
    Column("load_id", "string"),
    Column("mode", "string"),
    Column("status", "string"),
    Column("finished_at", "timestamp"),
    Column("summary", "string"),
)


def reject_share(total: int, rejected: int) -> float:
    return rejected / total if total else 0.0


def threshold_message(load_id: str, total: int, rejects: list[Reject], limit: float) -> str:
    """A loud, useful failure message: share, limit, top reasons with an example line."""
    by_reason: dict[str, list[Reject]] = {}
    for r in rejects:
        by_reason.setdefault(f"{r.object}: {r.reason}", []).append(r)
    top = sorted(by_reason.items(), key=lambda kv: -len(kv[1]))[:5]
    lines = [
        f"  {len(rs)} x {reason} (e.g. {rs[0].file}:{rs[0].line_no}: {rs[0].raw[:120]!r})"
        for reason, rs in top
    ]
    return (
        f"CRM load {load_id!r} rejected {len(rejects)} of {total} rows "
        f"({reject_share(total, len(rejects)):.1%}), above the limit {limit:.1%}; "
        "nothing was applied. "
        "Fix the extract or raise --max-reject-share.\n" + "\n".join(lines)
    )
