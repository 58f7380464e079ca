"""The on-prem profile's Spark standalone cluster: one master and one worker process.

Both run from the pyspark wheel of ``.venvs/spark`` (its ``spark-class`` script, which execs
the JVM, so the recorded PID is the JVM's), bind to ``spark_cluster.host`` (loopback) and log
to ``<state>/logs/spark-master.log`` / ``spark-worker.log``. Each reads a properties file under
``<state>/data/spark/`` (also the marker that tells our processes from others).

Sizing for a 2-core / 24 GB machine (``SparkClusterConfig``): daemons with 512 MB heaps; the
worker offers 2 cores and 8 GB; an application gets 1 core unless it asks for more
(``spark.deploy.defaultCores``), so two DAG tasks can build side by side.

Health: the master's ``/json/`` answers with status ALIVE; the worker is healthy once that
document lists it (its RPC port) as ALIVE. Consumption builds reach the cluster with
``CAPA__SPARK__MASTER=spark://host:port`` (``spark_jobs.session``) or with
``spark-submit --master spark://host:port`` (:func:`submit_argv`).
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import capa
from capa.config import SparkClusterConfig
from capa.errors import EnvironmentProblem
from capa_app.stack.base import Service, StateDirs, spawn

REPO_ROOT = Path(capa.__file__).resolve().parent.parent
SPARK_BIN = Path(".venvs") / "spark" / "bin"  # relative to the repository (and compose's image)
SETUP_HINT = "run `bash scripts/setup.sh spark` (the pyspark wheel ships spark-class)"
ALIVE = "ALIVE"


def spark_bin(tool: str) -> Path:
    return REPO_ROOT / SPARK_BIN / tool


def spark_env() -> dict[str, str]:
    """SPARK_HOME (the pyspark package of .venvs/spark) and its Python for Spark's scripts.

    Without SPARK_HOME, ``spark-class`` asks whatever ``python3`` is first on PATH for pyspark.
    """
    homes = sorted((REPO_ROOT / ".venvs" / "spark").glob("lib/python3*/site-packages/pyspark"))
    if not homes:
        raise EnvironmentProblem(
            f"no pyspark package in {REPO_ROOT / '.venvs' / 'spark'}; {SETUP_HINT}"
        )
    python = str(spark_bin("python"))
    return {"SPARK_HOME": str(homes[-1]), "PYSPARK_PYTHON": python, "SPARK_LOCAL_IP": "127.0.0.1"}


class SparkDaemon(Service):
    """A master or worker started by ``spark-class <main class> <options>``."""

    main_class: ClassVar[str] = ""
    start_timeout = 90.0

    def __init__(self, state: StateDirs, config: SparkClusterConfig) -> None:
        super().__init__(state)
        self.config = config

    @classmethod
    def program(cls) -> tuple[str, ...]:
        """What runs, relative to the repository: compose runs the same in the capa image."""
        return (str(SPARK_BIN / "spark-class"), cls.main_class)

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def home(self) -> Path:
        return (self.state.data / "spark").resolve()

    @property
    def properties_path(self) -> Path:
        return self.home / f"{self.name}.conf"

    @property
    def marker(self) -> str:
        return str(self.properties_path)

    def port_setting(self) -> str:
        return "set CAPA__SPARK_CLUSTER__* ports"

    def check_environment(self) -> None:
        if not spark_bin("spark-class").is_file():
            raise EnvironmentProblem(
                f"{self.name}: {spark_bin('spark-class')} missing; {SETUP_HINT}"
            )

    def properties(self) -> dict[str, str]:
        return {}

    @property
    def webui_port(self) -> int:
        raise NotImplementedError

    def options(self) -> list[str]:
        ports = ["--port", str(self.port), "--webui-port", str(self.webui_port)]
        return ["--host", self.host, *ports, *self.more_options()]

    def more_options(self) -> list[str]:
        return []

    def arguments(self) -> list[str]:
        """Positional arguments after the options."""
        return []

    def prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        text = "".join(f"{key} {value}\n" for key, value in self.properties().items())
        self.properties_path.write_text(text)

    def argv(self) -> list[str]:
        return [
            str(REPO_ROOT / self.program()[0]),
            *self.program()[1:],
            *self.options(),
            "--properties-file",
            str(self.properties_path),
            *self.arguments(),
        ]

    def launch(self) -> subprocess.Popen[bytes]:
        argv = self.argv()
        env = {
            **os.environ,
            **spark_env(),
            "SPARK_LOCAL_IP": self.host,
            "SPARK_DAEMON_MEMORY": self.config.daemon_memory,
            "SPARK_LOG_DIR": str(self.state.logs.resolve()),
        }
        return spawn(argv, self.log_path, cwd=self.home, env=env)

    def master_state(self) -> dict[str, Any] | None:
        """The master's ``/json/`` document, None if it does not answer."""
        url = f"http://{self.host}:{self.config.master_webui_port}/json/"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return dict(json.load(response))
        except (OSError, ValueError):
            return None


class SparkMaster(SparkDaemon):
    name = "spark-master"
    main_class = "org.apache.spark.deploy.master.Master"

    @property
    def port(self) -> int:
        return self.config.master_port

    def properties(self) -> dict[str, str]:
        return {"spark.deploy.defaultCores": str(self.config.default_cores)}

    @property
    def webui_port(self) -> int:
        return self.config.master_webui_port

    def ready(self) -> bool:
        state = self.master_state()
        return state is not None and state.get("status") == ALIVE


class SparkWorker(SparkDaemon):
    name = "spark-worker"
    main_class = "org.apache.spark.deploy.worker.Worker"

    @property
    def port(self) -> int:
        return self.config.worker_port

    @property
    def webui_port(self) -> int:
        return self.config.worker_webui_port

    def more_options(self) -> list[str]:
        return [
            "--cores",
            str(self.config.worker_cores),
            "--memory",
            self.config.worker_memory,
            "--work-dir",
            str(self.home / "work"),
        ]

    def arguments(self) -> list[str]:
        return [self.config.master_url]

    def ready(self) -> bool:
        state = self.master_state() or {}
        return any(
            worker.get("port") == self.config.worker_port and worker.get("state") == ALIVE
            for worker in state.get("workers", [])
        )


def submit_argv(
    config: SparkClusterConfig, jars: Sequence[Path], script: Path, *args: str
) -> list[str]:
    """``spark-submit --master spark://...`` of ``script`` (a build) onto the cluster."""
    return [
        str(spark_bin("spark-submit")),
        "--master",
        config.master_url,
        "--conf",
        f"spark.executor.memory={config.executor_memory}",
        "--jars",
        ",".join(str(jar) for jar in jars),
        str(script),
        *args,
    ]
