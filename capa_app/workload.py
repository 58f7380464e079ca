"""A randomized, reproducible workload against PostgreSQL (the F2 source).

It drives inserts, updates, deletes, primary-key updates and (optionally) truncates over
several tables whose columns cover the PostgreSQL side of the fidelity matrix. Values are
generated so that every type round-trips exactly through Debezium (string decimal mode)
and the raw layer.

    from capa_app.workload import Workload
    wl = Workload(dsn, seed=7)
    wl.create_tables()
    wl.run(changes=10_000)

Only values are bound as parameters; identifiers come from the fixed table specs below
and are quoted.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

logger = logging.getLogger(__name__)

ValueGen = Callable[[random.Random], Any]


def _text(rng: random.Random, n: int = 12) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzéüß ABCXYZ0123456789'\"\\,;"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, n)))


def _decimal(rng: random.Random, digits: int, scale: int) -> Decimal:
    unscaled = rng.randint(-(10 ** (digits - 1)), 10 ** (digits - 1))
    return Decimal(unscaled).scaleb(-scale)


def _ts(rng: random.Random) -> datetime:
    return datetime(2000, 1, 1) + timedelta(microseconds=rng.randint(0, 30 * 365 * 86400 * 10**6))


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    sql_type: str
    gen: ValueGen
    nullable: bool = True


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[ColumnSpec, ...]
    pk: str = "id"
    replica_identity_full: bool = False
    extra_ddl: tuple[str, ...] = field(default_factory=tuple)

    def ddl(self, schema: str) -> list[str]:
        cols = [f'"{self.pk}" bigint PRIMARY KEY'] + [
            f'"{c.name}" {c.sql_type}{"" if c.nullable else " NOT NULL"}' for c in self.columns
        ]
        stmts = list(self.extra_ddl)
        stmts.append(f'CREATE TABLE IF NOT EXISTS "{schema}"."{self.name}" ({", ".join(cols)})')
        if self.replica_identity_full:
            stmts.append(f'ALTER TABLE "{schema}"."{self.name}" REPLICA IDENTITY FULL')
        return stmts


# The PostgreSQL half of the fidelity matrix: every type here must be exact in raw.
TYPEZOO = TableSpec(
    name="wl_typezoo",
    replica_identity_full=True,
    extra_ddl=(
        "DO $$ BEGIN CREATE TYPE wl_mood AS ENUM ('sad', 'ok', 'happy'); "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    ),
    columns=(
        ColumnSpec("c_smallint", "smallint", lambda r: r.randint(-32768, 32767)),
        ColumnSpec("c_integer", "integer", lambda r: r.randint(-(2**31), 2**31 - 1)),
        ColumnSpec("c_bigint", "bigint", lambda r: r.randint(-(2**63), 2**63 - 1)),
        ColumnSpec("c_numeric_38_9", "numeric(38,9)", lambda r: _decimal(r, 29, 9)),
        ColumnSpec("c_numeric_12_2", "numeric(12,2)", lambda r: _decimal(r, 12, 2)),
        ColumnSpec("c_real", "real", lambda r: float(r.randint(-10000, 10000)) / 4),
        ColumnSpec("c_double", "double precision", lambda r: r.randint(-(10**9), 10**9) / 1024),
        ColumnSpec("c_text", "text", _text),
        ColumnSpec("c_varchar", "varchar(40)", lambda r: _text(r, 40)),
        ColumnSpec("c_char", "char(4)", lambda r: _text(r, 4).ljust(4)),
        ColumnSpec("c_bytea", "bytea", lambda r: r.randbytes(r.randint(0, 24))),
        ColumnSpec("c_boolean", "boolean", lambda r: r.random() < 0.5),
        ColumnSpec(
            "c_date", "date", lambda r: date(1990, 1, 1) + timedelta(days=r.randint(0, 20000))
        ),
        ColumnSpec(
            "c_time",
            "time",
            lambda r: time(
                r.randint(0, 23), r.randint(0, 59), r.randint(0, 59), r.randint(0, 999999)
            ),
        ),
        ColumnSpec("c_timestamp", "timestamp", _ts),
        ColumnSpec("c_timestamptz", "timestamptz", lambda r: _ts(r).replace(tzinfo=UTC)),
        ColumnSpec("c_uuid", "uuid", lambda r: uuid.UUID(int=r.getrandbits(128), version=4)),
        ColumnSpec(
            "c_jsonb", "jsonb", lambda r: f'{{"k": {r.randint(0, 99)}, "s": "v{r.randint(0, 9)}"}}'
        ),
        ColumnSpec(
            "c_int_array",
            "integer[]",
            lambda r: [r.randint(-100, 100) for _ in range(r.randint(0, 4))],
        ),
        ColumnSpec(
            "c_text_array",
            "text[]",
            lambda r: [f"t{r.randint(0, 99)}" for _ in range(r.randint(0, 3))],
        ),
        ColumnSpec("c_enum", "wl_mood", lambda r: r.choice(["sad", "ok", "happy"])),
    ),
)

ACCOUNTS = TableSpec(
    name="wl_accounts",
    columns=(
        ColumnSpec("owner", "text", _text, nullable=False),
        ColumnSpec("balance", "numeric(18,2)", lambda r: _decimal(r, 14, 2), nullable=False),
        ColumnSpec("opened_at", "timestamptz", lambda r: _ts(r).replace(tzinfo=UTC)),
    ),
)

EVENTS = TableSpec(
    name="wl_events",
    columns=(
        ColumnSpec("kind", "varchar(16)", lambda r: r.choice(["click", "view", "buy"])),
        ColumnSpec("payload", "text", lambda r: _text(r, 200)),
        ColumnSpec(
            "seen_on", "date", lambda r: date(2024, 1, 1) + timedelta(days=r.randint(0, 700))
        ),
    ),
)

DEFAULT_TABLES: tuple[TableSpec, ...] = (TYPEZOO, ACCOUNTS, EVENTS)


@dataclass
class WorkloadStats:
    inserts: int = 0
    updates: int = 0
    deletes: int = 0
    pk_updates: int = 0
    truncates: int = 0

    @property
    def changes(self) -> int:
        return self.inserts + self.updates + self.deletes + 2 * self.pk_updates + self.truncates


class Workload:
    """Random DML over :data:`DEFAULT_TABLES` (or the given specs) in one schema."""

    def __init__(
        self,
        dsn: str,
        *,
        seed: int = 0,
        schema: str = "public",
        tables: Sequence[TableSpec] = DEFAULT_TABLES,
        truncate_every: int = 0,
        rows_per_tx: int = 20,
    ) -> None:
        self.dsn = dsn
        self.rng = random.Random(seed)
        self.schema = schema
        self.tables = tuple(tables)
        self.truncate_every = truncate_every
        self.rows_per_tx = rows_per_tx
        self.stats = WorkloadStats()
        self._next_id = {t.name: 1 for t in self.tables}
        self._live: dict[str, list[int]] = {t.name: [] for t in self.tables}

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(self.dsn, autocommit=False)

    def create_tables(self) -> None:
        with self._connect() as conn:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            for spec in self.tables:
                for stmt in spec.ddl(self.schema):
                    conn.execute(stmt)
            conn.commit()
        self._load_state()

    def _load_state(self) -> None:
        with self._connect() as conn:
            for spec in self.tables:
                ids = [r[0] for r in conn.execute(f'SELECT "{spec.pk}" FROM {self._qual(spec)}')]
                self._live[spec.name] = ids
                self._next_id[spec.name] = max(ids, default=0) + 1

    def _qual(self, spec: TableSpec) -> str:
        return f'"{self.schema}"."{spec.name}"'

    def run(self, changes: int) -> WorkloadStats:
        """Issue about ``changes`` row changes, committed in small transactions."""
        target = self.stats.changes + changes
        with self._connect() as conn:
            while self.stats.changes < target:
                for _ in range(self.rows_per_tx):
                    self._one_change(conn, self.rng.choice(self.tables))
                conn.commit()
        return self.stats

    def _one_change(self, conn: Any, spec: TableSpec) -> None:
        live = self._live[spec.name]
        roll = self.rng.random()
        if self.truncate_every and self.rng.randrange(self.truncate_every) == 0:
            self._truncate(conn, spec)
        elif not live or roll < 0.40:
            self._insert(conn, spec)
        elif roll < 0.80:
            self._update(conn, spec)
        elif roll < 0.93:
            self._delete(conn, spec)
        else:
            self._pk_update(conn, spec)

    def _row(self, spec: TableSpec) -> list[Any]:
        return [
            None if c.nullable and self.rng.random() < 0.05 else c.gen(self.rng)
            for c in spec.columns
        ]

    def _insert(self, conn: Any, spec: TableSpec) -> None:
        new_id = self._next_id[spec.name]
        self._next_id[spec.name] += 1
        names = ", ".join([f'"{spec.pk}"'] + [f'"{c.name}"' for c in spec.columns])
        marks = ", ".join(["%s"] * (len(spec.columns) + 1))
        conn.execute(
            f"INSERT INTO {self._qual(spec)} ({names}) VALUES ({marks})", [new_id, *self._row(spec)]
        )
        self._live[spec.name].append(new_id)
        self.stats.inserts += 1

    def _update(self, conn: Any, spec: TableSpec) -> None:
        row_id = self.rng.choice(self._live[spec.name])
        cols = self.rng.sample(spec.columns, k=self.rng.randint(1, len(spec.columns)))
        sets = ", ".join(f'"{c.name}" = %s' for c in cols)
        values = [c.gen(self.rng) for c in cols]
        conn.execute(
            f'UPDATE {self._qual(spec)} SET {sets} WHERE "{spec.pk}" = %s', [*values, row_id]
        )
        self.stats.updates += 1

    def _delete(self, conn: Any, spec: TableSpec) -> None:
        live = self._live[spec.name]
        row_id = live.pop(self.rng.randrange(len(live)))
        conn.execute(f'DELETE FROM {self._qual(spec)} WHERE "{spec.pk}" = %s', [row_id])
        self.stats.deletes += 1

    def _pk_update(self, conn: Any, spec: TableSpec) -> None:
        live = self._live[spec.name]
        index = self.rng.randrange(len(live))
        new_id = self._next_id[spec.name]
        self._next_id[spec.name] += 1
        conn.execute(
            f'UPDATE {self._qual(spec)} SET "{spec.pk}" = %s WHERE "{spec.pk}" = %s',
            [new_id, live[index]],
        )
        live[index] = new_id
        self.stats.pk_updates += 1

    def _truncate(self, conn: Any, spec: TableSpec) -> None:
        conn.execute(f"TRUNCATE {self._qual(spec)}")
        self._live[spec.name] = []
        self.stats.truncates += 1
