"""The user docs stay true to the code: docs/type-mapping.md against the Arrow adapter,
docs/architecture.md and docs/emulated.md structure, deploy/README.md paths."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def table_rows(text: str, heading: str) -> list[list[str]]:
    """Cells of the first markdown table after ``heading`` (header and rule skipped)."""
    section = text.split(heading, 1)[1]
    rows = []
    for line in section.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]


def test_type_mapping_covers_at_least_40_source_types() -> None:
    text = (DOCS / "type-mapping.md").read_text()
    pg = table_rows(text, "## Reference: PostgreSQL")
    mssql = table_rows(text, "## Reference: SQL Server")
    assert len(pg) + len(mssql) >= 40
    names = " ".join(r[0] for r in pg + mssql)
    for required in [
        "`numeric(38,9)`",
        "`timestamptz`",
        "`jsonb`",
        "`int[]`",
        "`money`",
        "`datetime2(7)`",
        "`datetimeoffset`",
        "`uniqueidentifier`",
        "`smallmoney`",
        "`varbinary(max)`",
        "`time(7)`",
        "`tinyint`",
        "`interval`",
        "`macaddr`",
    ]:
        assert required in names, f"{required} missing from docs/type-mapping.md"
    assert all(len(r) == 5 for r in pg + mssql), "every row: type, Debezium, kind, Arrow, BigQuery"


def test_kind_table_matches_the_arrow_adapter_and_the_codec() -> None:
    from capa.warehouse.local.arrow_types import arrow_type
    from capa.warehouse.types import ColumnType

    rows = table_rows((DOCS / "type-mapping.md").read_text(), "## Canonical kind -> storage types")
    documented = {r[0].strip("`"): r for r in rows}
    kinds = {
        "bool",
        "int",
        "float",
        "string",
        "json",
        "uuid",
        "bytes",
        "decimal",
        "timestamptz",
        "timestamp",
        "date",
        "time",
        "array<k>",
    }
    assert set(documented) == kinds
    for kind in kinds - {"decimal", "array<k>"}:
        arrow = str(arrow_type(ColumnType(kind)))
        assert f"`{arrow}`" in documented[kind][2], (
            f"{kind}: code says {arrow}, doc says {documented[kind][2]}"
        )
    assert "decimal128(p, s)" in documented["decimal"][2]
    assert str(arrow_type(ColumnType("decimal", 38, 9))) == "decimal128(38, 9)"


def test_source_rows_use_known_canonical_kinds() -> None:
    text = (DOCS / "type-mapping.md").read_text()
    known = {
        "bool",
        "int",
        "float",
        "string",
        "json",
        "uuid",
        "bytes",
        "decimal",
        "timestamptz",
        "timestamp",
        "date",
        "time",
    }
    for row in table_rows(text, "## Reference: PostgreSQL") + table_rows(
        text, "## Reference: SQL Server"
    ):
        for kind in re.findall(r"`([a-z<>]+)`", row[2]):
            base = kind[6:-1] if kind.startswith("array<") else kind
            assert base in known, f"{row[0]}: unknown canonical kind {kind!r}"


def test_architecture_has_one_diagram_covering_three_modes() -> None:
    text = (DOCS / "architecture.md").read_text()
    assert text.count("```mermaid") == 1
    for mode in ("embedded local", "on-prem", "GCP"):
        assert mode in text
    for hop in (
        "normalis",
        "canonical topic",
        "apply",
        "raw",
        "Spark",
        "consumption",
        "BigQuery",
        "capa sql",
        "read_table",
    ):
        assert hop in text, hop


@pytest.mark.parametrize(
    "path", ["docs/architecture.md", "deploy/README.md", "docs/type-mapping.md"]
)
def test_repository_paths_named_in_docs_exist(path: str) -> None:
    text = (ROOT / path).read_text()
    named = set(
        re.findall(
            r"`((?:capa|connectors|beam_jobs|spark_jobs|deploy/(?:gcp|dataproc|composer))/[\w./*-]+)`",
            text,
        )
    )
    missing = [
        p for p in sorted(named) if "*" not in p and "<" not in p and not (ROOT / p).exists()
    ]
    assert not missing, f"{path} names files that do not exist: {missing}"


def test_emulated_has_one_section_per_component() -> None:
    text = (DOCS / "emulated.md").read_text()
    headings = re.findall(r"^## (.+)$", text, re.M)
    for component in (
        "Terraform",
        "Datastream",
        "GCS",
        "Pub/Sub",
        "BigQuery",
        "Dataflow",
        "Composer",
        "Dataproc",
        "SQL Server",
    ):
        assert any(component in h for h in headings), f"no section for {component}"
    assert len(headings) == len(set(headings)), "duplicate sections"


def test_deploy_readme_references_the_other_targets_files() -> None:
    text = (ROOT / "deploy" / "README.md").read_text()
    for path in (
        "deploy/dataflow/metadata.json",
        "deploy/onprem/connect/postgres-f2.json",
        "deploy/onprem/connect/sqlserver-f3.json",
        "deploy/onprem/sqlserver/init-cdc.sql",
        "docker compose up",
    ):
        assert path in text
