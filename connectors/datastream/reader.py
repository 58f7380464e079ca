"""Datastream bucket reader: GCS files -> canonical events on Kafka, each file exactly once.

Datastream writes ``<prefix>/<schema>_<table>/yyyy/mm/dd/hh/mm/<file>`` objects (Avro or
JSON lines, optionally gzipped). Two ways to learn about new files:

* **poll** (``capa ingest datastream --bucket B --prefix P``): list the bucket every few
  seconds, skipping what the checkpoint says is done;
* **notification** (GCP): a Pub/Sub subscription on the bucket's ``OBJECT_FINALIZE``
  notifications calls :meth:`DatastreamBucketReader.handle_notification` per message.

Per file: download that exact generation, decode ALL records (a corrupt or half-written
file goes whole to the dead-letter topic with the reason, nothing else is produced),
normalise, produce, wait for Kafka's acknowledgements, and only then mark the file done in
the checkpoint. A crash before the checkpoint re-produces the file (same ``event_id``s);
after it, the file is never read again.

Size bounds: a file larger than ``datastream.max_file_bytes`` (downloaded, or once
gunzipped) is one dead letter naming the file; a record whose change event is over
``kafka.max_message_bytes`` is a dead letter with its table, key, position and record
index (the producer's size policy). In both cases the file is marked done and the reader
moves on to the next file.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from capa import metrics
from capa.config import CapaSettings
from capa.errors import ConfigError, DecodeError, missing_google_credentials
from capa.events import ChangeEvent
from connectors.base import READERS, FileReader, Normalizer, RawRecord, normalize_one
from connectors.base import DeadLetter as BaseDeadLetter
from connectors.datastream.backfill import BulkBackfill
from connectors.datastream.checkpoint import FileCheckpoint, table_dir
from connectors.datastream.files import DEFAULT_MAX_FILE_BYTES, maybe_gunzip
from connectors.datastream.normalizer import DatastreamNormalizer
from connectors.kafka.dlq import DeadLetter, Provenance
from connectors.kafka.producer import KafkaChangeProducer, flush_with_retry

logger = logging.getLogger(__name__)

ORIGIN = "datastream"
COMPONENT = "datastream-reader"  # the ``component`` label of its metrics


@dataclass(frozen=True)
class ObjectRef:
    """One GCS object version."""

    bucket: str
    name: str
    generation: int

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}#{self.generation}"


@dataclass
class FileOutcome:
    ref: ObjectRef
    status: str  # "produced", "bulk-loaded", "dead-lettered", "already-done", "missing", "ignored"
    events: int = 0
    dead_letters: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)  # of the per-record dead letters
    skip_kinds: list[str] = field(default_factory=list)


@dataclass
class PollStats:
    files: int = 0
    events: int = 0
    dead_letters: int = 0
    outcomes: list[FileOutcome] = field(default_factory=list)

    def add(self, outcome: FileOutcome) -> None:
        self.outcomes.append(outcome)
        if outcome.status in ("produced", "bulk-loaded", "dead-lettered"):
            self.files += 1
        self.events += outcome.events
        self.dead_letters += outcome.dead_letters


class DatastreamBucketReader:
    """Reads one Datastream stream's files from a bucket into the canonical topic."""

    def __init__(
        self,
        *,
        storage_client: Any,
        bucket: str,
        prefix: str,
        normalizer: Normalizer,
        producer: KafkaChangeProducer,
        checkpoint: FileCheckpoint,
        source: str,
        grace: timedelta = timedelta(minutes=120),
        stop: threading.Event | None = None,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        audit_every: int = 720,
        backfill: BulkBackfill | None = None,
    ) -> None:
        self.client = storage_client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.normalizer = normalizer
        self.producer = producer
        self.checkpoint = checkpoint
        self.source = source
        self.grace = grace
        self.stop = stop or threading.Event()
        self.max_file_bytes = max_file_bytes
        self.audit_every = audit_every
        self.backfill = backfill  # pure keyed backfill files -> bulk writer (else Kafka)
        self._polls = 0
        metrics.metric("capa_datastream_late_files").labels(source)  # a series from the start
        self._tables: dict[str, str] = {}  # table directory -> table label, from its events

    # --- poll mode -----------------------------------------------------------------

    def poll_once(self) -> PollStats:
        """Process every not-yet-done file under the prefix, oldest name first."""
        stats = PollStats()
        for ref in self.pending_objects():
            if self.stop.is_set():
                break
            stats.add(self.process_object(ref))
            metrics.metric("capa_datastream_files_pending").labels(self.source).dec()
        self.checkpoint.compact(self.grace)
        if self.audit_every and self._polls % self.audit_every == 0 and not self.stop.is_set():
            for ref in self.audit_late_files():
                stats.add(self.process_object(ref))
        self._polls += 1
        return stats

    def audit_late_files(self) -> list[ObjectRef]:
        """Files that arrived under a table's watermark after it was sealed (never read).

        Lists every name below each watermark (a full listing of that table's history, so
        it runs every ``audit_every`` polls, the first poll included); see
        :mod:`connectors.datastream.checkpoint` for how a never-read file is told apart.
        """
        late = []
        for directory, mark in sorted(self.checkpoint.watermarks.items()):
            listed = [
                (blob.name, int(blob.generation))
                for blob in self.client.list_blobs(self.bucket, prefix=directory, end_offset=mark)
                if not blob.name.endswith("/")
            ]
            found = self.checkpoint.audit(directory, listed)
            late += [ObjectRef(self.bucket, name, generation) for name, generation in found]
        return sorted(late, key=lambda r: r.name)

    def run(self, interval_s: float) -> PollStats:
        """Poll until ``stop`` is set; returns the totals."""
        total = PollStats()
        while not self.stop.is_set():
            stats = self.poll_once()
            for outcome in stats.outcomes:
                total.add(outcome)
            if stats.files:
                logger.info("poll: %d file(s), %d event(s)", stats.files, stats.events)
            self.stop.wait(interval_s)
        return total

    def pending_objects(self) -> list[ObjectRef]:
        refs = []
        for directory in self._table_dirs():
            offset = self.checkpoint.start_offset(directory)
            for blob in self.client.list_blobs(self.bucket, prefix=directory, start_offset=offset):
                if blob.name.endswith("/"):
                    continue
                ref = ObjectRef(self.bucket, blob.name, int(blob.generation))
                if not self.checkpoint.is_done(ref.name, ref.generation):
                    refs.append(ref)
        listed = {ref.name for ref in refs}
        refs += [  # late files an audit found and a crash kept from being read
            ObjectRef(self.bucket, name, generation)
            for name, generation in self.checkpoint.late.items()
            if name not in listed
        ]
        metrics.metric("capa_datastream_files_pending").labels(self.source).set(len(refs))
        return sorted(refs, key=lambda r: r.name)

    def _table_dirs(self) -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        listing = self.client.list_blobs(self.bucket, prefix=base, delimiter="/")
        for _ in listing.pages:  # prefixes fill in as the pages are read
            pass
        return sorted(listing.prefixes)

    # --- notification mode -----------------------------------------------------------

    def handle_notification(self, message: Mapping[str, Any]) -> FileOutcome | None:
        """Process the object named by a GCS Pub/Sub notification (None if not for us)."""
        ref = parse_gcs_notification(message)
        if ref is None:
            return None
        if ref.bucket != self.bucket or not ref.name.startswith(self.prefix):
            logger.info(
                "ignoring notification for %s (not under gs://%s/%s)",
                ref.uri,
                self.bucket,
                self.prefix,
            )
            return FileOutcome(ref, "ignored")
        return self.process_object(ref)

    # --- one file --------------------------------------------------------------------

    def read_file(self, data: bytes, name: str) -> list[Any]:
        """Decoded records and per-record dead letters of one file."""
        try:
            reader = reader_for(name)
        except ConfigError as exc:
            return [BaseDeadLetter(name, None, str(exc), data)]
        if len(data) > self.max_file_bytes:
            reason = f"file is over datastream.max_file_bytes={self.max_file_bytes}; not read"
            return [BaseDeadLetter(name, None, reason, data)]
        unzipped = maybe_gunzip(data, name, self.max_file_bytes)
        if isinstance(unzipped, BaseDeadLetter):
            return [unzipped]
        return list(reader(unzipped, name))

    def process_object(self, ref: ObjectRef) -> FileOutcome:
        if self.checkpoint.is_done(ref.name, ref.generation):
            return FileOutcome(ref, "already-done")
        if self.checkpoint.is_late(ref.name, ref.generation):
            self._late_alarm(ref)
        data = self._download(ref)
        if data is None:
            self.checkpoint.forget_late(ref.name)  # deleted before it could be read
            return FileOutcome(ref, "missing")
        items = self.read_file(data, ref.name)
        outcome = self._load_backfill(ref, items)
        if outcome is None:
            results = self._normalised(items, data)
            outcome = self._produce_file(ref, data, items, results)
            flush_with_retry(
                self.producer,
                lambda: self._produce_file(ref, data, items, results, count=False),
                stop=self.stop,
            )
        self.checkpoint.mark_done(ref.name, ref.generation)
        metrics.metric("capa_datastream_files_processed").labels(self.source, outcome.status).inc()
        logger.info(
            "%s: %s, %d event(s), %d dead letter(s)",
            ref.uri,
            outcome.status,
            outcome.events,
            outcome.dead_letters,
        )
        return outcome

    def _late_alarm(self, ref: ObjectRef) -> None:
        """A file arrived under its table's watermark: read now, and said out loud."""
        directory = table_dir(ref.name, self.checkpoint.prefix)
        logger.warning(
            "late Datastream file %s: its name is at or below the checkpoint watermark %s of "
            "%s (files more than %s behind the newest are folded), so no poll listed it; "
            "reading it now (its events are applied by position like any other)",
            ref.uri,
            self.checkpoint.watermarks.get(directory),
            directory,
            self.grace,
        )
        metrics.metric("capa_datastream_late_files").labels(self.source).inc()

    def _download(self, ref: ObjectRef) -> bytes | None:
        from google.api_core.exceptions import NotFound, RequestRangeNotSatisfiable

        blob = self.client.bucket(ref.bucket).blob(ref.name, generation=ref.generation)
        try:  # one byte past the bound tells an oversize file without holding all of it
            return bytes(blob.download_as_bytes(start=0, end=self.max_file_bytes))
        except RequestRangeNotSatisfiable:  # a range of an empty object
            return b""
        except NotFound:
            logger.warning("%s no longer exists; nothing to read", ref.uri)
            return None

    def _normalised(self, items: list[Any], data: bytes) -> list[Any] | None:
        """Each item's event, dead letter or skip; None for an unreadable file."""
        if not items or any(
            isinstance(i, BaseDeadLetter) and _is_whole_file(i, data) for i in items
        ):
            return None
        return [
            item if isinstance(item, BaseDeadLetter) else normalize_one(self.normalizer, item)
            for item in items
        ]

    def _load_backfill(self, ref: ObjectRef, items: list[Any]) -> FileOutcome | None:
        """A pure keyed backfill file written by the bulk writer (None: produce it)."""
        if self.backfill is None or not items:
            return None
        if any(isinstance(item, BaseDeadLetter) for item in items):
            return None
        rows = self.backfill.load(items, ref.name, ref.generation)
        if rows is None:
            return None
        first = normalize_one(self.normalizer, items[0])
        if isinstance(first, ChangeEvent):
            self._learn_table(ref, first)
        metrics.record_received(COMPONENT, self._table_of(ref), len(items))
        return FileOutcome(ref, "bulk-loaded", events=rows)

    def _produce_file(
        self,
        ref: ObjectRef,
        data: bytes,
        items: list[Any],
        results: list[Any] | None,
        *,
        count: bool = True,
    ) -> FileOutcome:
        """Produce one file's events; ``count=False`` (a re-send) leaves the metrics alone."""
        if results is None:
            broken = [i for i in items if isinstance(i, BaseDeadLetter) and _is_whole_file(i, data)]
            reason = broken[0].reason if broken else "file holds no records"
            self.producer.send_dead_letter(self._letter(ref, f"unreadable file: {reason}", data))
            if count:
                metrics.record_dead_letter(COMPONENT, self._table_of(ref), reason)
            return FileOutcome(ref, "dead-lettered", dead_letters=1)
        outcome = FileOutcome(ref, "produced")
        for item, result in zip(items, results, strict=True):
            self._emit(ref, item, result, outcome)
        if count:
            self._count(ref, items, outcome)
        return outcome

    def _emit(self, ref: ObjectRef, item: Any, result: Any, outcome: FileOutcome) -> None:
        if isinstance(result, ChangeEvent):
            self._learn_table(ref, result)
            if self.producer.send(result, self._provenance(ref, item)):
                outcome.events += 1
            else:  # too large for Kafka: dead-lettered by the producer
                outcome.dead_letters += 1
        elif isinstance(result, BaseDeadLetter):
            self.producer.send_dead_letter(
                self._letter(ref, result.reason, result.raw, result.index)
            )
            outcome.dead_letters += 1
            outcome.reasons.append(result.reason)
        else:  # Skip: not a row change
            outcome.skipped += 1
            outcome.skip_kinds.append(result.kind)

    def _learn_table(self, ref: ObjectRef, event: ChangeEvent) -> None:
        directory = _table_directory(ref.name)
        if directory not in self._tables:
            self._tables[directory] = metrics.table_label(event.source, event.schema, event.table)

    def _table_of(self, ref: ObjectRef) -> str:
        """The table label of the file's directory (learnt from its events), else ``unknown``."""
        return self._tables.get(_table_directory(ref.name), metrics.UNKNOWN_TABLE)

    def _count(self, ref: ObjectRef, items: list[Any], outcome: FileOutcome) -> None:
        table = self._table_of(ref)
        metrics.record_received(COMPONENT, table, len(items))
        if outcome.events:
            metrics.record_produced(COMPONENT, table, outcome.events)
        for reason in outcome.reasons:
            metrics.record_dead_letter(COMPONENT, table, reason)
        for kind in outcome.skip_kinds:
            metrics.record_skipped(COMPONENT, kind)

    def _letter(
        self, ref: ObjectRef, reason: str, raw: bytes | None, index: int | None = None
    ) -> DeadLetter:
        extra = _letter_extra(ref, index)
        return DeadLetter(reason, raw, ORIGIN, source=self.source, location=ref.uri, extra=extra)

    @staticmethod
    def _provenance(ref: ObjectRef, item: RawRecord) -> Provenance:
        return Provenance(ref.uri, item.raw_bytes, _letter_extra(ref, item.index))


def _letter_extra(ref: ObjectRef, index: int | None) -> dict[str, str]:
    extra = {"object_generation": str(ref.generation)}
    if index is not None:
        extra["record_index"] = str(index)
    return extra


def _table_directory(name: str) -> str:
    """``<prefix>/<schema>_<table>`` of an object name (the part before ``yyyy/mm/...``)."""
    parts = name.split("/")
    return "/".join(parts[:-6]) if len(parts) > 6 else name.rsplit("/", 1)[0]


def _is_whole_file(letter: BaseDeadLetter, data: bytes) -> bool:
    """A dead letter for the file itself (bad header, bad gzip, truncated Avro block)."""
    return letter.index is None or letter.raw is data or letter.raw == data


def reader_for(name: str) -> FileReader:
    """The file reader for an object name, by its extension (``.avro``, ``.jsonl[.gz]``)."""
    base = name[:-3] if name.endswith(".gz") else name
    suffix = base.rsplit(".", 1)[-1].lower() if "." in base.rsplit("/", 1)[-1] else ""
    fmt = FILE_FORMATS.get(suffix)
    if fmt is None:
        known = ", ".join(f".{k}" for k in sorted(FILE_FORMATS))
        raise ConfigError(f"Datastream object {name!r} has no known extension ({known})")
    return READERS[fmt]


FILE_FORMATS = {"avro": "datastream-avro", "jsonl": "datastream-json", "json": "datastream-json"}


def _record_bytes(record: Any) -> bytes:
    return json.dumps(record, default=str, sort_keys=True).encode()


# --- GCS Pub/Sub notifications ---------------------------------------------------------


def parse_gcs_notification(message: Mapping[str, Any]) -> ObjectRef | None:
    """The object version named by a GCS notification, or None for non-finalize events.

    Accepts a Pub/Sub push envelope (``{"message": {...}, "subscription": ...}``), a
    pulled message as a mapping (``attributes`` + ``data``), or a bare object resource
    (``bucket``/``name``/``generation``, e.g. the data of an Eventarc CloudEvent).
    """
    if "message" in message and isinstance(message["message"], Mapping):
        message = message["message"]
    attributes = message.get("attributes") or {}
    event_type = attributes.get("eventType", "OBJECT_FINALIZE")
    if event_type != "OBJECT_FINALIZE":
        logger.debug("ignoring GCS %s notification", event_type)
        return None
    resource = _notification_resource(message)
    bucket = attributes.get("bucketId") or resource.get("bucket")
    name = attributes.get("objectId") or resource.get("name")
    generation = attributes.get("objectGeneration") or resource.get("generation")
    if not (bucket and name and generation):
        raise DecodeError(
            "GCS notification lacks bucket/object/generation (attributes bucketId, objectId, "
            f"objectGeneration); got attributes {sorted(attributes)} "
            f"and data keys {sorted(resource)}",
            raw=_record_bytes(dict(message)),
        )
    return ObjectRef(str(bucket), str(name), int(generation))


def _notification_resource(message: Mapping[str, Any]) -> Mapping[str, Any]:
    if "data" not in message:
        return message  # a bare object resource
    data = message["data"]
    if isinstance(data, Mapping):
        return data
    if isinstance(data, str):
        data = base64.b64decode(data)
    if not data:
        return {}
    try:
        parsed = json.loads(data)
    except ValueError as exc:
        raise DecodeError(f"GCS notification data is not JSON: {exc}", raw=bytes(data)) from exc
    return parsed if isinstance(parsed, Mapping) else {}


# --- wiring ------------------------------------------------------------------------------


def storage_client(project: str | None) -> Any:
    """A GCS client; honours ``STORAGE_EMULATOR_HOST`` (fake-gcs-server) with no credentials."""
    import os

    from google.cloud import storage  # type: ignore[attr-defined]

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project or "capa-local", credentials=AnonymousCredentials())
    from google.auth.exceptions import DefaultCredentialsError

    try:
        return storage.Client(project=project)
    except DefaultCredentialsError as exc:
        raise missing_google_credentials("Google Cloud Storage", exc) from None


def build_reader(
    settings: CapaSettings,
    *,
    storage: Any = None,
    producer: KafkaChangeProducer | None = None,
    stop: threading.Event | None = None,
) -> DatastreamBucketReader:
    """A reader for ``settings.datastream`` writing to ``settings.kafka``."""
    ds = settings.datastream
    if not ds.bucket:
        raise ConfigError(
            "no Datastream bucket configured: pass --bucket or set CAPA__DATASTREAM__BUCKET"
        )
    default_cp = settings.state_dir / "datastream" / f"{ds.source_name}.checkpoint.json"
    normalizer = DatastreamNormalizer(source=ds.source_name)
    return DatastreamBucketReader(
        storage_client=storage or storage_client(ds.project),
        bucket=ds.bucket,
        prefix=ds.prefix,
        normalizer=normalizer,
        producer=producer or KafkaChangeProducer(settings.kafka),
        checkpoint=FileCheckpoint(ds.checkpoint_path or default_cp, ds.prefix.strip("/")),
        source=ds.source_name,
        grace=timedelta(minutes=ds.late_file_grace_minutes),
        stop=stop,
        max_file_bytes=ds.max_file_bytes,
        audit_every=ds.late_file_audit_polls,
        backfill=bulk_backfill(settings, normalizer),
    )


def bulk_backfill(settings: CapaSettings, normalizer: DatastreamNormalizer) -> BulkBackfill | None:
    """The bulk writer for backfill files, as ``datastream.backfill_writer`` asks."""
    mode = settings.datastream.backfill_writer
    local = getattr(settings.warehouse, "type", "") == "local"
    if mode == "kafka" or (mode == "auto" and not local):
        return None
    if not local:
        raise ConfigError(
            "datastream.backfill_writer=bulk needs the local warehouse (warehouse.type=local); "
            "use 'auto' or 'kafka' for other warehouses"
        )
    from capa.warehouse import open_warehouse
    from capa.warehouse.local import LocalWarehouse

    warehouse = open_warehouse(settings.warehouse)
    assert isinstance(warehouse, LocalWarehouse)
    return BulkBackfill(warehouse, normalizer)
