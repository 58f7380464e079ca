"""BigQuery apply modes against bqemulator: merge cadence, the append-only changelog, table
layout, and cdc mode's transport (the CDC rows the adapter streams, captured and replayed).

bqemulator appends CDC rows as plain rows and ignores ``_CHANGE_TYPE`` (docs/emulated.md).
For cdc mode the replica is therefore re-created with two ordinary STRING columns named
like the pseudo-columns: the emulator then stores every row the adapter sent, exactly as
sent through the Storage Write API, and the test replays them with the reference of
BigQuery's documented CDC rules (``bigquery_apply``, tests/unit/test_bigquery_cdc_rows.py).
Whether real BigQuery applies them so is what only BigQuery can confirm.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from test_apply_cases import event, full_row, normalise, sequential_replica, shuffled_batches
from test_bigquery_cdc_rows import bigquery_apply
from test_bigquery_warehouse import HISTORY

from capa.errors import WarehouseTransientError
from capa.events import Op
from capa.warehouse import open_warehouse
from capa.warehouse.bigquery.write_api import PSEUDO_COLUMNS

TABLE = "f2_public_orders"
DML = re.compile(r"^\s*(MERGE|INSERT|UPDATE|DELETE|TRUNCATE)\b", re.IGNORECASE)


class _Statements:
    """Records the SQL text of every query job the adapter runs (the real client runs it)."""

    def __init__(self, client: Any) -> None:
        self.client, self.seen = client, []
        self._query = client.query
        client.query = self

    def __call__(self, statement: str, **kwargs: Any) -> Any:
        self.seen.append(statement)
        return self._query(statement, **kwargs)

    @property
    def dml(self) -> list[str]:
        return [s for s in self.seen if DML.match(s)]


def _open(config: Any, dataset: str, **settings: Any) -> Any:
    return open_warehouse(config.model_copy(update={"raw_dataset": dataset, **settings}))


def _raw_rows(warehouse: Any, name: str) -> list[dict[str, Any]]:
    table = f"`{warehouse.config.project}`.`{warehouse.config.raw_dataset}`.`{name}`"
    return list(warehouse.query(f"SELECT * FROM {table}"))


def test_merge_mode_runs_one_merge_per_cycle(bqemulator) -> None:
    warehouse = _open(bqemulator, "raw_cadence", merge_interval_s=3600)
    statements = _Statements(warehouse._client)
    batches = shuffled_batches(HISTORY, 3, shuffle=False)
    for batch in batches:
        warehouse.apply(batch)
    # the cycle is open: changes are staged, the changelog is already complete
    assert warehouse.rows(f"raw.{TABLE}", include_deleted=True) == []
    staging = [t for t in warehouse.table_names() if "__stage_" in t]
    assert len(staging) == 1 and len(batches) > 1
    assert sorted(r["_capa_event_id"] for r in warehouse.rows(f"raw.{TABLE}_changelog")) == sorted(
        e.event_id for e in HISTORY
    )
    assert statements.dml == []
    warehouse.flush()
    assert [s.split()[0] for s in statements.dml] == ["MERGE"]
    replica = normalise(warehouse.rows(f"raw.{TABLE}", include_deleted=True))
    assert replica == sequential_replica(HISTORY)
    assert not [t for t in warehouse.table_names() if "__stage_" in t]


def test_merge_mode_merges_a_cycle_left_by_a_stopped_run(bqemulator) -> None:
    first = _open(bqemulator, "raw_leftover", merge_interval_s=3600)
    first.apply(HISTORY[:5])  # staged, never merged: the process "dies" without close()
    second = _open(bqemulator, "raw_leftover", merge_interval_s=0)
    second.apply(HISTORY[5:])
    replica = normalise(second.rows(f"raw.{TABLE}", include_deleted=True))
    assert replica == sequential_replica(HISTORY)
    assert not [t for t in second.table_names() if "__stage_" in t]


def test_changelog_is_append_only_and_read_deduplicated(bqemulator) -> None:
    warehouse = _open(bqemulator, "raw_append")
    statements = _Statements(warehouse._client)
    batch = HISTORY[:4]
    warehouse.apply(batch)
    warehouse.apply(batch)  # redelivery appends the same events again
    raw = _raw_rows(warehouse, f"{TABLE}_changelog")
    assert len(raw) == 2 * len(batch)
    read = warehouse.rows(f"raw.{TABLE}_changelog")
    assert sorted(r["_capa_event_id"] for r in read) == sorted(e.event_id for e in batch)
    assert not [s for s in statements.dml if "_changelog" in s]


def test_tables_are_clustered_and_partitioned(bqemulator) -> None:
    warehouse = _open(bqemulator, "raw_layout")
    warehouse.apply(HISTORY[:2])
    client, dataset = warehouse._client, f"{bqemulator.project}.raw_layout"
    replica = client.get_table(f"{dataset}.{TABLE}")
    changelog = client.get_table(f"{dataset}.{TABLE}_changelog")
    assert replica.clustering_fields == ["id"]
    assert changelog.clustering_fields == ["id"]
    assert changelog.time_partitioning.field == "_capa_commit_ts"
    assert changelog.time_partitioning.type_ == "DAY"


@pytest.mark.parametrize("seed", [1, 2])
def test_cdc_mode_streams_rows_that_replay_to_the_source(bqemulator, seed) -> None:
    dataset = f"raw_cdc_{seed}"
    probe = _open(bqemulator, dataset, apply_mode="cdc")
    probe.apply(HISTORY[:1])  # creates the replica with the adapter's own schema and layout
    _capture_pseudo_columns(probe, TABLE)
    warehouse = _open(bqemulator, dataset, apply_mode="cdc")
    statements = _Statements(warehouse._client)
    for batch in shuffled_batches(HISTORY, seed, shuffle=False):
        warehouse.apply(batch)
    for batch in shuffled_batches(HISTORY, seed + 100):
        warehouse.apply(batch)  # full shuffled redelivery
    sent = _raw_rows(warehouse, TABLE)
    assert {r["_CHANGE_TYPE"] for r in sent} == {"UPSERT", "DELETE"}
    assert normalise(list(bigquery_apply(sent).values())) == sequential_replica(HISTORY)
    assert statements.dml == []  # TOAST and truncate batches only read the changelog
    warehouse.close()


def test_cdc_mode_steady_batches_run_no_query_at_all(bqemulator) -> None:
    warehouse = _open(bqemulator, "raw_cdc_quiet", apply_mode="cdc")
    warehouse.apply([event(Op.INSERT, 1, 10, after=full_row(1, 1))])
    statements = _Statements(warehouse._client)
    for n in range(3):
        warehouse.apply([event(Op.UPDATE, 1, 11 + n, after=full_row(1, 2 + n))])
    assert statements.seen == []  # one AppendRows for the changelog, one for the replica


def _capture_pseudo_columns(warehouse: Any, name: str) -> None:
    """Re-create ``name`` with its schema plus STRING columns named like the pseudo-columns."""
    from google.cloud import bigquery

    client = warehouse._client
    table_id = f"{warehouse.config.project}.{warehouse.config.raw_dataset}.{name}"
    table = client.get_table(table_id)
    client.delete_table(table_id)
    extra = [bigquery.SchemaField(c, "STRING") for c in PSEUDO_COLUMNS]
    recreated = bigquery.Table(table_id, schema=[*table.schema, *extra])
    recreated.clustering_fields = table.clustering_fields
    client.create_table(recreated)
    warehouse.close()


def test_schema_evolution_as_far_as_the_emulator_goes(bqemulator) -> None:
    """A new source column reaches both tables' schemas. bqemulator then rejects rows
    carrying it (its data layout keeps the old columns: docs/emulated.md), and the adapter
    surfaces that as an error to retry, never as a silently dropped batch."""
    warehouse = _open(bqemulator, "raw_evolve")
    warehouse.apply([event(Op.INSERT, 1, 10, after=full_row(1, 1))])
    wider = event(Op.INSERT, 2, 11, after={**full_row(2, 2), "extra": "x"})
    with pytest.raises(WarehouseTransientError, match="columns but"):
        warehouse.apply([wider])
    for name in (TABLE, f"{TABLE}_changelog"):
        table = warehouse._client.get_table(f"{bqemulator.project}.raw_evolve.{name}")
        assert "extra" in [f.name for f in table.schema]
