"""The demo's closing table: per raw table, source rows vs replica rows and a checksum match.

F2 PostgreSQL tables are compared with the live database (:mod:`capa.verify`); the F2
Datastream table and the F3 SQL Server table with the rows their generators hold; CRM
tables report their replica size (their source is a file, checked by the loader)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from capa.config import CapaSettings
from capa.verify import compare, hash_rows, local_replica_row_hashes, verify_postgres_local
from capa_app.demo.run import TableSummary


def summary_rows(
    settings: CapaSettings, lakehouse: Path, expected: Mapping[str, Mapping[Any, Mapping[str, Any]]]
) -> list[TableSummary]:
    rows = [
        TableSummary(d.table, d.source_rows, d.replica_rows, "yes" if d.ok else "NO", "F2 Debezium")
        for d in verify_postgres_local(
            settings.postgres.dsn(), settings.debezium.source_name, "public", lakehouse
        )
    ]
    for name, source_rows in sorted(expected.items()):
        rows.append(_expected_summary(lakehouse, name, source_rows, NOTES.get(name, "")))
    rows.extend(_crm_summaries(lakehouse))
    return rows


NOTES = {
    "f2_public_shipments": "F2 Datastream files",
    "f3_dbo_invoices": "F3 recorded-shape replay",
}


def _expected_summary(
    lakehouse: Path, name: str, source_rows: Mapping[Any, Mapping[str, Any]], note: str
) -> TableSummary:
    sample = next(iter(source_rows.values()), {})
    pk = (next(iter(sample), "id"),)
    columns = list(sample)
    source = hash_rows(source_rows.values(), pk, columns)
    replica = local_replica_row_hashes(lakehouse, name, pk, columns) or {}
    diff = compare(f"raw.{name}", source, replica)
    return TableSummary(
        diff.table, diff.source_rows, diff.replica_rows, "yes" if diff.ok else "NO", note
    )


def _crm_summaries(lakehouse: Path) -> list[TableSummary]:
    from deltalake import DeltaTable

    out = []
    for path in sorted((lakehouse / "raw").glob("crm_crm_*")):
        if path.name.endswith(("_changelog", "_rejects", "_loads")):
            continue
        table = DeltaTable(str(path)).to_pyarrow_table()
        live = table.num_rows - sum(1 for d in table.column("_capa_deleted").to_pylist() if d)
        out.append(
            TableSummary(f"raw.{path.name}", None, live, "-", "CRM batch load", streamed=False)
        )
    return out
