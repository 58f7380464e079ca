"""The code type-checks: mypy over the packages listed in pyproject.toml ([tool.mypy])."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_passes() -> None:
    mypy = Path(sys.executable).with_name("mypy")
    # The default cache (.mypy_cache, gitignored) keeps a local re-run to about a second; a cold
    # run (CI) checks everything from scratch.
    done = subprocess.run([str(mypy)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
