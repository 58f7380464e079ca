"""Poison records for the chaos run: what is injected, where, and the dead-letter oracle.

``python -m capa_app.chaos --poison`` mixes these into the workload at random (one in
``ChaosPlan.poison_every`` row changes, every kind at least once). Each poison has a
stable id (its table and key, or its ``event_id``) and the reason its dead letter must
carry. Where each kind enters, and why there:

========================  ============================  =======================================
kind                      enters                        expected outcome
========================  ============================  =======================================
``oversize``              PostgreSQL row (Debezium)     bridge dead-letters it (over
                                                        ``kafka.max_message_bytes``); the row
                                                        is deleted again in the same
                                                        transaction, so the delete is applied
``null_key``              canonical event on the        apply job dead-letters it (NULL in key
                          topic (a NULL primary key     column); no row in the replica
                          cannot exist in PostgreSQL)
``type_drift``            PostgreSQL row after          apply job dead-letters it (column
                          ``ALTER COLUMN v TYPE text``  changed type)
``long_name``             PostgreSQL row of a table     bridge dead-letters it (raw name over
                          named ``../`` * 21            the length limit)
========================  ============================  =======================================

The other hostile names are legal and capa replicates them under its injective raw-name
encoding, so they are not dead letters: tables ``Orders`` (beside the sample's
``orders``), ``orders_changelog``, ``orders_all``, ``x/../../..`` and one with a newline
take part in the random workload and the oracle compares them row for row like any other.

"Exactly once" is checked by poison id: each injected id has dead letters, all with its
reason, and no dead letter matches nothing injected. Kafka transport is at-least-once, so
a poison dead-lettered just before a kill -9 (the bridge before its offset flush, the apply
job before its commit) is dead-lettered again on the replay; such copies carry the same id
and reason and are counted apart (:attr:`DlqCheck.extra_copies`), as the replica
de-duplicates replayed events by ``event_id``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capa.config import CapaSettings
from capa.events import ChangeEvent, Op, SourceKind, key_items, stable_json
from capa.verify import TableDiff
from capa_app.workload import ColumnSpec, TableSpec

logger = logging.getLogger(__name__)

POISON_KINDS: tuple[str, ...] = ("oversize", "null_key", "type_drift", "long_name")
REASONS: dict[str, str] = {  # a substring every dead letter of the kind must carry
    "oversize": "is over kafka.max_message_bytes",
    "null_key": "has NULL in key column(s) ['id']",
    "type_drift": "changed type from",
    "long_name": "encodes to a raw table name of",
}
SCHEMA = "public"
BIG_TABLE = "chaos_big"
DRIFT_TABLE = "chaos_drift"
NULL_KEY_TABLE = "chaos_nullkey"  # exists only on the topic: PostgreSQL has no NULL keys
LONG_NAME = "../" * 21  # 63 bytes, PostgreSQL's limit; 252 characters once encoded
DRIFT_GOOD_ROWS = 5  # written before the type change: these must stay in the replica
MAX_MESSAGE_BYTES = 1024 * 1024  # the smallest limit capa's config accepts
OVERSIZE_BYTES = MAX_MESSAGE_BYTES + 200_000

# Hostile but legal names: replicated like any table, compared by the oracle.
HOSTILE_TABLES: tuple[TableSpec, ...] = tuple(
    TableSpec(name=name, columns=(ColumnSpec("note", "text", lambda r: f"n{r.randint(0, 999)}"),))
    for name in ("Orders", "orders_changelog", "orders_all", "x/../../..", "line\nbreak")
)
#: Source tables the oracle does not compare whole (their poison rows never reach the replica).
UNCOMPARED = (DRIFT_TABLE, LONG_NAME)


def row_id(schema: str, table: str, key: Any) -> str:
    """The stable id of a poison row: its table and its key as capa writes it in headers."""
    return f"row:{schema}.{table}|{stable_json(key_items(key))}"


@dataclass
class PoisonLedger:
    """What was injected: poison id -> kind (the dead-letter topic must hold each once)."""

    expected: dict[str, str] = field(default_factory=dict)

    def add(self, poison_id: str, kind: str) -> None:
        self.expected[poison_id] = kind

    def by_kind(self) -> Counter[str]:
        return Counter(self.expected.values())


@dataclass
class DlqCheck:
    """The dead-letter topic against the ledger."""

    letters: int = 0  # records on the dead-letter topic
    once: Counter[str] = field(default_factory=Counter)  # kind -> poisons found exactly once
    redelivered: Counter[str] = field(default_factory=Counter)  # kind -> found more than once
    extra_copies: int = 0  # records beyond the first of a redelivered poison
    missing: list[str] = field(default_factory=list)  # poison ids with no dead letter
    wrong_reason: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # letters that are no injected poison

    @property
    def exactly_once(self) -> bool:
        """Each poison id once, with its reason, and nothing else (copies counted apart)."""
        return not (self.missing or self.wrong_reason or self.unexpected)

    def lines(self) -> list[str]:
        kinds = sorted(set(self.once) | set(self.redelivered))
        per_kind = ", ".join(f"{k} {self.once[k]}+{self.redelivered[k]}" for k in kinds)
        return [
            f"dead-letter records: {self.letters}",
            f"poison found once+redelivered by kind: {per_kind or 'none'}",
            f"extra copies of a poison (same id and reason, redelivered after a kill): "
            f"{self.extra_copies}",
            f"missing poison: {len(self.missing)} {self.missing[:5]}",
            f"wrong reason: {len(self.wrong_reason)} {self.wrong_reason[:5]}",
            f"unexpected dead letters: {len(self.unexpected)} {self.unexpected[:5]}",
            f"dead-letter exactly once by poison id: {'OK' if self.exactly_once else 'NO'}",
        ]


class PoisonInjector:
    """Writes poison at the source (PostgreSQL) or on the canonical topic, and remembers it."""

    def __init__(self, settings: CapaSettings, rng: random.Random) -> None:
        self.settings = settings
        self.rng = rng
        self.ledger = PoisonLedger()
        self.dsn = settings.postgres.dsn()
        self._next = Counter[str]()
        self._drifted = False
        self._producer: Any = None
        self._injected = 0
        self._first = rng.sample(POISON_KINDS, k=len(POISON_KINDS))  # every kind early

    # --- setup (before the bridge's snapshot) ---------------------------------------------

    def create_tables(self) -> None:
        with self._connect() as conn:
            conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{SCHEMA}"."{BIG_TABLE}" '
                "(id bigint PRIMARY KEY, payload text NOT NULL)"
            )
            conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{SCHEMA}"."{DRIFT_TABLE}" '
                "(id bigint PRIMARY KEY, v integer NOT NULL)"
            )
            conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{SCHEMA}"."{LONG_NAME}" '
                "(id bigint PRIMARY KEY, v integer NOT NULL)"
            )
            for n in range(1, DRIFT_GOOD_ROWS + 1):
                conn.execute(
                    f'INSERT INTO "{SCHEMA}"."{DRIFT_TABLE}" (id, v) VALUES (%s, %s)', [n, n]
                )
            self._next[DRIFT_TABLE] = DRIFT_GOOD_ROWS

    # --- injection --------------------------------------------------------------------------

    def inject(self, count: int) -> None:
        """``count`` poisons of random kinds (every kind once first, in a random order)."""
        for _ in range(count):
            kind = (
                self._first[self._injected]
                if self._injected < len(POISON_KINDS)
                else self.rng.choice(POISON_KINDS)
            )
            getattr(self, f"_{kind}")()
            self._injected += 1

    @property
    def injected(self) -> int:
        return self._injected

    def compared_tables(self) -> list[str]:
        """Source tables the oracle compares whole: all but those whose poison stays out."""
        from capa.verify import pg_tables

        return [t for t, _, _ in pg_tables(self.dsn, SCHEMA) if t not in UNCOMPARED]

    def _new_id(self, table: str) -> int:
        self._next[table] += 1
        return self._next[table]

    def _oversize(self) -> None:
        row = self._new_id(BIG_TABLE)
        payload = self.rng.randbytes(OVERSIZE_BYTES // 2).hex()
        with self._connect() as conn:  # one transaction: the insert is poison, the delete not
            conn.execute(
                f'INSERT INTO "{SCHEMA}"."{BIG_TABLE}" (id, payload) VALUES (%s, %s)',
                [row, payload],
            )
            conn.execute(f'DELETE FROM "{SCHEMA}"."{BIG_TABLE}" WHERE id = %s', [row])
        self.ledger.add(row_id(SCHEMA, BIG_TABLE, {"id": row}), "oversize")

    def _type_drift(self) -> None:
        with self._connect() as conn:
            if not self._drifted:
                conn.execute(
                    f'ALTER TABLE "{SCHEMA}"."{DRIFT_TABLE}" ALTER COLUMN v TYPE text USING v::text'
                )
                self._drifted = True
            row = self._new_id(DRIFT_TABLE)
            conn.execute(
                f'INSERT INTO "{SCHEMA}"."{DRIFT_TABLE}" (id, v) VALUES (%s, %s)',
                [row, f"drift-{row}"],
            )
        self.ledger.add(row_id(SCHEMA, DRIFT_TABLE, {"id": row}), "type_drift")

    def _long_name(self) -> None:
        row = self._new_id(LONG_NAME)
        with self._connect() as conn:
            conn.execute(
                f'INSERT INTO "{SCHEMA}"."{LONG_NAME}" (id, v) VALUES (%s, %s)', [row, row]
            )
        self.ledger.add(row_id(SCHEMA, LONG_NAME, {"id": row}), "long_name")

    def _null_key(self) -> None:
        from connectors.kafka.producer import KafkaChangeProducer, flush_with_retry

        n = self._new_id(NULL_KEY_TABLE)
        event = ChangeEvent(
            source=self.settings.debezium.source_name,
            source_kind=SourceKind.POSTGRES,
            database=self.settings.postgres.database,
            schema=SCHEMA,
            table=NULL_KEY_TABLE,
            op=Op.INSERT,
            position=f"{n:016x}.chaos",
            commit_ts_us=int(time.time() * 1e6),
            primary_key=("id",),
            key={"id": None},
            before=None,
            after={"id": None, "n": n},
            origin="chaos",
        )
        if self._producer is None:
            self._producer = KafkaChangeProducer(self.settings.kafka)
        self._producer.send(event)
        flush_with_retry(self._producer, lambda: self._producer.send(event))
        self.ledger.add(f"event:{event.event_id}", "null_key")

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(self.dsn, autocommit=False)


# --- the dead-letter oracle ------------------------------------------------------------------


def letter_ids(value: bytes | None, headers: dict[str, str], decoder: Any) -> set[str]:
    """Every stable id a dead letter can be matched by (row ids and event ids)."""
    ids: set[str] = set()
    table, key = headers.get("capa.dlq.table"), headers.get("capa.dlq.key")
    if table and key:  # an oversize letter: table, key, event_id in headers
        ids.add(f"row:{table}|{key}")
    if headers.get("capa.dlq.event_id"):
        ids.add(f"event:{headers['capa.dlq.event_id']}")
    event = _canonical(value, decoder)
    if event is not None:
        ids |= {row_id(event.schema, event.table, event.key), f"event:{event.event_id}"}
    found = _debezium_row(value)
    if found is not None:
        ids.add(row_id(*found))
    return ids


def _canonical(value: bytes | None, decoder: Any) -> ChangeEvent | None:
    from capa.errors import DecodeError

    try:
        return decoder.decode(value)  # type: ignore[no-any-return]
    except DecodeError:
        return None


def _debezium_row(value: bytes | None) -> tuple[str, str, Any] | None:
    """(schema, table, key) of a Debezium engine record (the bridge's dead-letter value)."""
    try:
        record = json.loads(value or b"")
        payload = json.loads(record["value"])
        payload = payload.get("payload", payload)
        key = json.loads(record["key"])
        key = key.get("payload", key)
        return payload["source"]["schema"], payload["source"]["table"], key
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def check_dead_letters(messages: Iterable[Any], ledger: PoisonLedger, decoder: Any) -> DlqCheck:
    """Match each dead-letter record to the injected poison; count copies and reasons."""
    check = DlqCheck()
    copies = Counter[str]()
    for msg in messages:
        check.letters += 1
        headers = {k: (v or b"").decode("utf-8", "replace") for k, v in (msg.headers() or [])}
        ids = letter_ids(msg.value(), headers, decoder)
        matched = [i for i in ids if i in ledger.expected]
        reason = headers.get("capa.dlq.reason", "")
        if not matched:
            check.unexpected.append(f"{msg.partition()}@{msg.offset()}: {reason[:120]}")
            continue
        poison_id = matched[0]
        copies[poison_id] += 1
        if REASONS[ledger.expected[poison_id]] not in reason:
            check.wrong_reason.append(f"{poison_id}: {reason[:160]}")
    for poison_id, kind in ledger.expected.items():
        if copies[poison_id] == 0:
            check.missing.append(poison_id)
        elif copies[poison_id] == 1:
            check.once[kind] += 1
        else:
            check.redelivered[kind] += 1
            check.extra_copies += copies[poison_id] - 1
    return check


@dataclass
class PoisonReport:
    """Poison injected by kind, the dead-letter check, and the poison tables' replicas."""

    injected: Counter[str]
    dlq: DlqCheck
    drift_replica_keys: list[Any]  # must be the rows written before the type change
    null_key_replica_rows: int  # must be 0
    hostile_rows: dict[str, int] = field(default_factory=dict)  # legal hostile name -> rows

    @property
    def ok(self) -> bool:
        drift_ok = self.drift_replica_keys == list(range(1, DRIFT_GOOD_ROWS + 1))
        return self.dlq.exactly_once and drift_ok and self.null_key_replica_rows == 0

    def lines(self) -> list[str]:
        kinds = ", ".join(f"{k} {self.injected[k]}" for k in POISON_KINDS)
        return [
            f"poison injected: {sum(self.injected.values())} ({kinds})",
            *self.dlq.lines(),
            f"{DRIFT_TABLE} replica keys (rows before the type change): {self.drift_replica_keys}",
            f"{NULL_KEY_TABLE} replica rows: {self.null_key_replica_rows}",
            f"hostile-name tables compared (source rows): {self.hostile_rows}",
        ]


def check_poison(
    injector: PoisonInjector, lakehouse: Path, diffs: Iterable[TableDiff]
) -> PoisonReport:
    """Read the whole dead-letter topic and the poison tables' replicas; ``diffs`` are the
    oracle's, to say how many rows of each hostile-name table it compared."""
    from capa.events import raw_table_name
    from capa.verify import local_replica_rows
    from connectors.kafka.consumer import read_topic
    from connectors.kafka.wire import ChangeEventDecoder

    settings = injector.settings
    messages = read_topic(settings.kafka, settings.kafka.dlq_topic, timeout_s=120)
    decoder = ChangeEventDecoder.from_config(settings.kafka)
    source = settings.debezium.source_name

    def rows(table: str) -> list[dict[str, Any]]:
        return local_replica_rows(lakehouse, raw_table_name(source, SCHEMA, table)) or []

    return PoisonReport(
        injected=injector.ledger.by_kind(),
        dlq=check_dead_letters(messages, injector.ledger, decoder),
        drift_replica_keys=sorted(r["id"] for r in rows(DRIFT_TABLE)),
        null_key_replica_rows=len(rows(NULL_KEY_TABLE)),
        hostile_rows=hostile_rows(source, diffs),
    )


def hostile_rows(source: str, diffs: Iterable[TableDiff]) -> dict[str, int]:
    """Source rows the oracle compared per legal hostile-name table (by its raw name)."""
    from capa.events import raw_table_name
    from capa.warehouse.base import RAW_NAMESPACE

    rows = {d.table: d.source_rows for d in diffs}
    out = {}
    for spec in HOSTILE_TABLES:
        name = f"{RAW_NAMESPACE}.{raw_table_name(source, SCHEMA, spec.name)}"
        if name in rows:
            out[spec.name] = rows[name]
    return out
