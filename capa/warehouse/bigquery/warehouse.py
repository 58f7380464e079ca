"""BigQuery: the raw layer on GCP, in one of two apply modes (``apply_mode`` in config).

Per table and batch:

1. plan the batch with :func:`capa.apply.plan_table` (the rules every warehouse follows)
   against the table's truncate watermark (append-only ``_capa_state``, cached for
   ``watermark_refresh_s``); a keyless table's batch is resolved against what its replica
   holds (:mod:`.keyless`, :func:`capa.apply.resolve_plan`) and then written like a keyed
   one, on ``_capa_row_id``;
2. create/evolve the replica and its changelog (:mod:`.tables`: key, clustering,
   partitioning, ``max_staleness``; schemas cached, so a steady stream makes no metadata
   calls);
3. append the batch's events to the changelog (Storage Write API ``_default`` stream,
   append-only, deduplicated by ``_capa_event_id`` where it is read);
4. write the replica through the table's mode: ``cdc`` (:mod:`.apply_cdc`: CDC rows with
   ``_CHANGE_TYPE``/``_CHANGE_SEQUENCE_NUMBER``, no DML) or ``merge`` (:mod:`.apply_merge`:
   staged, one MERGE per table per ``merge_interval_s``). Batch sources (CRM) always use
   ``merge``: their positions are not log positions, so they have no sequence number;
5. a truncate appends the raised watermark to ``_capa_state``.

Trade-offs and costs: docs/bigquery.md. Every step is idempotent, so a crash between them is
healed by the replayed batch. Errors raise WarehouseTerminalError (4xx: bad SQL, bad data)
or WarehouseTransientError (5xx, network).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from capa.apply import TablePlan, keyless_target, plan_table, resolve_plan
from capa.errors import (
    WarehouseTerminalError,
    WarehouseTransientError,
    missing_google_credentials,
)
from capa.events import ChangeEvent, SourceKind, iter_tables
from capa.keyless import KEYLESS_COLUMNS, ROW_ID, KeylessTarget, unmatched_reason
from capa.warehouse import sql
from capa.warehouse.base import (
    CHANGELOG_SUFFIX,
    META_COMMIT_TS,
    META_DELETED,
    ApplyReport,
    TableReport,
    WarehouseCapabilities,
)
from capa.warehouse.bigquery.apply_cdc import CdcApply
from capa.warehouse.bigquery.apply_merge import STAGE_INFIX, MergeApply
from capa.warehouse.bigquery.cdc import UNCHANGED
from capa.warehouse.bigquery.changelog import changelog_rows
from capa.warehouse.bigquery.keyless import latest_rows, needs_read, target_query
from capa.warehouse.bigquery.tables import STATE_TABLE, BigQueryTables
from capa.warehouse.bigquery.write_api import StorageWriter, fields_of
from capa.warehouse.types import infer_types

logger = logging.getLogger(__name__)

CHANGELOG_EXTRA = {UNCHANGED: ("STRING", "REPEATED")}
BATCH_SOURCES = frozenset({SourceKind.CRM})  # positions without a change sequence number


class BigQueryWarehouse:
    """The ``bigquery:PROJECT`` warehouse (``api_endpoint``/``write_api_endpoint`` for
    bqemulator)."""

    capabilities = WarehouseCapabilities()  # events only; every write is a MERGE

    def __init__(self, config: Any, *, soft_deletes: bool = False, client: Any = None) -> None:
        from google.cloud.bigquery.retry import DEFAULT_RETRY

        self.config = config
        self.soft_deletes = soft_deletes
        self._client = client or _make_client(config)
        self._retry = DEFAULT_RETRY.with_timeout(15 if config.api_endpoint else 600)
        self._job_retry = None if config.api_endpoint else DEFAULT_RETRY
        self._writer = StorageWriter(config.write_api_endpoint)
        self.catalog = BigQueryTables(
            self._client, self.parts, self.run, _translated_errors, self._retry
        )
        self._merge = MergeApply(self)
        self._modes: dict[str, CdcApply | MergeApply] = {
            "cdc": CdcApply(self),
            "merge": self._merge,
        }
        self._watermarks: dict[str, tuple[str | None, float]] = {}
        self._diverged: set[str] = set()  # keyless tables already reported unmatched

    # --- plumbing --------------------------------------------------------------------

    def parts(self, name: str) -> tuple[str, str, str]:
        return (self.config.project, self.config.raw_dataset, name)

    def run(self, statement: str, params: Mapping[str, Any] | None = None) -> Any:
        """Run one statement with STRING parameters."""
        return self.run_typed(statement, {k: ("STRING", v) for k, v in (params or {}).items()})

    def run_typed(self, statement: str, params: Mapping[str, tuple[str, Any]]) -> Any:
        """Run one statement with typed parameters: name -> (BigQuery type, value)."""
        config = bigquery_job_config(params)
        with _translated_errors(statement):
            job = self._client.query(
                statement, job_config=config, retry=self._retry, job_retry=self._job_retry
            )
            return job.result(retry=self._retry)

    def append(
        self, name: str, schema: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], *, cdc: bool
    ) -> int:
        """Append rows to ``name``'s ``_default`` stream (with CDC pseudo-columns if ``cdc``)."""
        with _translated_errors(f"append rows to {name}"):
            return self._writer.append(
                self.parts(name), fields_of(list(schema.values()), cdc=cdc), rows
            )

    def drop(self, name: str) -> None:
        with _translated_errors(f"drop table {name}"):
            self._client.delete_table(
                ".".join(self.parts(name)), not_found_ok=True, retry=self._retry
            )
        self.catalog.forget(name)

    # --- writing ---------------------------------------------------------------------

    def apply(self, events: Sequence[ChangeEvent]) -> ApplyReport:
        started = time.monotonic()
        self.catalog.ensure_dataset(
            self.config.project, self.config.raw_dataset, self.config.location
        )
        reports = tuple(self._apply_table(batch) for _, batch in iter_tables(events))
        self._merge.merge_due()
        return ApplyReport(tables=reports, seconds=time.monotonic() - started)

    def mode_for(self, event: ChangeEvent) -> str:
        return "merge" if event.source_kind in BATCH_SOURCES else self.config.apply_mode

    def _apply_table(self, events: Sequence[ChangeEvent]) -> TableReport:
        name = events[0].table_id
        watermark = self.watermark(name)
        plan = plan_table(events, watermark, keyless=True)
        mode = self._modes[self.mode_for(events[0])]
        keyless = plan.needs_target
        if keyless:
            plan = resolve_plan(plan, self._keyless_target(name, plan, mode))
        applied = appended = 0
        if plan.primary_key or self.catalog.exists(name):
            types = infer_types(_images(plan), plan.source_types)
            layout = mode.layout(plan.primary_key)
            replica = self.catalog.ensure(name, types, {}, **layout)
            changelog = self.catalog.ensure(  # keyless: events, so no _capa_row_id key
                name + CHANGELOG_SUFFIX,
                {c: t for c, t in types.items() if c not in KEYLESS_COLUMNS},
                CHANGELOG_EXTRA,
                primary_key=() if keyless else layout["primary_key"],
                partition_by=META_COMMIT_TS,
            )
            ingested = _now()
            appended = self.append(
                name + CHANGELOG_SUFFIX,
                changelog,
                changelog_rows(plan, changelog, ingested),
                cdc=False,
            )
            applied = mode.apply(name, plan, replica, watermark, ingested)
        if plan.truncate_position:
            self._raise_watermark(name, plan.truncate_position)
        if plan.unmatched:
            self._tell_unmatched(name, plan.unmatched)
        return TableReport(
            name, plan.events, applied, plan.stale, appended, unmatched=len(plan.unmatched)
        )

    def _keyless_target(
        self, name: str, plan: TablePlan, mode: CdcApply | MergeApply
    ) -> KeylessTarget:
        """What the replica (and merge mode's unmerged stage) holds for a keyless batch."""
        if not needs_read(plan) or not self.catalog.exists(name):
            return KeylessTarget()
        if ROW_ID not in self.catalog.schema(name):
            raise WarehouseTerminalError(
                f"raw.{name} was replicated with a primary key, but its source table now has "
                "none; restore the key at the source, or drop the replica and resync"
            )
        tables = [self.parts(t) for t in (name, *mode.staged(name))]
        statement, params = target_query(tables, plan)
        rows = [dict(r.items()) for r in self.run_typed(statement, params)]
        return keyless_target(plan, latest_rows(rows))

    def _tell_unmatched(self, name: str, unmatched: Sequence[ChangeEvent]) -> None:
        """One warning per table and process when a keyless table diverges; later
        unmatched changes are counted (``TableReport.unmatched``), not logged."""
        if name in self._diverged:
            return
        self._diverged.add(name)
        logger.warning(
            "raw.%s no longer matches its source: %s (first at position %s; later ones are "
            "counted in the apply reports, not logged)",
            name,
            unmatched_reason(unmatched[0]),
            unmatched[0].position,
        )

    def _raise_watermark(self, name: str, position: str) -> None:
        state = self.catalog.schema(STATE_TABLE)
        self.append(
            STATE_TABLE, state, [{"table_name": name, "truncate_position": position}], cdc=False
        )
        self._watermarks[name] = (position, time.monotonic())

    def flush(self) -> None:
        """Apply everything held back now (merge mode's open cycles)."""
        for mode in self._modes.values():
            mode.flush()

    # --- reading ---------------------------------------------------------------------

    def watermark(self, name: str, *, fresh: bool = False) -> str | None:
        name = name.rpartition(".")[2]
        cached = self._watermarks.get(name)
        if (
            cached is not None
            and not fresh
            and time.monotonic() - cached[1] < self.config.watermark_refresh_s
        ):
            return cached[0]
        try:
            rows = list(
                self.run(sql.select_watermark_sql(self.parts(STATE_TABLE)), {"table": name})
            )
        except WarehouseTerminalError:
            return None  # no state table yet
        value = rows[0][0] if rows else None
        self._watermarks[name] = (value, time.monotonic())
        return value

    def table_names(self) -> list[str]:
        """Every table of the raw dataset (capa's own included)."""
        with _translated_errors("list tables"):
            found = self._client.list_tables(
                f"{self.config.project}.{self.config.raw_dataset}", retry=self._retry
            )
            return sorted(t.table_id for t in found)

    def tables(self) -> list[str]:
        return [
            f"{self.config.raw_dataset}.{t}"
            for t in self.table_names()
            if not t.startswith("_capa") and STAGE_INFIX not in t
        ]

    def rows(self, table: str, *, include_deleted: bool | None = None) -> list[dict[str, Any]]:
        name = table.rpartition(".")[2]
        if name.endswith(CHANGELOG_SUFFIX):
            return [dict(r.items()) for r in self.run(sql.select_changelog_sql(self.parts(name)))]
        show = self.soft_deletes if include_deleted is None else include_deleted
        where = "" if show else f" WHERE NOT `{META_DELETED}`"
        return [
            dict(r.items())
            for r in self.run(
                f"SELECT * FROM {sql.dialect('bigquery').table(self.parts(name))}{where}"
            )
        ]

    def row_count(self, table: str, *, include_deleted: bool | None = None) -> int:
        return len(self.rows(table, include_deleted=include_deleted))

    def query(
        self, statement: str, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        if params and not isinstance(params, Mapping):
            raise WarehouseTerminalError(
                "BigQuery queries take named parameters (@name), not a list"
            )
        named: Mapping[str, Any] = params if isinstance(params, Mapping) else {}
        for row in self.run(statement, {k: str(v) for k, v in named.items()}):
            yield dict(row.items())

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._writer.close()
            self._client.close()


def _make_client(config: Any) -> Any:
    from google.cloud import bigquery

    if not config.api_endpoint:
        from google.auth.exceptions import DefaultCredentialsError

        try:
            return bigquery.Client(project=config.project, location=config.location)
        except DefaultCredentialsError as exc:
            raise missing_google_credentials(f"BigQuery project {config.project!r}", exc) from None
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials

    return bigquery.Client(
        project=config.project,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=config.api_endpoint),
    )


def bigquery_job_config(params: Mapping[str, tuple[str, Any]]) -> Any:
    """A query job config binding ``params`` (name -> (type, value); ``ARRAY<T>`` binds a
    list of T)."""
    from google.cloud import bigquery

    bound: list[Any] = []
    for name, (kind, value) in params.items():
        if kind.startswith("ARRAY<"):
            bound.append(bigquery.ArrayQueryParameter(name, kind[6:-1], list(value)))
        else:
            bound.append(bigquery.ScalarQueryParameter(name, kind, value))
    return bigquery.QueryJobConfig(query_parameters=bound)


def _images(plan: TablePlan) -> Iterator[Mapping[str, Any]]:
    for change in plan.changes:
        yield change.values
    for event in plan.changelog:
        yield event.row or event.key


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


class _translated_errors:
    """google.api_core errors -> WarehouseTerminalError (4xx) / WarehouseTransientError."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is None or isinstance(exc, WarehouseTerminalError | WarehouseTransientError):
            return False
        from google.api_core import exceptions as gexc

        what = self.what.splitlines()[0][:200]
        if isinstance(exc, gexc.ClientError) and not isinstance(exc, gexc.TooManyRequests):
            raise WarehouseTerminalError(f"BigQuery rejected {what!r}: {exc}") from exc
        if isinstance(exc, gexc.GoogleAPIError | ConnectionError | TimeoutError):
            raise WarehouseTransientError(
                f"BigQuery failed on {what!r} (retry later): {exc}"
            ) from exc
        return False
