"""Durable record of which Datastream files were processed (a JSON file, written atomically).

Layout of the file::

    {"version": 1,
     "processed": {"<object name>": <generation>, ...},
     "watermarks": {"<prefix>/<schema>_<table>/": "<object name>", ...},
     "audits": {"<prefix>/<schema>_<table>/":
                {"sealed_generation": <int>, "folded": {"<object name>": <generation>}}},
     "late": {"<object name>": <generation>, ...}}

A file counts as done when its exact (name, generation) is in ``processed`` or its name
sorts at or below its table directory's watermark. Names carry their minute folder
(``yyyy/mm/dd/hh/mm``), so they sort in time order; :meth:`FileCheckpoint.compact` folds
names older than a grace period (before the newest processed name of the table) into the
watermark, which keeps the file small. Listing starts at the watermark, so a file that
arrives late but within the grace period is listed and read like any other.

**Late files below the watermark.** A file whose name sorts at or below the watermark is
never listed by a poll. The audit (:meth:`FileCheckpoint.audit`, run by the reader every
``datastream.late_file_audit_polls`` polls) lists the names below the watermark and tells
a file never read from one read and folded: GCS generations grow with creation time, so
a (name, generation) that is neither in ``folded`` (names folded since the last audit)
nor at or below ``sealed_generation`` (the newest generation the last audit listed) was
created after that audit listed the directory, under a name already folded: it was never
read. Such files go to ``late`` (not done, whatever the watermark says) until the reader
has read them; it raises the late-file alarm for each (log, metric, status).
``folded`` holds only the names folded since the last audit, so it stays bounded.
The file is replaced atomically (temp file + fsync + rename): a crash leaves the old or
the new checkpoint, never a torn one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from capa.errors import ConfigError

logger = logging.getLogger(__name__)

_MINUTE_PATH = re.compile(r"/(\d{4})/(\d{2})/(\d{2})/(\d{2})/(\d{2})/")
VERSION = 1


def table_dir(name: str, prefix: str) -> str:
    """``<prefix>/<schema>_<table>/`` of an object name (the first folder under the prefix)."""
    rest = name[len(prefix) :].lstrip("/") if prefix else name
    head = rest.split("/", 1)[0]
    base = prefix.rstrip("/") + "/" if prefix else ""
    return f"{base}{head}/"


def minute_of(name: str) -> datetime | None:
    """The ``yyyy/mm/dd/hh/mm`` folder time of an object name, if it has one."""
    match = _MINUTE_PATH.search(name)
    if not match:
        return None
    try:
        year, month, day, hour, minute = (int(g) for g in match.groups())
        return datetime(year, month, day, hour, minute)
    except ValueError:
        return None


class FileCheckpoint:
    """Processed Datastream objects of one reader, persisted in ``path``."""

    def __init__(self, path: Path, prefix: str = "") -> None:
        self.path = path
        self.prefix = prefix
        self.processed: dict[str, int] = {}
        self.watermarks: dict[str, str] = {}
        self.audits: dict[str, dict[str, Any]] = {}
        self.late: dict[str, int] = {}  # late files found by an audit and not yet read
        self._load()

    def is_done(self, name: str, generation: int) -> bool:
        if self.late.get(name) == int(generation):
            return False
        mark = self.watermarks.get(table_dir(name, self.prefix))
        if mark is not None and name <= mark:
            return not self.is_late(name, generation)
        return self.processed.get(name) == int(generation)

    def is_late(self, name: str, generation: int) -> bool:
        """True for a file at or below its watermark that was certainly never read (or that
        an audit found and that is not read yet).

        Known only for a directory with an audit baseline: the file is not among the names
        folded since the last audit and its generation is newer than any that audit listed.
        """
        if self.late.get(name) == int(generation):
            return True  # found by an audit, not read yet
        directory = table_dir(name, self.prefix)
        mark = self.watermarks.get(directory)
        audit = self.audits.get(directory)
        if mark is None or name > mark or audit is None:
            return False
        if self.processed.get(name) == int(generation):
            return False
        if audit["folded"].get(name) == int(generation):
            return False
        return int(generation) > int(audit["sealed_generation"])

    def audit(self, directory: str, listed: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Late files among ``listed`` (every object at or below the watermark of
        ``directory``, listed after the last compaction); then seals the listing.

        A directory audited for the first time (a checkpoint from before audits) only takes
        its baseline: nothing below its watermark can be told apart yet, so nothing is late.
        """
        late = [(n, g) for n, g in listed if self.is_late(n, g)]
        previous = self.audits.get(directory, {"sealed_generation": 0, "folded": {}})
        sealed = [int(g) for _, g in listed] + list(previous["folded"].values())
        sealed.append(int(previous["sealed_generation"]))
        self.audits[directory] = {"sealed_generation": max(sealed), "folded": {}}
        self.late.update((n, int(g)) for n, g in late)  # owed: read until marked done
        self.save()
        return late

    def start_offset(self, directory: str) -> str | None:
        """Listing can start after this name (everything up to it is done)."""
        return self.watermarks.get(directory)

    def mark_done(self, name: str, generation: int) -> None:
        """Record one processed file and persist the checkpoint atomically."""
        self.processed[name] = int(generation)
        if self.late.get(name) == int(generation):
            del self.late[name]
        self.save()

    def forget_late(self, name: str) -> None:
        """Drop a late file from the owed ones (it no longer exists in the bucket)."""
        if self.late.pop(name, None) is not None:
            self.save()

    def compact(self, grace: timedelta) -> int:
        """Fold old names into per-table watermarks; returns how many were folded."""
        newest: dict[str, datetime] = {}
        for name in self.processed:
            when = minute_of(name)
            directory = table_dir(name, self.prefix)
            if when is not None and (directory not in newest or when > newest[directory]):
                newest[directory] = when
        folded = [n for n in self.processed if self._is_old(n, newest, grace)]
        for name in folded:
            directory = table_dir(name, self.prefix)
            if directory not in self.watermarks:  # a new watermark: nothing sealed below it
                self.audits[directory] = {"sealed_generation": 0, "folded": {}}
            self.watermarks[directory] = max(self.watermarks.get(directory, ""), name)
            if directory in self.audits:
                self.audits[directory]["folded"][name] = self.processed[name]
            del self.processed[name]
        if folded:
            self.save()
        return len(folded)

    def _is_old(self, name: str, newest: dict[str, datetime], grace: timedelta) -> bool:
        when = minute_of(name)
        latest = newest.get(table_dir(name, self.prefix))
        return when is not None and latest is not None and when < latest - grace

    def save(self) -> None:
        state = {
            "version": VERSION,
            "processed": self.processed,
            "watermarks": self.watermarks,
            "audits": self.audits,
            "late": self.late,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(state, handle, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.path.parent)

    def _load(self) -> None:
        if not self.path.exists():
            return
        state = _read_state(self.path)
        self.processed = {str(k): int(v) for k, v in state.get("processed", {}).items()}
        self.watermarks = {str(k): str(v) for k, v in state.get("watermarks", {}).items()}
        self.audits = {
            str(k): {
                "sealed_generation": int(v["sealed_generation"]),
                "folded": {str(n): int(g) for n, g in v["folded"].items()},
            }
            for k, v in state.get("audits", {}).items()
        }
        self.late = {str(k): int(v) for k, v in state.get("late", {}).items()}
        logger.info(
            "checkpoint %s: %d processed file(s), %d watermark(s)",
            self.path,
            len(self.processed),
            len(self.watermarks),
        )


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"Datastream checkpoint {str(path)!r} is unreadable ({exc}); restore it from backup or "
            "delete it to reprocess the bucket (duplicates are recognisable by event_id)"
        ) from exc
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise ConfigError(
            f"Datastream checkpoint {str(path)!r} has unknown layout/version "
            f"{state.get('version') if isinstance(state, dict) else type(state).__name__!r}"
        )
    return state


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
