"""OpenLineage runs of model builds (:mod:`capa.lineage`): one job ``consumption.<model>``
per model, its inputs the raw and consumption tables its SQL names, its output its table."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from capa import lineage
from spark_jobs.project import Model

# (layer, name) -> dataset, layer "raw" or "consumption"
TableNaming = Callable[[str, str], lineage.Dataset]


def model_run(
    emitter: lineage.Emitter, model: Model, table: TableNaming
) -> AbstractContextManager[str]:
    """START now; COMPLETE when the block ends, FAIL when it raises (disabled: nothing)."""
    if not emitter.enabled:  # names nothing: no OpenLineage import on a runtime without it
        return nullcontext("")
    raw = dict.fromkeys(model.raw_inputs + model.history_inputs)
    inputs = [table("raw", n) for n in raw] + [table("consumption", n) for n in model.refs]
    output = table("consumption", model.name)
    return lineage.job_run(emitter, f"consumption.{model.name}", inputs, [output])
