"""Incremental extractor for a paginated JSON-over-HTTP CRM API.

API shape (per object)::

    GET {base_url}/{object}?modified_since=<ISO-8601>&page_size=<n>[&page_token=<t>]
    -> {"records": [{...}, ...], "next_page_token": "<t>" | null}

``modified_since`` is inclusive; rows at the boundary come back again and the load skips
them (their version is not newer than the replica's). :meth:`CrmApiExtractor.extract` writes
one incremental extract (``<object>.ndjson`` + manifest + ``_SUCCESS``) into a file store
and returns the new per-object watermarks (max ``last_modified`` seen), which the caller
saves with :func:`save_watermarks` once the extract is safely written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from capa import retry
from capa.retry import RetryPolicy
from connectors.crm.contract import CrmContract
from connectors.crm.errors import CrmApiError, CrmApiUnavailable
from connectors.crm.extract import ExtractFile, ExtractManifest, write_extract
from connectors.crm.filestore import FileStore
from connectors.crm.types import parser_for

logger = logging.getLogger(__name__)
_parse_ts = parser_for("timestamp")


class CrmApiConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(description="API root, e.g. https://crm.example.com/api/v1.")
    objects: tuple[str, ...] = Field(description="Objects to extract (contract object names).")
    page_size: int = Field(default=500, ge=1, description="Records per page requested.")
    timeout_s: float = Field(default=10.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(
        default=3, ge=0, description="Retries of a 5xx/connection error per request."
    )
    backoff_s: float = Field(
        default=0.5, ge=0, description="First retry delay; doubles each retry."
    )


class CrmApiExtractor:
    """Pulls every record modified since the watermark, page by page."""

    def __init__(self, config: CrmApiConfig, contract: CrmContract) -> None:
        self.config, self.contract = config, contract
        for obj in config.objects:
            contract.object(obj)

    def fetch(self, obj: str, modified_since: str | None) -> Iterator[dict[str, Any]]:
        token: str | None = None
        while True:
            page = self._get_json(self._url(obj, modified_since, token))
            records, token = _page_parts(page, obj)
            yield from records
            if not token:
                return

    def _url(self, obj: str, modified_since: str | None, token: str | None) -> str:
        query = {"page_size": str(self.config.page_size)}
        if modified_since:
            query["modified_since"] = modified_since
        if token:
            query["page_token"] = token
        root = self.config.base_url.rstrip("/")
        return f"{root}/{urllib.parse.quote(obj)}?{urllib.parse.urlencode(query)}"

    def _get_json(self, url: str) -> Any:
        policy = RetryPolicy(
            CrmApiUnavailable,
            first_wait_s=self.config.backoff_s,
            max_wait_s=float("inf"),  # doubling, unbounded: max_retries keeps it short
            attempts=self.config.max_retries + 1,
        )
        return retry.call(partial(_request, url, self.config.timeout_s), policy, f"CRM API {url}")

    def extract(
        self, store: FileStore, watermarks: dict[str, str], now: datetime | None = None
    ) -> tuple[ExtractManifest, dict[str, str]]:
        """Write one incremental extract; returns (manifest, new watermarks)."""
        now = now or datetime.now(UTC)
        data: dict[str, bytes] = {}
        new_marks = dict(watermarks)
        for obj in self.config.objects:
            lines, mark = self._collect(obj, watermarks.get(obj))
            data[f"{obj}.ndjson"] = ("".join(lines)).encode("utf-8")
            if mark:
                new_marks[obj] = mark
        load_id = _load_id(now, data)
        files = tuple(
            ExtractFile(object=o, name=f"{o}.ndjson", format="ndjson", encoding="utf-8")
            for o in self.config.objects
        )
        manifest = ExtractManifest(
            load_id=load_id, extracted_at=now, mode="incremental", files=files
        )
        write_extract(store, manifest, data)
        return manifest, new_marks

    def _collect(self, obj: str, since: str | None) -> tuple[list[str], str | None]:
        column = self.contract.object(obj).last_modified
        lines, newest = [], None
        for record in self.fetch(obj, since):
            lines.append(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
            newest = _newer(newest, record.get(column))
        logger.info("CRM API %s: %d records modified since %s", obj, len(lines), since)
        return lines, newest.isoformat().replace("+00:00", "Z") if newest else None


def _newer(current: datetime | None, value: Any) -> datetime | None:
    try:
        ts = _parse_ts(value) if value else None
    except ValueError:
        return current  # the load will reject the record; it cannot move the watermark
    return ts if ts is not None and (current is None or ts > current) else current


def _request(url: str, timeout: float) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:200]
        if exc.code >= 500 or exc.code == 429:
            raise CrmApiUnavailable(f"HTTP {exc.code} from {url}: {detail!r}") from exc
        raise CrmApiError(
            f"HTTP {exc.code} from {url}: {detail!r}; check the URL and credentials"
        ) from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise CrmApiUnavailable(f"cannot reach {url}: {exc}") from exc
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise CrmApiError(f"{url} did not return JSON: {body[:200]!r}") from exc


def _page_parts(page: Any, obj: str) -> tuple[list[dict[str, Any]], str | None]:
    if not isinstance(page, dict) or not isinstance(page.get("records"), list):
        raise CrmApiError(f"CRM API page for {obj!r} lacks a 'records' list: {str(page)[:200]!r}")
    token = page.get("next_page_token")
    if token is not None and not isinstance(token, str):
        raise CrmApiError(f"CRM API next_page_token for {obj!r} is not a string: {token!r}")
    return page["records"], token


def _load_id(now: datetime, data: dict[str, bytes]) -> str:
    digest = hashlib.sha256(b"".join(k.encode() + v for k, v in sorted(data.items()))).hexdigest()[
        :8
    ]
    return f"api-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{digest}"


def load_watermarks(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser
        data = None
    if not isinstance(data, dict):
        raise CrmApiError(
            f"watermark file {str(path)!r} must hold a JSON object; delete it to re-extract all"
        )
    return {str(k): str(v) for k, v in data.items()}


def save_watermarks(path: Path, marks: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(marks, indent=2, sort_keys=True))
    tmp.replace(path)
