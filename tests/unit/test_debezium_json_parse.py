"""The bridge parses the engine's JSON with orjson (:func:`connectors.debezium.bridge.parsed`);
text orjson refuses stays text for the normaliser's ``json`` parse, so every record gets the
values ``json.loads`` gives; its dead-letter copy is built only on demand, the same bytes as
before."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from connectors.base import RawRecord, get_normalizer, normalize_one
from connectors.debezium.bridge import EngineRecord, parsed, raw_bytes

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "debezium_pg15_captured_here"


@pytest.mark.parametrize(
    "text",
    [
        '{"a": NaN, "b": Infinity, "c": -Infinity}',  # JSON extensions json reads
        '{"s": "\\ud800 lone surrogate"}',  # escaped lone surrogate
        '{"x": 1.5, "y": [1, 2, {"z": null}], "t": "caf\\u00e9", "n": -9223372036854775808}',
    ],
)
def test_parsed_values_equal_json_loads(text: str) -> None:
    record = {"destination": "f2.public.t", "key": None, "value": text}
    got = parsed(record)["value"]
    got = json.loads(got) if isinstance(got, str) else got  # left to the normaliser's json
    want = json.loads(text)
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)
    if "NaN" in text:
        assert math.isnan(got["a"]) and got["b"] == math.inf


def test_captured_records_normalise_as_with_json_loads() -> None:
    """Every captured PostgreSQL record: the same outcome parsed by the bridge or by json."""
    normalizer = get_normalizer("debezium-json", source="f2")
    checked = 0
    for path in sorted(FIXTURES.glob("pg_*.json")):
        doc = json.loads(path.read_text())
        for record in doc if isinstance(doc, list) else [doc]:
            if not isinstance(record, dict) or "value" not in record:
                continue
            as_text = {
                k: v if k == "destination" or v is None else json.dumps(v)
                for k, v in record.items()
            }
            bridged = normalize_one(normalizer, RawRecord("t", 0, parsed(as_text), None))
            loaded = normalize_one(normalizer, RawRecord("t", 0, as_text, None))
            assert bridged == loaded
            checked += 1
    assert checked > 0


def test_dead_letter_copy_is_built_on_demand_and_unchanged() -> None:
    record = {"destination": "f2.public.t", "key": None, "value": '{"op": "?"}'}
    lazy = EngineRecord("f2.public.t", 0, record, None)
    assert lazy.raw is None
    assert lazy.raw_bytes() == raw_bytes(record)
    assert lazy.parsed().raw_bytes() == raw_bytes(record)
    letter = normalize_one(get_normalizer("debezium-json", source="f2"), lazy.parsed())
    assert getattr(letter, "raw", None) == raw_bytes(record)
