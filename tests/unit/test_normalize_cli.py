"""``capa normalize`` end to end (a real subprocess): stdout lines, stderr dead letters, exit codes."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from capa.codec import event_from_json

REQUIRED = {
    "source",
    "schema",
    "table",
    "op",
    "key",
    "before",
    "after",
    "position",
    "commit_ts",
    "event_id",
}


def capa(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "capa_app.cli", "normalize", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_debezium_files_exit_0_with_events_and_skip_summary(upstream_fixtures: Path) -> None:
    folder = upstream_fixtures / "debezium_pg15_captured_here"
    result = capa(
        "--format",
        "debezium-json",
        folder / "pg_tx_two_tables_with_begin_end.json",
        folder / "pg_heartbeat.json",
        folder / "pg_tombstone.json",
    )
    assert result.returncode == 0, result.stderr
    out = lines(result.stdout)
    assert [o["op"] for o in out] == ["c", "c", "u"]
    assert all(set(o) >= REQUIRED for o in out)
    assert out[0]["key"] == {"id": 30} and out[0]["position"] == "0000000001935368.1"
    assert out[0]["commit_ts"] == "2026-11-24T02:59:01.195832Z"
    assert "3 events, 0 dead letters, 4 skipped" in result.stderr
    assert (
        "heartbeat 1" in result.stderr
        and "tombstone 1" in result.stderr
        and "transaction 2" in result.stderr
    )
    assert event_from_json(out[2]).event_id == out[2]["event_id"]


def test_typed_values_in_json_lines(upstream_fixtures: Path) -> None:
    path = (
        upstream_fixtures
        / "debezium_pg15_captured_here"
        / "pg_typezoo_schemas_enabled_precise.json"
    )
    result = capa("--format", "debezium-json", "--source", "f9", path)
    assert result.returncode == 0, result.stderr
    (event,) = lines(result.stdout)
    after = event["after"]
    assert event["source"] == "f9"
    assert after["n_38_10"] == "12345678901234567890.0123456789" and after["m"] == "12.34"
    assert (
        after["ts"] == "2024-02-29T13:14:15.123456"
        and after["tstz"] == "2024-02-29T11:14:15.123456Z"
    )
    assert after["by"] == "3q2+7w==" and after["dt"] == "2024-02-29"


def test_unparseable_doc_file_is_a_dead_letter_exit_3(upstream_fixtures: Path) -> None:
    path = upstream_fixtures / "debezium_postgres_docs" / "value_update.json.adoc"
    result = capa("--format", "debezium-json", path)
    assert result.returncode == 3
    assert result.stdout == ""
    (letter,) = lines(result.stderr)
    assert "not valid JSON" in letter["reason"] and letter["file"] == str(path)
    assert base64.b64decode(letter["raw_base64"]) == path.read_bytes()


def test_mixed_good_and_bad_records_exit_3(upstream_fixtures: Path, tmp_path: Path) -> None:
    good = (upstream_fixtures / "debezium_pg15_captured_here" / "pg_insert.json").read_text()
    bad = tmp_path / "mixed.jsonl"
    bad.write_text(
        json.dumps(json.loads(good)) + "\n{broken json\n" + json.dumps({"op": "z"}) + "\n"
    )
    result = capa("--format", "debezium-json", bad)
    assert result.returncode == 3
    assert len(lines(result.stdout)) == 1
    letters = lines(result.stderr)
    assert [x["index"] for x in letters] == [1, 2]
    assert letters[1]["text"] == '{"op": "z"}' and "op" in letters[1]["reason"]


def test_datastream_avro_and_gzipped_jsonl(upstream_fixtures: Path, tmp_path: Path) -> None:
    folder = upstream_fixtures / "datastream_postgres_avro"
    avro = capa("--format", "datastream-avro", folder / "bytearray.avro")
    assert avro.returncode == 0, avro.stderr
    gz = tmp_path / "records.jsonl.gz"
    gz.write_bytes(gzip.compress((folder / "bytearray.records.DERIVED.jsonl").read_bytes()))
    derived = capa("--format", "datastream-json", gz)
    assert derived.returncode == 0, derived.stderr
    assert lines(avro.stdout) == lines(derived.stdout)
    (event,) = lines(avro.stdout)
    assert (
        event["position"] == "00000016cb002db0.1" and event["after"]["binary_content"] == "3q2+7w=="
    )


def test_datastream_avro_format_on_json_file_is_dead_letter(upstream_fixtures: Path) -> None:
    path = (
        upstream_fixtures
        / "datastream_postgres_json_doc"
        / "datastream_pg_update_record.EXTRACTED.json"
    )
    result = capa("--format", "datastream-avro", path)
    assert result.returncode == 3 and "not an Avro object container file" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--format", "nope", "x.json"],
        ["--format", "debezium-json"],
        ["--format", "debezium-json", "/no/such/file.json"],
        ["--format", "debezium-json", "--primary-key", "no-equals-sign", "x"],
        ["--format", "datastream-json", "--primary-key", "t=id", "x"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = capa(*args)
    assert result.returncode == 2 and result.stdout == ""


def test_primary_key_and_column_types_options(upstream_fixtures: Path, tmp_path: Path) -> None:
    hints = tmp_path / "types.json"
    hints.write_text(json.dumps({"public.orders": {"amount": "decimal(2)"}}))
    result = capa(
        "--format",
        "debezium-json",
        "--column-types",
        hints,
        upstream_fixtures / "debezium_pg15_captured_here" / "pg_insert.json",
    )
    assert result.returncode == 0, result.stderr
    assert lines(result.stdout)[0]["after"]["amount"] == "42.50"
    flink = (
        upstream_fixtures / "debezium_postgres_flink" / "debezium-postgres-data-schema-exclude.txt"
    )
    keyed = capa("--format", "debezium-json", "--primary-key", "inventory.products=id", flink)
    assert keyed.returncode == 0, keyed.stderr
    assert all(
        o["key"] == {"id": o["after"]["id"] if o["after"] else o["before"]["id"]}
        for o in lines(keyed.stdout)
    )
