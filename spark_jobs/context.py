"""One build's shared state: the session, the settings and every cache its models use.

:class:`BuildContext` is made by :meth:`spark_jobs.build.SparkModelBuilder.build` for one
build and closed at its end; nothing in it outlives the build. Models of the build run in
threads (:mod:`spark_jobs.schedule`) and share it: the inputs pinned at one version, the temp
views registered for them, the Delta table handles, the changed rows of each input (diffed once
even when two models read the input) and the folder of Arrow tables handed to Spark.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from capa.errors import ConfigError
from capa.warehouse.base import META_DELETED
from spark_jobs.diff import DeltaTables
from spark_jobs.incremental import Changes, Handoff, InputSnapshot, read_version
from spark_jobs.project import Model, Project, quote

TMP_DIR = "_capa_tmp"  # Arrow tables handed to Spark during a build (removed after it)


@dataclass(frozen=True, slots=True)
class BuildSettings:
    """Where a build reads and writes, and its thresholds (see :mod:`spark_jobs.build`)."""

    lakehouse: Path
    consumption: Path
    rebuild_above: float  # recomputing more than this share of a target's rows: rebuild
    overwrite_below: int  # targets up to this many rows are rewritten in the driver
    workers: int  # models built at once


@dataclass(frozen=True, slots=True)
class WrittenRows:
    """The rows a model rewrote in the driver in this build (see :meth:`BuildContext.wrote`)."""

    version: int  # the table version they made
    keys: pa.Table  # every key recomputed (a key without a row was deleted)
    rows: pa.Table  # the new rows of those keys


class BuildContext:
    """Everything the models of one build share (see module doc). Use it as a context
    manager: :meth:`close` removes the hand-off folder."""

    def __init__(self, spark: Any, settings: BuildSettings, project: Project) -> None:
        self.spark, self.settings, self.project = spark, settings, project
        self.tables = DeltaTables()
        self.handoff = Handoff(spark, settings.consumption / TMP_DIR)
        self._lock = threading.RLock()  # guards the four below
        self._pinned: dict[tuple[str, str], InputSnapshot] = {}
        self._views: set[str] = set()
        self._changes: dict[tuple[str, int, int], Changes] = {}
        self._written: dict[str, WrittenRows] = {}

    def __enter__(self) -> BuildContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.handoff.close()

    # -- tables -----------------------------------------------------------------------------
    def path(self, kind: str, name: str) -> Path:
        """Where a raw replica (``raw``) or a model table (``ref``) lives."""
        if kind == "raw":
            return self.settings.lakehouse / "raw" / name
        return self.settings.consumption / name

    def pin(self, kind: str, name: str) -> InputSnapshot:
        """The input at the version it had when the build first asked (the same for every
        model of the build)."""
        with self._lock:
            if (kind, name) not in self._pinned:
                path = self.path(kind, name)
                version = self.tables.version(path)
                if version is None:
                    hint = "load or apply it first" if kind == "raw" else f"build {name!r} first"
                    raise ConfigError(f"{kind} table {name!r} not found at {path}: {hint}")
                self._pinned[(kind, name)] = InputSnapshot(name, kind, str(path), version)
            return self._pinned[(kind, name)]

    def read(self, path: Path | str, version: int) -> Any:
        """A DataFrame of the Delta table at ``path`` and ``version``."""
        return read_version(self.spark, self.tables.at(path, version), str(path), version)

    # -- the SQL of models --------------------------------------------------------------------
    def resolve(self, kind: str, name: str) -> str:
        """Template resolver of a full build: the pinned input as a temp view (a raw replica
        without its deleted rows; ``raw_history`` with them)."""
        snap = self.pin("ref" if kind == "ref" else "raw", name)
        view = f"capa_{kind}__{name}"
        with self._lock:
            if view not in self._views:
                df = self.read(snap.path, snap.version)
                if kind == "raw":
                    df = df.where(f"NOT coalesce({quote(META_DELETED)}, false)")
                df.createOrReplaceTempView(view)
                self._views.add(view)
        return quote(view)

    def resolve_table(self, name: str) -> str:
        """:meth:`resolve` of a table a check reads (a model of the project, else raw)."""
        return self.resolve("ref" if name in self.project.models else "raw", name)

    def target(self, model: Model) -> Path:
        return self.settings.consumption / model.name

    # -- changed input rows -------------------------------------------------------------------
    def changes(self, key: tuple[str, int, int], diff: Callable[[], Changes]) -> Changes:
        """The changed rows of input ``key[0]`` between versions ``key[1]`` and ``key[2]``,
        diffed once per build (two models reading one input ask for the same pair)."""
        with self._lock:
            if key not in self._changes:
                self._changes[key] = diff()
            return self._changes[key]

    def wrote(
        self, model: str, before: int, after: int, rows: WrittenRows, changed: Changes
    ) -> None:
        """Model ``model`` rewrote its table from ``before`` to ``after`` in the driver: a
        later model of the build takes the changed rows from here instead of diffing the two
        versions, and the new rows of the keys from :meth:`rows_written` instead of reading
        the table."""
        with self._lock:
            self._changes[(model, before, after)] = changed
            self._written[model] = rows

    def rows_written(self, model: str, keys: pa.Array) -> pa.Table | None:
        """The rows ``model`` wrote in this build for ``keys`` (values of its one-column key),
        when they are all of its rows for those keys: it recomputed every one of them, and
        its table is still at the version it wrote (pinned for this build)."""
        written = self._written.get(model)
        if written is None or self.pin("ref", model).version != written.version:
            return None
        recomputed = written.keys.column(0)
        try:
            wanted = keys.cast(recomputed.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        if not pc.all(pc.is_in(wanted, value_set=recomputed), min_count=0).as_py():
            return None
        name = written.keys.column_names[0]
        rows = written.rows
        return rows.filter(pc.is_in(rows.column(name), value_set=wanted))
