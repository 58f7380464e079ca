"""Hostile input to the real ``capa`` CLI (a subprocess): never a traceback.

Line-oriented inputs (``capa normalize`` JSON lines, ``capa apply``) turn each bad line into
a dead letter with a ``reason`` on stderr and process the other lines (exit 3); bad options
and configuration give one clear line (exit 2 / 1); an unexpected error is one line and
exit 70 (the traceback only with ``--debug`` / ``CAPA__DEBUG=1``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from capa.codec import event_to_json
from capa.events import ChangeEvent, Op, SourceKind
from capa.warehouse import open_warehouse

ROOT = Path(__file__).resolve().parents[2]

HOSTILE_LINES: dict[str, bytes] = {
    "invalid-utf8": b'{"destination": "f2.public.things", "x": "\xff\xfe"}',
    "deep-json": b"[" * 100_000 + b"]" * 100_000,
    "deep-object": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "huge-line": b'{"x": "' + b"a" * (17 << 20) + b'"}',
    "not-json": b"this is not JSON {",
    "json-array": b"[1, 2, 3]",
    "lone-surrogate": b'{"op": "c", "x": "\\ud800"}',
}


def capa(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "capa_app.cli", *map(str, args)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        errors="replace",
        timeout=300,
        check=False,
    )


def debezium_line(i: int) -> bytes:
    value = {
        "before": None,
        "after": {"id": i, "name": f"n{i}"},
        "source": {
            "connector": "postgresql",
            "name": "f2",
            "db": "shop",
            "schema": "public",
            "table": "things",
            "lsn": 1000 + i,
            "ts_us": 1795489127018423,
            "snapshot": "false",
        },
        "op": "c",
        "ts_ms": 1795489127082,
    }
    return json.dumps(
        {"destination": "f2.public.things", "key": {"id": i}, "value": value}
    ).encode()


def canonical_line(i: int) -> bytes:
    event = ChangeEvent(
        source="f2",
        source_kind=SourceKind.POSTGRES,
        database="shop",
        schema="public",
        table="things",
        op=Op.INSERT,
        position=f"{1000 + i:016x}.1",
        commit_ts_us=1795489127018423,
        primary_key=("id",),
        key={"id": i},
        before=None,
        after={"id": i, "name": f"n{i}"},
    )
    return json.dumps(event_to_json(event)).encode()


def dead_letters(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("first", [False, True], ids=["bad-line-between", "bad-line-first"])
@pytest.mark.parametrize("hostile", sorted(HOSTILE_LINES))
def test_normalize_dead_letters_the_bad_line_and_keeps_the_rest(
    hostile: str, first: bool, tmp_path: Path
) -> None:
    good = [debezium_line(1), debezium_line(2)]
    lines = [HOSTILE_LINES[hostile], *good] if first else [good[0], HOSTILE_LINES[hostile], good[1]]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    result = capa("normalize", "--format", "debezium-json", path)

    assert "Traceback" not in result.stderr
    assert result.returncode == 3, result.stderr[-2000:]
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["key"] for e in events] == [{"id": 1}, {"id": 2}]
    (letter,) = dead_letters(result.stderr)
    assert letter["reason"] and letter["index"] == (0 if first else 1)
    assert "2 events, 1 dead letters" in result.stderr


@pytest.mark.parametrize("hostile", sorted(HOSTILE_LINES))
def test_apply_dead_letters_the_bad_line_and_applies_the_rest(hostile: str, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join([canonical_line(1), HOSTILE_LINES[hostile], canonical_line(2)]))
    lake = tmp_path / "lake"

    result = capa("apply", "--input", path, "--warehouse", f"local:{lake}")

    assert "Traceback" not in result.stderr
    assert result.returncode == 3, result.stderr[-2000:]
    (letter,) = dead_letters(result.stderr)
    assert letter["dead_letter"] is True and letter["line"] == 2 and letter["reason"]
    rows = open_warehouse(f"local:{lake}").rows("raw.f2_public_things")
    assert sorted(r["id"] for r in rows) == [1, 2]


USAGE_ERRORS = {
    "apply-bad-warehouse": (
        ["apply", "--input", "{input}", "--warehouse", "nowhere"],
        2,
        "nowhere",
    ),
    "apply-missing-input": (
        ["apply", "--input", "/no/such.jsonl", "--warehouse", "local:x"],
        2,
        "/no/such.jsonl",
    ),
    "apply-bad-batch": (
        ["apply", "--input", "{input}", "--warehouse", "local:x", "--batch-size", "0"],
        2,
        "--batch-size",
    ),
    "sql-bad-warehouse": (["sql", "--warehouse", "s3:bucket", "SELECT 1"], 2, "s3:bucket"),
    "normalize-bad-key": (
        ["normalize", "--format", "debezium-json", "--primary-key", "oops", "{input}"],
        2,
        "oops",
    ),
    "normalize-missing-file": (
        ["normalize", "--format", "debezium-json", "/no/such"],
        2,
        "/no/such",
    ),
    # verify reaches BigQuery now (issue #22): without credentials it says so in one line
    "verify-bad-warehouse": (["verify", "--warehouse", "bigquery:p"], 1, "BigQuery project 'p'"),
    "verify-no-server": (
        [
            "verify",
            "--warehouse",
            "local:x",
            "--dsn",
            "host=127.0.0.1 port=1 dbname=x connect_timeout=2",
        ],
        1,
        "port 1",
    ),
    "ingest-bad-interval": (
        ["ingest", "datastream", "--bucket", "b", "--interval", "-1"],
        2,
        "'-1'",
    ),
    "crm-bad-url": (["crm", "pull", "--api", "notaurl", "--out", "{tmp}/x"], 2, "notaurl"),
    "crm-bad-count": (["crm", "generate", "--out", "{tmp}/x", "--accounts", "-5"], 2, "-5"),
    "crm-unwritable": (
        ["crm", "generate", "--out", "/proc/capa-x", "--accounts", "5"],
        1,
        "/proc/capa-x",
    ),
    "crm-corrupt-manifest": (
        ["crm", "load", "--extract", "{tmp}/extract", "--warehouse", "local:{tmp}/wh"],
        1,
        "manifest.json is invalid",
    ),
    "sql-empty": (["sql", "--warehouse", "local:{tmp}", ""], 2, "got 0"),
    "dlq-bad-id": (["dlq", "show", "12"], 2, "'12'"),
    "dlq-no-kafka": (["dlq", "list"], 1, "127.0.0.1:1"),
    "crm-corrupt-watermarks": (
        ["crm", "pull", "--api", "http://127.0.0.1:1", "--out", "{tmp}/x", "--state", "{input}"],
        1,
        "watermark file",
    ),
}


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_bad_options_give_one_clear_line(case: str, tmp_path: Path) -> None:
    argv, code, quoted = USAGE_ERRORS[case]
    bad_input = tmp_path / "in.jsonl"
    bad_input.write_bytes(b"\xff{not json")
    (tmp_path / "extract").mkdir()
    (tmp_path / "extract" / "manifest.json").write_bytes(b"{not json")
    args = [a.format(input=bad_input, tmp=tmp_path) for a in argv]

    no_kafka = {"CAPA__KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}  # nothing listens there
    result = capa(*args, env={"HOME": str(tmp_path), **no_kafka})

    assert "Traceback" not in result.stderr
    assert result.returncode == code, result.stderr
    assert quoted in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr


@pytest.mark.parametrize(
    ("name", "env"),
    [
        ("bad-yaml", {"CAPA_CONFIG": "{tmp}/capa.yaml"}),
        ("bad-env", {"CAPA__KAFKA__PORT": "abc"}),
    ],
)
def test_bad_configuration_is_one_line(name: str, env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "capa.yaml").write_text("kafka: [unclosed\n")
    result = capa("verify", env={k: v.format(tmp=tmp_path) for k, v in env.items()})
    assert "Traceback" not in result.stderr
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert ("capa.yaml" if name == "bad-yaml" else "'abc'") in result.stderr


def test_an_unexpected_error_is_one_line_exit_70_and_debug_shows_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from capa_app import cli
    from capa_app.commands import sql

    def broken(args: Any) -> int:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(sql, "run", broken)
    assert cli.main(["sql", "--warehouse", "local:x", "SELECT 1"]) == cli.EXIT_INTERNAL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RuntimeError: boom" in err and "Traceback" not in err
    assert "--debug" in err

    assert cli.main(["--debug", "sql", "--warehouse", "local:x", "SELECT 1"]) == 70
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("CAPA__DEBUG", "1")
    assert cli.main(["sql", "--warehouse", "local:x", "SELECT 1"]) == 70
    assert "Traceback" in capsys.readouterr().err
