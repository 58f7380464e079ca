"""Model files: header parsing (pydantic), templating and dependency order (no Spark)."""

from __future__ import annotations

from pathlib import Path

import pytest

from capa.errors import ConfigError
from spark_jobs.project import load_project, parse_model, split_header

HEADER = """-- A test model.
-- capa:
--   key: [customer_id]
--   incremental:
--     f2_public_orders: customer_id
--   checks:
--     not_null: [customer_id]
--     accepted_values:
--       band: [low, high]
SELECT customer_id, 'low' AS band FROM {{ raw('f2_public_orders') }}
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.sql"
    path.write_text(text)
    return path


def test_shipped_models_parse_and_order_refs_first() -> None:
    project = load_project()
    names = [m.name for m in project.order()]
    assert {"customer_orders", "customer_360", "sales_daily", "customer_features"} <= set(names)
    assert names.index("customer_orders") < names.index("customer_360")
    assert names.index("customer_360") < names.index("customer_features")
    assert project.models["customer_features"].refs == ("customer_360", "customer_orders")
    assert "crm_crm_contacts" in project.models["customer_360"].raw_inputs


def test_every_shipped_model_maps_each_input_and_checks_its_key() -> None:
    for model in load_project().models.values():
        assert set(model.header.incremental) == set(model.inputs), model.name
        assert set(model.header.key) <= set(model.header.checks.not_null), model.name
        assert model.header.checks.unique == model.header.key, model.name


def test_header_is_typed(tmp_path: Path) -> None:
    model = parse_model(write(tmp_path, "m", HEADER))
    assert model.header.key == ("customer_id",)
    assert model.header.checks.accepted_values == {"band": ("low", "high")}
    assert model.sql.startswith("SELECT customer_id")


def test_split_header_keeps_sql_body() -> None:
    yaml_text, sql = split_header(HEADER)
    assert "key: [customer_id]" in yaml_text and "capa:" not in yaml_text
    assert sql.splitlines()[0].startswith("SELECT")


def test_render_resolves_templates_and_rejects_unknown() -> None:
    model = parse_model_text("SELECT * FROM {{ raw('a_b_c') }} JOIN {{ ref('m2') }}")
    assert (
        model.render(lambda kind, name: f"`{kind}__{name}`")
        == "SELECT * FROM `raw__a_b_c` JOIN `ref__m2`"
    )
    bad = parse_model_text("SELECT * FROM {{ source('x') }}")
    with pytest.raises(ConfigError, match="unknown template"):
        bad.render(lambda kind, name: name)


def test_mapping_sql_expression_and_rows_query() -> None:
    model = parse_model_text("SELECT 1 FROM {{ raw('t1') }}", incremental="t1: CAST(ts AS DATE)")
    assert (
        model.mapping_sql("t1", "`chg`", str)
        == "SELECT CAST(ts AS DATE) AS `customer_id` FROM `chg`"
    )
    query = parse_model_text(
        "SELECT 1 FROM {{ raw('t1') }}", incremental="t1: SELECT k AS customer_id FROM {{ rows }}"
    )
    assert query.mapping_sql("t1", "`chg`", str) == "SELECT k AS customer_id FROM `chg`"


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("-- capa:\n--   key: []\n", "key must name at least one column"),
        ("-- capa:\n--   key: [a]\n--   bogus: 1\n", "bogus"),
        ("-- capa:\n--   key: [a\n", "bad header"),
        ("-- no header\n", "no '-- capa:' header"),
    ],
)
def test_bad_headers_say_what_is_wrong(tmp_path: Path, header: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_model(write(tmp_path, "m", header + "SELECT 1 AS a FROM {{ raw('t') }}\n"))


def test_cycles_unknown_refs_and_unused_mappings_are_rejected(tmp_path: Path) -> None:
    write(tmp_path, "a", "-- capa:\n--   key: [k]\nSELECT * FROM {{ ref('b') }}\n")
    write(tmp_path, "b", "-- capa:\n--   key: [k]\nSELECT * FROM {{ ref('a') }}\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_project(tmp_path).order()
    (tmp_path / "b.sql").write_text("-- capa:\n--   key: [k]\nSELECT * FROM {{ ref('zz') }}\n")
    with pytest.raises(ConfigError, match="unknown model 'zz'"):
        load_project(tmp_path)
    (tmp_path / "b.sql").write_text(
        "-- capa:\n--   key: [k]\n--   incremental: {t9: k}\nSELECT * FROM {{ raw('t1') }}\n"
    )
    with pytest.raises(ConfigError, match="never reads"):
        load_project(tmp_path)


def test_order_rejects_unknown_selection() -> None:
    with pytest.raises(ConfigError, match="unknown model"):
        load_project().order(["nope"])


def parse_model_text(sql: str, incremental: str | None = None):  # type: ignore[no-untyped-def]
    import tempfile

    folder = Path(tempfile.mkdtemp())
    inc = f"--   incremental:\n--     {incremental}\n" if incremental else ""
    return parse_model(write(folder, "m", f"-- capa:\n--   key: [customer_id]\n{inc}{sql}\n"))


def test_key_expression_only_for_plain_single_key_mappings() -> None:
    plain = parse_model_text("SELECT 1 FROM {{ raw('t1') }}", incremental="t1: CAST(ts AS DATE)")
    assert plain.key_expression("t1") == "CAST(ts AS DATE)"
    assert plain.key_expression("unmapped") is None
    query = parse_model_text(
        "SELECT 1 FROM {{ raw('t1') }}", incremental="t1: SELECT k AS customer_id FROM {{ rows }}"
    )
    assert query.key_expression("t1") is None
    contacts = load_project().models["customer_360"]
    assert contacts.key_expression("customer_orders") == "customer_id"
    assert contacts.key_expression("crm_crm_contacts") is None  # a join: read in full


def test_additive_header_and_bare_column_mappings(tmp_path: Path) -> None:
    sales = load_project().models["sales_daily"]
    assert sales.header.additive is not None and sales.header.additive.exists
    assert "_capa_sign" not in sales.sql  # the additive strategy splits changed rows by sign
    assert sales.header.strategy == "additive"
    assert sales.mapped_column("f2_public_orders") is None  # an expression, not a column
    c360 = load_project().models["customer_360"]
    assert c360.header.additive is None and c360.header.strategy == "keyed"
    assert c360.mapped_column("customer_orders") == "customer_id"
    assert c360.mapped_column("crm_crm_contacts") is None  # a SELECT over {{ rows }}
    plain = parse_model_text("SELECT 1 AS customer_id FROM {{ raw('t1') }}")
    assert plain.header.strategy == "full"  # no mapping: any change rebuilds it
    from spark_jobs.strategies import STRATEGIES

    assert {"full", "keyed", "additive"} == set(STRATEGIES)
    bad = HEADER.replace("--   checks:", "--   additive: {}\n--   checks:")
    with pytest.raises(ConfigError, match="exists"):
        parse_model(write(tmp_path, "m", bad))


def test_additive_sql_is_weighted_by_the_engine_sign_and_other_aggregates_are_refused() -> None:
    from spark_jobs.strategies import signed_sql

    sales = signed_sql(load_project().models["sales_daily"])
    assert "SUM(_capa_sign) AS orders" in sales
    assert "SUM((CAST(amount AS DECIMAL(18, 2))) * _capa_sign) AS order_amount" in sales
    assert "COUNT(" not in sales and "{{ raw('f2_public_orders') }}" in sales
    counted = parse_model_text("SELECT k AS customer_id, COUNT(x) AS n FROM {{ raw('t1') }}")
    assert "SUM(IF((x) IS NULL, 0, _capa_sign)) AS n" in signed_sql(counted)
    for bad in (
        "SELECT k AS customer_id, MAX(x) AS m FROM {{ raw('t1') }} GROUP BY k",
        "SELECT k AS customer_id, COUNT(DISTINCT x) AS m FROM {{ raw('t1') }} GROUP BY k",
        "SELECT a.k AS customer_id, SUM(b.x) AS m FROM {{ raw('t1') }} a "
        "JOIN {{ raw('t2') }} b ON a.k = b.k GROUP BY a.k",
    ):
        with pytest.raises(ConfigError, match="is additive, but"):
            signed_sql(parse_model_text(bad))
