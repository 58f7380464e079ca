"""``capa apply`` and ``capa sql`` end to end, in-process, on the local lakehouse."""

from __future__ import annotations

import json

from test_apply_cases import event, full_row

from capa.codec import event_to_json
from capa.events import Op
from capa_app.cli import main


def _write(path, events, extra_lines=()) -> None:
    lines = [json.dumps(event_to_json(e)) for e in events] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")


def test_apply_then_sql_json(tmp_path, capsys) -> None:
    events = [
        event(Op.INSERT, 1, 10, after=full_row(1, 1)),
        event(Op.INSERT, 2, 11, after=full_row(2, 2)),
        event(Op.UPDATE, 1, 12, after=full_row(1, 3)),
        event(Op.DELETE, 2, 13, before={"id": 2}),
    ]
    _write(tmp_path / "in.jsonl", events + events[:2])  # redelivered tail
    lake = f"local:{tmp_path / 'lake'}"
    assert (
        main(
            [
                "apply",
                "--input",
                str(tmp_path / "in.jsonl"),
                "--warehouse",
                lake,
                "--batch-size",
                "3",
            ]
        )
        == 0
    )
    assert "6 lines" in capsys.readouterr().err
    assert (
        main(
            [
                "sql",
                "--warehouse",
                lake,
                "--json",
                "SELECT id, name, amount FROM raw.f2_public_orders",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows == [{"id": 1, "name": "n3", "amount": "0.75"}]
    assert (
        main(
            ["sql", "--warehouse", lake, "SELECT count(*) AS n FROM raw.f2_public_orders_changelog"]
        )
        == 0
    )
    assert capsys.readouterr().out.split() == ["n", "-", "4"]


def test_bad_lines_and_drift_go_to_dead_letter_with_exit_3(tmp_path, capsys) -> None:
    good = event(Op.INSERT, 1, 10, after=full_row(1, 1))
    drift = event(Op.INSERT, 2, 11, after={"id": 2, "name": 42})  # name was text
    _write(tmp_path / "in.jsonl", [good, drift], extra_lines=['{"op": "c"}', "[1, 2"])
    code = main(
        [
            "apply",
            "--input",
            str(tmp_path / "in.jsonl"),
            "--warehouse",
            f"local:{tmp_path / 'lake'}",
        ]
    )
    assert code == 3
    letters = [
        json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")
    ]
    assert len(letters) == 3 and all(letter["reason"] for letter in letters)
    assert any("changed type from string to int" in letter["reason"] for letter in letters)
    assert {letter["original"].strip() for letter in letters} >= {'{"op": "c"}', "[1, 2"}


def test_usage_errors(tmp_path, capsys) -> None:
    assert (
        main(["apply", "--input", str(tmp_path / "missing.jsonl"), "--warehouse", "local:x"]) == 2
    )
    assert "no such input file" in capsys.readouterr().err
    (tmp_path / "in.jsonl").write_text("")
    assert main(["apply", "--input", str(tmp_path / "in.jsonl"), "--warehouse", "nowhere"]) == 2


def test_sql_error_is_exit_1_with_the_engine_message(tmp_path, capsys) -> None:
    assert main(["sql", "--warehouse", f"local:{tmp_path}", "SELECT * FROM raw.nope"]) == 1
    assert "nope" in capsys.readouterr().err
