"""docs/architecture.md walks one change through at most eight production files: every step
names one file that exists and the names it says the change passes through are defined there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
STEP = re.compile(r"^\d+\. \*\*(?P<stage>[^*]+)\*\* - `(?P<path>[^`]+)`: (?P<text>.*)$")


def _walk() -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("## One change, from the source to a consumption table")
    return text[start : text.index("\n## ", start + 1)]


def _steps() -> list[tuple[str, str, str]]:
    steps: list[tuple[str, str, str]] = []
    for line in _walk().splitlines():
        match = STEP.match(line)
        if match:
            steps.append((match["stage"], match["path"], match["text"]))
        elif steps and line.startswith("   "):
            stage, path, text = steps[-1]
            steps[-1] = (stage, path, text + " " + line.strip())
    return steps


def test_the_walk_names_at_most_eight_files_that_exist() -> None:
    steps = _steps()
    files = [path for _, path, _ in steps]
    assert 1 <= len(steps) <= 8 and len(set(files)) == len(files), files
    named = re.findall(r"`([\w./-]+/[\w./-]+)`", _walk())
    missing = [path for path in named if not (ROOT / path).exists()]
    assert not missing, missing


def test_each_step_names_what_its_file_defines() -> None:
    for stage, path, text in _steps():
        if not path.endswith(".py"):
            continue
        source = (ROOT / path).read_text(encoding="utf-8")
        for owner, member in re.findall(r"`(\w+)\.(\w+)`", text):
            if owner in {"raw", "consumption", "capa"}:
                continue  # table names
            assert re.search(rf"^class {owner}\b", source, re.M), (stage, owner, path)
            assert re.search(rf"^    def {member}\(", source, re.M), (stage, member, path)
        names = re.findall(r"`(\w+)(?:\.\w+)?`", text)
        defined = [n for n in names if re.search(rf"^(class|def) {n}\b", source, re.M)]
        assert defined, (stage, path, names)  # the step names something its file defines


def test_the_consumption_step_reads_the_replica_the_change_was_written_to() -> None:
    (*_, (_, model, _)) = _steps()
    assert "raw('f2_public_orders')" in (ROOT / model).read_text(encoding="utf-8")
