"""The ``capa serve`` HTTP server: one process, stdlib only, no build step.

Routes: ``/`` the status page (static HTML + JS polling ``/api/status``), ``/api/status``
the JSON of :mod:`capa_app.observe.status`, ``/metrics`` the slot and build gauges
(:mod:`capa_app.observe.exporter`) for Prometheus.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from capa.config import CapaSettings
from capa_app.observe.exporter import register_collectors
from capa_app.observe.status import StatusBuilder

logger = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("static") / "index.html"


class StatusServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, settings: CapaSettings, port: int | None = None) -> None:
        from prometheus_client import CollectorRegistry

        observe = settings.observe
        self.status = StatusBuilder(settings)
        self.registry = CollectorRegistry()
        register_collectors(settings, self.registry)
        self._lock = threading.Lock()  # one status build at a time (it may count rows)
        super().__init__((observe.host, observe.serve_port if port is None else port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def status_json(self) -> bytes:
        with self._lock:
            return json.dumps(self.status.build()).encode()

    def metrics_text(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))

    def start_background(self) -> threading.Thread:
        """Serve from a daemon thread (the demo); stop with :meth:`shutdown`."""
        thread = threading.Thread(target=self.serve_forever, name="capa-serve", daemon=True)
        thread.start()
        return thread


class _Handler(BaseHTTPRequestHandler):
    server: StatusServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", PAGE.read_bytes())
        elif path == "/api/status":
            self._send(200, "application/json", self.server.status_json())
        elif path == "/metrics":
            self._send(200, "text/plain; version=0.0.4; charset=utf-8", self.server.metrics_text())
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: try / or /api/status\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)
