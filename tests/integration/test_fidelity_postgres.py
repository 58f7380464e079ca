"""Fidelity matrix, PostgreSQL: 36 column types with edge values, source -> raw, exactly.

PostgreSQL 15 -> the REAL Debezium bridge (pydbzengine, the project's default settings:
``decimal.handling.mode=precise``, Connect schemas on) -> canonical Avro on Kafka -> the
events read back from the topic -> ``open_warehouse("local:DIR").apply(events)`` -> the raw
Delta table. Every column of every row in raw is compared with the value PostgreSQL returns
through psycopg, both normalised per type as :data:`COLUMNS` says ("what exact means" for
that type; docs/type-mapping.md has the same words), and then compared by
:func:`capa.values.comparable`, the rule ``capa verify`` uses; ``capa verify`` itself must
find the table equal. The raw Arrow type of every column is asserted too (that is where a
decimal's scale is checked).

Rows: 1 is snapshotted (op r) before the bridge starts; 2-6 are streamed inserts (op c);
4 and 5 are then updated (op u) to each other's values, 6 gets a TOAST-unchanged update (its
large text is absent from the update and must survive in raw).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from service_support import drop_capture, start_bridge

from capa.codec import event_to_json
from capa.config import CapaSettings
from capa.events import ChangeEvent, Op
from capa.values import comparable
from capa.verify import verify_postgres_local
from capa.warehouse import open_warehouse
from capa_app.stack.base import tail
from capa_app.stack.kafka import ensure_topics
from connectors.kafka.consumer import ChangeEventDecoder, read_topic

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "cases" / "fidelity" / "postgres_events.jsonl"
WRITE_GOLDEN = os.environ.get("CAPA_FIDELITY_WRITE_CASES") == "1"
BIG_TEXT = "".join(chr(0x41 + (i * 7919) % 26) + str(i % 97) for i in range(6000))


# --- per-type normalisers: both sides -> one comparable value --------------------------


def _same(value: Any) -> Any:
    return value


def _float_text(value: Any) -> Any:
    """real/double read as PostgreSQL's shortest text: raw holds the float64 of that text."""
    return None if value is None else float(value)


def _utc_time(value: Any) -> Any:
    """timetz: the UTC time of day (Debezium ZonedTime sends it in UTC; the offset is lost)."""
    if value is None:
        return None
    parsed = time.fromisoformat(value) if isinstance(value, str) else value
    return datetime.combine(date(2000, 1, 1), parsed).astimezone(UTC).time()


def _pg_time_text(value: Any) -> Any:
    """time: 24:00:00 (valid in PostgreSQL) is clamped to 23:59:59.999999 by capa."""
    if value is None:
        return None
    return time.max if value == "24:00:00" else time.fromisoformat(value)


def _raw_time_text(value: Any) -> Any:
    return None if value is None else time.fromisoformat(value)


def _text(value: Any) -> Any:
    return None if value is None else str(value)


def _bits(width: int | None) -> Callable[[Any], Any]:
    """bit(n)/varbit: Debezium Bits = the bit string as a little-endian java.util.BitSet.

    The raw bytes are compared after decoding them back to the bit string; for bit(n) the
    declared width restores leading zeros, for varbit the width is the source's length,
    which raw does not keep (trailing zero bits are lost: varbit is NOT exact).
    """

    def from_raw(value: Any) -> Any:
        if value is None:
            return None
        number = int.from_bytes(value, "little")
        text = bin(number)[2:] if number else ""
        return text.zfill(width) if width else text

    return from_raw


def _varbit_source(value: Any) -> Any:
    """What raw can hold of a varbit: the bits up to the highest set bit."""
    return None if value is None else value.lstrip("0")


@dataclass(frozen=True)
class Col:
    """One column of the fidelity table and what "exact" means for it."""

    name: str
    pg_type: str
    arrow: pa.DataType
    expr: str = ""  # SQL read back from PostgreSQL ("" = the column itself)
    source: Callable[[Any], Any] = _same  # normalise the psycopg value
    raw: Callable[[Any], Any] = _same  # normalise the raw (Delta) value

    @property
    def select(self) -> str:
        return f'{self.expr or self.name} AS "{self.name}"'


def _interval_us(value: Any) -> Any:
    """MicroDuration text P<d>DT<h>H<m>M<s>S -> µs (months as 30.4375 days, see doc)."""
    if value is None:
        return None
    sign = -1 if value.startswith("-") else 1
    body = value.lstrip("-")[1:]
    days, clock = body.split("DT")
    hours, rest = clock.split("H")
    minutes, seconds = rest.rstrip("S").split("M")
    total = Decimal(days) * 86400 + Decimal(hours) * 3600 + Decimal(minutes) * 60
    return sign * int((total + Decimal(seconds)) * 1_000_000)


def _output_text(column: str) -> str:
    """The type's output function (what pgoutput sends); ``::text`` differs for inet."""
    return f"CASE WHEN {column} IS NOT NULL THEN format('%s', {column}) END"


# Debezium's MicroDuration: years = 12 months, a month = 365.25/12 = 30.4375 days.
INTERVAL_US_SQL = (
    "(extract(year from {c})::numeric * 12 + extract(month from {c})::numeric) "
    "* 30.4375 * 86400000000 + extract(day from {c})::numeric * 86400000000 "
    "+ (extract(epoch from {c}) - extract(epoch from date_trunc('day', {c})))::numeric "
    "* 1000000"
)

COLUMNS: tuple[Col, ...] = (
    Col("c_smallint", "smallint", pa.int64()),
    Col("c_integer", "integer", pa.int64()),
    Col("c_bigint", "bigint", pa.int64()),
    Col("c_smallserial", "smallserial", pa.int64()),
    Col("c_numeric_38_9", "numeric(38,9)", pa.decimal128(38, 9)),
    Col("c_numeric_12_2", "numeric(12,2)", pa.decimal128(12, 2)),
    Col("c_numeric", "numeric", pa.decimal128(38, 9)),
    Col("c_numeric_neg_scale", "numeric(6,-3)", pa.decimal128(38, 9)),
    Col("c_real", "real", pa.float64(), "c_real::text", _float_text),
    Col("c_double", "double precision", pa.float64(), "c_double::text", _float_text),
    Col("c_money", "money", pa.decimal128(38, 9), "c_money::numeric"),
    Col("c_text", "text", pa.string()),
    Col("c_varchar", "varchar(20)", pa.string()),
    Col("c_char", "char(5)", pa.string()),
    Col("c_bytea", "bytea", pa.binary()),
    Col("c_boolean", "boolean", pa.bool_()),
    Col("c_date", "date", pa.date32()),
    Col("c_time", "time", pa.string(), "c_time::text", _pg_time_text, _raw_time_text),
    Col("c_timetz", "timetz", pa.string(), "", _utc_time, _utc_time),
    Col("c_timestamp", "timestamp", pa.timestamp("us")),
    Col("c_timestamptz", "timestamptz", pa.timestamp("us", tz="UTC")),
    Col(
        "c_interval",
        "interval",
        pa.string(),
        INTERVAL_US_SQL.format(c="c_interval"),
        lambda v: None if v is None else int(v),
        _interval_us,
    ),
    Col("c_uuid", "uuid", pa.string(), "", _text, _same),
    Col("c_json", "json", pa.string(), "c_json::text"),
    Col("c_jsonb", "jsonb", pa.string(), "c_jsonb::text"),
    Col("c_int_array", "integer[]", pa.list_(pa.int64())),
    Col("c_text_array", "text[]", pa.list_(pa.string())),
    Col("c_numeric_array", "numeric(10,2)[]", pa.list_(pa.decimal128(38, 9))),
    Col("c_inet", "inet", pa.string(), _output_text("c_inet")),
    Col("c_cidr", "cidr", pa.string(), _output_text("c_cidr")),
    Col("c_macaddr", "macaddr", pa.string(), _output_text("c_macaddr")),
    Col("c_enum", "fid_mood", pa.string(), _output_text("c_enum")),
    Col("c_xml", "xml", pa.string(), _output_text("c_xml")),
    Col("c_bit1", "bit(1)", pa.bool_(), "c_bit1 = B'1'"),
    Col("c_bit10", "bit(10)", pa.binary(), "c_bit10::text", _same, _bits(10)),
    Col("c_varbit", "varbit(16)", pa.binary(), "c_varbit::text", _varbit_source, _bits(None)),
)

# Row values as PostgreSQL literals (bound as text, cast by the server) or bytes.
MAX_ROW: dict[str, Any] = {
    "c_smallint": "32767",
    "c_integer": "2147483647",
    "c_bigint": "9223372036854775807",
    "c_smallserial": "32767",
    "c_numeric_38_9": "99999999999999999999999999999.999999999",
    "c_numeric_12_2": "9999999999.99",
    "c_numeric": "12345678901234567890.123456789",
    "c_numeric_neg_scale": "999999000",
    "c_real": "3.4028235e38",
    "c_double": "1.7976931348623157e308",
    "c_money": "92233720368547758.07",
    "c_text": "héllo wörld ✓ 😀 中文 \\ \" ' \t\n end",
    "c_varchar": "ßtraße 20 chars long",
    "c_char": "ab",
    "c_bytea": bytes(range(256)),
    "c_boolean": "true",
    "c_date": "9999-12-31",
    "c_time": "24:00:00",
    "c_timetz": "23:59:59.999999+05:30",
    "c_timestamp": "9999-12-31 23:59:59.999999",
    "c_timestamptz": "9999-12-31 23:59:59.999999+00",
    "c_interval": "3 days 04:05:06.789012",
    "c_uuid": "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "c_json": '{"b": [1, 2.50, null],  "a": "ü"}',
    "c_jsonb": '{"b": [1, 2.50, null],  "a": "ü", "n": 1e3}',
    "c_int_array": "{2147483647,NULL,-2147483648}",
    "c_text_array": '{"ünï","",NULL,"a,b"}',
    "c_numeric_array": "{99999999.99,NULL,-0.01}",
    "c_inet": "2001:db8::1/64",
    "c_cidr": "10.1.0.0/16",
    "c_macaddr": "08:00:2b:01:02:03",
    "c_enum": "happy",
    "c_xml": '<a x="1">ü &amp; <b/></a>',
    "c_bit1": "1",
    "c_bit10": "1010000001",
    "c_varbit": "1011",
}
MIN_ROW: dict[str, Any] = {
    "c_smallint": "-32768",
    "c_integer": "-2147483648",
    "c_bigint": "-9223372036854775808",
    "c_smallserial": "1",
    "c_numeric_38_9": "-99999999999999999999999999999.999999999",
    "c_numeric_12_2": "-0.01",
    "c_numeric": "-0.000000001",
    "c_numeric_neg_scale": "-1000",
    "c_real": "-1.17549435e-38",
    "c_double": "-2.2250738585072014e-308",
    "c_money": "-92233720368547758.08",
    "c_text": "",
    "c_varchar": "",
    "c_char": "",
    "c_bytea": b"",
    "c_boolean": "false",
    "c_date": "0001-01-01",
    "c_time": "00:00:00",
    "c_timetz": "00:00:00.000001-08",
    "c_timestamp": "0001-01-01 00:00:00",
    "c_timestamptz": "0001-01-01 00:00:00+00",
    "c_interval": "-1 days -00:00:00.000001",
    "c_uuid": "00000000-0000-0000-0000-000000000000",
    "c_json": "[]",
    "c_jsonb": "{}",
    "c_int_array": "{}",
    "c_text_array": "{}",
    "c_numeric_array": "{}",
    "c_inet": "0.0.0.0",
    "c_cidr": "0.0.0.0/0",
    "c_macaddr": "00:00:00:00:00:00",
    "c_enum": "sad",
    "c_xml": "<empty/>",
    "c_bit1": "0",
    "c_bit10": "0000000000",
    "c_varbit": "",
}
MID_ROW: dict[str, Any] = {
    "c_smallint": "0",
    "c_integer": "-1",
    "c_bigint": "1",
    "c_smallserial": "7",
    "c_numeric_38_9": "0.000000001",
    "c_numeric_12_2": "43.75",
    "c_numeric": "3.14159",
    "c_numeric_neg_scale": "12345",  # rounded by PostgreSQL to 12000
    "c_real": "0.1",
    "c_double": "NaN",
    "c_money": "12.34",
    "c_text": BIG_TEXT,
    "c_varchar": "plain",
    "c_char": "12345",
    "c_bytea": b"\x00\xde\xad\xbe\xef\x00",
    "c_boolean": "true",
    "c_date": "2024-02-29",
    "c_time": "12:34:56.000001",
    "c_timetz": "12:00:00+00",
    "c_timestamp": "2024-02-29 12:34:56.123456",
    "c_timestamptz": "2024-02-29 23:59:59.999999-05",
    "c_interval": "1 year 2 mons 3 days 04:05:06.789012",
    "c_uuid": "6f9619ff-8b86-d011-b42d-00c04fc964ff",
    "c_json": '{"k": "v"}',
    "c_jsonb": '{"k": [1, {"z": true}]}',
    "c_int_array": "{1}",
    "c_text_array": '{"x"}',
    "c_numeric_array": "{1.50}",
    "c_inet": "192.168.0.1/24",
    "c_cidr": "2001:db8::/32",
    "c_macaddr": "ff:ff:ff:ff:ff:ff",
    "c_enum": "ok",
    "c_xml": "plain text is a valid xml content",
    "c_bit1": "0",
    "c_bit10": "0000000001",
    "c_varbit": "0000000000000001",
}
NULL_ROW: dict[str, Any] = {c.name: None for c in COLUMNS if c.name != "c_smallserial"}


@dataclass
class Fidelity:
    settings: CapaSettings
    table: str
    dsn: str
    log: Path
    warehouse: Path
    proc: subprocess.Popen[bytes] | None = None
    schema: str = "public"

    def start_bridge(self) -> None:
        self.proc = start_bridge(self.settings, self.log)

    def stop_bridge(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)

    def events(self, count: int) -> list[ChangeEvent]:
        kafka = self.settings.kafka
        messages = read_topic(
            kafka.bootstrap, kafka.topic, until=lambda m: len(m) >= count, timeout_s=120
        )
        assert self.proc is not None and self.proc.poll() is None, "the bridge exited"
        decoder = ChangeEventDecoder()
        return [decoder.decode(m.value()) for m in messages]

    def dead_letters(self) -> list[Any]:
        kafka = self.settings.kafka
        return read_topic(kafka.bootstrap, kafka.dlq_topic, timeout_s=5)


@pytest.fixture()
def fidelity(
    capa_settings: CapaSettings, kafka: Any, postgres: Any, tmp_path: Path
) -> Iterator[Fidelity]:
    suffix = uuid.uuid4().hex[:8]
    table = f"fid_{suffix}"
    state = tmp_path / "state"
    state.mkdir()
    kafka_config = kafka.config.model_copy(
        update={"topic": f"it.fid.{suffix}", "dlq_topic": f"it.fid.dlq.{suffix}"}
    )
    debezium = capa_settings.debezium.model_copy(
        update={
            "source_name": "fidpg",
            "engine_name": f"capa-fid-{suffix}",
            "slot_name": f"capa_fid_{suffix}",
            "publication": f"capa_fid_{suffix}",
            "table_include_list": f"public.{table}",
            "heartbeat_interval_ms": 1000,
        }
    )
    settings = capa_settings.model_copy(
        update={"state_dir": state, "kafka": kafka_config, "debezium": debezium}
    )
    ensure_topics(kafka.admin(), {kafka_config.topic: 1, kafka_config.dlq_topic: 1})
    _create_table(postgres.dsn, table)
    run = Fidelity(settings, table, postgres.dsn, tmp_path / "bridge.log", tmp_path / "lake")
    yield run
    run.stop_bridge()
    sys.stderr.write(f"\n----- bridge log tail ({run.log}) -----\n{tail(run.log, 40)}\n")
    drop_capture(postgres.dsn, debezium.slot_name, debezium.publication, table)


def _create_table(dsn: str, table: str) -> None:
    columns = ", ".join(f'"{c.name}" {c.pg_type}' for c in COLUMNS)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "DO $$ BEGIN CREATE TYPE fid_mood AS ENUM ('sad', 'ok', 'happy'); "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        conn.execute(f'CREATE TABLE "public"."{table}" (id integer PRIMARY KEY, {columns})')


def _pg_type(col: str) -> str:
    declared = next(c.pg_type for c in COLUMNS if c.name == col)
    return {"smallserial": "smallint"}.get(declared, declared)


def _insert(conn: psycopg.Connection[Any], table: str, row_id: int, row: dict[str, Any]) -> None:
    names = ", ".join(f'"{n}"' for n in row)
    values = ", ".join(f"%s::{_pg_type(n)}" for n in row)
    conn.execute(
        f'INSERT INTO "public"."{table}" (id, {names}) VALUES (%s, {values})',
        (row_id, *row.values()),
    )


def _update(conn: psycopg.Connection[Any], table: str, row_id: int, row: dict[str, Any]) -> None:
    sets = ", ".join(f'"{n}" = %s::{_pg_type(n)}' for n in row)
    conn.execute(f'UPDATE "public"."{table}" SET {sets} WHERE id = %s', (*row.values(), row_id))


def _source_rows(dsn: str, table: str) -> dict[int, dict[str, Any]]:
    select = ", ".join(c.select for c in COLUMNS)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        rows = cur.execute(f'SELECT id, {select} FROM "public"."{table}"').fetchall()
    return {r["id"]: {c.name: c.source(r[c.name]) for c in COLUMNS} for r in rows}


def _raw_rows(warehouse: Any, name: str) -> dict[int, dict[str, Any]]:
    rows = warehouse.rows(f"raw.{name}")
    return {r["id"]: {c.name: c.raw(r[c.name]) for c in COLUMNS} for r in rows}


def _write_changes(dsn: str, table: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        _insert(conn, table, 2, MAX_ROW)
        _insert(conn, table, 3, NULL_ROW)
        _insert(conn, table, 4, MIN_ROW)
        _insert(conn, table, 5, MAX_ROW)
        _insert(conn, table, 6, MID_ROW)
        _update(conn, table, 4, MAX_ROW)  # 4 and 5 swap their values
        _update(conn, table, 5, MIN_ROW)
        conn.execute(f'UPDATE "public"."{table}" SET c_integer = 42 WHERE id = 6')  # TOAST


def test_postgres_types_arrive_exactly_in_raw(fidelity: Fidelity) -> None:
    with psycopg.connect(fidelity.dsn, autocommit=True) as conn:
        _insert(conn, fidelity.table, 1, MID_ROW)  # before the bridge: a snapshot read
    fidelity.start_bridge()
    fidelity.events(1)  # the snapshot is done: what follows is streamed
    _write_changes(fidelity.dsn, fidelity.table)
    events = [e for e in fidelity.events(9) if e.table == fidelity.table]
    assert [(e.op, e.key["id"]) for e in events] == [
        (Op.READ, 1),
        *[(Op.INSERT, i) for i in (2, 3, 4, 5, 6)],
        (Op.UPDATE, 4),
        (Op.UPDATE, 5),
        (Op.UPDATE, 6),
    ]
    assert events[-1].unchanged == ("c_text",)  # the TOASTed text was not re-sent
    assert not fidelity.dead_letters()
    _check_golden(events)

    warehouse = open_warehouse(f"local:{fidelity.warehouse}")
    warehouse.apply(events)
    name = f"fidpg_public_{fidelity.table}"
    source, raw = _source_rows(fidelity.dsn, fidelity.table), _raw_rows(warehouse, name)
    assert sorted(raw) == sorted(source) == [1, 2, 3, 4, 5, 6]
    wrong = [
        (row_id, c.name, source[row_id][c.name], raw[row_id][c.name])
        for row_id in source
        for c in COLUMNS
        if comparable(source[row_id][c.name]) != comparable(raw[row_id][c.name])
    ]
    assert not wrong, "\n".join(map(repr, wrong))
    _check_raw_types(fidelity.warehouse / "raw" / name)
    [diff] = verify_postgres_local(
        fidelity.dsn, "fidpg", "public", fidelity.warehouse, tables=[fidelity.table]
    )
    assert diff.ok and diff.source_rows == 6, diff


def _check_raw_types(path: Path) -> None:
    from deltalake import DeltaTable

    schema = pa.schema(DeltaTable(str(path)).schema().to_arrow())
    got = {f.name: f.type for f in schema}
    wrong = {c.name: str(got[c.name]) for c in COLUMNS if not _arrow_equal(got[c.name], c.arrow)}
    assert not wrong, wrong


def _arrow_equal(got: pa.DataType, want: pa.DataType) -> bool:
    if pa.types.is_large_string(got) or pa.types.is_string_view(got):
        got = pa.string()
    if pa.types.is_large_binary(got) or pa.types.is_binary_view(got):
        got = pa.binary()
    if pa.types.is_list(got) or pa.types.is_large_list(got):
        return pa.types.is_list(want) and _arrow_equal(got.value_type, want.value_type)
    return got.equals(want)


def _comparable(event: ChangeEvent) -> dict[str, Any]:
    data = json.loads(json.dumps(event_to_json(event)))
    return {k: data[k] for k in ("op", "key", "after", "unchanged", "kinds", "columns")}


def _check_golden(events: list[ChangeEvent], path: Path = GOLDEN) -> None:
    """The canonical events equal the golden file (positions/times vary per run)."""
    if WRITE_GOLDEN:
        lines = [json.dumps(event_to_json(e), ensure_ascii=False, sort_keys=True) for e in events]
        path.write_text("\n".join(lines) + "\n")
    golden = [json.loads(line) for line in path.read_text().splitlines()]
    keys = ("op", "key", "after", "unchanged", "kinds", "columns")
    got = [json.dumps(_comparable(e), sort_keys=True) for e in events]
    assert got == [json.dumps({k: g[k] for k in keys}, sort_keys=True) for g in golden]
