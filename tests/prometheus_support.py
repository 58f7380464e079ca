"""A real Prometheus server (Debian's ``prometheus`` package) as a test process.

It scrapes the given targets every second, listens on a free loopback port, keeps its
TSDB in the test's temp dir, is waited for (``/-/ready``), prints its log tail when a
test fails, and is always stopped by PID.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from capa_app.stack.base import free_port, tail, wait_for

RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "capa-alerts.yml"


@dataclass(frozen=True)
class PrometheusServer:
    url: str
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (``/api/v1/query``)."""
        return list(self.api("/api/v1/query", query=expr)["result"])

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, None when it returns no series."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr} returned {len(result)} series: {result}"
        return float(result[0]["value"][1]) if result else None


def scrape_config(jobs: Mapping[str, str], rules: Path) -> str:
    scrapes = "\n".join(
        f"  - job_name: {name}\n    static_configs: [{{targets: ['{target}']}}]"
        for name, target in jobs.items()
    )
    return (
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{rules}']\n"
        f"scrape_configs:\n{scrapes}\n"
    )


@contextmanager
def running_prometheus(jobs: Mapping[str, str], workdir: Path) -> Iterator[PrometheusServer]:
    """Prometheus scraping ``jobs`` (job name -> host:port) and loading capa's alert rules."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus missing: run scripts/setup.sh observe (Debian package)")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(scrape_config(jobs, RULES), encoding="utf-8")
    port = free_port()
    log = workdir / "prometheus.log"
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    server = PrometheusServer(f"http://127.0.0.1:{port}", log)
    try:
        if not wait_for(lambda: _ready(server, proc), timeout=60):
            pytest.fail(f"prometheus did not become ready:\n{tail(log, 40)}")
        yield server
    except BaseException:
        print(f"--- prometheus log ({log}) ---\n{tail(log, 40)}")
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ready(server: PrometheusServer, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        pytest.fail(f"prometheus exited with {proc.returncode}:\n{tail(server.log, 40)}")
    try:
        with urllib.request.urlopen(f"{server.url}/-/ready", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False
