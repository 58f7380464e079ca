"""Values Debezium sent as NULL (numeric NaN/Infinity): one capa warning per column, a counter
per value, read from the conversion log the bridge's log4j config writes.

The lines are Debezium 3.6.3's message as the conversions appender writes it (``%m%n``, no
stack trace); tests/integration/test_fidelity_postgres_special.py runs the real bridge and
checks the warnings it prints.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from connectors.debezium.conversions import ConversionWatch, NulledValue, parse_line
from connectors.debezium.engine import CONVERSIONS_LOG, LOG4J2


def line(column: str, kind: str = "numeric") -> str:
    return f"Failed to properly convert data value for 'public.prices.{column}' of type {kind}\n"


def counted(column: str) -> float:
    labels = {"component": "test-bridge", "table": "f9.public.prices", "column": column}
    return REGISTRY.get_sample_value("capa_ingest_values_nulled_total", labels) or 0.0


def test_a_line_names_table_column_and_type() -> None:
    assert parse_line(line("amount").strip(), "f9") == NulledValue(
        "f9.public.prices", "amount", "numeric"
    )
    assert parse_line("Snapshot step 3 - Locking captured tables", "f9") is None


def test_each_column_is_told_once_and_every_value_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "conversions.log"
    log.write_text(line("old"))  # an earlier run's line: reported by that run
    watch = ConversionWatch(log, "f9", "test-bridge")
    start = {c: counted(c) for c in ("amount", "rate", "old")}
    caplog.set_level(logging.WARNING)
    with log.open("a") as out:
        out.write(line("amount") + line("amount") + line("rate") + line("amount")[:20])
    assert [v.column for v in watch.poll()] == ["amount", "amount", "rate"]
    with log.open("a") as out:  # the rest of the partial line, and more of the same column
        out.write(line("amount")[20:] + line("amount"))
    assert [v.column for v in watch.poll()] == ["amount", "amount"]
    assert watch.poll() == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "f9.public.prices.amount (type numeric)" in warnings[0] and "NULL" in warnings[0]
    assert "f9.public.prices.rate" in warnings[1]
    assert counted("amount") - start["amount"] == 4
    assert counted("rate") - start["rate"] == 1
    assert counted("old") == start["old"]


def test_the_log4j_config_routes_only_those_lines_to_the_conversion_log() -> None:
    settings = dict(
        entry.split("=", 1) for entry in LOG4J2.splitlines() if entry and entry[0] != "#"
    )
    assert settings["appender.conversions.fileName"] == CONVERSIONS_LOG
    assert settings["appender.conversions.filter.value.onMismatch"] == "DENY"
    assert settings["appender.conversions.layout.alwaysWriteExceptions"] == "false"
    assert settings["logger.conversions.name"] == "io.debezium.relational.TableSchemaBuilder"
