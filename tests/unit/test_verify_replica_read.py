"""The oracle reads a local replica as readers see it: base table + merge-on-read pending log.

Found by the chaos run: with ``merge_on_read`` (the streaming apply job's default) the
batches sit in ``_pending/<name>`` until compaction, and reading ``raw/<name>`` alone
reported every streamed row as missing.
"""

from __future__ import annotations

from test_apply_cases import event, full_row

from capa.events import Op
from capa.verify import hash_rows, local_replica_row_hashes
from capa.warehouse.local import LocalWarehouse

NAME = "f2_public_orders"
COLUMNS = ["id", "name", "amount", "doc"]


def test_oracle_sees_pending_rows_and_hides_their_tombstones(tmp_path) -> None:
    warehouse = LocalWarehouse(tmp_path, merge_on_read=True)
    warehouse.apply([event(Op.INSERT, k, 10 + k, after=full_row(k, k)) for k in (1, 2, 3)])
    warehouse.apply(
        [
            event(Op.UPDATE, 1, 20, after=full_row(1, 7)),
            event(Op.DELETE, 2, 21, before={"id": 2}),
        ]
    )
    assert (tmp_path / "_pending" / NAME).exists()  # the batches really are pending

    expected = hash_rows([full_row(1, 7), full_row(3, 3)], ("id",), COLUMNS)
    assert local_replica_row_hashes(tmp_path, NAME, ("id",), COLUMNS) == expected


def test_oracle_reports_an_absent_replica_as_none(tmp_path) -> None:
    assert local_replica_row_hashes(tmp_path, NAME, ("id",), COLUMNS) is None


def test_oracle_finds_a_mixed_case_table_by_its_encoded_name(tmp_path) -> None:
    """``Orders`` and ``orders`` are two replicas; verify names each as apply did."""
    import dataclasses

    from capa.events import raw_table_name

    warehouse = LocalWarehouse(tmp_path, merge_on_read=True)
    lower = event(Op.INSERT, 1, 10, after=full_row(1, 1))
    upper = dataclasses.replace(
        event(Op.INSERT, 2, 11, after=full_row(2, 2), table="Orders"), schema="Sales", event_id=""
    )
    warehouse.apply([lower, upper])
    name = raw_table_name("f2", "Sales", "Orders")
    assert name != NAME and (tmp_path / "_pending" / name).exists()
    expected = hash_rows([full_row(2, 2)], ("id",), COLUMNS)
    assert local_replica_row_hashes(tmp_path, name, ("id",), COLUMNS) == expected
    assert local_replica_row_hashes(tmp_path, NAME, ("id",), COLUMNS) == hash_rows(
        [full_row(1, 1)], ("id",), COLUMNS
    )
