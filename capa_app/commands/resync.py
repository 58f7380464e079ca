"""``capa resync TABLE...``: re-copy chosen tables while every other table keeps streaming.

    capa resync public.orders [more tables] [--no-wait] [--timeout S]

On the running embedded capture (the bridge of ``capa up``, configured by ``debezium.*``;
on-prem Kafka Connect is not wired, see docs/architecture.md), it

1. checks each table exists at the source with a primary key, and that a capture streams
   from ``debezium.slot_name``;
2. notes the start point S (the current WAL position, once every transaction open at that
   moment has ended) and inserts Debezium's ``execute-snapshot`` signal (incremental) into
   ``debezium.signal_table`` (created, and added to the publication, on first use);
3. waits for Debezium's ``COMPLETED`` notification on ``debezium.notification_topic``, then
   for the apply job (consumer group ``apply.consumer_group``) to have consumed the
   canonical topic up to that point;
4. sweeps: a live replica row of the tables still at a position below S was neither
   read by the resync nor changed since it started; each such key the source does not
   have gets a delete event at position ``S.0`` on the canonical
   topic, applied (and recorded in the changelog) like any other change; it waits for the
   apply job to have applied them. A key the source does have was not re-read (a dead
   letter): it is reported and the exit code is 1.

With ``--no-wait`` it stops after step 2 (no sweep); follow the bridge log (``Debezium
notification``) or ``capa resync`` again later. Algorithm and guarantees:
docs/architecture.md, "Re-syncing a table".

Exit codes: 0 done; 1 no running capture, an unknown or keyless table, a failed or aborted
snapshot, or a timeout (the message says which).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from capa import console
from capa.config import CapaSettings, load_settings
from capa.errors import CapaError, ConfigError, ServiceUnavailable
from capa.events import ChangeEvent, Op, SourceKind, raw_table_name
from capa.position import pg_position
from capa.warehouse.base import META_DELETED, META_POSITION, RAW_NAMESPACE

EXIT_OK, EXIT_FAILURE = 0, 1
ORIGIN = "capa-resync"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "resync", help="re-copy tables from the source while the others keep streaming"
    )
    parser.add_argument("tables", nargs="+", metavar="TABLE", help="schema.table (or table)")
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="return once signalled (no sweep of rows the source no longer has)",
    )
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds to wait for the snapshot"
    )
    parser.add_argument(
        "--apply-group", help="consumer group of the apply job (default: apply.consumer_group)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import psycopg

    settings = load_settings()
    try:
        return resync(
            settings,
            args.tables,
            wait=not args.no_wait,
            timeout_s=args.timeout,
            apply_group=args.apply_group or settings.apply.consumer_group,
        )
    except CapaError as exc:
        console.error(str(exc))
        return EXIT_FAILURE
    except psycopg.Error as exc:  # the sweep's look-up at the source
        console.error(f"cannot read the source PostgreSQL: {' '.join(str(exc).split())}")
        return EXIT_FAILURE


def resync(
    settings: CapaSettings,
    names: Sequence[str],
    *,
    wait: bool = True,
    timeout_s: float = 3600.0,
    apply_group: str = "capa-apply",
) -> int:
    """The command's work (see the module docstring); returns the exit code."""
    import psycopg

    from connectors.debezium import signals

    dbz = settings.debezium
    try:
        with psycopg.connect(settings.postgres.dsn(), autocommit=True) as conn:
            tables = _checked_tables(conn, names)
            if not signals.slot_active(conn, dbz.slot_name):
                raise ServiceUnavailable(
                    f"no running capture: replication slot {dbz.slot_name!r} is not streaming; "
                    "start the stack (capa up), then run capa resync"
                )
            signals.ensure_signal_table(conn, dbz.signal_table, dbz.publication)
            start = signals.start_point(conn)
            signal_id = signals.send_execute_snapshot(conn, dbz.signal_table, list(tables))
    except psycopg.Error as exc:
        raise ServiceUnavailable(f"cannot reach the source PostgreSQL: {exc}") from None
    console.info(
        f"resync {signal_id}: signalled an incremental snapshot of {', '.join(tables)} "
        f"(start position {pg_position(start, snapshot=True)})"
    )
    if not wait:
        console.info(
            f"follow it in the bridge log ('Debezium notification') or the topic "
            f"{dbz.notification_topic}; rows the source no longer has are removed only "
            "by a waiting capa resync"
        )
        return EXIT_OK
    console.info(f"waiting for Debezium's notifications on {dbz.notification_topic} ...")
    wait_for_snapshot(settings, signal_id, timeout_s, console.info)
    wait_for_apply(settings, apply_group, timeout_s)
    failed, swept = False, 0
    for table, key in tables.items():
        result = sweep(settings, table, key, pg_position(start, snapshot=True), signal_id)
        swept += result.deleted
        console.info(
            f"resync {signal_id}: {table} done; {result.deleted} row(s) the source no longer "
            "has deleted from the replica"
        )
        if result.unrepaired:
            failed = True
            console.error(
                f"{table}: {len(result.unrepaired)} row(s) the source has were not re-read into "
                f"the replica (first keys {list(result.unrepaired[:5])}); see capa dlq list"
            )
    if swept:
        wait_for_apply(settings, apply_group, timeout_s)  # the deletes are in the replica
    return EXIT_FAILURE if failed else EXIT_OK


def _checked_tables(conn: Any, names: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``schema.table`` -> primary-key columns, for every requested table."""
    from connectors.debezium.signals import split_name, table_keys

    tables: dict[str, tuple[str, ...]] = {}
    for name in names:
        schema, table = split_name(name)
        key = table_keys(conn, schema, table)
        if key is None:
            raise ConfigError(f"unknown table {name!r}: no table {schema}.{table} at the source")
        if not key:
            raise ConfigError(
                f"table {schema}.{table} has no primary key; capa resync re-reads tables by "
                "key ranges (Debezium's incremental snapshot), so add a primary key first"
            )
        tables[f"{schema}.{table}"] = key
    return tables


# --- waiting ------------------------------------------------------------------------------


def wait_for_snapshot(
    settings: CapaSettings, signal_id: str, timeout_s: float, say: Callable[[str], None]
) -> None:
    """Read the notification topic until Debezium reports the snapshot ``COMPLETED``."""
    from connectors.debezium.signals import INCREMENTAL, parse_notification
    from connectors.kafka.consumer import build_consumer

    consumer = build_consumer(
        settings.kafka, f"capa-resync-{signal_id}", [settings.debezium.notification_topic]
    )
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() is not None or msg.value() is None:
                continue
            note = parse_notification(msg.value())
            if note.aggregate_type != INCREMENTAL or note.id != signal_id:
                continue
            say(f"resync {signal_id}: {note.type} {_progress(note.data)}".rstrip())
            if note.type == "COMPLETED":
                return
            if note.type == "ABORTED":
                raise ServiceUnavailable(f"Debezium aborted the incremental snapshot {signal_id}")
    finally:
        consumer.close()
    raise ServiceUnavailable(
        f"the incremental snapshot {signal_id} did not complete within {timeout_s:.0f} s; "
        "see the bridge log; it goes on, but rows the source no longer has stay until a "
        "capa resync completes"
    )


def _progress(data: Any) -> str:
    keys = ("data_collection", "data_collections", "total_rows_scanned", "status")
    return " ".join(f"{k}={data[k]}" for k in keys if k in data)


def wait_for_apply(settings: CapaSettings, group: str, timeout_s: float) -> None:
    """Until ``group`` has committed offsets at or past the canonical topic's current end."""
    from confluent_kafka import Consumer, TopicPartition

    from connectors.kafka.clients import client_config

    consumer = Consumer(client_config(settings.kafka, {"group.id": group}))
    try:
        topic = settings.kafka.topic
        meta = consumer.list_topics(topic, timeout=30)
        parts = [TopicPartition(topic, p) for p in meta.topics[topic].partitions]
        ends = {p.partition: consumer.get_watermark_offsets(p, timeout=30)[1] for p in parts}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done = consumer.committed(parts, timeout=30)
            if all(max(c.offset, 0) >= ends[c.partition] for c in done):
                return
            time.sleep(0.5)
    finally:
        consumer.close()
    raise ServiceUnavailable(
        f"the apply job (consumer group {group!r}) has not caught up with {topic} within "
        f"{timeout_s:.0f} s; is it running (capa status)? Pass --apply-group if it uses another"
    )


# --- the sweep ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SweepResult:
    deleted: int  # stray rows deleted from the replica
    unrepaired: tuple[tuple[Any, ...], ...]  # keys the source has but the resync did not bring


def sweep(
    settings: CapaSettings, table: str, key: tuple[str, ...], start: str, signal_id: str
) -> SweepResult:
    """Delete events (position ``start``) for live replica rows of ``table`` still below
    ``start`` that the source does not have; keys it does have are reported, not deleted
    (their re-read did not arrive: a dead letter, see ``capa dlq list``)."""
    from capa.warehouse import open_warehouse
    from connectors.kafka.producer import KafkaChangeProducer, flush_with_retry

    schema, name = table.split(".", 1)
    warehouse = open_warehouse(settings.warehouse)
    try:
        raw = raw_table_name(settings.debezium.source_name, schema, name)
        rows = warehouse.rows(f"{RAW_NAMESPACE}.{raw}")
    finally:
        warehouse.close()
    below = [
        tuple(r[k] for k in key)
        for r in rows
        if not r.get(META_DELETED) and r[META_POSITION] < start
    ]
    present = source_keys(settings, schema, name, key, below)
    stray = [k for k in below if k not in present]
    events = [
        stray_delete(settings, schema, name, key, dict(zip(key, k, strict=True)), start, signal_id)
        for k in stray
    ]
    if events:
        producer = KafkaChangeProducer(settings.kafka)
        try:
            for event in events:
                producer.send(event)
            flush_with_retry(producer, lambda: [producer.send(e) for e in events])
        finally:
            producer.close()
    return SweepResult(len(events), tuple(k for k in below if k in present))


def source_keys(
    settings: CapaSettings,
    schema: str,
    table: str,
    key: tuple[str, ...],
    candidates: Sequence[tuple[Any, ...]],
    batch: int = 500,
) -> set[tuple[Any, ...]]:
    """The ``candidates`` keys the source table holds now."""
    import psycopg
    from psycopg import sql

    found: set[tuple[Any, ...]] = set()
    columns = sql.SQL(", ").join(sql.Identifier(k) for k in key)
    with psycopg.connect(settings.postgres.dsn(), autocommit=True) as conn:
        for i in range(0, len(candidates), batch):
            chunk = candidates[i : i + batch]
            row = sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() * len(key)))
            query = sql.SQL("SELECT {cols} FROM {tab} WHERE ({cols}) IN ({rows})").format(
                cols=columns,
                tab=sql.Identifier(schema, table),
                rows=sql.SQL(", ").join([row] * len(chunk)),
            )
            params = [v for k in chunk for v in k]
            found.update(tuple(r) for r in conn.execute(query, params))
    return found


def stray_delete(
    settings: CapaSettings,
    schema: str,
    table: str,
    key_columns: tuple[str, ...],
    key: dict[str, Any],
    position: str,
    signal_id: str,
) -> ChangeEvent:
    """The delete of a replica row the source no longer has, at the resync's start."""
    return ChangeEvent(
        source=settings.debezium.source_name,
        source_kind=SourceKind.POSTGRES,
        database=settings.postgres.database,
        schema=schema,
        table=table,
        op=Op.DELETE,
        position=position,
        commit_ts_us=int(time.time() * 1_000_000),
        primary_key=key_columns,
        key=key,
        before=key,
        after=None,
        transaction_id=signal_id,
        origin=ORIGIN,
    )
