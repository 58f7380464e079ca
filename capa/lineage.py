"""OpenLineage run events: which datasets a capa job read and wrote.

Two jobs report (namespace :data:`JOB_NAMESPACE`):

* ``apply`` (the streaming apply job): input the canonical Kafka topic, outputs the raw
  tables it wrote. One run per job process: ``START`` when it starts, ``RUNNING`` once each
  time a batch writes a table no earlier event of the run named (bounded by the number of
  tables, never per batch), ``COMPLETE`` at a clean stop, ``FAIL`` when it stops on an error.
* ``consumption.<model>`` (one per model of a consumption build): inputs the raw and
  consumption tables its SQL names (``raw``/``raw_history``/``ref``), output its
  consumption table; ``START`` then ``COMPLETE`` or ``FAIL``.

Datasets are named as the OpenLineage naming spec says (:mod:`openlineage.client.naming`):
a Kafka topic ``kafka://host:port`` / ``topic``, a Delta table of the local lakehouse
``file`` / its absolute path, a BigQuery table ``bigquery`` / ``project.dataset.table``.

The transport is OpenLineage's own configuration (``OPENLINEAGE_CONFIG``, an
``openlineage.yml``, ``OPENLINEAGE__TRANSPORT__*`` variables or ``OPENLINEAGE_URL``); with
none of them set, :func:`emitter` returns a no-op and nothing is imported or sent. A failing
transport is logged, never raised: lineage is informative and must not stop a pipeline.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: a runtime without the client (a Dataproc image)
    from openlineage.client.event_v2 import RunEvent
    from openlineage.client.naming.dataset import DatasetNaming

logger = logging.getLogger(__name__)

JOB_NAMESPACE = "capa"
APPLY_JOB = "apply"
# The producer URI of every event: capa has no public home page, so a URN naming it and its version.
PRODUCER = "urn:capa:0.1.0"
_ENV_SETTINGS = ("OPENLINEAGE_CONFIG", "OPENLINEAGE_URL")


@dataclass(frozen=True, slots=True)
class Dataset:
    """A dataset as OpenLineage names it."""

    namespace: str
    name: str

    @classmethod
    def named(cls, naming: DatasetNaming) -> Dataset:
        return cls(naming.get_namespace(), naming.get_name())


def kafka_topic(bootstrap: str, topic: str) -> Dataset:
    """The topic on the first broker of ``bootstrap`` (``host:port[,host:port...]``)."""
    from openlineage.client.naming.dataset import Kafka

    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    return Dataset.named(Kafka(host or port, port if host else "9092", topic))


def delta_table(path: Path | str) -> Dataset:
    """A Delta table of the local lakehouse, by its absolute path."""
    from openlineage.client.naming.dataset import LocalFileSystem

    return Dataset.named(LocalFileSystem(str(Path(path).resolve())))


def bigquery_table(project: str, dataset: str, table: str) -> Dataset:
    from openlineage.client.naming.dataset import BigQuery

    return Dataset.named(BigQuery(project, dataset, table))


def warehouse_table(config: Any, namespace: str, name: str) -> Dataset:
    """Table ``namespace.name`` of a warehouse config (:func:`capa.warehouse.parse_spec`)."""
    if config.type == "bigquery":
        dataset = config.raw_dataset if namespace == "raw" else config.consumption_dataset
        return bigquery_table(config.project, dataset, name)
    return delta_table(Path(config.path) / namespace / name)


def run_event(
    state: str,
    run_id: str,
    job: str,
    inputs: Sequence[Dataset] = (),
    outputs: Sequence[Dataset] = (),
) -> RunEvent:
    """One OpenLineage run event (``state``: START, RUNNING, COMPLETE, FAIL) of job ``job``."""
    from openlineage.client.event_v2 import (
        InputDataset,
        Job,
        OutputDataset,
        Run,
        RunEvent,
        RunState,
    )

    return RunEvent(
        eventTime=datetime.now(UTC).isoformat(),
        producer=PRODUCER,
        eventType=RunState(state),
        run=Run(runId=run_id),
        job=Job(namespace=JOB_NAMESPACE, name=job),
        inputs=[InputDataset(namespace=d.namespace, name=d.name) for d in inputs],
        outputs=[OutputDataset(namespace=d.namespace, name=d.name) for d in outputs],
    )


def new_run_id() -> str:
    """A UUIDv7 run id, as OpenLineage recommends (time-ordered)."""
    from openlineage.client.uuid import generate_new_uuid

    return str(generate_new_uuid())


class Emitter:
    """Sends run events through an OpenLineage client; ``client=None`` sends nothing."""

    def __init__(self, client: Any | None) -> None:
        self._client = client

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def emit(
        self,
        state: str,
        run_id: str,
        job: str,
        inputs: Sequence[Dataset] = (),
        outputs: Sequence[Dataset] = (),
    ) -> None:
        """Send one run event (nothing when disabled); a transport error is logged only."""
        if self._client is None:
            return
        try:
            self._client.emit(run_event(state, run_id, job, inputs, outputs))
        except Exception as exc:  # lineage never stops the pipeline
            logger.warning("OpenLineage %s event of %s not sent: %s", state, job, exc)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def configured() -> bool:
    """Whether OpenLineage's own configuration names a transport (else: no-op)."""
    if any(os.environ.get(name) for name in _ENV_SETTINGS):
        return True
    if any(k.startswith("OPENLINEAGE__TRANSPORT") for k in os.environ):
        return True
    return any(
        (base / "openlineage.yml").is_file()
        for base in (Path.cwd(), Path("~/.openlineage").expanduser())
    )


def emitter() -> Emitter:
    """An emitter with the configured transport, or a no-op one when none is configured."""
    if not configured() or os.environ.get("OPENLINEAGE_DISABLED", "").strip().lower() == "true":
        return Emitter(None)
    try:
        from openlineage.client import OpenLineageClient
    except ImportError:
        logger.warning("OpenLineage is configured but openlineage-python is not installed")
        return Emitter(None)
    return Emitter(OpenLineageClient())


@dataclass(slots=True)
class ApplyRun:
    """The lineage of one streaming apply run: START, a RUNNING per newly written table,
    then COMPLETE or FAIL (each naming every table written so far)."""

    emitter: Emitter
    topic: Callable[[], Dataset]  # the input topic's dataset
    table: Callable[[str], Dataset]  # raw table name -> its dataset
    run_id: str = ""
    written: dict[str, Dataset] = field(default_factory=dict)

    def _emit(self, state: str) -> None:
        outputs = list(self.written.values())
        self.emitter.emit(state, self.run_id, APPLY_JOB, [self.topic()], outputs)

    def start(self) -> None:
        if self.emitter.enabled:
            self.run_id = new_run_id()
            self._emit("START")

    def wrote(self, tables: Iterable[str]) -> None:
        """Tables a batch wrote: one RUNNING event if any of them is new to this run."""
        if not self.emitter.enabled:
            return
        new = sorted(set(tables) - self.written.keys())
        if not new:
            return
        self.written.update((name, self.table(name)) for name in new)
        self._emit("RUNNING")

    def end(self, failed: bool) -> None:
        if self.emitter.enabled:
            self._emit("FAIL" if failed else "COMPLETE")
            self.emitter.close()


def apply_run(emitter: Emitter, bootstrap: str, topic: str, warehouse: Any) -> ApplyRun:
    """The lineage of a streaming apply run from ``topic`` into ``warehouse`` (a config)."""
    return ApplyRun(
        emitter,
        lambda: kafka_topic(bootstrap, topic),
        lambda name: warehouse_table(warehouse, "raw", name),
    )


@contextmanager
def job_run(
    emitter: Emitter, job: str, inputs: Sequence[Dataset], outputs: Sequence[Dataset]
) -> Iterator[str]:
    """START, then COMPLETE when the block ends, FAIL when it raises (nothing when the
    emitter is disabled); yields the run id."""
    if not emitter.enabled:
        yield ""
        return
    run_id = new_run_id()
    emitter.emit("START", run_id, job, inputs, outputs)
    try:
        yield run_id
    except BaseException:
        emitter.emit("FAIL", run_id, job, inputs, outputs)
        raise
    emitter.emit("COMPLETE", run_id, job, inputs, outputs)
