"""A CRM extract: a folder of files plus an optional ``manifest.json`` and a ``_SUCCESS`` marker.

Layout (local folder or ``gs://bucket/prefix``)::

    manifest.json   {"load_id": "...", "extracted_at": "2026-11-01T06:00:00Z",
                     "mode": "full" | "incremental",
                     "files": [{"object": "accounts", "name": "accounts.csv",
                                "format": "csv", "encoding": "auto"}, ...]}
    accounts.csv  contacts.csv  opportunities.ndjson  activities.ndjson
    _SUCCESS        written last: the extract is complete

Without a manifest, files named ``<object>.<csv|ndjson|jsonl>`` are taken, the mode is
incremental and the load id is a hash of the files' names and bytes (so the same files are
the same load). A full extract lists every live row: rows missing from it become deletes.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from capa.config import describe_validation
from connectors.crm.contract import CrmContract
from connectors.crm.errors import CrmExtractError
from connectors.crm.filestore import FileStore
from connectors.crm.readers import READERS

MANIFEST = "manifest.json"
SUCCESS_MARKER = "_SUCCESS"
LOAD_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class ExtractFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    object: str = Field(description="CRM object the file holds (a contract object name).")
    name: str = Field(description="File name relative to the extract folder.")
    format: Literal["csv", "ndjson", "jsonl"] = Field(description="File format.")
    encoding: Literal["auto", "utf-8", "latin-1", "cp1252"] = Field(
        default="auto", description="Text encoding; auto = UTF-8, falling back to latin-1."
    )


class ExtractManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    load_id: str = Field(pattern=LOAD_ID_PATTERN, description="Unique id of this load (no dots).")
    extracted_at: datetime | None = Field(
        default=None,
        description="Snapshot time of the extract (positions of full-extract deletes).",
    )
    mode: Literal["full", "incremental"] = Field(
        default="incremental", description="full: rows missing from the extract are deleted."
    )
    files: tuple[ExtractFile, ...] = Field(description="The files of the extract.")

    @property
    def extracted_at_us(self) -> int:
        if self.extracted_at is None:
            return 0
        ts = (
            self.extracted_at if self.extracted_at.tzinfo else self.extracted_at.replace(tzinfo=UTC)
        )
        return int(ts.timestamp() * 1_000_000)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def read_manifest(
    store: FileStore, contract: CrmContract, *, full: bool = False
) -> ExtractManifest:
    """The extract's manifest (read or inferred), checked against the contract."""
    if store.exists(MANIFEST):
        manifest = _parse_manifest(store)
    else:
        manifest = _infer_manifest(store, contract)
    for f in manifest.files:
        contract.object(f.object)  # raises naming the known objects
    if full and manifest.mode != "full":
        manifest = manifest.model_copy(update={"mode": "full"})
    return manifest


def _parse_manifest(store: FileStore) -> ExtractManifest:
    raw = store.read_bytes(MANIFEST)
    try:
        return ExtractManifest.model_validate_json(raw)
    except ValidationError as exc:
        raise CrmExtractError(
            f"{store.url}/{MANIFEST} is invalid: {describe_validation(exc)}; fix or remove it "
            "(without it the files are found by name)",
            raw=raw,
        ) from exc


def _infer_manifest(store: FileStore, contract: CrmContract) -> ExtractManifest:
    files = []
    for name in store.list():
        stem, _, ext = name.rpartition(".")
        if stem in contract.objects and ext in READERS:
            files.append(ExtractFile(object=stem, name=name, format=ext))  # type: ignore[arg-type,call-arg]
    if not files:
        raise CrmExtractError(
            f"{store.url} holds no {MANIFEST} and no files named <object>.<csv|ndjson> for "
            f"objects {sorted(contract.objects)}"
        )
    return ExtractManifest(load_id=content_load_id(store, files), files=tuple(files))


def content_load_id(store: FileStore, files: list[ExtractFile]) -> str:
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0" + store.read_bytes(f.name) + b"\0")
    return f"crm-{digest.hexdigest()[:16]}"


def write_extract(store: FileStore, manifest: ExtractManifest, data: dict[str, bytes]) -> None:
    """Write files, then the manifest, then ``_SUCCESS`` (readers wait for the marker)."""
    for name, payload in data.items():
        store.write_bytes(name, payload)
    store.write_bytes(MANIFEST, manifest.to_json().encode())
    store.write_bytes(SUCCESS_MARKER, json.dumps({"load_id": manifest.load_id}).encode())
