"""Keyless tables (no primary key) through the BigQuery adapter, against bqemulator.

merge mode: a keyless history with duplicates, updates, deletes and a truncate, delivered
with redelivered prefixes, gives the source's multiset and the same rows as the apply rules'
reference (``ReplicaState``), whether every batch is merged at once or the whole cycle stays
staged (the resolving read then covers the staging table). cdc mode: the replica's layout and
the CDC rows of insert-only batches (which read nothing), captured as in
test_bigquery_modes.py and replayed through the reference of BigQuery's CDC rules; batches
that update or delete are covered in tests/unit/test_bigquery_keyless_cdc.py, because the
emulator ignores ``_CHANGE_TYPE`` (docs/emulated.md). ``capa verify`` compares a keyless
replica with a real PostgreSQL table as a multiset.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from test_bigquery_cdc_rows import bigquery_apply
from test_bigquery_modes import _capture_pseudo_columns, _open, _raw_rows, _Statements
from test_keyless import IMAGES, image_key, keyless, multiset, redeliveries

from capa.apply import plan_table
from capa.events import ChangeEvent, Op, SourceKind, occurrence_id, raw_table_name
from capa.keyless import ROW_ID
from capa.merge_rule import ReplicaState
from capa.position import pg_position
from capa.verify import verify_postgres_bigquery

NAME = "f2_public_log"
REPLICA = f"raw.{NAME}"


def history() -> tuple[list[ChangeEvent], Counter[tuple[Any, ...]]]:
    """Two duplicate snapshot rows, inserts, updates and deletes of duplicates (full before
    images), a truncate and what follows it; and the source's final multiset."""
    a, b, c = IMAGES[0], IMAGES[1], IMAGES[2]
    read = keyless(Op.READ, 500, after=a, snapshot=True)
    events = [replace(read, event_id=occurrence_id(read.event_id, n)) for n in range(2)]
    events += [
        keyless(Op.INSERT, 1000, after=b),
        keyless(Op.INSERT, 1001, after=a),
        keyless(Op.UPDATE, 1002, before=a, after=c),  # one of three equal rows
        keyless(Op.DELETE, 1003, before=b),
        keyless(Op.INSERT, 1004, after=b),
        keyless(Op.DELETE, 1005, before=a),
        keyless(Op.UPDATE, 1006, before=c, after=b),
    ]
    events += [  # the source holds a, b, b here
        keyless(Op.TRUNCATE, 1010),
        keyless(Op.INSERT, 1011, after=c),
        keyless(Op.INSERT, 1012, after=c),
        keyless(Op.DELETE, 1013, before=c),
        keyless(Op.INSERT, 1014, after=a),
    ]
    return events, multiset([c, a])


@pytest.mark.parametrize(("seed", "interval"), [(1, 0), (2, 3600)])
def test_merge_mode_gives_the_source_multiset_under_redelivery(
    bqemulator: Any, seed: int, interval: int
) -> None:
    events, expected = history()
    warehouse = _open(bqemulator, f"raw_keyless_{seed}", merge_interval_s=interval)
    statements = _Statements(warehouse._client)
    reference = ReplicaState()
    for batch in redeliveries(events, seed):
        warehouse.apply(batch)
        reference.apply(plan_table(batch, reference.watermark, keyless=True))
    warehouse.flush()
    assert multiset(warehouse.rows(REPLICA)) == expected
    held = {r[ROW_ID]: r["_capa_deleted"] for r in warehouse.rows(REPLICA, include_deleted=True)}
    assert held == {k[0]: r["_capa_deleted"] for k, r in reference.rows.items()}
    merges = [s for s in statements.dml if s.lstrip().upper().startswith("MERGE")]
    assert merges and all(f"`{ROW_ID}`" in s for s in merges)
    if interval:
        assert len(merges) == 1  # one cycle: the resolving reads covered the staging table
    table = warehouse._client.get_table(f"{bqemulator.project}.raw_keyless_{seed}.{NAME}")
    assert table.clustering_fields == [ROW_ID]
    changelog = warehouse.rows(f"{REPLICA}_changelog")
    assert sorted(r["_capa_event_id"] for r in changelog) == sorted(e.event_id for e in events)
    warehouse.close()


def test_changes_without_before_images_are_kept_and_told_once(
    bqemulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = IMAGES[0], IMAGES[1]
    inserts = [keyless(Op.INSERT, 10 + n, after=a) for n in range(2)]
    blind = [keyless(Op.UPDATE, 20 + n, after=b) for n in range(3)]  # no before image
    warehouse = _open(bqemulator, "raw_keyless_blind")
    caplog.set_level(logging.WARNING)
    reports = [warehouse.apply(inserts), warehouse.apply(blind[:1]), warehouse.apply(blind)]
    assert [r.tables[0].unmatched for r in reports] == [0, 1, 2]  # redelivery: no recount
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "REPLICA IDENTITY FULL" in warnings[0], warnings
    assert multiset(warehouse.rows(REPLICA)) == Counter({image_key(a): 2, image_key(b): 3})
    warehouse.close()


def test_cdc_mode_keys_the_replica_on_the_row_id_and_sends_upserts(bqemulator: Any) -> None:
    dataset = "raw_keyless_cdc"
    events = [keyless(Op.INSERT, 10 + n, after=IMAGES[n % 2]) for n in range(6)]
    probe = _open(bqemulator, dataset, apply_mode="cdc")
    probe.apply(events[:1])
    table = probe._client.get_table(f"{bqemulator.project}.{dataset}.{NAME}")
    assert table.clustering_fields == [ROW_ID] and table.max_staleness is None
    _capture_pseudo_columns(probe, NAME)
    warehouse = _open(bqemulator, dataset, apply_mode="cdc")
    warehouse.apply(events[:4])  # reads the table's truncate watermark (then cached)
    statements = _Statements(warehouse._client)
    for batch in (events[2:], events[:3]):  # redelivered prefixes
        warehouse.apply(batch)
    assert statements.seen == []  # insert-only keyless batches read nothing, run no DML
    replica = bigquery_apply(_raw_rows(warehouse, NAME), key=ROW_ID)
    assert multiset(replica.values()) == multiset(e.after for e in events)
    warehouse.close()


def test_verify_compares_a_keyless_replica_as_a_multiset(postgres: Any, bqemulator: Any) -> None:
    schema = f"kb_{uuid.uuid4().hex[:8]}"
    rows = [("info", "a"), ("info", "a"), ("warn", "b")]
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'CREATE TABLE "{schema}".log (level text, msg text)')
        for row in rows:
            conn.execute(f'INSERT INTO "{schema}".log VALUES (%s, %s)', row)
    warehouse = _open(bqemulator, f"raw_{schema}")
    warehouse.apply(_snapshot(schema, rows))
    name = "raw." + raw_table_name("f2", schema, "log")
    [diff] = verify_postgres_bigquery(postgres.dsn, "f2", schema, warehouse)
    assert (diff.table, diff.ok, diff.source_rows, diff.replica_rows) == (name, True, 3, 3)
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f'INSERT INTO "{schema}".log VALUES (%s, %s)', rows[0])  # a third copy
    [diff] = verify_postgres_bigquery(postgres.dsn, "f2", schema, warehouse)
    assert not diff.ok and [n for _, n in diff.missing] == [2] and not diff.extra
    warehouse.close()


def _snapshot(schema: str, rows: list[tuple[str, str]]) -> list[ChangeEvent]:
    """Snapshot reads of ``rows`` numbered as the normalisers number duplicates."""
    events, seen = [], Counter[str]()
    for level, msg in rows:
        read = ChangeEvent(
            source="f2",
            source_kind=SourceKind.POSTGRES,
            database="shop",
            schema=schema,
            table="log",
            op=Op.READ,
            position=pg_position(100, snapshot=True),
            commit_ts_us=None,
            primary_key=(),
            key={},
            before=None,
            after={"level": level, "msg": msg},
        )
        events.append(replace(read, event_id=occurrence_id(read.event_id, seen[read.event_id])))
        seen[read.event_id] += 1
    return events
