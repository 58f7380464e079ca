"""Fidelity matrix, PostgreSQL special values and types without a Debezium converter.

PostgreSQL 15 -> the REAL Debezium bridge (project settings) -> canonical Avro on Kafka ->
local warehouse, as in ``test_fidelity_postgres.py``, for a table holding what real schemas
hold and what the first fidelity table does not: ``infinity``/``-infinity`` dates and
timestamps (read by the snapshot AND streamed: rows 2 and 6 stream them; issue #20), dates beyond year 9999 and BC, ``NaN``/``Infinity`` in real, double and
numeric, ranges with infinite and empty bounds, a multirange, the geometric and
text-search types, bit strings, network types, money, arrays of them, domains and enums.

Each special cell is checked against the documented canonical value (``capa.values``,
docs/type-mapping.md), every column must exist in raw (none vanishes), and ``capa verify``
(the oracle, same comparison rule) must find every row equal except the one the matrix
documents as not exact (a BC date Debezium sends as the same year AD), which it must name by key and
column - and the ``capa verify`` command must print that.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
from service_support import drop_capture
from test_fidelity_postgres import GOLDEN, Fidelity, _check_golden

from capa.config import CapaSettings
from capa.values import (
    DATE_MAX,
    DATE_MIN,
    TIMESTAMP_MAX,
    TIMESTAMP_MIN,
    TIMESTAMPTZ_MAX,
    TIMESTAMPTZ_MIN,
    comparable,
)
from capa.verify import verify_postgres_local
from capa.warehouse import open_warehouse
from capa_app.stack.base import tail
from capa_app.stack.kafka import ensure_topics

# column -> PostgreSQL type ({s} = the test's schema, for its domain and enum)
TYPES: dict[str, str] = {
    "c_date": "date",
    "c_ts": "timestamp",
    "c_tstz": "timestamptz",
    "c_ts3": "timestamp(3)",
    "c_tstz_arr": "timestamptz[]",
    "c_real": "real",
    "c_double": "double precision",
    "c_numeric": "numeric",
    "c_num_10_2": "numeric(10,2)",
    "c_i4r": "int4range",
    "c_tsr": "tsrange",
    "c_tstzr": "tstzrange",
    "c_dr": "daterange",
    "c_numr": "numrange",
    "c_i4mr": "int4multirange",
    "c_box": "box",
    "c_circle": "circle",
    "c_line": "line",
    "c_lseg": "lseg",
    "c_path": "path",
    "c_polygon": "polygon",
    "c_point": "point",
    "c_tsquery": "tsquery",
    "c_tsvector": "tsvector",
    "c_bit": "bit(3)",
    "c_varbit": "varbit",
    "c_inet": "inet",
    "c_macaddr8": "macaddr8",
    "c_money": "money",
    "c_pg_lsn": "pg_lsn",
    "c_box_arr": "box[]",
    "c_inet_arr": "inet[]",
    "c_range_arr": "int4range[]",
    "c_date_arr": "date[]",
    "c_dom_box": "{s}.dom_box",
    "c_dom_int": "{s}.dom_int",
    "c_enum": "{s}.mood",
    "c_enum_arr": "{s}.mood[]",
}
UNKNOWN = {  # the same value in every non-NULL row: types Debezium has no converter for
    "c_i4mr": ("{[1,3),[5,)}", "{[1,3),[5,)}"),
    "c_box": ("(1,2),(3,4)", "(3.0,4.0),(1.0,2.0)"),
    "c_circle": ("<(1,2),3>", "<(1.0,2.0),3.0>"),
    "c_line": ("{1,2,3}", "{1.0,2.0,3.0}"),
    "c_lseg": ("[(1,2),(3,4)]", "[(1.0,2.0),(3.0,4.0)]"),
    "c_path": ("[(1,2),(3,4.5)]", "[(1.0,2.0),(3.0,4.5)]"),
    "c_polygon": ("((1,2),(3,4),(5,6))", "((1.0,2.0),(3.0,4.0),(5.0,6.0))"),
    "c_tsquery": ("'a' & !'b'", "'a' & !'b'"),
    "c_pg_lsn": ("0/16B6C50", "0/16B6C50"),
    "c_box_arr": ("{(1,2),(3,4);(0,0),(1,1)}", ("(3.0,4.0),(1.0,2.0)", "(1.0,1.0),(0.0,0.0)")),
    "c_dom_box": ("(1,2),(3,4)", "(3.0,4.0),(1.0,2.0)"),
}
KNOWN = {
    "c_point": "(1.5,2.5)",
    "c_tsvector": "a:1 b:2",
    "c_bit": "101",
    "c_varbit": "0011",
    "c_inet": "10.0.0.1/8",
    "c_macaddr8": "08:00:2b:01:02:03:04:05",
    "c_money": "-12.34",
    "c_inet_arr": "{10.0.0.1,::1}",
    "c_range_arr": '{"[1,2)",empty}',
    "c_dom_int": "5",
    "c_enum": "ok",
    "c_enum_arr": "{sad,ok}",
}
SPECIAL_ROWS: dict[int, dict[str, Any]] = {
    1: {  # snapshot read
        "c_date": "infinity",
        "c_ts": "infinity",
        "c_tstz": "infinity",
        "c_ts3": "infinity",
        "c_tstz_arr": "{infinity,-infinity}",
        "c_real": "NaN",
        "c_double": "NaN",
        "c_numeric": "NaN",
        "c_num_10_2": "NaN",
        "c_i4r": "empty",
        "c_tsr": "[2020-01-01,infinity)",
        "c_tstzr": "[-infinity,infinity]",
        "c_dr": "[-infinity,2020-01-01)",
        "c_numr": "(,)",
        "c_date_arr": "{infinity,-infinity,2020-01-01,NULL}",
    },
    2: {
        "c_date": "-infinity",
        "c_ts": "-infinity",
        "c_tstz": "-infinity",
        "c_ts3": "-infinity",
        "c_tstz_arr": "{-infinity,infinity}",
        "c_real": "Infinity",
        "c_double": "-Infinity",
        "c_numeric": "Infinity",
        "c_num_10_2": "99999999.99",
        "c_i4r": "[1,)",
        "c_tsr": "(,)",
        "c_tstzr": "empty",
        "c_dr": "[2020-01-01,infinity)",
        "c_numr": "[1.5,2]",
        "c_date_arr": "{}",
    },
    3: {  # the extremes PostgreSQL allows
        "c_date": "5874897-12-31",
        "c_ts": "294276-12-31 23:59:59.999999",
        "c_tstz": "294276-12-31 23:59:59.999999+00",
        "c_real": "-Infinity",
        "c_double": "Infinity",
        "c_numeric": "-Infinity",
        "c_num_10_2": "-0.01",
        "c_i4r": "(,5)",
        "c_tsr": "[-infinity,2020-01-01 00:00:00)",
        "c_tstzr": "(,)",
        "c_dr": "empty",
        "c_numr": "empty",
        "c_date_arr": "{5874897-12-31}",
    },
    4: {  # BC: timestamps saturate; a BC date may arrive as the same year AD (documented)
        "c_date": "4713-01-01 BC",
        "c_ts": "4713-01-01 00:00:00 BC",
        "c_tstz": "4713-01-01 00:00:00+00 BC",
        "c_real": "0",
        "c_double": "-0",
        "c_numeric": "1.50",
        "c_num_10_2": "1.5",
        "c_i4r": "[1,5)",
        "c_tsr": "[2020-01-01,2021-01-01)",
        "c_tstzr": "[2020-01-01 00:00:00+00,2021-01-01 00:00:00+00)",
        "c_dr": "[2020-01-01,2021-01-01)",
        "c_numr": "[1,2)",
        "c_date_arr": "{0044-03-15 BC,0001-01-01,9999-12-31}",
    },
}
SPECIAL_ROWS[6] = SPECIAL_ROWS[1]  # the snapshot's infinities again, streamed (issue #20)
INF = float("inf")
EXPECTED_RAW: dict[int, dict[str, Any]] = {  # the documented canonical values (capa.values)
    1: {
        "c_date": DATE_MAX,
        "c_ts": TIMESTAMP_MAX,
        "c_tstz": TIMESTAMPTZ_MAX,
        "c_ts3": TIMESTAMP_MAX,
        "c_tstz_arr": [TIMESTAMPTZ_MAX, TIMESTAMPTZ_MIN],
        "c_real": float("nan"),
        "c_double": float("nan"),
        "c_numeric": None,
        "c_num_10_2": None,
        "c_i4r": "empty",
        "c_tsr": '["2020-01-01 00:00:00",infinity)',
        "c_tstzr": "[-infinity,infinity]",
        "c_date_arr": [DATE_MAX, DATE_MIN, date(2020, 1, 1), None],
    },
    2: {
        "c_date": DATE_MIN,
        "c_ts": TIMESTAMP_MIN,
        "c_tstz": TIMESTAMPTZ_MIN,
        "c_ts3": TIMESTAMP_MIN,
        "c_tstz_arr": [TIMESTAMPTZ_MIN, TIMESTAMPTZ_MAX],
        "c_real": INF,
        "c_double": -INF,
        "c_numeric": None,
        "c_dr": "[2020-01-01,infinity)",
    },
    3: {
        "c_date": DATE_MAX,
        "c_ts": TIMESTAMP_MAX,
        "c_tstz": TIMESTAMPTZ_MAX,
        "c_real": -INF,
        "c_double": INF,
        "c_numeric": None,
        "c_date_arr": [DATE_MAX],
    },
    4: {
        # BC dates as Debezium 3.6.3 streams them (measured; its snapshot differs, see
        # docs/type-mapping.md): 4713 BC before year 1 (saturated), 44 BC as 44 AD (NOT exact)
        "c_date": DATE_MIN,
        "c_ts": TIMESTAMP_MIN,
        "c_tstz": TIMESTAMPTZ_MIN,
        "c_date_arr": [date(44, 3, 15), date(1, 1, 1), date(9999, 12, 31)],
    },
}
# streamed +infinity must equal the snapshot's (it was 0001-01-01 for a date: issue #20)
EXPECTED_RAW[6] = EXPECTED_RAW[1]


@pytest.fixture()
def special(
    capa_settings: CapaSettings, kafka: Any, postgres: Any, tmp_path: Path
) -> Iterator[Fidelity]:
    suffix = uuid.uuid4().hex[:8]
    # a fixed schema: the golden file records a domain's source type, which names it
    schema, table = "fidsv", f"sv_{suffix}"
    state = tmp_path / "state"
    state.mkdir()
    kafka_config = kafka.config.model_copy(
        update={"topic": f"it.fidsv.{suffix}", "dlq_topic": f"it.fidsv.dlq.{suffix}"}
    )
    debezium = capa_settings.debezium.model_copy(
        update={
            "source_name": "fidpg",
            "engine_name": f"capa-fidsv-{suffix}",
            "slot_name": f"capa_fidsv_{suffix}",
            "publication": f"capa_fidsv_{suffix}",
            "table_include_list": f"{schema}.{table}",
            "heartbeat_interval_ms": 1000,
        }
    )
    settings = capa_settings.model_copy(
        update={"state_dir": state, "kafka": kafka_config, "debezium": debezium}
    )
    ensure_topics(kafka.admin(), {kafka_config.topic: 1, kafka_config.dlq_topic: 1})
    _create_table(postgres.dsn, schema, table)
    run = Fidelity(
        settings, table, postgres.dsn, tmp_path / "bridge.log", tmp_path / "lake", schema=schema
    )
    yield run
    run.stop_bridge()
    sys.stderr.write(f"\n----- bridge log tail ({run.log}) -----\n{tail(run.log, 40)}\n")
    drop_capture(postgres.dsn, debezium.slot_name, debezium.publication, table)
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _create_table(dsn: str, schema: str, table: str) -> None:
    columns = ", ".join(f'"{n}" {t.format(s=_q(schema))}' for n, t in TYPES.items())
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {_q(schema)} CASCADE")
        conn.execute(f"CREATE SCHEMA {_q(schema)}")
        conn.execute(f"CREATE DOMAIN {_q(schema)}.dom_box AS box")
        conn.execute(f"CREATE DOMAIN {_q(schema)}.dom_int AS integer CHECK (VALUE > 0)")
        conn.execute(f"CREATE TYPE {_q(schema)}.mood AS ENUM ('sad', 'ok', 'happy')")
        conn.execute(f"CREATE TABLE {_q(schema)}.{_q(table)} (id integer PRIMARY KEY, {columns})")


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _row(row_id: int) -> dict[str, Any]:
    if row_id == 5:
        return {n: None for n in TYPES}
    return {**SPECIAL_ROWS[row_id], **{n: v[0] for n, v in UNKNOWN.items()}, **KNOWN}


def _insert(conn: psycopg.Connection[Any], schema: str, table: str, row_id: int) -> None:
    row = _row(row_id)
    names = ", ".join(_q(n) for n in row)
    values = ", ".join(f"%s::{TYPES[n].format(s=_q(schema))}" for n in row)
    conn.execute(
        f"INSERT INTO {_q(schema)}.{_q(table)} (id, {names}) VALUES (%s, {values})",
        (row_id, *row.values()),
    )


def test_special_values_and_unknown_types_replicate_whole(special: Fidelity) -> None:
    schema, table = special.schema, special.table
    with psycopg.connect(special.dsn, autocommit=True) as conn:
        _insert(conn, schema, table, 1)  # before the bridge: a snapshot read
    special.start_bridge()
    special.events(1)
    with psycopg.connect(special.dsn, autocommit=True) as conn:
        for row_id in (2, 3, 4, 5, 6):
            _insert(conn, schema, table, row_id)
    events = [e for e in special.events(6) if e.table == table]
    assert [e.key["id"] for e in events] == [1, 2, 3, 4, 5, 6]
    assert not special.dead_letters()
    assert {c.name: c.source_type for c in events[0].columns}["c_box"] == "box"
    _check_golden(events, GOLDEN.with_name("postgres_special_events.jsonl"))

    warehouse = open_warehouse(f"local:{special.warehouse}")
    warehouse.apply(events)
    name = f"fidpg_{schema}_{table}"
    raw = {r["id"]: r for r in warehouse.rows(f"raw.{name}")}
    assert sorted(raw) == [1, 2, 3, 4, 5, 6]
    assert set(TYPES) <= set(raw[1]), "a column vanished from raw"
    wrong = [
        (row_id, column, want, raw[row_id][column])
        for row_id, cells in EXPECTED_RAW.items()
        for column, want in cells.items()
        if comparable(want) != comparable(raw[row_id][column])
    ]
    wrong += [
        (row_id, column, text, raw[row_id][column])
        for row_id in (1, 2, 3, 4, 6)
        for column, (_, text) in UNKNOWN.items()
        if comparable(text) != comparable(raw[row_id][column])
    ]
    assert not wrong, "\n".join(map(repr, wrong))
    assert all(v is None for k, v in raw[5].items() if k in TYPES)

    special.stop_bridge()
    # numeric NaN/Infinity arrive as NULL (6 values in 2 columns): one capa warning a column
    told = [ln for ln in special.log.read_text().splitlines() if "could not convert" in ln]
    assert len(told) == 2, told
    for column in ("c_numeric", "c_num_10_2"):
        assert sum(f".{table}.{column} (type numeric)" in ln for ln in told) == 1, told
    [diff] = verify_postgres_local(special.dsn, "fidpg", schema, special.warehouse)
    assert (diff.missing, diff.extra, diff.different) == ([], [], [(4,)]), diff
    assert diff.columns == {(4,): ["c_date_arr"]}
    shown = _capa_verify(special.dsn, schema, special.warehouse)
    assert shown.returncode == 4, shown.stdout + shown.stderr
    assert "key [4] differs in column(s) c_date_arr" in shown.stdout + shown.stderr


def _capa_verify(dsn: str, schema: str, lake: Path) -> subprocess.CompletedProcess[str]:
    argv = ["verify", "--dsn", dsn, "--source", "fidpg", "--schema", schema]
    return subprocess.run(
        [sys.executable, "-m", "capa_app.cli", *argv, "--warehouse", f"local:{lake}"],
        capture_output=True,
        text=True,
        check=False,
    )
