"""Part-wise recompute (spark_jobs.parts): which models are keyed joins, which columns a change
recomputes, and that the generated SQL gives the rows a full run gives (run on DuckDB through
sqlglot's Spark -> DuckDB transpiler; the Spark runs are in tests/integration)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlglot

from spark_jobs.parts import CURRENT_VIEW, analyse
from spark_jobs.project import load_project, parse_model, render

HEADER = """-- capa:
--   key: [id]
--   incremental:
--     people: id
--     visits: person_id
--     notes: person_id
"""

KEYED_JOIN = (
    HEADER
    + """WITH p AS (SELECT id, name FROM {{ raw('people') }}),
v AS (
  SELECT person_id, COUNT(*) AS visits, MAX(seen) AS last_at
  FROM {{ raw('visits') }} GROUP BY person_id
),
n AS (SELECT person_id, COUNT(*) AS notes FROM {{ raw('notes') }} GROUP BY person_id)
SELECT p.id, p.name, COALESCE(v.visits, 0) AS visits, v.last_at,
       COALESCE(n.notes, 0) + COALESCE(v.visits, 0) AS touches,
       CONCAT(p.name, ':', CAST(COALESCE(n.notes, 0) AS STRING)) AS label
FROM p LEFT JOIN v ON v.person_id = p.id LEFT JOIN n ON n.person_id = p.id
"""
)


def model(tmp_path: Path, sql: str, name: str = "m"):  # type: ignore[no-untyped-def]
    path = tmp_path / f"{name}.sql"
    path.write_text(sql)
    return parse_model(path)


def test_shipped_keyed_joins_split_into_driver_and_parts() -> None:
    project = load_project()
    c360 = analyse(project.models["customer_360"])
    assert c360 is not None
    assert (c360.driver.alias, c360.driver.inputs) == ("c", frozenset({"f2_public_customers"}))
    parts = {p.alias: p.inputs for p in c360.parts}
    assert parts["o"] == frozenset({"customer_orders"})
    assert parts["ct"] == frozenset({"crm_crm_contacts", "crm_crm_accounts"})
    features = analyse(project.models["customer_features"])
    assert features is not None and features.driver.inputs == frozenset({"customer_360"})
    assert analyse(project.models["sales_daily"]) is None  # additive, FULL OUTER JOIN


def test_changed_orders_recompute_only_the_order_columns_of_customer_360() -> None:
    c360 = analyse(load_project().models["customer_360"])
    assert c360 is not None
    plan = c360.plan({"customer_orders"})
    assert plan is not None
    assert plan.columns == ("orders", "order_amount", "last_order_at")
    assert "{{ ref('customer_orders') }}" in plan.sql and CURRENT_VIEW in plan.sql
    for unread in ("f2_public_customers", "crm_crm_accounts", "crm_crm_contacts", "f3_dbo"):
        assert unread not in plan.sql
    assert c360.plan({"f2_public_customers"}) is None  # the driver: rows may come and go
    contacts = c360.plan({"crm_crm_contacts"})
    assert contacts is not None and contacts.columns == ("contacts",)
    assert "crm_crm_accounts" in contacts.sql  # the contacts CTE joins the accounts


@pytest.mark.parametrize(
    "outer",
    [
        "SELECT p.id, name FROM p LEFT JOIN v ON v.person_id = p.id",  # unqualified column
        "SELECT p.id, v.* FROM p LEFT JOIN v ON v.person_id = p.id",  # star
        "SELECT p.id, v.visits FROM p JOIN v ON v.person_id = p.id",  # inner join
        "SELECT p.id, v.visits FROM p LEFT JOIN v ON v.person_id = p.id WHERE p.id > 1",
        "SELECT p.id, v.visits FROM p LEFT JOIN v ON v.person_id = p.id AND v.visits > 1",
        "SELECT p.name AS id, v.visits FROM p LEFT JOIN v ON v.person_id = p.id",
        "SELECT p.id FROM p",  # nothing joined
    ],
)
def test_other_shapes_keep_the_keyed_recompute(tmp_path: Path, outer: str) -> None:
    ctes = KEYED_JOIN[: KEYED_JOIN.index("SELECT p.id, p.name")]
    assert analyse(model(tmp_path, ctes + outer)) is None


def test_a_change_that_feeds_no_column_recomputes_nothing(tmp_path: Path) -> None:
    split = analyse(model(tmp_path, KEYED_JOIN))
    assert split is not None
    plan = split.plan({"unrelated"})
    assert plan is not None and plan.columns == ()


def test_columns_reading_the_driver_join_it_back(tmp_path: Path) -> None:
    split = analyse(model(tmp_path, KEYED_JOIN))
    assert split is not None
    plan = split.plan({"notes"})
    assert plan is not None and plan.columns == ("touches", "label")
    assert "{{ raw('people') }}" in plan.sql  # label reads p.name
    assert "{{ raw('visits') }}" in plan.sql  # touches reads v.visits too


# -- the generated SQL gives what a full run gives (DuckDB) ---------------------------------
def _tables(rng: random.Random) -> dict[str, list[tuple]]:
    people = [(i, f"p{i}") for i in range(1, 31) if rng.random() < 0.9]
    visits = [(v, rng.randint(1, 35), rng.randint(0, 99)) for v in range(rng.randint(0, 120))]
    notes = [(n, rng.randint(1, 35)) for n in range(rng.randint(0, 60))]
    return {"people": people, "visits": visits, "notes": notes}


def _load(con: duckdb.DuckDBPyConnection, tables: dict[str, list[tuple]]) -> None:
    shapes = {
        "people": "id BIGINT, name VARCHAR",
        "visits": "id BIGINT, person_id BIGINT, seen INT",
    }
    shapes["notes"] = "id BIGINT, person_id BIGINT"
    for name, rows in tables.items():
        con.execute(f"CREATE OR REPLACE TABLE {name} ({shapes[name]})")
        if rows:
            marks = ", ".join("?" * len(rows[0]))
            con.executemany(f"INSERT INTO {name} VALUES ({marks})", rows)


def _duck(con: duckdb.DuckDBPyConnection, spark_sql: str) -> list[tuple]:
    sql = sqlglot.transpile(spark_sql, read="spark", write="duckdb")[0]
    return sorted(con.execute(sql).fetchall())


def _plain(kind: str, name: str) -> str:
    return name


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("changed", [{"visits"}, {"notes"}, {"visits", "notes"}])
def test_plan_over_current_rows_equals_a_full_run(
    tmp_path: Path, seed: int, changed: set[str]
) -> None:
    rng = random.Random(seed)
    m = model(tmp_path, KEYED_JOIN)
    split = analyse(m)
    assert split is not None
    con = duckdb.connect()
    before = _tables(rng)
    _load(con, before)
    full_sql = m.render(_plain)
    current = _duck(con, full_sql)
    after = dict(before, **{t: _tables(rng)[t] for t in changed})  # the people stay
    _load(con, after)
    expected = _duck(con, full_sql)
    touched = {r[1] for t in changed for r in before[t] + after[t]}  # person_id: the mapping
    rows = [r for r in current if r[0] in touched]
    con.execute(
        "CREATE OR REPLACE TABLE cur (id BIGINT, name VARCHAR, visits BIGINT, last_at INT, "
        "touches BIGINT, label VARCHAR)"
    )
    if rows:
        con.executemany("INSERT INTO cur VALUES (?, ?, ?, ?, ?, ?)", rows)
    plan = split.plan(changed)
    assert plan is not None
    got = _duck(con, render(plan.sql.replace(CURRENT_VIEW, "cur"), _plain))
    untouched = [r for r in current if r[0] not in touched]
    assert sorted(untouched + got) == expected
    assert _widened(con, plan, rows) == got  # the narrow plan plus the copied columns


def _widened(con: duckdb.DuckDBPyConnection, plan: Any, rows: list[tuple]) -> list[tuple]:
    """The narrow plan over the keys of the current rows, the other columns copied from them
    (what the builder does in Arrow)."""
    names = ["id", "name", "visits", "last_at", "touches", "label"]
    con.execute("CREATE OR REPLACE TABLE cur_keys AS SELECT id FROM cur")
    narrow_sql = render(plan.narrow.replace(CURRENT_VIEW, "cur_keys"), _plain)
    narrow = {
        r[0]: dict(zip(["id", *plan.columns], r, strict=True)) for r in _duck(con, narrow_sql)
    }
    assert narrow.keys() == {r[0] for r in rows}
    return sorted(
        tuple(narrow[r[0]].get(n, v) for n, v in zip(names, r, strict=True)) for r in rows
    )
