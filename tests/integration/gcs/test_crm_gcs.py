"""The CRM GCS file-store adapter against a real fake-gcs-server, and a load from gs://."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connectors.crm.errors import CrmExtractError
from connectors.crm.filestore import GcsFileStore, open_filestore

CASES = Path(__file__).resolve().parents[2] / "cases" / "crm"


def _upload(bucket: Any, prefix: str, folder: Path) -> None:
    for path in sorted(folder.iterdir()):
        bucket.blob(f"{prefix}/{path.name}").upload_from_string(path.read_bytes())


def test_gcs_store_lists_reads_and_writes(fake_gcs: Any, fresh_bucket: Any) -> None:
    _upload(fresh_bucket, "crm/2025-03-01", CASES / "full_1")
    fresh_bucket.blob("crm/2025-03-01/sub/ignored.csv").upload_from_string(b"x")
    store = GcsFileStore(fresh_bucket.name, "crm/2025-03-01", client=fake_gcs.client())
    assert store.list() == ["_SUCCESS", "accounts.csv", "contacts.ndjson", "manifest.json"]
    assert store.exists("_SUCCESS") and not store.exists("nope.csv")
    assert store.read_bytes("accounts.csv") == (CASES / "full_1" / "accounts.csv").read_bytes()
    store.write_bytes("out.json", b"{}")
    assert fresh_bucket.blob("crm/2025-03-01/out.json").download_as_bytes() == b"{}"
    with pytest.raises(CrmExtractError, match="does not exist"):
        store.read_bytes("missing.csv")


def test_beam_load_reads_the_extract_from_gcs(
    fake_gcs: Any, fresh_bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from beam_jobs import crm_batch
    from capa.warehouse import open_warehouse

    _upload(fresh_bucket, "crm/full_1", CASES / "full_1")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs.url)
    url = f"gs://{fresh_bucket.name}/crm/full_1"
    assert open_filestore(url).exists("_SUCCESS")
    lake = f"local:{tmp_path / 'lake'}"
    summary = crm_batch.run(["--extract", url, "--warehouse", lake, "--max_reject_share", "0.5"])
    assert (summary["rows_valid"], summary["rows_rejected"]) == (7, 2)
    names = [
        r["name"]
        for r in open_warehouse(lake).query("SELECT name FROM raw.crm_crm_accounts ORDER BY 1")
    ]
    assert "Société Générale Gärtner" in names
