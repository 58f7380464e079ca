"""Both warehouse adapters, same events -> same replica (STYLE rule 17), plus BigQuery specifics.

Runs against bqemulator 1.4.0 (DuckDB-backed). What the emulator CANNOT check, so these
tests do not claim it (see docs/emulated.md, "BigQuery"):
* adding a column to an existing table (the emulator's metadata and data disagree
  afterwards) - the adapter's add-column path (``update_table`` schema) is unexercised here;
* BIGNUMERIC (decimals wider than NUMERIC) and ALTER COLUMN SET DATA TYPE widening;
* a duplicate-source MERGE error (the emulator does not raise; the adapter dedupes with
  QUALIFY ROW_NUMBER() before the MERGE anyway);
* streaming-buffer restrictions of real BigQuery on the staging tables.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from test_apply_cases import event, full_row, normalise, sequential_replica, shuffled_batches

from capa.errors import WarehouseTerminalError
from capa.events import Op
from capa.warehouse import open_warehouse

HISTORY = [
    event(Op.INSERT, 1, 10, after=full_row(1, 1)),
    event(Op.INSERT, 2, 11, after=full_row(2, 2)),
    event(
        Op.UPDATE,
        1,
        12,
        after={"id": 1, "name": "toast", "amount": Decimal("9.25")},
        unchanged=("doc",),
    ),
    event(Op.INSERT, 3, 13, after=full_row(3, 3)),
    event(Op.DELETE, 2, 14, before={"id": 2}),
    event(Op.UPDATE, 4, 15, after=full_row(4, 5), before={"id": 3}),  # primary-key move 3 -> 4
    event(Op.TRUNCATE, None, 16),
    event(Op.INSERT, 1, 17, after=full_row(1, 7)),
    event(Op.INSERT, 2, 18, after=full_row(2, 8)),
    event(
        Op.UPDATE,
        2,
        19,
        after={"id": 2, "name": "late", "amount": Decimal("1.00")},
        unchanged=("doc",),
    ),
    event(Op.DELETE, 1, 20, before={"id": 1}),
]


@pytest.fixture(params=["local", "bigquery"])
def warehouse(request, tmp_path):
    if request.param == "local":
        return open_warehouse(f"local:{tmp_path / 'lake'}")
    config = request.getfixturevalue("bqemulator")
    dataset = f"raw_{request.node.name.split('[')[0][-20:]}_{abs(hash(str(tmp_path))) % 10**6}"
    return open_warehouse(config.model_copy(update={"raw_dataset": dataset}))


@pytest.mark.parametrize("seed", [1, 2])
def test_same_events_same_replica(warehouse, seed) -> None:
    # in-order delivery (TOAST needs it) with redelivered duplicates, cut into batches
    for batch in shuffled_batches(HISTORY, seed, shuffle=False):
        warehouse.apply(batch)
    # then a full, shuffled redelivery of everything: must change nothing
    for batch in shuffled_batches(HISTORY, seed + 100):
        warehouse.apply(batch)
    replica = normalise(warehouse.rows("raw.f2_public_orders", include_deleted=True))
    assert replica == sequential_replica(HISTORY)
    assert {r["id"] for r in warehouse.rows("raw.f2_public_orders")} == {2}
    changelog = warehouse.rows("raw.f2_public_orders_changelog")
    assert sorted(r["_capa_event_id"] for r in changelog) == sorted(e.event_id for e in HISTORY)


def test_truncate_watermark_blocks_late_older_events(warehouse) -> None:
    warehouse.apply([event(Op.INSERT, 1, 10, after=full_row(1, 1)), event(Op.TRUNCATE, None, 20)])
    warehouse.apply(
        [
            event(Op.INSERT, 2, 15, after=full_row(2, 1)),
            event(Op.INSERT, 3, 25, after=full_row(3, 1)),
        ]
    )
    assert [r["id"] for r in warehouse.rows("raw.f2_public_orders")] == [3]


def test_bigquery_merge_errors_raise(bqemulator) -> None:
    warehouse = open_warehouse(bqemulator.model_copy(update={"raw_dataset": "raw_errors"}))
    with pytest.raises(WarehouseTerminalError, match="BigQuery rejected"):
        list(warehouse.query("SELECT * FROM `capa-test`.`raw_errors`.`no_such_table`"))
