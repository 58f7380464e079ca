"""MERGE/DDL text from the one BigQuery generator (capa.warehouse.sql), checked as text."""

from __future__ import annotations

import pytest

from capa.warehouse import sql

SPEC = sql.MergeSpec(
    target=("p", "raw", "f2_public_orders"),
    source=("p", "raw", "f2_public_orders__stage_1"),
    keys=("tenant", "id"),
    columns=("tenant", "id", "doc", "_capa_position"),
    keep=("doc",),
)


def test_replica_merge_text() -> None:
    assert sql.merge_replica_sql(SPEC) == "\n".join(
        [
            "MERGE `p`.`raw`.`f2_public_orders` AS T",
            "USING (SELECT * FROM `p`.`raw`.`f2_public_orders__stage_1`",
            "  WHERE `_capa_stage` = @stage AND `_capa_position` > @watermark",
            "  QUALIFY ROW_NUMBER() OVER (PARTITION BY `tenant`, `id` "
            "ORDER BY `_capa_position` DESC) = 1) AS S",
            "ON T.`tenant` = S.`tenant` AND T.`id` = S.`id`",
            "WHEN MATCHED AND S.`_capa_position` > T.`_capa_position` THEN UPDATE SET "
            "`tenant` = S.`tenant`, `id` = S.`id`, "
            "`doc` = IF(S.`_capa_keep__doc`, T.`doc`, S.`doc`), "
            "`_capa_position` = S.`_capa_position`",
            "WHEN NOT MATCHED THEN INSERT (`tenant`, `id`, `doc`, `_capa_position`) "
            "VALUES (S.`tenant`, S.`id`, S.`doc`, S.`_capa_position`)",
            "WHEN NOT MATCHED BY SOURCE AND T.`_capa_position` < @truncate THEN DELETE",
        ]
    )


def test_merge_without_truncate_has_no_full_target_clause() -> None:
    # WHEN NOT MATCHED BY SOURCE reads every target row; a cycle without a truncate omits it
    # so that the MERGE reads only the clustered blocks of its keys
    import dataclasses

    text = sql.merge_replica_sql(dataclasses.replace(SPEC, delete_below_truncate=False))
    assert "NOT MATCHED BY SOURCE" not in text and "@truncate" not in text
    assert text.splitlines()[-1].startswith("WHEN NOT MATCHED THEN INSERT")


def test_changelog_is_read_deduplicated_by_event_id() -> None:
    assert sql.select_changelog_sql(("p", "raw", "t_changelog")) == (
        "SELECT * FROM `p`.`raw`.`t_changelog` QUALIFY ROW_NUMBER() OVER "
        "(PARTITION BY `_capa_event_id` ORDER BY `_capa_ingested_at`) = 1"
    )


def test_watermark_is_the_greatest_appended_truncate() -> None:
    text = sql.select_watermark_sql(("p", "raw", "_capa_state"))
    assert text == (
        "SELECT MAX(`truncate_position`) FROM `p`.`raw`.`_capa_state` WHERE `table_name` = @table"
    )


def test_history_lookup_binds_every_key_value() -> None:
    text = sql.select_history_sql(
        ("p", "raw", "t_changelog"), ("tenant", "id"), 2, below_truncate=True
    )
    assert text == (
        "SELECT * FROM `p`.`raw`.`t_changelog` WHERE "
        "(`tenant` = @k0_0 AND `id` = @k0_1) OR (`tenant` = @k1_0 AND `id` = @k1_1) "
        "OR `_capa_position` < @truncate"
    )
    assert sql.select_history_sql(("p", "d", "c"), ("id",), 0, below_truncate=False).endswith(
        "WHERE FALSE"
    )


def test_identifiers_are_quoted_and_escaped() -> None:
    hostile = sql.MergeSpec(
        target=("p", "d", "t`; DROP TABLE x; --"),
        source=("p", "d", "s"),
        keys=("id",),
        columns=("id",),
    )
    text = sql.merge_replica_sql(hostile)
    assert "`t\\`; DROP TABLE x; --`" in text


def test_alter_column_and_unknown_dialect() -> None:
    assert sql.alter_column_type_sql(("p", "d", "t"), "amount", "NUMERIC(14, 2)") == (
        "ALTER TABLE `p`.`d`.`t` ALTER COLUMN `amount` SET DATA TYPE NUMERIC(14, 2)"
    )
    with pytest.raises(ValueError, match="no SQL dialect 'oracle'"):
        sql.merge_replica_sql(SPEC, "oracle")
