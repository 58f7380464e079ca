"""The CRM Beam batch job end to end on the FnApiRunner, into the local warehouse (Delta)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from beam_jobs import crm_batch
from capa.warehouse import open_warehouse

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT / "tests" / "cases" / "crm"


def _load(extract: Path | str, warehouse: str, *extra: str) -> dict[str, Any]:
    return crm_batch.run(["--extract", str(extract), "--warehouse", warehouse, *extra])


def _rows(warehouse: str, sql: str) -> list[dict[str, Any]]:
    wh = open_warehouse(warehouse)
    try:
        return list(wh.query(sql))
    finally:
        wh.close()


def test_full_loads_upsert_reject_delete_and_rerun_changes_nothing(tmp_path: Path) -> None:
    wh = f"local:{tmp_path / 'lake'}"
    first = _load(CASES / "full_1", wh, "--max_reject_share", "0.5")
    assert (first["rows_valid"], first["rows_rejected"], first["events"]) == (7, 2, 7)
    accounts = _rows(
        wh, "SELECT account_id, name, customer_id FROM raw.crm_crm_accounts ORDER BY 1"
    )
    assert [(r["account_id"], r["name"]) for r in accounts] == [
        ("A1", "Société Générale Gärtner"),
        ("A2", "Açaí Comércio Lda"),
        ("A3", "Weiß & Söhne GmbH"),
        ("A4", "Nørre Energi"),
    ]
    rejects = _rows(
        wh, "SELECT object, line_no, reason, raw_line FROM raw.crm_crm_rejects ORDER BY 1"
    )
    assert [(r["object"], r["line_no"]) for r in rejects] == [("accounts", 5), ("contacts", 3)]
    assert rejects[0]["raw_line"] == ",No Key Ltd,software,GB,14,2025-01-04T10:00:00Z"
    assert "'2025-02-31T08:00:00Z' is not a timestamp" in rejects[1]["reason"]

    changelog_before = _rows(wh, "SELECT count(*) AS n FROM raw.crm_crm_accounts_changelog")[0]["n"]
    assert _load(CASES / "full_1", wh, "--max_reject_share", "0.5") == {
        "load_id": "case-full-1",
        "skipped": True,
    }

    second = _load(CASES / "full_2", wh, "--max_reject_share", "0.5")
    assert (second["deletes"], second["unchanged"], second["rows_rejected"]) == (1, 1, 1)
    live = _rows(wh, "SELECT account_id, name, _capa_op FROM raw.crm_crm_accounts ORDER BY 1")
    assert [(r["account_id"], r["_capa_op"]) for r in live] == [
        ("A1", "u"),
        ("A2", "c"),
        ("A4", "c"),
        ("A6", "c"),
    ]
    assert live[0]["name"] == "Société Générale Gärtner SA"
    changelog = _rows(
        wh,
        "SELECT account_id, _capa_op FROM raw.crm_crm_accounts_changelog ORDER BY _capa_position",
    )
    assert (
        len(changelog) == changelog_before + 3
    )  # A1 update, A6 insert, A3 delete; unchanged A2 skipped
    loads = _rows(wh, "SELECT load_id, status FROM raw.crm_crm_loads ORDER BY 1")
    assert loads == [
        {"load_id": "case-full-1", "status": "completed"},
        {"load_id": "case-full-2", "status": "completed"},
    ]
    # `capa crm status` (the on-prem DAG's record_load) reads the same ledger
    from capa_app.cli import main

    assert main(["crm", "status", "--load-id", "case-full-2", "--warehouse", wh]) == 0
    assert main(["crm", "status", "--load-id", "case-full-3", "--warehouse", wh]) == 1


def test_reject_share_above_limit_fails_loudly_and_applies_nothing(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "capa_app.cli",
            "crm",
            "load",
            "--extract",
            str(CASES / "mostly_bad"),
            "--warehouse",
            f"local:{lake}",
            "--max-reject-share",
            "0.2",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "rejected 3 of 4 rows (75.0%), above the limit 20.0%; nothing was applied" in proc.stderr
    assert "'twelve' is not a decimal(12,2)" in proc.stderr
    assert not list(lake.glob("raw/*/_delta_log"))  # not even the rejects or the ledger


def test_generated_extract_loads_and_measures(tmp_path: Path) -> None:
    from connectors.crm.filestore import LocalFileStore
    from connectors.crm.generator import GeneratorConfig, generate_extract

    manifest = generate_extract(
        LocalFileStore(tmp_path / "x"), GeneratorConfig(accounts=1000, seed=3)
    )
    wh = f"local:{tmp_path / 'lake'}"
    started = time.monotonic()
    summary = _load(tmp_path / "x", wh)
    elapsed = time.monotonic() - started
    print(
        f"\nCRM load of {summary['records_read']} records: {elapsed:.1f}s"
    )  # measured, not asserted
    assert summary["rows_valid"] + summary["rows_rejected"] == summary["records_read"]
    counts = {
        r["object"]: r["n"]
        for r in _rows(wh, "SELECT object, count(*) AS n FROM raw.crm_crm_rejects GROUP BY 1")
    }
    assert sum(counts.values()) == summary["rows_rejected"] > 0
    accounts = _rows(
        wh, "SELECT count(*) AS n, count(DISTINCT customer_id) AS c FROM raw.crm_crm_accounts"
    )[0]
    assert 950 < accounts["n"] <= 1000 and accounts["c"] > 100
    assert manifest.load_id == "crm-sample-0001"


def test_incremental_extract_never_deletes_but_full_flag_does(tmp_path: Path) -> None:
    wh = f"local:{tmp_path / 'lake'}"
    _load(CASES / "full_1", wh, "--max_reject_share", "0.5")
    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "accounts.csv").write_bytes(
        "account_id,name,industry,country,customer_id,last_modified\n"
        "A2,Açaí Comércio Lda,retail,PT,12,2025-06-01T00:00:00Z\n".encode("latin-1")
    )
    summary = _load(inc, wh, "--full=false")  # the value form the DAG operators pass
    assert summary["mode"] == "incremental" and summary.get("deletes", 0) == 0
    assert len(_rows(wh, "SELECT * FROM raw.crm_crm_accounts")) == 4
    (inc / "accounts.csv").write_bytes(
        b"account_id,name,industry,country,customer_id,last_modified\n"
        b"A2,Acai,retail,PT,12,2025-07-01T00:00:00Z\n"
    )
    full = _load(inc, wh, "--full")
    assert full["mode"] == "full" and full["deletes"] == 3
    assert [r["account_id"] for r in _rows(wh, "SELECT account_id FROM raw.crm_crm_accounts")] == [
        "A2"
    ]
