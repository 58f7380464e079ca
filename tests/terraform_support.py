"""Terraform of deploy/gcp as data (python-hcl2), for the tests: the merged configuration and a
small evaluator of the expressions the DAG settings use (references, interpolation,
``basename``), with test values for the variables. No provider, no cloud.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path
from typing import Any

import hcl2

ROOT = Path(__file__).resolve().parents[1]
TF_DIR = ROOT / "deploy" / "gcp"
TF_FILES = sorted(TF_DIR.glob("*.tf"))


def unquote(key: str) -> str:
    return key[1:-1] if len(key) >= 2 and key[0] == key[-1] == '"' else key


def clean(node: Any) -> Any:
    """python-hcl2 8 output -> plain data: unquoted keys, no parser markers."""
    if isinstance(node, dict):
        return {
            unquote(k): clean(v)
            for k, v in node.items()
            if k not in ("__is_block__", "__comments__")
        }
    if isinstance(node, list):
        return [clean(v) for v in node]
    return node


@cache
def parsed(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        return clean(hcl2.load(handle))


@cache
def config() -> dict[str, dict[str, Any]]:
    """All files merged: resource/data -> {type: {name: body}}; variable/local/output by name."""
    merged: dict[str, dict[str, Any]] = {
        "resource": {},
        "data": {},
        "variable": {},
        "locals": {},
        "output": {},
    }
    for path in TF_FILES:
        tree = parsed(path)
        for kind in ("resource", "data"):
            for entry in tree.get(kind, []):
                for rtype, named in entry.items():
                    for name, body in named.items():
                        assert name not in merged[kind].get(rtype, {}), f"duplicate {rtype}.{name}"
                        merged[kind].setdefault(rtype, {})[name] = body
        for entry in tree.get("variable", []):
            merged["variable"].update(entry)
        for entry in tree.get("output", []):
            merged["output"].update(entry)
        for entry in tree.get("locals", []):
            merged["locals"].update(entry)
    return merged


def resources(rtype: str) -> dict[str, Any]:
    return config()["resource"].get(rtype, {})


def resource(rtype: str, name: str) -> dict[str, Any]:
    body = resources(rtype).get(name)
    assert body is not None, f"resource {rtype}.{name} is missing from deploy/gcp"
    return body


def block(body: dict[str, Any], name: str) -> dict[str, Any]:
    """The single nested block ``name`` (python-hcl2 gives blocks as one-element lists)."""
    value = body.get(name)
    assert isinstance(value, list) and len(value) == 1, (
        f"expected one {name!r} block, got {value!r}"
    )
    return value[0]


def variable_defaults() -> dict[str, Any]:
    """Every declared variable's default (None when it has none)."""
    declared = config()["variable"]
    return {name: unquote_literal(body.get("default")) for name, body in declared.items()}


def unquote_literal(value: Any) -> Any:
    return unquote(value) if isinstance(value, str) else value


class TerraformValues:
    """Evaluates the expressions deploy/gcp uses for settings: ``var.*`` (test values over the
    defaults), ``local.*``, resource names/dataset ids/service-account emails, ``"${...}"``
    interpolation and ``basename()``. Anything else raises: extend it, do not guess."""

    def __init__(self, variables: dict[str, Any]) -> None:
        self.variables = {**variable_defaults(), **variables}

    def value(self, raw: Any) -> Any:
        """An attribute value as python-hcl2 gives it."""
        if isinstance(raw, dict):
            return {k: self.value(v) for k, v in raw.items()}
        if not isinstance(raw, str):
            return raw
        if raw.startswith("${") and raw.endswith("}") and raw.count("${") == 1:
            return self.expression(raw[2:-1])
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            return self.interpolate(raw[1:-1])
        return raw

    def interpolate(self, text: str) -> str:
        return re.sub(r"\$\{([^{}]+)\}", lambda m: str(self.expression(m.group(1))), text)

    def expression(self, expr: str) -> Any:
        expr = expr.strip()
        call = re.fullmatch(r"basename\((.+)\)", expr)
        if call:
            return os.path.basename(str(self.expression(call.group(1))))
        if expr.startswith('"'):
            return self.interpolate(expr[1:-1])
        parts = expr.split(".")
        if parts[0] == "var" and len(parts) == 2:
            return self.variables[parts[1]]
        if parts[0] == "local" and len(parts) == 2:
            return self.value(config()["locals"][parts[1]])
        if len(parts) == 3:
            return self.attribute(*parts)
        raise ValueError(f"expression {expr!r} is not supported by TerraformValues")

    def attribute(self, rtype: str, name: str, attr: str) -> Any:
        body = resource(rtype, name)
        if rtype == "google_service_account" and attr == "email":
            project = self.variables["project_id"]
            return f"{self.value(body['account_id'])}@{project}.iam.gserviceaccount.com"
        if attr in ("name", "dataset_id") and attr in body:
            return self.value(body[attr])
        raise ValueError(f"attribute {rtype}.{name}.{attr} is not supported by TerraformValues")
