"""deploy/prometheus: the alert rules pass ``promtool check`` and their unit tests.

promtool comes from Debian's ``prometheus`` package (``scripts/setup.sh observe``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from capa.metrics import BY_NAME

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    # scripts/setup.sh (make test runs it) installs Debian's prometheus package: a missing
    # promtool is a broken setup, so it fails here rather than skipping the rules' tests
    assert PROMTOOL is not None, "promtool missing: run scripts/setup.sh observe"
    return subprocess.run(
        [PROMTOOL, *args], cwd=RULES, capture_output=True, text=True, timeout=120, check=False
    )


def test_rules_and_config_are_valid() -> None:
    checked = promtool("check", "rules", "capa-alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_rules_fire_on_synthetic_series() -> None:
    tested = promtool("test", "rules", "capa-alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_rules_name_only_defined_families() -> None:
    import re

    text = (RULES / "capa-alerts.yml").read_text(encoding="utf-8")
    used = set(re.findall(r"\bcapa_[a-z0-9_]+", text))
    known = {f.exposed_name for f in BY_NAME.values()}
    assert used - known == set(), "alert rules use metric names capa/metrics.py does not define"
