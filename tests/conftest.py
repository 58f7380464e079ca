"""Test tiers (STYLE rule 14): tests under tests/unit are marked ``unit``, tests under
tests/integration ``integration``, tests under tests/bench ``bench`` (never in the default run).
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_FIXTURES = ROOT / "tests" / "fixtures"
CASES = ROOT / "tests" / "cases"

_TIERS = {
    "unit": pytest.mark.unit,
    "integration": pytest.mark.integration,
    "bench": pytest.mark.bench,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT).parts
        tier = parts[1] if len(parts) > 2 and parts[0] == "tests" else "unit"
        item.add_marker(_TIERS.get(tier, pytest.mark.unit))


@pytest.fixture(scope="session")
def upstream_fixtures() -> Path:
    """Real upstream output (vendored; tests/fixtures/README.md says where each folder came from)."""
    return UPSTREAM_FIXTURES
