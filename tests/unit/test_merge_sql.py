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


def test_changelog_merge_is_insert_only_on_event_id() -> None:
    text = sql.merge_changelog_sql(
        ("p", "raw", "t_changelog"), ("p", "raw", "stage"), ["id", "_capa_event_id"]
    )
    assert (
        "ON T.`_capa_event_id` = S.`_capa_event_id` AND T.`_capa_position` >= @first_position"
        in text
    )
    assert "WHEN MATCHED" not in text and "INSERT (`id`, `_capa_event_id`)" in text


def test_watermark_never_lowers() -> None:
    text = sql.merge_watermark_sql(("p", "raw", "_capa_state"))
    assert "WHEN MATCHED AND S.`truncate_position` > T.`truncate_position` THEN UPDATE" in text
    assert "@table" in text and "@truncate" in text


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
