"""Table identity: ``raw_table_name`` is one injective, path-safe encoding of (source, schema,
table) that keeps plain lower-case names as they were and never meets a derived name."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_apply_cases import event, full_row

from capa.apply import apply_isolating_failures
from capa.codec import encode_single_object, event_to_json
from capa.errors import TableNameError, WarehouseTerminalError
from capa.events import (
    ALL_ROWS_SUFFIX,
    CHANGELOG_SUFFIX,
    DERIVED_SUFFIXES,
    MAX_RAW_NAME,
    STAGE_SUFFIX,
    ChangeEvent,
    Op,
    decode_raw_table_name,
    raw_table_name,
)
from capa.native import decode_batch
from capa.warehouse.local import LocalWarehouse
from capa.warehouse.local.delta_io import path_under
from capa_app.cli import main
from connectors.kafka.batch_decode import BatchDecoder
from connectors.kafka.wire import ChangeEventDecoder

PLAIN_PART = st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)
PLAIN_TABLE = st.from_regex(r"[a-z0-9]{1,6}(_[a-z0-9]{1,6}){0,3}", fullmatch=True).filter(
    lambda t: not t.endswith(DERIVED_SUFFIXES)
)
# any text, with the characters that matter here drawn often
NAME_TEXT = st.text(
    st.one_of(st.characters(codec="utf-8"), st.sampled_from("_x/.\\\n Oo0aA-")), max_size=12
)
ANY_TRIPLE = st.tuples(NAME_TEXT, NAME_TEXT, NAME_TEXT)
LIKELY_TRIPLE = st.tuples(
    st.one_of(PLAIN_PART, NAME_TEXT),
    st.one_of(PLAIN_PART, NAME_TEXT),
    st.one_of(PLAIN_TABLE, NAME_TEXT, PLAIN_TABLE.map(lambda t: t + "_changelog")),
)
TRIPLES = st.one_of(ANY_TRIPLE, LIKELY_TRIPLE).filter(lambda t: encodable(t))
STAGE_IDS = st.from_regex(r"[0-9a-f]{12}", fullmatch=True)


def encodable(triple: tuple[str, str, str]) -> bool:
    try:
        raw_table_name(*triple)
    except TableNameError:
        return False
    return True


@given(TRIPLES)
def test_decode_inverts_encode_and_the_alphabet_is_safe(triple: tuple[str, str, str]) -> None:
    name = raw_table_name(*triple)
    assert decode_raw_table_name(name) == triple
    assert re.fullmatch(r"[a-z0-9_]+", name) and len(name) <= MAX_RAW_NAME


@given(TRIPLES, TRIPLES)
def test_distinct_triples_get_distinct_names(a: tuple[str, ...], b: tuple[str, ...]) -> None:
    if a != b:
        assert raw_table_name(*a) != raw_table_name(*b)


@given(PLAIN_PART, PLAIN_PART, PLAIN_TABLE)
def test_plain_names_keep_todays_name(source: str, schema: str, table: str) -> None:
    assert raw_table_name(source, schema, table) == f"{source}_{schema}_{table}"


@given(TRIPLES, STAGE_IDS)
def test_no_derived_name_is_an_encoding(triple: tuple[str, str, str], stage_id: str) -> None:
    name = raw_table_name(*triple)
    for derived in (
        name + CHANGELOG_SUFFIX,
        name + ALL_ROWS_SUFFIX,
        name + STAGE_SUFFIX + stage_id,
    ):
        with pytest.raises(ValueError, match="not"):
            decode_raw_table_name(derived)


@pytest.mark.parametrize(
    ("triple", "name"),
    [
        (("f2", "public", "orders"), "f2_public_orders"),
        (("f2", "public", "order_items"), "f2_public_order_items"),
        (("f2", "public", "Orders"), "f2__public___x4frders"),
        (("f2", "public", "x/../../.."), "f2__public__x_x2f_x2e_x2e_x2f_x2e_x2e_x2f_x2e_x2e"),
        (("f2", "public_a", "b"), "f2__public_x5fa__b"),
        (("f2", "public", "a_b"), "f2_public_a_b"),
        (("f2", "public", "orders_changelog"), "f2__public__orders_x5fchangelog"),
        (("f2", "public", "orders_all"), "f2__public__orders_x5fall"),
        (("f2", "public", "a\nb"), "f2__public__a_x0ab"),
        (("f2", "dbo", "café"), "f2__dbo__caf_xc3_xa9"),
        (("f2", "", "t"), "f2____t"),
    ],
)
def test_exact_names(triple: tuple[str, str, str], name: str) -> None:
    assert raw_table_name(*triple) == name
    assert decode_raw_table_name(name) == triple


def test_the_reported_collisions_are_gone() -> None:
    assert raw_table_name("f2", "public", "orders") != raw_table_name("f2", "public", "Orders")
    assert raw_table_name("f2", "public_a", "b") != raw_table_name("f2", "public", "a_b")
    assert raw_table_name("f2", "public", "orders_changelog") != (
        raw_table_name("f2", "public", "orders") + CHANGELOG_SUFFIX
    )
    assert raw_table_name("f2", "public", "orders_all") != (
        raw_table_name("f2", "public", "orders") + ALL_ROWS_SUFFIX
    )


@pytest.mark.parametrize(
    "name",
    ["f2__public___x61", "f2__public__orders", "f2__public___X4frders", "f2_public", "", "a__b"],
)
def test_decode_refuses_names_nothing_encodes_to(name: str) -> None:
    with pytest.raises(ValueError, match="not"):
        decode_raw_table_name(name)


def test_a_name_over_the_limit_is_a_terminal_error_with_its_reason() -> None:
    assert len(raw_table_name("f2", "public", "t" * (MAX_RAW_NAME - 10))) == MAX_RAW_NAME
    with pytest.raises(TableNameError, match="over the limit of 230"):
        raw_table_name("f2", "public", "t" * (MAX_RAW_NAME - 9))
    with pytest.raises(TableNameError, match="rename the source, schema or table"):
        raw_table_name("f2", "public", "É" * 30)  # 30 chars, 240 once escaped


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "../x", "a\\b", "a\0b"])
def test_local_paths_refuse_names_that_leave_the_root(tmp_path: Path, name: str) -> None:
    with pytest.raises(WarehouseTerminalError):
        path_under(tmp_path, "raw", name)
    with pytest.raises(WarehouseTerminalError):
        LocalWarehouse(tmp_path).table_path(name, "t")
    assert path_under(tmp_path, "raw", "f2_public_orders") == tmp_path / "raw" / "f2_public_orders"


def named(table: str, key: int, lsn: int, *, schema: str = "public") -> ChangeEvent:
    base = event(Op.INSERT, key, lsn, after=full_row(key, lsn), table=table)
    return dataclasses.replace(base, schema=schema, event_id="")  # event_id recomputed


ODD_TABLES = [
    ("public", "orders"),
    ("public", "Orders"),
    ("public", "x/../../.."),
    ("public_a", "b"),
    ("public", "a_b"),
    ("public", "orders_changelog"),
    ("public", "orders_all"),
    ("public", "line\nbreak"),
]


def test_capa_apply_gives_each_table_its_own_replica_inside_the_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = [named(t, n + 1, 10 + n, schema=s) for n, (s, t) in enumerate(ODD_TABLES)]
    events.append(named("orders", 9, 50))  # a second row for the plain one
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(event_to_json(e)) + "\n" for e in events))
    lake = tmp_path / "lake"
    argv = ["apply", "--input", str(tmp_path / "in.jsonl"), "--warehouse", f"local:{lake}"]
    assert main(argv) == 0
    assert "0 dead letters" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "lake"]  # nothing escaped
    names = [raw_table_name("f2", s, t) for s, t in ODD_TABLES]
    assert len(set(names)) == len(ODD_TABLES)
    tables = sorted(p.name for p in (lake / "raw").iterdir())
    assert tables == sorted([*names, *(n + CHANGELOG_SUFFIX for n in names)])
    warehouse = LocalWarehouse(lake)
    for n, name in enumerate(names):
        rows = [r["id"] for r in warehouse.rows(f"raw.{name}")]
        assert rows == ([1, 9] if name == "f2_public_orders" else [n + 1]), name
    queries = {
        "SELECT count(*) AS n FROM raw.f2_public_orders": 2,
        "SELECT count(*) AS n FROM raw.f2_public_orders_all": 2,
        "SELECT count(*) AS n FROM raw.f2_public_orders_changelog": 2,
        "SELECT count(*) AS n FROM raw.f2__public__orders_x5fchangelog": 1,
        "SELECT count(*) AS n FROM raw.f2__public__orders_x5fall_all": 1,
        "SELECT count(*) AS n FROM raw.f2__public___x4frders": 1,
    }
    for sql, expected in queries.items():
        assert main(["sql", "--warehouse", f"local:{lake}", "--json", sql]) == 0, sql
        assert json.loads(capsys.readouterr().out) == {"n": expected}, sql


def test_a_too_long_name_dead_letters_its_events_and_the_rest_applies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long = named("t" * MAX_RAW_NAME, 1, 10)
    good = named("orders", 2, 11)
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps(event_to_json(e)) + "\n" for e in (long, good))
    )
    lake = tmp_path / "lake"
    argv = ["apply", "--input", str(tmp_path / "in.jsonl"), "--warehouse", f"local:{lake}"]
    assert main(argv) == 3
    err = capsys.readouterr().err
    (letter,) = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert "over the limit of 230" in letter["reason"]
    assert sorted(p.name for p in (lake / "raw").iterdir()) == [
        "f2_public_orders",
        "f2_public_orders_changelog",
    ]
    # the warehouse port itself refuses it as a terminal error, not a crash
    letters = apply_isolating_failures(LocalWarehouse(lake).apply, [long, good])
    assert [letter.event for letter in letters] == [long]


@pytest.mark.parametrize("route", ["python", "native"])
def test_the_stream_decoder_keeps_spellings_apart_and_dead_letters_long_names(route: str) -> None:
    native = decode_batch if route == "native" else None
    batch = [named("orders", 1, 10), named("Orders", 2, 11), named("t" * MAX_RAW_NAME, 3, 12)]
    got = BatchDecoder(ChangeEventDecoder(), native).decode(
        [encode_single_object(e) for e in batch]
    )
    assert sorted((t.table, list(t.indices)) for t in got.tables) == [
        ("Orders", [1]),
        ("orders", [0]),
    ]
    assert got.events == [] and [i for i, _ in got.errors] == [2]
    assert "over the limit" in got.errors[0][1]


def test_a_crm_contract_with_an_unusable_object_name_fails_at_load(tmp_path: Path) -> None:
    from connectors.crm.contract import load_contract
    from connectors.crm.errors import CrmContractError

    spec = tmp_path / "c.yaml"
    spec.write_text(
        f"objects:\n  {'o' * MAX_RAW_NAME}:\n    primary_key: [id]\n    last_modified: ts\n"
        "    columns:\n      id: {type: string}\n      ts: {type: timestamp}\n"
    )
    with pytest.raises(CrmContractError, match="over the limit of 230"):
        load_contract(spec)
    spec.write_text(spec.read_text().replace("o" * MAX_RAW_NAME, "Leads"))
    assert raw_table_name("crm", "crm", "Leads") == "crm__crm___x4ceads"
    assert list(load_contract(spec).objects) == ["Leads"]
