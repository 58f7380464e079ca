"""The CRM HTTP API extractor against a real paginated JSON server (http.server in a thread)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from connectors.crm.contract import load_contract
from connectors.crm.errors import CrmApiError, CrmApiUnavailable
from connectors.crm.extract import SUCCESS_MARKER, read_manifest
from connectors.crm.filestore import LocalFileStore
from connectors.crm.http_api import CrmApiConfig, CrmApiExtractor, load_watermarks, save_watermarks


class FakeCrm:
    """In-memory CRM: records per object, paginated by an opaque offset token."""

    def __init__(self) -> None:
        self.records: dict[str, list[dict[str, Any]]] = {"accounts": [], "contacts": []}
        self.requests: list[str] = []
        self.fail_next = 0  # answer this many requests with 503 first

    def page(self, obj: str, query: dict[str, list[str]]) -> dict[str, Any]:
        since = query.get("modified_since", [""])[0]
        size = int(query["page_size"][0])
        offset = int(query.get("page_token", ["0"])[0])
        rows = sorted(
            (r for r in self.records[obj] if r["last_modified"] >= since),
            key=lambda r: (r["last_modified"], json.dumps(r)),
        )
        chunk = rows[offset : offset + size]
        token = str(offset + size) if offset + size < len(rows) else None
        return {"records": chunk, "next_page_token": token}


@pytest.fixture()
def crm_api() -> Iterator[tuple[str, FakeCrm]]:
    fake = FakeCrm()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fake.requests.append(self.path)
            url = urlparse(self.path)
            obj = url.path.strip("/").split("/")[-1]
            if fake.fail_next:
                fake.fail_next -= 1
                return self._send(503, b'{"error": "busy"}')
            if obj not in fake.records:
                return self._send(404, b'{"error": "no such object"}')
            self._send(200, json.dumps(fake.page(obj, parse_qs(url.query))).encode())

        def _send(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/v1", fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _account(i: int, day: int, name: str = "Ä") -> dict[str, Any]:
    return {
        "account_id": f"A{i}",
        "name": f"{name}{i}",
        "industry": "retail",
        "country": "DE",
        "customer_id": i,
        "last_modified": f"2025-01-{day:02d}T00:00:00Z",
    }


def test_incremental_pull_pages_and_moves_the_watermark(
    crm_api: tuple[str, FakeCrm], tmp_path: Path
) -> None:
    url, fake = crm_api
    fake.records["accounts"] = [_account(i, 1 + i % 5) for i in range(23)]
    contract = load_contract()
    extractor = CrmApiExtractor(
        CrmApiConfig(base_url=url, objects=("accounts", "contacts"), page_size=5, backoff_s=0),
        contract,
    )
    store = LocalFileStore(tmp_path / "x1")
    manifest, marks = extractor.extract(store, {}, now=datetime(2025, 2, 1, tzinfo=UTC))
    lines = (tmp_path / "x1" / "accounts.ndjson").read_text().splitlines()
    assert len(lines) == 23 and json.loads(lines[0])["name"].startswith("Ä")
    assert sum("/accounts?" in r for r in fake.requests) == 5  # 23 records / page_size 5
    assert marks == {"accounts": "2025-01-05T00:00:00Z"}  # contacts: nothing seen, no watermark
    assert store.exists(SUCCESS_MARKER) and manifest.mode == "incremental"
    assert read_manifest(store, contract).load_id == manifest.load_id

    state = tmp_path / "marks.json"
    save_watermarks(state, marks)
    fake.records["accounts"].append(_account(99, 9))
    fake.requests.clear()
    _, marks2 = extractor.extract(LocalFileStore(tmp_path / "x2"), load_watermarks(state))
    second = [
        json.loads(line) for line in (tmp_path / "x2" / "accounts.ndjson").read_text().splitlines()
    ]
    assert "modified_since=2025-01-05T00%3A00%3A00Z" in fake.requests[0]
    assert {r["account_id"] for r in second} == {"A4", "A9", "A14", "A19", "A99"}  # boundary + new
    assert marks2["accounts"] == "2025-01-09T00:00:00Z"


def test_transient_errors_are_retried_then_reported(
    crm_api: tuple[str, FakeCrm], tmp_path: Path
) -> None:
    url, fake = crm_api
    fake.records["accounts"] = [_account(1, 1)]
    extractor = CrmApiExtractor(
        CrmApiConfig(base_url=url, objects=("accounts",), max_retries=2, backoff_s=0),
        load_contract(),
    )
    fake.fail_next = 2
    assert len(list(extractor.fetch("accounts", None))) == 1
    fake.fail_next = 3
    with pytest.raises(CrmApiUnavailable, match="HTTP 503"):
        list(extractor.fetch("accounts", None))


def test_client_errors_are_terminal_and_name_the_url(crm_api: tuple[str, FakeCrm]) -> None:
    url, _ = crm_api
    extractor = CrmApiExtractor(
        CrmApiConfig(base_url=url, objects=("activities",), backoff_s=0), load_contract()
    )
    with pytest.raises(CrmApiError, match=r"HTTP 404 from .*/activities"):
        list(extractor.fetch("activities", None))
