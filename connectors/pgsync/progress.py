"""The initial sync's durable state and its progress figures.

One JSON file per engine (``<state_dir>/debezium/<engine>.initial-sync.json``) records the
slot and snapshot position, every table's ranges and which of them are copied. It is
rewritten atomically (temporary file, fsync, rename) after every finished range, so a
``kill -9`` resumes with the unfinished ranges only. ``capa status`` and the bridge log
read the same figures: per table rows done of the estimate (``pg_class.reltuples``),
rate and ETA.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from capa.config import CapaSettings
from connectors.pgsync.ranges import PageRange

COPYING = "copying"
DONE = "done"


@dataclass
class RangeState:
    index: int
    start_page: int
    end_page: int | None
    done: bool = False
    rows: int = 0

    def page_range(self) -> PageRange:
        return PageRange(self.index, self.start_page, self.end_page)


@dataclass
class TableState:
    schema: str
    table: str
    raw: str  # the raw table name (capa.events.raw_table_name)
    primary_key: list[str]
    estimate: int  # pg_class.reltuples when planned (0: unknown)
    ranges: list[RangeState] = field(default_factory=list)

    @property
    def rows_done(self) -> int:
        return sum(r.rows for r in self.ranges if r.done)

    @property
    def done(self) -> bool:
        return all(r.done for r in self.ranges)


@dataclass
class SyncState:
    slot: str
    lsn: str  # the slot's consistent point, X/Y
    status: str = COPYING
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    resumed_at: float | None = None
    tables: dict[str, TableState] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SyncState:
        tables = {
            name: TableState(**{**t, "ranges": [RangeState(**r) for r in t.get("ranges", [])]})
            for name, t in data.get("tables", {}).items()
        }
        return cls(**{**data, "tables": tables})


class StateFile:
    """The state on disk; :meth:`save` is atomic and thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def load(self) -> SyncState | None:
        if not self.path.exists():
            return None
        return SyncState.from_json(json.loads(self.path.read_text()))

    def save(self, state: SyncState) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "w") as out:
                json.dump(state.to_json(), out, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)


def table_progress(table: TableState, elapsed_s: float, rows_at_start: int = 0) -> dict[str, Any]:
    """Rows done of the estimate, rate (rows/s since this run started) and ETA (s).

    ``rows_at_start`` are the rows a resumed run found done (not counted in its rate). The
    estimate is raised to the rows done when ``reltuples`` was low; ETA is None while the
    rate is unknown, 0 once the table is copied.
    """
    done = table.rows_done
    total = max(table.estimate, done)
    rate = (done - rows_at_start) / elapsed_s if elapsed_s > 0 else 0.0
    if table.done:
        eta: float | None = 0.0
    elif rate > 0:
        eta = max(total - done, 0) / rate
    else:
        eta = None
    return {
        "table": f"{table.schema}.{table.table}",
        "rows_done": done,
        "rows_total": total,
        "ranges_done": sum(r.done for r in table.ranges),
        "ranges_total": len(table.ranges),
        "rows_per_s": round(rate, 1),
        "eta_s": None if eta is None else round(eta, 1),
        "done": table.done,
    }


def progress_line(progress: dict[str, Any]) -> str:
    """One log line per table: ``public.t: 120000/1000000 rows (12%), 50000 rows/s, ETA 18 s``."""
    total = progress["rows_total"]
    percent = 100 * progress["rows_done"] / total if total else 100.0
    eta = progress["eta_s"]
    eta_text = "unknown" if eta is None else f"{eta:.0f} s"
    return (
        f"{progress['table']}: {progress['rows_done']}/{total} rows ({percent:.0f}%), "
        f"ranges {progress['ranges_done']}/{progress['ranges_total']}, "
        f"{progress['rows_per_s']:.0f} rows/s, ETA {eta_text}"
    )


def state_path(state_dir: Path, engine_name: str) -> Path:
    return state_dir.resolve() / "debezium" / f"{engine_name}.initial-sync.json"


def status_document(state: SyncState | None, now: float | None = None) -> dict[str, Any] | None:
    """What ``capa status`` shows of the initial sync (None: no fast sync has run)."""
    if state is None:
        return None
    now = time.time() if now is None else now
    since = state.resumed_at or state.started_at
    end = state.finished_at or now
    return {
        "status": state.status,
        "slot": state.slot,
        "lsn": state.lsn,
        "seconds": round(end - state.started_at, 1),
        "tables": [table_progress(t, end - since) for t in state.tables.values()],
    }


def initial_sync_status(settings: CapaSettings) -> dict[str, Any] | None:
    """The status document of the configured source's fast initial sync (None: none ran)."""
    path = state_path(settings.state_dir, settings.debezium.engine_name)
    try:
        state = StateFile(path).load()
    except (OSError, ValueError, TypeError) as exc:  # mid-rename or foreign file
        return {"status": "unreadable", "error": str(exc), "tables": []}
    return status_document(state)


def sync_lines(document: dict[str, Any]) -> list[str]:
    return [progress_line(t) for t in document.get("tables", [])]
