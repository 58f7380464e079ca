"""CRM extract readers, file store, manifest and the sample generator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectors.crm.contract import load_contract
from connectors.crm.errors import CrmExtractError
from connectors.crm.extract import MANIFEST, SUCCESS_MARKER, read_manifest
from connectors.crm.filestore import GcsFileStore, LocalFileStore, open_filestore
from connectors.crm.generator import GeneratorConfig, generate_extract
from connectors.crm.load import Reject, validate_record
from connectors.crm.readers import decode_text, read_records

CASES = Path(__file__).resolve().parents[1] / "cases" / "crm"


def test_latin1_file_is_detected_and_decoded() -> None:
    data = (CASES / "full_1" / "accounts.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    records = list(read_records(data, obj="accounts", name="accounts.csv", fmt="csv"))
    assert [r.fields["name"] for r in records if r.fields][:3] == [
        "Société Générale Gärtner",
        "Açaí Comércio Lda",
        "Weiß & Söhne GmbH",
    ]
    assert records[0].line_no == 2 and records[0].raw.startswith("A1,Société")


def test_configured_utf8_on_latin1_bytes_fails_with_the_fix() -> None:
    with pytest.raises(CrmExtractError, match=r"not valid utf-8.*'latin-1' or 'auto'"):
        decode_text("Gärtner".encode("latin-1"), "utf-8", "accounts.csv")


def test_utf8_bom_is_stripped() -> None:
    text, used = decode_text(b"\xef\xbb\xbfaccount_id\n", "auto", "x.csv")
    assert (text, used) == ("account_id\n", "utf-8")


def test_csv_keeps_multiline_records_and_flags_wrong_field_counts() -> None:
    data = b'a,b\n1,"two\nlines"\n3\n\n4,5\n'
    records = list(read_records(data, obj="o", name="f.csv", fmt="csv"))
    assert [(r.line_no, r.raw, r.fields, r.error) for r in records] == [
        (2, '1,"two\nlines"', {"a": "1", "b": "two\nlines"}, None),
        (4, "3", None, "line has 1 fields, the header has 2"),
        (6, "4,5", {"a": "4", "b": "5"}, None),
    ]


def test_ndjson_bad_lines_become_records_with_errors() -> None:
    data = b'{"a": 1}\n\n{"a": \n[1, 2]\n'
    records = list(read_records(data, obj="o", name="f.ndjson", fmt="ndjson"))
    assert [(r.line_no, r.fields) for r in records] == [(1, {"a": 1}), (3, None), (4, None)]
    assert records[1].error and records[1].error.startswith("not valid JSON")
    assert records[2].error == "not a JSON object but list"


def test_unknown_format_is_refused() -> None:
    with pytest.raises(CrmExtractError, match="format 'xlsx' is unknown"):
        list(read_records(b"", obj="o", name="f.xlsx", fmt="xlsx"))


def test_manifest_is_read_and_full_flag_overrides(tmp_path: Path) -> None:
    contract = load_contract()
    manifest = read_manifest(LocalFileStore(CASES / "full_2"), contract)
    assert (manifest.load_id, manifest.mode, manifest.files[0].encoding) == (
        "case-full-2",
        "full",
        "latin-1",
    )
    inferred = read_manifest(LocalFileStore(CASES / "mostly_bad"), contract, full=True)
    assert inferred.mode == "full" and inferred.load_id.startswith("crm-")
    assert inferred.load_id == read_manifest(LocalFileStore(CASES / "mostly_bad"), contract).load_id


def test_manifest_naming_an_unknown_object_is_refused(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text(
        json.dumps(
            {"load_id": "x", "files": [{"object": "leads", "name": "l.csv", "format": "csv"}]}
        )
    )
    with pytest.raises(Exception, match="'leads' is not in the contract"):
        read_manifest(LocalFileStore(tmp_path), load_contract())


def test_empty_folder_says_what_it_expected(tmp_path: Path) -> None:
    with pytest.raises(CrmExtractError, match=r"no manifest\.json and no files named"):
        read_manifest(LocalFileStore(tmp_path), load_contract())


def test_filestore_registry() -> None:
    assert isinstance(open_filestore("/tmp/x"), LocalFileStore)
    assert isinstance(open_filestore("file:///tmp/x"), LocalFileStore)
    gcs = open_filestore("gs://bucket/crm/2026")
    assert isinstance(gcs, GcsFileStore) and (gcs.bucket_name, gcs.prefix) == ("bucket", "crm/2026")
    with pytest.raises(CrmExtractError, match="unknown scheme 's3'"):
        open_filestore("s3://bucket/x")


def test_generator_is_deterministic_dirty_and_loadable(tmp_path: Path) -> None:
    cfg = GeneratorConfig(accounts=300, seed=11, dirt=0.05, duplicates=0.02)
    generate_extract(LocalFileStore(tmp_path / "a"), cfg)
    generate_extract(LocalFileStore(tmp_path / "b"), cfg)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(
        [
            MANIFEST,
            SUCCESS_MARKER,
            "accounts.csv",
            "contacts.csv",
            "opportunities.ndjson",
            "activities.ndjson",
        ]
    )
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with pytest.raises(UnicodeDecodeError):
        (tmp_path / "a" / "accounts.csv").read_bytes().decode("utf-8")
    contract = load_contract()
    store = LocalFileStore(tmp_path / "a")
    manifest = read_manifest(store, contract)
    results = [
        validate_record(contract, r, i)
        for i, f in enumerate(manifest.files)
        for r in read_records(store.read_bytes(f.name), obj=f.object, name=f.name, fmt=f.format)
    ]
    rejects = [r for r in results if isinstance(r, Reject)]
    share = len(rejects) / len(results)
    assert 0.01 < share < 0.1
    reasons = " ".join(r.reason for r in rejects)
    for fragment in (
        "is not a timestamp",
        "is required but missing",
        "is not one of",
        "not valid JSON",
    ):
        assert fragment in reasons
    keys = [r.key for r in results if not isinstance(r, Reject)]
    assert len(keys) > len(set(keys))  # duplicates are present
    assert (
        3600 < len(results) < 3600 * 1.05
    )  # 300 accounts, 900 contacts, 600 opps, 1800 activities + dupes
