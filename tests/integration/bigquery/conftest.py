"""Session fixture: a bqemulator 1.4.0 process (DuckDB-backed BigQuery emulator).

Starts ``bqemulator start`` on free loopback ports with an in-memory store, waits until its
REST API answers, yields a :class:`~capa.config.BigQueryWarehouseConfig` pointing at it and
always stops it by PID (its log is printed when the session had failures).
Offline start needs DuckDB's spatial/avro extensions: scripts/setup_bqemulator.sh copies
them from the installed wheels.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from capa.config import BigQueryWarehouseConfig

ROOT = Path(__file__).resolve().parents[3]
PROJECT = "capa-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"bqemulator exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"bqemulator did not answer {url} within {timeout}s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def bqemulator(tmp_path_factory, request) -> BigQueryWarehouseConfig:
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup_bqemulator.sh"), sys.executable], check=True
    )
    rest, grpc = _free_port(), _free_port()
    log = tmp_path_factory.mktemp("bqemulator") / "bqemulator.log"
    binary = Path(sys.executable).parent / "bqemulator"
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                str(binary),
                "start",
                "--rest-port",
                str(rest),
                "--grpc-port",
                str(grpc),
                "--project",
                PROJECT,
                "--log-level",
                "warning",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(
            f"http://127.0.0.1:{rest}/bigquery/v2/projects/{PROJECT}/datasets", process, log
        )
        # merge mode with a MERGE per batch: the emulator ignores CDC pseudo-columns, so
        # tests that read replicas back use merge mode; cdc mode has its own tests
        # (test_bigquery_modes.py) that capture the CDC rows the emulator stores
        yield BigQueryWarehouseConfig(
            project=PROJECT,
            api_endpoint=f"http://127.0.0.1:{rest}",
            write_api_endpoint=f"127.0.0.1:{grpc}",
            location="US",
            apply_mode="merge",
            merge_interval_s=0,
        )
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if request.session.testsfailed:
            print(f"--- bqemulator log ({log}) ---\n{log.read_text()[-6000:]}", file=sys.stderr)


# The shared apply cases (event histories + the independent sequential reference).
sys.path.insert(0, str(ROOT / "tests" / "unit"))
