"""BigQuery: per table and batch, stage rows, then MERGE (one statement per target table).

1. plan the batch with :func:`capa.apply.plan_table` (same rules as the local lakehouse);
2. create/evolve ``<raw_dataset>.<name>``, ``<name>_changelog`` and ``_capa_state``
   (truncate watermarks) through the client API (new columns; widening by ALTER COLUMN);
3. stream the batch into a fresh staging table ``<name>__stage_<id>``: one ``event`` row
   per distinct event and one ``change`` row per key (values are data, never SQL text);
4. MERGE the ``event`` rows into the changelog (insert-only on ``_capa_event_id``), MERGE
   the ``change`` rows into the replica (QUALIFY ROW_NUMBER() dedupe by key, stale guard
   ``S._capa_position > T._capa_position``, keep-flags for unchanged columns, truncate
   deletes in the same statement), raise the watermark, drop the staging table.

Every statement is idempotent, so a crash between them is healed by the replayed batch.
MERGE/DDL text comes from :mod:`capa.warehouse.sql`. Errors raise
WarehouseTerminalError (4xx: bad SQL, bad data) or WarehouseTransientError (5xx, network).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from capa.apply import TablePlan, plan_table
from capa.codec import to_json_value, ts_us_to_iso
from capa.errors import (
    WarehouseTerminalError,
    WarehouseTransientError,
    missing_google_credentials,
)
from capa.events import STAGE_SUFFIX, ChangeEvent, iter_tables
from capa.warehouse import sql
from capa.warehouse.base import (
    CHANGELOG_SUFFIX,
    META_COMMIT_TS,
    META_DELETED,
    META_EVENT_ID,
    META_INGESTED_AT,
    META_OP,
    META_POSITION,
    ApplyReport,
    TableReport,
    WarehouseCapabilities,
)
from capa.warehouse.bigquery.types import bq_type, column_type, type_sql
from capa.warehouse.types import ColumnType, infer_types, widen

logger = logging.getLogger(__name__)

STATE_TABLE = "_capa_state"
STAGE = "_capa_stage"
UNCHANGED = "_capa_unchanged"
KEEP_PREFIX = "_capa_keep__"
META_TYPES = {
    META_POSITION: "STRING",
    META_OP: "STRING",
    META_COMMIT_TS: "TIMESTAMP",
    META_INGESTED_AT: "TIMESTAMP",
    META_EVENT_ID: "STRING",
    META_DELETED: "BOOL",
}


class BigQueryWarehouse:
    """The ``bigquery:PROJECT`` warehouse (``api_endpoint`` for bqemulator)."""

    capabilities = WarehouseCapabilities()  # events only; every write is a MERGE

    def __init__(self, config: Any, *, soft_deletes: bool = False, client: Any = None) -> None:
        from google.cloud.bigquery.retry import DEFAULT_RETRY

        self.config = config
        self.soft_deletes = soft_deletes
        self._client = client or _make_client(config)
        self._retry = DEFAULT_RETRY.with_timeout(15 if config.api_endpoint else 600)
        self._job_retry = None if config.api_endpoint else DEFAULT_RETRY

    # --- plumbing --------------------------------------------------------------------

    def _parts(self, name: str) -> tuple[str, str, str]:
        return (self.config.project, self.config.raw_dataset, name)

    def _run(self, statement: str, params: Mapping[str, Any] | None = None) -> Any:
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(
            query_parameters=[
                bigquery.ScalarQueryParameter(k, "STRING", v) for k, v in (params or {}).items()
            ]
        )
        with _translated_errors(statement):
            job = self._client.query(
                statement, job_config=config, retry=self._retry, job_retry=self._job_retry
            )
            return job.result(retry=self._retry)

    # --- writing ---------------------------------------------------------------------

    def apply(self, events: Sequence[ChangeEvent]) -> ApplyReport:
        started = time.monotonic()
        self._ensure_dataset()
        reports = tuple(self._apply_table(batch) for _, batch in iter_tables(events))
        return ApplyReport(tables=reports, seconds=time.monotonic() - started)

    def _apply_table(self, events: Sequence[ChangeEvent]) -> TableReport:
        name = events[0].table_id
        watermark = self.watermark(name)
        plan = plan_table(events, watermark)
        types = infer_types(_images(plan), plan.source_types)
        replica = self._ensure_table(name, types, {})
        changelog = self._ensure_table(
            name + CHANGELOG_SUFFIX, types, {UNCHANGED: ("STRING", "REPEATED")}
        )
        stage = self._stage(name, plan, replica, changelog)
        try:
            appended = self._merge_changelog(name, stage, changelog, plan)
            applied = self._merge_replica(name, stage, replica, plan, watermark)
        finally:
            with _translated_errors("drop staging table"):
                self._client.delete_table(".".join(stage), not_found_ok=True, retry=self._retry)
        if plan.truncate_position:
            self._run(
                sql.merge_watermark_sql(self._parts(STATE_TABLE)),
                {"table": name, "truncate": plan.truncate_position},
            )
        return TableReport(name, plan.events, applied, max(plan.events - applied, 0), appended)

    def _merge_changelog(
        self, name: str, stage: tuple[str, ...], columns: dict[str, Any], plan: TablePlan
    ) -> int:
        statement = sql.merge_changelog_sql(
            self._parts(name + CHANGELOG_SUFFIX), stage, list(columns)
        )
        first = min(e.position for e in plan.changelog)
        result = self._run(statement, {"stage": "event", "first_position": first})
        return int(getattr(result, "num_dml_affected_rows", 0) or 0)

    def _merge_replica(
        self,
        name: str,
        stage: tuple[str, ...],
        columns: dict[str, Any],
        plan: TablePlan,
        watermark: str | None,
    ) -> int:
        if not plan.changes and not plan.truncate_position:
            return 0
        spec = sql.MergeSpec(
            target=self._parts(name),
            source=stage,
            keys=plan.primary_key,
            columns=tuple(columns),
            keep=tuple(c for c in sorted(plan.keep_columns) if c in columns),
            keep_prefix=KEEP_PREFIX,
            stage_column=STAGE,
        )
        params = {
            "stage": "change",
            "watermark": watermark or "",
            "truncate": plan.truncate_position,
        }
        result = self._run(sql.merge_replica_sql(spec), params)
        return int(getattr(result, "num_dml_affected_rows", 0) or 0)

    # --- tables ----------------------------------------------------------------------

    def _ensure_dataset(self) -> None:
        from google.cloud import bigquery

        dataset = bigquery.Dataset(f"{self.config.project}.{self.config.raw_dataset}")
        dataset.location = self.config.location
        with _translated_errors("create dataset"):
            self._client.create_dataset(dataset, exists_ok=True, retry=self._retry)
            state = bigquery.Table(
                ".".join(self._parts(STATE_TABLE)),
                schema=[
                    bigquery.SchemaField("table_name", "STRING"),
                    bigquery.SchemaField("truncate_position", "STRING"),
                ],
            )
            self._client.create_table(state, exists_ok=True, retry=self._retry)

    def _ensure_table(
        self,
        name: str,
        wanted: Mapping[str, ColumnType | None],
        extra: Mapping[str, tuple[str, str]],
    ) -> dict[str, Any]:
        """Create or evolve a table; returns column name -> SchemaField of the final schema."""
        from google.cloud import bigquery

        table_id = ".".join(self._parts(name))
        with _translated_errors(f"create table {table_id}"):
            table = self._client.create_table(
                bigquery.Table(table_id, schema=_fields(wanted, extra)),
                exists_ok=True,
                retry=self._retry,
            )
        current = {f.name: f for f in table.schema}
        self._widen(name, current, wanted)
        new = [f for f in _fields(wanted, extra) if f.name not in current]
        if new:
            table.schema = [*table.schema, *new]
            with _translated_errors(f"add columns to {table_id}"):
                table = self._client.update_table(table, ["schema"], retry=self._retry)
            logger.info("added columns %s to %s", [f.name for f in new], table_id)
        return {f.name: f for f in table.schema}

    def _widen(
        self, name: str, current: Mapping[str, Any], wanted: Mapping[str, ColumnType | None]
    ) -> None:
        for column, incoming in wanted.items():
            if incoming is None or column not in current or column in META_TYPES:
                continue
            existing = column_type(current[column])
            target = widen(existing, incoming, column=column)
            if type_sql(target) != type_sql(existing):
                self._run(sql.alter_column_type_sql(self._parts(name), column, type_sql(target)))

    def _stage(
        self, name: str, plan: TablePlan, replica: Mapping[str, Any], changelog: Mapping[str, Any]
    ) -> tuple[str, ...]:
        from google.cloud import bigquery

        stage = self._parts(f"{name}{STAGE_SUFFIX}{uuid.uuid4().hex[:12]}")
        keep = [bigquery.SchemaField(KEEP_PREFIX + c, "BOOL") for c in sorted(plan.keep_columns)]
        fields = {**replica, **changelog, STAGE: bigquery.SchemaField(STAGE, "STRING")} | {
            f.name: f for f in keep
        }
        with _translated_errors(f"create staging table for {name}"):
            self._client.create_table(
                bigquery.Table(".".join(stage), schema=list(fields.values())), retry=self._retry
            )
            rows = list(_stage_rows(plan, set(fields)))
            for start in range(0, len(rows), 10_000):
                errors = self._client.insert_rows_json(
                    ".".join(stage), rows[start : start + 10_000], retry=self._retry
                )
                if errors:
                    raise WarehouseTerminalError(
                        f"BigQuery rejected staged rows of {name!r}: {errors[:3]}"
                    )
        return stage

    # --- reading ---------------------------------------------------------------------

    def watermark(self, name: str) -> str | None:
        name = name.rpartition(".")[2]
        try:
            rows = list(
                self._run(sql.select_watermark_sql(self._parts(STATE_TABLE)), {"table": name})
            )
        except WarehouseTerminalError:
            return None  # no state table yet
        return rows[0][0] if rows else None

    def tables(self) -> list[str]:
        with _translated_errors("list tables"):
            found = self._client.list_tables(
                f"{self.config.project}.{self.config.raw_dataset}", retry=self._retry
            )
            names = sorted(
                f"{self.config.raw_dataset}.{t.table_id}"
                for t in found
                if not t.table_id.startswith("_capa")
            )
        return names

    def rows(self, table: str, *, include_deleted: bool | None = None) -> list[dict[str, Any]]:
        name = table.rpartition(".")[2]
        show = self.soft_deletes if include_deleted is None else include_deleted
        where = "" if show or name.endswith(CHANGELOG_SUFFIX) else f" WHERE NOT `{META_DELETED}`"
        return [
            dict(r.items())
            for r in self._run(
                f"SELECT * FROM {sql.dialect('bigquery').table(self._parts(name))}{where}"
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
        for row in self._run(statement, {k: str(v) for k, v in named.items()}):
            yield dict(row.items())

    def close(self) -> None:
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


def _fields(
    wanted: Mapping[str, ColumnType | None], extra: Mapping[str, tuple[str, str]]
) -> list[Any]:
    from google.cloud import bigquery

    fields = []
    for name, column in wanted.items():
        if column is not None:
            type_name, mode, precision, scale = bq_type(column)
            options: dict[str, Any] = (
                {"precision": precision, "scale": scale} if precision is not None else {}
            )
            fields.append(bigquery.SchemaField(name, type_name, mode=mode, **options))
    fields += [bigquery.SchemaField(n, t) for n, t in META_TYPES.items()]
    fields += [bigquery.SchemaField(n, t, mode=m) for n, (t, m) in extra.items()]
    return fields


def _images(plan: TablePlan) -> Iterator[Mapping[str, Any]]:
    for change in plan.changes:
        yield change.values
    for event in plan.changelog:
        yield event.row or event.key


def _json_row(values: Mapping[str, Any], columns: set[str]) -> dict[str, Any]:
    row = {}
    for name, value in values.items():
        if name in columns:
            converted = to_json_value(value)
            row[name] = (
                [_finite_json(v) for v in converted if v is not None]
                if isinstance(converted, list)
                else _finite_json(converted)
            )
    return row


def _finite_json(value: Any) -> Any:
    """NaN/Infinity as the strings BigQuery's JSON row parser takes (it rejects the bare
    tokens); "nan"/"inf"/"-inf" is what google-cloud-bigquery's own insert_rows sends."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _stage_rows(plan: TablePlan, columns: set[str]) -> Iterator[dict[str, Any]]:
    ingested = to_json_value(_now())
    for e in plan.changelog:
        meta = _meta(e.position, e.op.value, e.commit_ts_us, e.event_id, e.op.is_delete, ingested)
        yield {
            **_json_row(e.row or e.key, columns),
            **meta,
            UNCHANGED: list(e.unchanged),
            STAGE: "event",
        }
    for c in plan.changes:
        meta = _meta(c.position, c.op.value, c.commit_ts_us, c.event_id, c.deleted, ingested)
        flags = {KEEP_PREFIX + k: k in c.keep for k in plan.keep_columns}
        yield {**_json_row(c.values, columns), **meta, **flags, STAGE: "change"}


def _meta(
    position: str, op: str, commit_ts_us: int | None, event_id: str, deleted: bool, ingested: str
) -> dict[str, Any]:
    return {
        META_POSITION: position,
        META_OP: op,
        META_COMMIT_TS: ts_us_to_iso(commit_ts_us),
        META_INGESTED_AT: ingested,
        META_EVENT_ID: event_id,
        META_DELETED: deleted,
    }


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
