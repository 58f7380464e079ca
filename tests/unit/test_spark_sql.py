"""Generated Spark SQL (checks, MERGE) as text; the integration tests run it on Spark."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from spark_jobs.checks import model_checks
from spark_jobs.project import SIGN, load_project
from spark_jobs.state import InputMark, ModelState, load_state, save_state
from spark_jobs.tables import merge_sql


def test_merge_sql_upserts_and_deletes_on_null_safe_key() -> None:
    sql = merge_sql("delta.`/x`", "src", ["k"], ["k", "a", "b`c"])
    assert sql == (
        "MERGE INTO delta.`/x` t USING src s ON t.`k` <=> s.`k` "
        "WHEN MATCHED AND s.__capa_present IS NULL THEN DELETE "
        "WHEN MATCHED THEN UPDATE SET t.`a` = s.`a`, t.`b``c` = s.`b``c` "
        "WHEN NOT MATCHED AND s.__capa_present IS NOT NULL THEN INSERT (`k`, `a`, `b``c`) "
        "VALUES (s.`k`, s.`a`, s.`b``c`)"
    )


def test_merge_sql_key_only_table_has_no_update_clause() -> None:
    sql = merge_sql("t1", "s1", ["a", "b"], ["a", "b"])
    assert "UPDATE" not in sql and "t.`a` <=> s.`a` AND t.`b` <=> s.`b`" in sql


def test_checks_cover_every_kind_and_never_inline_values() -> None:
    model = load_project().models["customer_360"]
    checks = model_checks(model, "`built`", lambda name: f"`v_{name}`")
    kinds = {c.kind for c in checks}
    assert kinds == {"not_null", "unique", "accepted_values", "relationships"}
    accepted = next(c for c in checks if c.kind == "accepted_values")
    assert "'software'" not in accepted.sql
    assert accepted.params == {
        "capa_accepted__customer_360__industry": model.header.checks.accepted_values["industry"]
    }
    rel = next(c for c in checks if c.kind == "relationships")
    assert "LEFT ANTI JOIN `v_f2_public_customers` p ON c.`customer_id` = p.`id`" in rel.sql
    unique = next(c for c in checks if c.kind == "unique")
    assert "GROUP BY `customer_id` HAVING COUNT(*) > 1" in unique.sql


def test_state_round_trips(tmp_path: Path) -> None:
    state = ModelState(
        model="m",
        fingerprint="f",
        target_version=3,
        inputs={"t": InputMark(kind="raw", version=2, max_ingested_at="2026-01-01T00:00:00Z")},
    )
    save_state(tmp_path, state)
    assert load_state(tmp_path, "m") == state
    assert load_state(tmp_path, "other") is None


def test_failed_checks_are_reported_as_a_table(capsys) -> None:  # type: ignore[no-untyped-def]
    from spark_jobs.build import ChecksFailed, report_failure
    from spark_jobs.checks import Check, CheckResult

    bad = CheckResult(Check("m", "accepted_values", "band", "SELECT 1"), 2, ("x", "y"))
    good = CheckResult(Check("m", "unique", "id", "SELECT 1"), 0, ())
    report_failure(ChecksFailed("m", [bad, good]))
    err = capsys.readouterr().err
    assert "model 'm': 1 data-quality check(s) failed" in err
    assert err.splitlines()[-1].split() == ["m", "accepted_values", "band", "2", "x,", "y"]
    assert "unique" not in err


def test_incremental_checks_read_recomputed_rows_unless_a_parent_changed() -> None:
    from spark_jobs.checks import incremental_checks

    model = load_project().models["customer_360"]
    parents = lambda name: f"`v_{name}`"  # noqa: E731
    checks = incremental_checks(model, "`built`", "`changed`", parents, {"f2_public_customers"})
    assert {c.kind: c.sql.count("`changed`") for c in checks} == {
        "not_null": 1,
        "unique": 1,  # unique on the key: recomputed keys and kept keys are disjoint
        "accepted_values": 1,
        "relationships": 1,  # parent unchanged: only new rows can be orphans
    }
    covered = incremental_checks(model, "`built`", "`changed`", parents, set())
    rel = next(c for c in covered if c.kind == "relationships")
    # the parent changed, but its mapping (id) is the referenced field: every parent row that
    # changed or went away sent its id to the recomputed keys, so kept rows keep their parent
    assert "FROM `changed` c LEFT ANTI JOIN `v_f2_public_customers`" in rel.sql


def test_incremental_relationship_check_reads_the_table_when_the_mapping_does_not_cover_it(
    tmp_path: Path,
) -> None:
    from spark_jobs.checks import incremental_checks
    from spark_jobs.project import parse_model

    path = tmp_path / "m.sql"
    path.write_text(
        "-- capa:\n"
        "--   key: [order_id]\n"
        "--   incremental:\n"
        "--     f2_public_orders: id\n"
        "--     f2_public_customers: >-\n"
        "--       SELECT o.id AS order_id FROM {{ rows }} r\n"
        "--       JOIN {{ raw_history('f2_public_orders') }} o ON o.customer_id = r.id\n"
        "--   checks:\n"
        "--     relationships:\n"
        "--       - {column: customer_id, to: f2_public_customers, field: id}\n"
        "SELECT o.id AS order_id, c.id AS customer_id FROM {{ raw('f2_public_orders') }} o\n"
        "JOIN {{ raw('f2_public_customers') }} c ON c.id = o.customer_id\n"
    )
    model = parse_model(path)
    parents = lambda name: f"`v_{name}`"  # noqa: E731
    moved = incremental_checks(model, "`built`", "`changed`", parents, set())
    assert (
        len(moved) == 1 and "FROM `built` c LEFT ANTI JOIN `v_f2_public_customers`" in moved[0].sql
    )
    stable = incremental_checks(model, "`built`", "`changed`", parents, {"f2_public_customers"})
    assert len(stable) == 1 and "FROM `changed` c LEFT ANTI JOIN" in stable[0].sql


def test_checks_run_as_one_union_query() -> None:
    from spark_jobs.checks import union_sql

    model = load_project().models["sales_daily"]
    checks = model_checks(model, "`built`", str)
    sql = union_sql(checks)
    assert sql.count(" UNION ALL ") == len(checks) - 1
    assert sql.startswith("SELECT 0 AS check_index, failures, CAST(examples AS ARRAY<STRING>)")


def _replica(path: Path, rows: list[dict[str, object]]) -> None:
    import pyarrow as pa
    from deltalake import write_deltalake

    schema = pa.schema([("id", pa.int64()), ("v", pa.string()), ("_capa_event_id", pa.string())])
    write_deltalake(str(path), pa.Table.from_pylist(rows, schema=schema), mode="overwrite")


def _upsert(path: Path, rows: list[dict[str, object]]) -> None:
    import pyarrow as pa
    from deltalake import DeltaTable

    schema = pa.schema([("id", pa.int64()), ("v", pa.string()), ("_capa_event_id", pa.string())])
    (
        DeltaTable(str(path))
        .merge(pa.Table.from_pylist(rows, schema=schema), "t.id = s.id", "s", "t")
        .when_matched_update_all()
        .when_not_matched_insert_all()
        .execute()
    )


def test_diff_finds_new_and_replaced_row_versions_by_event_id(tmp_path: Path) -> None:
    from deltalake import write_deltalake

    from spark_jobs.diff import changed_rows

    path = tmp_path / "raw"
    _replica(path, [{"id": i, "v": f"a{i}", "_capa_event_id": f"e{i}"} for i in range(100)])
    write_deltalake(  # a second file that no later commit touches
        str(path),
        _arrow([{"id": 500, "v": "z", "_capa_event_id": "e500"}]),
        mode="append",
    )
    _upsert(path, [{"id": 3, "v": "b3", "_capa_event_id": "u3"}])
    _upsert(path, [{"id": 200, "v": "new", "_capa_event_id": "i200"}])
    rows = changed_rows(str(path), 1, 3, ["_capa_event_id"])
    assert rows is not None
    assert sorted(rows.to_pylist(), key=lambda r: str(r["_capa_event_id"])) == [
        {"id": 3, "v": "a3", "_capa_event_id": "e3", "_capa_sign": -1},  # the replaced version
        {"id": 200, "v": "new", "_capa_event_id": "i200", "_capa_sign": 1},
        {"id": 3, "v": "b3", "_capa_event_id": "u3", "_capa_sign": 1},
    ]
    assert changed_rows(str(path), 3, 3, ["_capa_event_id"]).num_rows == 0  # type: ignore[union-attr]


def test_diff_by_whole_row_ignores_rewritten_but_equal_rows(tmp_path: Path) -> None:
    from spark_jobs.diff import changed_rows

    path = tmp_path / "model"
    before = [{"id": i, "v": None if i == 1 else f"a{i}", "_capa_event_id": None} for i in range(5)]
    _replica(path, before)
    after = [dict(r) for r in before if r["id"] != 4]
    after[2]["v"] = "changed"
    _replica(path, after)  # an overwrite: every file replaced
    rows = changed_rows(str(path), 0, 1, None)
    assert rows is not None
    assert sorted((r["id"], r["v"], r["_capa_sign"]) for r in rows.to_pylist()) == [
        (2, "a2", -1),
        (2, "changed", 1),
        (4, "a4", -1),
    ]


def test_diff_by_key_equals_the_whole_row_diff(tmp_path: Path) -> None:
    """A model table's versions are each unique on its key: pairing rows by key gives what
    the whole-row comparison gives."""
    from spark_jobs.diff import changed_rows

    path = tmp_path / "model"
    before = [{"id": i, "v": None if i == 1 else f"a{i}", "_capa_event_id": None} for i in range(6)]
    _replica(path, before)
    after = [dict(r) for r in before if r["id"] != 4] + [
        {"id": 9, "v": "n", "_capa_event_id": None}
    ]
    after[1]["v"] = "was null"
    _replica(path, after)
    by_key = changed_rows(str(path), 0, 1, None, key=["id"])
    whole = changed_rows(str(path), 0, 1, None)
    assert by_key is not None and whole is not None

    def signed(rows: pa.Table) -> list[tuple[object, ...]]:
        return sorted((r["id"], str(r["v"]), r[SIGN]) for r in rows.to_pylist())

    assert (
        signed(by_key)
        == signed(whole)
        == [
            (1, "None", -1),
            (1, "was null", 1),
            (4, "a4", -1),
            (9, "n", 1),
        ]
    )


def _arrow(rows: list[dict[str, object]]) -> object:
    import pyarrow as pa

    schema = pa.schema([("id", pa.int64()), ("v", pa.string()), ("_capa_event_id", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema)


def test_diff_of_a_truncate_and_of_two_arrow_tables_is_signed(tmp_path: Path) -> None:
    from deltalake import DeltaTable

    from spark_jobs.diff import changed_rows, rows_changed

    path = tmp_path / "raw"
    _replica(path, [{"id": i, "v": f"a{i}", "_capa_event_id": f"e{i}"} for i in range(3)])
    DeltaTable(str(path)).delete()  # a truncate: every row of the old files goes
    rows = changed_rows(str(path), 0, 1, ["_capa_event_id"])
    assert rows is not None
    assert sorted((r["id"], r["_capa_sign"]) for r in rows.to_pylist()) == [
        (0, -1),
        (1, -1),
        (2, -1),
    ]
    old = _arrow(
        [{"id": 1, "v": "x", "_capa_event_id": None}, {"id": 2, "v": None, "_capa_event_id": None}]
    )
    new = _arrow(
        [{"id": 1, "v": "y", "_capa_event_id": None}, {"id": 2, "v": None, "_capa_event_id": None}]
    )
    changed = rows_changed(old, new)  # type: ignore[arg-type]
    assert changed is not None
    assert sorted((r["v"], r["_capa_sign"]) for r in changed.to_pylist()) == [("x", -1), ("y", 1)]


def test_keyed_diff_equals_the_whole_row_diff_and_refuses_duplicate_keys() -> None:
    """keyed_rows_changed pairs rows by key and compares columns (NULL equals NULL); on any
    pair of key-unique tables it must give what the whole-row string diff gives."""
    import random
    from collections import Counter

    import pyarrow as pa

    from spark_jobs.diff import keyed_rows_changed, rows_changed

    rng = random.Random(7)
    schema = pa.schema([("k", pa.int64()), ("a", pa.int64()), ("s", pa.string())])

    def table(keys: list[int]) -> pa.Table:
        rows = [{"k": k, "a": rng.choice([None, 1, 2]), "s": rng.choice([None, "x"])} for k in keys]
        return pa.Table.from_pylist(rows, schema=schema)

    def signed(rows: pa.Table) -> Counter:
        return Counter(tuple(r.values()) for r in rows.to_pylist())

    for _ in range(300):
        old = table(rng.sample(range(40), rng.randint(0, 25)))
        new = table(rng.sample(range(40), rng.randint(0, 25)))
        keyed, plain = keyed_rows_changed(old, new, ["k"]), rows_changed(old, new)
        assert keyed is not None and plain is not None
        assert signed(keyed) == signed(plain)
    twice = table([1, 1])
    assert keyed_rows_changed(twice, table([1]), ["k"]) is None


def test_key_filters_keep_null_keys_out_of_the_set_and_in_the_rest() -> None:
    import pyarrow as pa

    from spark_jobs.tables import anti_join, semi_join

    rows = pa.table({"k": pa.array([1, None, 2, 3], pa.int64()), "v": pa.array(list("abcd"))})
    keys = pa.table({"k": pa.array([2, 3, 9], pa.int32())})
    assert semi_join(rows, keys).column("v").to_pylist() == ["c", "d"]
    assert anti_join(rows, keys).column("v").to_pylist() == ["a", "b"]
    pair = pa.table({"k": pa.array([2, 3], pa.int64()), "j": pa.array([1, 1], pa.int64())})
    wide = rows.append_column("j", pa.array([0, 0, 0, 1], pa.int64()))
    assert semi_join(wide, pair).column("v").to_pylist() == ["d"]  # both columns must match


def test_delta_version_follows_new_commits_and_a_table_made_again(tmp_path: Path) -> None:
    import shutil

    import pyarrow as pa
    from deltalake import write_deltalake

    from spark_jobs.diff import DeltaTables

    tables = DeltaTables()  # one build's handles
    path = tmp_path / "t"
    assert tables.version(path) is None
    rows = pa.table({"k": [1, 2]})
    write_deltalake(str(path), rows)
    assert tables.version(path) == 0
    write_deltalake(str(path), rows, mode="append")
    write_deltalake(str(path), rows, mode="append")
    assert tables.version(path) == 2  # the kept handle reads the new commits
    assert len(tables.at(path, 2).file_uris()) == 3
    shutil.rmtree(path)
    write_deltalake(str(path), rows)
    tables.forget(path)  # what the builder does after removing a table
    assert tables.version(path) == 0
    assert len(tables.at(path, 0).file_uris()) == 1
    shutil.rmtree(path)
    assert DeltaTables().version(path) is None  # the next build's handles


def test_keyed_diff_compares_only_the_recomputed_columns_when_told() -> None:
    """A part-wise build copies the other columns, so only the recomputed ones are compared."""
    import pyarrow as pa

    from spark_jobs.diff import keyed_rows_changed

    old = pa.table({"k": [1, 2, 3], "copied": ["a", "b", "c"], "sum": [10, 20, 30]})
    new = pa.table({"k": [1, 2, 4], "copied": ["a", "B", "d"], "sum": [11, 20, 40]})
    everything = keyed_rows_changed(old, new, ["k"])
    recomputed = keyed_rows_changed(old, new, ["k"], ["sum"])
    assert everything is not None and recomputed is not None

    def pairs(rows: pa.Table) -> list[tuple[int, int]]:
        keys, signs = rows.column("k").to_pylist(), rows.column(SIGN).to_pylist()
        return sorted(zip(keys, signs, strict=True))

    assert pairs(everything) == [(1, -1), (1, 1), (2, -1), (2, 1), (3, -1), (4, 1)]
    assert pairs(recomputed) == [(1, -1), (1, 1), (3, -1), (4, 1)]  # key 2: only "copied"


def test_split_by_keys_is_the_semi_join_and_the_anti_join() -> None:
    import pyarrow as pa

    from spark_jobs.tables import anti_join, semi_join, split_by_keys

    rows = pa.table({"k": pa.array([1, 2, None, 4, 2], pa.int64()), "v": list("abcde")})
    for keys in (
        pa.table({"k": pa.array([2, 9], pa.int32())}),
        pa.table({"k": pa.array([], pa.int64())}),
    ):
        inside, outside = split_by_keys(rows, keys)
        assert inside.equals(semi_join(rows, keys)) and outside.equals(anti_join(rows, keys))
    two = pa.table({"k": [1, 2, 2], "j": ["x", "y", "z"]})
    inside, outside = split_by_keys(two, pa.table({"k": [2], "j": ["z"]}))
    assert inside.to_pylist() == [{"k": 2, "j": "z"}] and outside.num_rows == 2
