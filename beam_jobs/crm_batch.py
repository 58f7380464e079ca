"""CRM batch ingestion: load one CRM extract into the raw layer through the warehouse port.

Run it (the beam env)::

    .venvs/beam/bin/python -m beam_jobs.crm_batch \\
        --extract /path/to/extract --warehouse local:.state/lakehouse [--full] \\
        [--contract connectors/crm/contract.yaml] [--max_reject_share 0.05]

``--extract`` is a local folder or ``gs://bucket/prefix`` (see ``connectors.crm.extract``).
Each row of each file is validated against the contract; good rows become canonical
``ChangeEvent``s (source ``crm``, table = object, op c/u, position
``batch_position(last_modified µs, load_id, row)``) applied with
``open_warehouse(spec).apply(events)``; bad rows go to ``raw.crm_crm_rejects`` with the
reason and the original line. In a full extract, live replica keys missing from the
extract become deletes. A load whose reject share exceeds ``--max_reject_share`` fails
(exit 1, message with the top reasons) and applies nothing. Completed loads are recorded
in ``raw.crm_crm_loads``; re-running a completed load is a no-op.

Runners (``--runner``, default the in-process FnApiRunner):

* Dataflow: ``--runner=DataflowRunner --project P --region R --temp_location gs://B/tmp
  --extract gs://B/crm/2026-11-01 --warehouse bigquery:P --setup_file ./setup.py``.
* Spark on-prem (portable, batch): start ``beam-runners-spark-3-job-server:2.77.0``, then
  ``--runner=PortableRunner --job_endpoint=HOST:8099 --environment_type=LOOPBACK``
  (``PROCESS``/``DOCKER`` on a cluster); or ``--runner=SparkRunner --spark_master_url=...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from capa.events import ChangeEvent
from connectors.crm.contract import CrmContract, load_contract
from connectors.crm.errors import CrmRejectThresholdExceeded
from connectors.crm.extract import ExtractFile, ExtractManifest, read_manifest
from connectors.crm.filestore import open_filestore
from connectors.crm.load import (
    LoadContext,
    Reject,
    reject_share,
    threshold_message,
    validate_record,
)
from connectors.crm.readers import read_records

logger = logging.getLogger(__name__)
NAMESPACE = "crm_batch"
MAX_REASONS = 50


def _counter(name: str) -> Any:
    return Metrics.counter(NAMESPACE, name)


# --- DoFns -------------------------------------------------------------------------------


class ReadExtractFileFn(beam.DoFn):
    """(file index, ExtractFile) -> (file index, RawRecord) for every record of the file."""

    def __init__(self, extract_url: str) -> None:
        self.extract_url = extract_url
        self.records = _counter("records_read")

    def process(self, element: tuple[int, ExtractFile]) -> Iterator[tuple[int, Any]]:
        index, spec = element
        data = open_filestore(self.extract_url).read_bytes(spec.name)
        for record in read_records(
            data, obj=spec.object, name=spec.name, fmt=spec.format, encoding=spec.encoding
        ):
            self.records.inc()
            yield index, record


class ValidateRowFn(beam.DoFn):
    """Raw record -> ValidRow (main) or (file index, Reject) on the ``rejects`` output."""

    REJECTS = "rejects"

    def __init__(self, contract: CrmContract) -> None:
        self.contract = contract
        self.rejected = _counter("rows_rejected")
        self.valid = _counter("rows_valid")

    def process(self, element: tuple[int, Any]) -> Iterator[Any]:
        index, record = element
        result = validate_record(self.contract, record, index)
        if isinstance(result, Reject):
            self.rejected.inc()
            yield beam.pvalue.TaggedOutput(self.REJECTS, (index, result))
        else:
            self.valid.inc()
            yield result


class ReadReplicaFn(beam.DoFn):
    """Object name -> ((object, key JSON), ReplicaRow) for every row of its replica."""

    def __init__(self, warehouse: str, contract: CrmContract) -> None:
        self.warehouse_spec, self.contract = warehouse, contract

    def process(self, obj: str) -> Iterator[tuple[tuple[str, str], Any]]:
        from capa.warehouse import open_warehouse
        from connectors.crm.replica import read_replica

        warehouse = open_warehouse(self.warehouse_spec)
        try:
            for key, state in read_replica(warehouse, self.contract, self.contract.object(obj)):
                yield (obj, key), state
        finally:
            warehouse.close()


class PlanKeyFn(beam.DoFn):
    """(object, key) with its extract rows, replica state, rejects -> change events."""

    def __init__(self, ctx: LoadContext) -> None:
        self.ctx = ctx
        self.counters = {k: _counter(k) for k in ("unchanged", "events", "deletes")}

    def process(
        self, element: tuple[tuple[str, str], dict[str, Iterable[Any]]]
    ) -> Iterator[ChangeEvent]:
        (obj, key), groups = element
        contract = self.ctx.contract.object(obj)
        planned = self.ctx.plan_key(
            contract, key, groups["rows"], groups["replica"], any(groups["rejected"])
        )
        for kind, event in planned:
            self.counters[kind if event is None else "events"].inc()
            if event is not None:
                if event.op.is_delete:
                    self.counters["deletes"].inc()
                yield event


class ApplyTableFn(beam.DoFn):
    """(raw table, events) -> one atomic warehouse apply; emits a report dict.

    The ``gate`` side input (the reject-share check) must be computed before any apply.
    """

    def __init__(self, warehouse: str) -> None:
        self.warehouse_spec = warehouse
        self.applied = _counter("rows_applied")

    def setup(self) -> None:
        from capa.warehouse import open_warehouse

        self.warehouse = open_warehouse(self.warehouse_spec)

    def process(
        self, element: tuple[str, Iterable[ChangeEvent]], gate: dict[str, Any]
    ) -> Iterator[dict[str, Any]]:
        table, events = element
        report = self.warehouse.apply(list(events))
        applied = sum(t.applied for t in report.tables)
        self.applied.inc(applied)
        yield {"table": table, "events": report.events, "applied": applied}

    def teardown(self) -> None:
        self.warehouse.close()


class RecordLoadFn(beam.DoFn):
    """Write the load's row into the loads ledger, after every table has been applied."""

    def __init__(self, warehouse: str, ctx: LoadContext) -> None:
        self.warehouse_spec, self.ctx = warehouse, ctx

    def process(
        self, _: Any, gate: dict[str, Any], reports: list[dict[str, Any]]
    ) -> Iterator[dict[str, Any]]:
        from capa.warehouse import open_warehouse

        summary = {**gate, "tables": {r["table"]: r for r in reports}}
        warehouse = open_warehouse(self.warehouse_spec)
        try:
            warehouse.apply([self.ctx.load_event(summary, datetime.now(UTC))])
        finally:
            warehouse.close()
        logger.info("CRM load %s recorded: %s", self.ctx.load_id, json.dumps(summary, default=str))
        yield summary


class RejectStatsFn(beam.CombineFn):
    """Rejects -> {"count": n, "reasons": {reason: [count, example Reject]}} (bounded)."""

    def create_accumulator(self) -> dict[str, Any]:
        return {"count": 0, "reasons": {}}

    def add_input(self, acc: dict[str, Any], element: tuple[int, Reject]) -> dict[str, Any]:
        reject = element[1]
        acc["count"] += 1
        reasons = acc["reasons"]
        slot = f"{reject.object}: {reject.reason}"
        if slot in reasons:
            reasons[slot][0] += 1
        elif len(reasons) < MAX_REASONS:
            reasons[slot] = [1, reject]
        return acc

    def merge_accumulators(self, accs: Iterable[dict[str, Any]]) -> dict[str, Any]:
        merged = self.create_accumulator()
        for acc in accs:
            merged["count"] += acc["count"]
            for slot, (n, example) in acc["reasons"].items():
                if slot in merged["reasons"]:
                    merged["reasons"][slot][0] += n
                elif len(merged["reasons"]) < MAX_REASONS:
                    merged["reasons"][slot] = [n, example]
        return merged

    def extract_output(self, acc: dict[str, Any]) -> dict[str, Any]:
        return acc


def check_reject_share(
    _: Any, total: int, stats: dict[str, Any], load_id: str, limit: float
) -> dict[str, Any]:
    """The gate: raise (failing the pipeline before any apply) if too many rows were rejected."""
    share = reject_share(total, stats["count"])
    if share > limit:
        examples = [ex for n, ex in stats["reasons"].values() for _ in range(n)]
        raise CrmRejectThresholdExceeded(threshold_message(load_id, total, examples, limit))
    return {
        "load_id": load_id,
        "rows_read": total,
        "rejected": stats["count"],
        "reject_share": round(share, 6),
    }


# --- PTransforms ---------------------------------------------------------------------------


class ReadAndValidate(beam.PTransform):
    """Files of the extract -> valid rows (main) and rejects."""

    def __init__(self, extract_url: str, manifest: ExtractManifest, contract: CrmContract) -> None:
        super().__init__()
        self.extract_url, self.manifest, self.contract = extract_url, manifest, contract

    def expand(self, pbegin: Any) -> Any:
        return (
            pbegin
            | "ListFiles" >> beam.Create(list(enumerate(self.manifest.files)))
            | "ReadRecords" >> beam.ParDo(ReadExtractFileFn(self.extract_url))
            | "Reshuffle" >> beam.Reshuffle()
            | "ValidateRows"
            >> beam.ParDo(ValidateRowFn(self.contract)).with_outputs(
                ValidateRowFn.REJECTS, main="valid"
            )
        )


class PlanChanges(beam.PTransform):
    """Valid rows + rejects + the replica's current keys -> change events (c/u/d)."""

    def __init__(self, ctx: LoadContext, warehouse: str, objects: list[str], rejects: Any) -> None:
        super().__init__()
        self.ctx, self.warehouse, self.objects, self.rejects = ctx, warehouse, objects, rejects

    def expand(self, valid: Any) -> Any:
        replica = (
            valid.pipeline
            | "ListObjects" >> beam.Create(self.objects)
            | "ReadReplicaKeys" >> beam.ParDo(ReadReplicaFn(self.warehouse, self.ctx.contract))
        )
        rows = valid | "KeyRows" >> beam.Map(lambda r: ((r.object, r.key), r))
        rejected = (
            self.rejects
            | "KeepRejectKeys" >> beam.Filter(lambda ir: ir[1].key is not None)
            | "KeyRejects" >> beam.Map(lambda ir: ((ir[1].object, ir[1].key), True))
        )
        return (
            {"rows": rows, "replica": replica, "rejected": rejected}
            | "JoinWithReplica" >> beam.CoGroupByKey()
            | "PlanKeys" >> beam.ParDo(PlanKeyFn(self.ctx))
        )


class ApplyToWarehouse(beam.PTransform):
    """Change events -> one atomic apply per raw table, only after the gate passed."""

    def __init__(self, warehouse: str, gate: Any) -> None:
        super().__init__()
        self.warehouse, self.gate = warehouse, gate

    def expand(self, events: Any) -> Any:
        return (
            events
            | "KeyByTable" >> beam.Map(lambda e: (e.table_id, e))
            | "GroupByTable" >> beam.GroupByKey()
            | "ApplyTables"
            >> beam.ParDo(ApplyTableFn(self.warehouse), gate=beam.pvalue.AsSingleton(self.gate))
        )


# --- pipeline ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags; defaults come from capa's typed config (``crm`` and ``warehouse`` sections)."""
    from beam_jobs.options import _flag
    from capa.config import load_settings

    settings = load_settings()
    wh = settings.warehouse
    default_wh = f"local:{wh.path}" if wh.type == "local" else f"bigquery:{wh.project}"
    parser.add_argument("--extract", required=True, help="Extract folder or gs://bucket/prefix.")
    parser.add_argument(
        "--warehouse", default=default_wh, help="Warehouse spec: local:DIR or bigquery:PROJECT."
    )
    parser.add_argument(
        "--contract",
        default=str(settings.crm.contract) if settings.crm.contract else None,
        help="Contract YAML (default: connectors/crm/contract.yaml).",
    )
    parser.add_argument(
        "--full",
        nargs="?",
        const=True,
        default=False,
        type=_flag,
        help="Treat the extract as a full snapshot (deletes). A bare --full or --full=true|false "
        "(Flex Template parameters and Airflow's Beam operator pass a value).",
    )
    parser.add_argument(
        "--max_reject_share",
        "--max-reject-share",
        type=float,
        default=settings.crm.max_reject_share,
        help="Fail the load (apply nothing) above this share of rejected rows.",
    )


def build_pipeline(
    p: beam.Pipeline, args: argparse.Namespace, manifest: ExtractManifest, contract: CrmContract
) -> None:
    ctx = LoadContext(contract, manifest.load_id, manifest.mode, manifest.extracted_at_us)
    read = p | "ReadAndValidate" >> ReadAndValidate(args.extract, manifest, contract)
    records = (read.valid, read.rejects | "DropIndex" >> beam.Map(lambda ir: ir[1]))
    total = (
        records | "FlattenAll" >> beam.Flatten() | "CountRows" >> beam.combiners.Count.Globally()
    )
    stats = read.rejects | "SummariseRejects" >> beam.CombineGlobally(RejectStatsFn())
    gate = (
        p
        | "GateSeed" >> beam.Create([None])
        | "CheckRejectShare"
        >> beam.Map(
            check_reject_share,
            total=beam.pvalue.AsSingleton(total),
            stats=beam.pvalue.AsSingleton(stats),
            load_id=manifest.load_id,
            limit=args.max_reject_share,
        )
    )
    objects = sorted({f.object for f in manifest.files})
    changes = read.valid | "PlanChanges" >> PlanChanges(ctx, args.warehouse, objects, read.rejects)
    reject_events = read.rejects | "ToRejectEvents" >> beam.MapTuple(
        lambda i, r: ctx.reject_event(r, i)
    )
    reports = (
        (changes, reject_events)
        | "FlattenEvents" >> beam.Flatten()
        | "ApplyToWarehouse" >> ApplyToWarehouse(args.warehouse, gate)
    )
    (
        p
        | "LedgerSeed" >> beam.Create([None])
        | "RecordLoad"
        >> beam.ParDo(
            RecordLoadFn(args.warehouse, ctx),
            gate=beam.pvalue.AsSingleton(gate),
            reports=beam.pvalue.AsList(reports),
        )
    )


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Run one load; returns its summary (``{"skipped": True, ...}`` for a completed load)."""
    from beam_jobs.options import RUNNERS
    from capa.warehouse import open_warehouse
    from connectors.crm.replica import load_completed

    parser = argparse.ArgumentParser(prog="beam_jobs.crm_batch", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args, beam_args = parser.parse_known_args(argv)
    contract = load_contract(args.contract)
    manifest = read_manifest(open_filestore(args.extract), contract, full=args.full)
    warehouse = open_warehouse(args.warehouse)
    try:
        if load_completed(warehouse, contract, manifest.load_id):
            logger.info("CRM load %s is already complete: nothing to do", manifest.load_id)
            return {"load_id": manifest.load_id, "skipped": True}
    finally:
        warehouse.close()
    options = PipelineOptions(beam_args)
    runner = _runner(options, RUNNERS)
    with beam.Pipeline(runner=runner, options=options) as p:
        build_pipeline(p, args, manifest, contract)
    return _summary(p.result, manifest)


def _runner(options: PipelineOptions, registry: dict[str, Any]) -> Any:
    standard = options.view_as(StandardOptions)
    name = standard.runner or "FnApiRunner"
    factory = registry.get(name)
    if factory is None:
        return name
    standard.runner = None
    return factory()


def _summary(result: Any, manifest: ExtractManifest) -> dict[str, Any]:
    counters = result.metrics().query()["counters"]
    summary: dict[str, Any] = {"load_id": manifest.load_id, "mode": manifest.mode, "skipped": False}
    for c in counters:
        if c.key.metric.namespace == NAMESPACE:
            summary[c.key.metric.name] = summary.get(c.key.metric.name, 0) + c.committed
    return summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        summary = run(argv)
    except CrmRejectThresholdExceeded as exc:
        logger.error("%s", exc)
        return 1
    except Exception as exc:
        cause = _threshold_cause(exc)
        if cause is None:
            raise
        logger.error("%s", cause)
        return 1
    print(json.dumps(summary, sort_keys=True))
    return 0


def _threshold_cause(exc: BaseException) -> BaseException | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, CrmRejectThresholdExceeded) or "CrmRejectThresholdExceeded" in str(
            seen
        ):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
