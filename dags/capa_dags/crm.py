"""Callables of the ``crm_batch`` DAG's Python tasks (run in the Airflow worker; no Beam)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def extract_ready(extract: str) -> bool:
    """True once the extract's ``_SUCCESS`` marker is there."""
    from connectors.crm.extract import SUCCESS_MARKER
    from connectors.crm.filestore import open_filestore

    return bool(open_filestore(extract).exists(SUCCESS_MARKER))


def extract_load_id(extract: str) -> Any:
    """Sensor poke: done once ``_SUCCESS`` is there; pushes the load id it names (XCom)."""
    from airflow.sdk import PokeReturnValue

    from connectors.crm.extract import SUCCESS_MARKER
    from connectors.crm.filestore import open_filestore

    store = open_filestore(extract)
    if not store.exists(SUCCESS_MARKER):
        return PokeReturnValue(is_done=False)
    marker = json.loads(store.read_bytes(SUCCESS_MARKER))
    return PokeReturnValue(is_done=True, xcom_value=str(marker["load_id"]))


def record_load(summary_line: str | None, state_dir: str) -> dict[str, Any]:
    """Write the load job's summary (its JSON output line) to ``<state>/crm/loads/<id>.json``."""
    if not summary_line:
        raise ValueError("the load task printed no summary line; see its log")
    summary = json.loads(summary_line)
    target = Path(state_dir) / "crm" / "loads" / f"{summary['load_id']}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(summary, indent=2, sort_keys=True))
    return dict(summary)
