"""BigQuery cost and quota model of the raw layer: writes docs/bigquery-costs.md.

    PYTHONPATH=. .venvs/beam/bin/python scripts/bigquery_cost_model.py [--out docs/bigquery-costs.md]

Measured here, by running capa's own BigQuery write path on the workload's rows
(``capa_app.workload``: the type zoo, accounts and events tables, its change mix of 40%
inserts, 40% updates, 13% deletes and 7% key moves, 5% NULLs):

* the BigQuery logical size of a replica row (BigQuery's documented per-type sizes);
* the Storage Write API payload of one change: the protobuf rows the cdc adapter actually
  builds for the replica (with ``_CHANGE_TYPE``/``_CHANGE_SEQUENCE_NUMBER``) and for the
  changelog (``capa.warehouse.bigquery.cdc`` + ``write_api.encode_rows``);
* the replica rows written per change (a key move writes two).

Modelled from those figures (constants below, each with its reason): DML statements per
table per hour, bytes billed per hour and the on-demand cost, for capa's ``cdc`` and
``merge`` modes, Google's Datastream-to-BigQuery template (MERGE every 5 minutes over an
unclustered replica) and the Kafka Connect BigQuery sink (upsert mode, MERGE every 60 s).
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from capa.apply import plan_table
from capa.events import ChangeEvent, Op, SourceKind
from capa.position import pg_position
from capa.warehouse.bigquery.cdc import UNCHANGED, replica_rows
from capa.warehouse.bigquery.changelog import changelog_rows
from capa.warehouse.bigquery.tables import schema_fields
from capa.warehouse.bigquery.write_api import encode_rows, fields_of
from capa.warehouse.types import infer_types
from capa_app.workload import DEFAULT_TABLES, TableSpec

ROOT = Path(__file__).resolve().parents[1]

# --- prices and BigQuery behaviour (public list prices, US multi-region) ----------------
ON_DEMAND_USD_PER_TIB = 6.25  # query and DML bytes billed, on-demand
MIN_BILLED_PER_TABLE = 10 * 2**20  # on-demand bills at least 10 MB per table referenced
WRITE_API_USD_PER_GIB = 0.025  # Storage Write API ingestion (first 2 TiB/month free)
LEGACY_STREAMING_USD_PER_GIB = 0.05  # tabledata.insertAll, $0.01 per 200 MB
LEGACY_MIN_ROW_BYTES = 1024  # insertAll bills every row as at least 1 KB
# BigQuery does not publish its clustered block size; the model assumes blocks of this
# size, so a MERGE (or a CDC background apply) reads every block holding a changed key.
CLUSTER_BLOCK_BYTES = 256 * 2**20
MERGE_INTERVAL_S = {"capa merge": 300, "Datastream template": 300, "Kafka Connect sink": 60}
CDC_MAX_STALENESS_S = 15 * 60  # capa cdc default; BigQuery applies at least once per window
SIZES = {"1 GB": 10**9, "100 GB": 10**11, "1 TB": 10**12}
RATES = (100, 1_000, 10_000)
# where the changed keys sit: uniformly over the table (worst case for clustering), or on
# the newest 5% of rows (serial keys, recent orders: the common OLTP case)
LOCALITY = {"uniform keys": 1.0, "newest 5% of keys": 0.05}
OP_MIX = ((Op.INSERT, 0.40), (Op.UPDATE, 0.40), (Op.DELETE, 0.13), ("move", 0.07))
SAMPLE_ROWS = 3_000


# --- measurement ---------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    row_bytes: float  # BigQuery logical bytes of a replica row
    cdc_payload_bytes: float  # Write API bytes of the replica's CDC rows, per change
    changelog_payload_bytes: float  # Write API bytes of the changelog rows, per change
    replica_rows_per_change: float


_TYPE_BYTES = {
    "INTEGER": 8, "INT64": 8, "FLOAT": 8, "FLOAT64": 8, "NUMERIC": 16, "BIGNUMERIC": 32,
    "BOOLEAN": 1, "BOOL": 1, "DATE": 8, "DATETIME": 8, "TIMESTAMP": 8, "TIME": 8,
}  # fmt: skip


def logical_bytes(value: Any, field_type: str) -> int:
    """BigQuery's documented logical size of one value (STRING/BYTES/JSON: 2 + length)."""
    if value is None:
        return 0
    if isinstance(value, list | tuple):
        return sum(logical_bytes(v, field_type) for v in value)
    if field_type in _TYPE_BYTES:
        return _TYPE_BYTES[field_type]
    data = value if isinstance(value, bytes) else str(value).encode()
    return 2 + len(data)


def _rows(spec: TableSpec, rng: random.Random) -> Iterator[dict[str, Any]]:
    for n in range(SAMPLE_ROWS):
        values = {
            c.name: None if c.nullable and rng.random() < 0.05 else c.gen(rng) for c in spec.columns
        }
        yield {spec.pk: n, **{k: _canonical(v) for k, v in values.items()}}


def _canonical(value: Any) -> Any:
    from capa.events import Json

    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, str) and value.startswith("{"):
        return Json(value)
    return value


def _events(spec: TableSpec, rng: random.Random) -> list[ChangeEvent]:
    events = []
    for n, row in enumerate(_rows(spec, rng)):
        op = rng.choices([o for o, _ in OP_MIX], [w for _, w in OP_MIX])[0]
        key = row[spec.pk]
        before = {spec.pk: key + SAMPLE_ROWS} if op == "move" else None
        kind = Op.UPDATE if op == "move" else op
        events.append(
            ChangeEvent(
                source="f2",
                source_kind=SourceKind.POSTGRES,
                database="shop",
                schema="public",
                table=spec.name,
                op=kind,
                position=pg_position(10_000 + n, snapshot=False),
                commit_ts_us=1_765_000_000_000_000 + n,
                primary_key=(spec.pk,),
                key={spec.pk: key},
                before=row if kind is Op.DELETE else before,
                after=None if kind is Op.DELETE else row,
            )
        )
    return events


def measure(seed: int = 11) -> Measured:
    rng = random.Random(seed)
    totals = dict.fromkeys(("rows", "row_bytes", "cdc", "log", "changes", "replica_rows"), 0.0)
    now = datetime(2026, 12, 7, tzinfo=UTC)
    for spec in DEFAULT_TABLES:
        events = _events(spec, rng)
        plan = plan_table(events)
        types = infer_types((e.row or e.key for e in events), plan.source_types)
        replica = {f.name: f for f in schema_fields(types, {})}
        changelog = {f.name: f for f in schema_fields(types, {UNCHANGED: ("STRING", "REPEATED")})}
        cdc = replica_rows(plan, [], replica, now)
        log = changelog_rows(plan, changelog, now)
        totals["cdc"] += sum(
            map(len, encode_rows(fields_of(list(replica.values()), cdc=True), cdc))
        )
        totals["log"] += sum(
            map(len, encode_rows(fields_of(list(changelog.values()), cdc=False), log))
        )
        upserts = [r for r in cdc if not r["_capa_deleted"]]
        totals["row_bytes"] += sum(
            logical_bytes(r.get(name), str(f.field_type))
            for r in upserts
            for name, f in replica.items()
        )
        totals["rows"] += len(upserts)
        totals["replica_rows"] += len(cdc)  # a key move writes a tombstone and a new row
        totals["changes"] += len(events)
    return Measured(
        row_bytes=totals["row_bytes"] / totals["rows"],
        cdc_payload_bytes=totals["cdc"] / totals["changes"],
        changelog_payload_bytes=totals["log"] / totals["changes"],
        replica_rows_per_change=totals["replica_rows"] / totals["changes"],
    )


# --- model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Cost:
    system: str
    dml_per_hour: float
    scanned_per_hour: float  # bytes billed by DML/background apply
    ingested_per_hour: float  # bytes billed as ingestion
    usd_per_hour: float


def touched_fraction(table_bytes: float, keys: float, locality: float) -> float:
    """Expected share of clustered blocks holding at least one of ``keys`` changed keys
    spread uniformly over the ``locality`` share of the table."""
    blocks = max(1.0, table_bytes * locality / CLUSTER_BLOCK_BYTES)
    touched = blocks * (1 - math.exp(-keys / blocks))
    return min(1.0, touched * CLUSTER_BLOCK_BYTES / table_bytes) if table_bytes else 1.0


def _billed(scanned: float, tables: int) -> float:
    return max(scanned, MIN_BILLED_PER_TABLE * tables)


def model(m: Measured, table_bytes: float, rate: float, locality: float) -> list[Cost]:
    rows = table_bytes / m.row_bytes
    per_hour = rate * 3600
    staged = m.row_bytes * m.replica_rows_per_change
    write_api = per_hour * (m.cdc_payload_bytes + m.changelog_payload_bytes)
    costs = []
    # capa cdc: no DML; background apply at least once per max_staleness window
    applies = 3600 / CDC_MAX_STALENESS_S
    keys = min(rows, rate * CDC_MAX_STALENESS_S)
    scanned = applies * _billed(touched_fraction(table_bytes, keys, locality) * table_bytes, 1)
    costs.append(_cost("capa cdc", 0, scanned, write_api, WRITE_API_USD_PER_GIB))
    for system, interval in MERGE_INTERVAL_S.items():
        merges = 3600 / interval
        keys = min(rows, rate * interval)
        clustered = system == "capa merge"
        target = touched_fraction(table_bytes, keys, locality) if clustered else 1.0
        source = rate * interval * staged
        scanned = merges * _billed(target * table_bytes + source, 2)
        if system == "capa merge":
            ingest, price = write_api, WRITE_API_USD_PER_GIB
        else:  # legacy streaming inserts into the staging/_log table, 1 KB minimum per row
            ingest = per_hour * max(staged, LEGACY_MIN_ROW_BYTES)
            price = LEGACY_STREAMING_USD_PER_GIB
        costs.append(_cost(system, merges, scanned, ingest, price))
    return costs


def _cost(system: str, dml: float, scanned: float, ingested: float, price: float) -> Cost:
    usd = scanned / 2**40 * ON_DEMAND_USD_PER_TIB + ingested / 2**30 * price
    return Cost(system, dml, scanned, ingested, usd)


# --- report --------------------------------------------------------------------------


def _size(n: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n / 2**10:,.1f} KiB"


def report(m: Measured) -> str:
    lines = [
        "# BigQuery cost and quota model (generated)",
        "",
        "Generated by `scripts/bigquery_cost_model.py`; do not edit by hand. Method, constants",
        "and assumptions: the script's docstring and header. Modes: [bigquery.md](bigquery.md).",
        "",
        "## Measured on the workload (capa's own write path)",
        "",
        f"- replica row, BigQuery logical size: **{m.row_bytes:,.0f} B**",
        f"- Storage Write API payload per change, replica (cdc rows): **{m.cdc_payload_bytes:,.0f} B**",
        f"- Storage Write API payload per change, changelog: **{m.changelog_payload_bytes:,.0f} B**",
        f"- replica rows written per change: **{m.replica_rows_per_change:.2f}**",
        "",
        "## Model, per replica table (on-demand pricing)",
        "",
        "`DML/h`: mutating DML statements per table per hour (BigQuery runs at most 2 per table",
        "at a time and queues 20). `billed/h`: bytes billed by MERGEs (capa merge, peers) or by",
        "the background CDC apply (capa cdc, modelled as one apply per 15-minute",
        "`max_staleness` window over the clustered blocks of the changed keys). `ingest/h`:",
        "bytes billed as ingestion (Storage Write API for capa; legacy streaming inserts with",
        "their 1 KB row minimum for the peers' staging tables). Prices: on-demand",
        f"${ON_DEMAND_USD_PER_TIB}/TiB, Write API ${WRITE_API_USD_PER_GIB}/GiB (first 2 TiB a",
        f"month free, not deducted), legacy streaming ${LEGACY_STREAMING_USD_PER_GIB}/GiB.",
        "The Datastream template and the Kafka Connect sink MERGE into unclustered replicas,",
        "so every MERGE reads the whole table.",
    ]
    for scenario, locality in LOCALITY.items():
        lines += ["", f"### Changed keys: {scenario}", ""]
        lines += [
            "| replica | changes/s | system | DML/h | billed/h | ingest/h | USD/h | USD/month |",
            "|---|---:|---|---:|---:|---:|---:|---:|",
        ]
        for size_name, size in SIZES.items():
            for rate in RATES:
                for c in model(m, size, rate, locality):
                    lines.append(
                        f"| {size_name} | {rate:,} | {c.system} | {c.dml_per_hour:g} | "
                        f"{_size(c.scanned_per_hour)} | {_size(c.ingested_per_hour)} | "
                        f"{c.usd_per_hour:,.2f} | {c.usd_per_hour * 730:,.0f} |"
                    )
    lines += [
        "",
        "## Reading the model",
        "",
        "- `capa cdc` issues **zero DML per change batch** (tested: "
        "`test_cdc_mode_steady_batches_run_no_query_at_all`); its cost is ingestion plus the",
        "  background apply, which BigQuery bills as compute and does not document in detail:",
        "  the apply figures are this model's assumption, to be replaced by INFORMATION_SCHEMA",
        "  job figures from a real deployment.",
        "- With changed keys spread uniformly, a few thousand keys touch every clustered block",
        "  of a table, so clustering saves little at high rates; with the usual OLTP locality",
        "  (recent keys) the MERGE and the CDC apply read a small share of the table.",
        "- Slot reservations (editions) replace the bytes price by slot-hours; the DML counts",
        "  and bytes read stay the relevant drivers.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bigquery-costs.md")
    args = parser.parse_args(argv)
    args.out.write_text(report(measure()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
