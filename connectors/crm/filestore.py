"""The file-store port: where extract files live (STYLE rule 1).

Adapters: ``local`` (a folder) and ``gcs`` (a bucket prefix, via google-cloud-storage; set
``STORAGE_EMULATOR_HOST`` for fake-gcs-server). Open one from a URL with :func:`open_filestore`:
``/path/dir``, ``file:///path/dir`` or ``gs://bucket/prefix``. Names are relative to the root.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse

from capa.errors import missing_google_credentials
from connectors.crm.errors import CrmExtractError

logger = logging.getLogger(__name__)


@runtime_checkable
class FileStore(Protocol):
    url: str

    def list(self) -> list[str]:
        """Names of the files under the root (non-recursive), sorted."""
        ...

    def exists(self, name: str) -> bool: ...

    def read_bytes(self, name: str) -> bytes: ...

    def write_bytes(self, name: str, data: bytes) -> None: ...


class LocalFileStore:
    """A local folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def list(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_file())

    def exists(self, name: str) -> bool:
        return (self.root / name).is_file()

    def read_bytes(self, name: str) -> bytes:
        try:
            return (self.root / name).read_bytes()
        except OSError as exc:
            raise CrmExtractError(f"cannot read {str(self.root / name)!r}: {exc}") from exc

    def write_bytes(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.root / name)


class GcsFileStore:
    """A ``gs://bucket/prefix`` folder (google-cloud-storage, imported lazily)."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        self.url = f"gs://{bucket}/{self.prefix}".rstrip("/")
        self._client = client

    @property
    def bucket(self) -> Any:
        if self._client is None:
            from google.cloud import storage  # type: ignore[attr-defined]

            self._client = _storage_client(storage)
        return self._client.bucket(self.bucket_name)

    def _blob_name(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def list(self) -> list[str]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        blobs = self.bucket.client.list_blobs(self.bucket_name, prefix=prefix, delimiter="/")
        return sorted(b.name[len(prefix) :] for b in blobs if b.name != prefix)

    def exists(self, name: str) -> bool:
        return bool(self.bucket.blob(self._blob_name(name)).exists())

    def read_bytes(self, name: str) -> bytes:
        from google.api_core import exceptions

        try:
            return bytes(self.bucket.blob(self._blob_name(name)).download_as_bytes())
        except exceptions.NotFound as exc:
            raise CrmExtractError(f"{self.url}/{name} does not exist") from exc

    def write_bytes(self, name: str, data: bytes) -> None:
        self.bucket.blob(self._blob_name(name)).upload_from_string(data)


def _storage_client(storage: Any) -> Any:
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project="capa-local", credentials=AnonymousCredentials())
    from google.auth.exceptions import DefaultCredentialsError

    try:
        return storage.Client()
    except DefaultCredentialsError as exc:
        raise missing_google_credentials("Google Cloud Storage", exc) from None


def _open_local(url: str) -> FileStore:
    parsed = urlparse(url)
    return LocalFileStore(parsed.path if parsed.scheme == "file" else url)


def _open_gcs(url: str) -> FileStore:
    parsed = urlparse(url)
    if not parsed.netloc:
        raise CrmExtractError(f"GCS url {url!r} has no bucket; use gs://BUCKET/PREFIX")
    return GcsFileStore(parsed.netloc, parsed.path)


FILESTORES = {"": _open_local, "file": _open_local, "gs": _open_gcs}


def open_filestore(url: str) -> FileStore:
    """A file store for ``url`` (local path, ``file://`` or ``gs://``)."""
    scheme = urlparse(url).scheme if "://" in url else ""
    try:
        factory = FILESTORES[scheme]
    except KeyError:
        raise CrmExtractError(
            f"extract location {url!r} has an unknown scheme {scheme!r}; use one of "
            f"{sorted(s + '://' for s in FILESTORES if s)} or a local path"
        ) from None
    return factory(url)
