"""Shared helpers of capa's Kafka tests: a canonical sample event and a tiny schema registry
(the two Confluent endpoints capa uses), served by a real HTTP server on a free port."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from uuid import UUID

import pytest

from capa.events import ChangeEvent, Json, Op, SourceKind


def make_event(pk: int = 1, op: Op = Op.UPDATE) -> ChangeEvent:
    after = {
        "id": pk,
        "price": Decimal("43.7500"),
        "ts": datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        "doc": Json('{"a": [1, 2]}'),
        "uid": UUID("626eb68e-e6df-4fce-baf5-04bf00000000"),
        "blob": b"\x00\xff",
        "tags": ("x", None),
    }
    return ChangeEvent(
        source="f2",
        source_kind=SourceKind.POSTGRES,
        database="shop",
        schema="public",
        table="orders",
        op=op,
        position="00000016cb002db0.1",
        commit_ts_us=1_739_315_197_151_000,
        primary_key=("id",),
        key={"id": pk},
        before=None,
        after=None if op is Op.DELETE else after,
        origin="debezium",
        transaction_id="363552",
    )


# --- a tiny schema registry: the two endpoints capa uses -------------------------------


class _Registry(BaseHTTPRequestHandler):
    schemas: dict[int, str]
    subjects: dict[str, int]
    calls: list[str]

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self.calls.append(f"POST {self.path}")
        parts = self.path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "subjects" or parts[2] != "versions":
            return self._reply(404, {"error_code": 404, "message": "not found"})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        json.loads(body["schema"])  # a registry rejects non-JSON schemas
        for schema_id, text in self.schemas.items():
            if text == body["schema"]:
                return self._reply(200, {"id": schema_id})
        schema_id = len(self.schemas) + 41
        self.schemas[schema_id] = body["schema"]
        self.subjects[parts[1]] = schema_id
        return self._reply(200, {"id": schema_id})

    def do_GET(self) -> None:
        self.calls.append(f"GET {self.path}")
        parts = self.path.strip("/").split("/")
        if len(parts) == 3 and parts[:2] == ["schemas", "ids"] and int(parts[2]) in self.schemas:
            return self._reply(200, {"schema": self.schemas[int(parts[2])]})
        return self._reply(404, {"error_code": 40403, "message": "Schema not found"})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(name="registry")
def registry_fixture() -> Iterator[tuple[str, type[_Registry]]]:
    handler = type("Handler", (_Registry,), {"schemas": {}, "subjects": {}, "calls": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
