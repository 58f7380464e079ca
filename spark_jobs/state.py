"""Build state: per model, the input versions and watermarks of its last successful build.

Stored as one JSON file per model under ``<consumption>/_capa_state/<model>.json`` (written
atomically), beside the tables it describes, so a copied consumption folder keeps its state.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from spark_jobs.project import Model

STATE_DIR = "_capa_state"


class InputMark(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(description="'raw' (replica) or 'ref' (another model's table).")
    version: int = Field(description="Delta version of the input the build read.")
    max_ingested_at: str | None = Field(
        None, description="Raw only: max _capa_ingested_at (ISO, UTC) in that version."
    )


class ModelState(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="Model name.")
    fingerprint: str = Field(description="Hash of the model file; a change forces a full build.")
    target_version: int = Field(description="Delta version of the consumption table written.")
    inputs: dict[str, InputMark] = Field(description="Input table -> what was read.")
    built_at: str | None = Field(
        None,
        description="UTC time (ISO) the build finished; the metrics of `capa serve` read it "
        "(None in state written before it was recorded).",
    )


def fingerprint(model: Model) -> str:
    return hashlib.sha256(model.path.read_bytes()).hexdigest()[:16]


def state_path(consumption: Path, model: str) -> Path:
    return consumption / STATE_DIR / f"{model}.json"


def load_state(consumption: Path, model: str) -> ModelState | None:
    path = state_path(consumption, model)
    if not path.is_file():
        return None
    return ModelState.model_validate_json(path.read_text(encoding="utf-8"))


def save_state(consumption: Path, state: ModelState) -> None:
    path = state_path(consumption, state.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.model_dump(), indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def now_iso() -> str:
    """The ``built_at`` of a build finishing now."""
    return datetime.now(UTC).isoformat()


def iter_states(consumption: Path) -> Iterator[ModelState]:
    """Every model's last successful build state under ``consumption`` (unreadable skipped)."""
    for path in sorted((consumption / STATE_DIR).glob("*.json")):
        try:
            yield ModelState.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # being replaced right now, or foreign: the next read sees it


def clear_state(consumption: Path, model: str) -> None:
    state_path(consumption, model).unlink(missing_ok=True)
