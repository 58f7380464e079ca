"""Shared machinery of the local stack: state layout, PID files, ports, waiting, stopping.

Every component (Kafka, PostgreSQL, the Debezium bridge) is a :class:`Service`: it
starts one OS process, records its PID in ``<state>/pids/<name>.json`` together with a
*marker* (a string that must appear in the process's command line, so a recycled PID is
never mistaken for ours), answers :meth:`Service.health` and stops by PID only
(a polite signal first, SIGKILL after a timeout). Nothing is ever stopped by name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import capa
from capa.errors import EnvironmentProblem

logger = logging.getLogger(__name__)

JARS_ROOT = Path(capa.__file__).resolve().parent.parent / ".cache" / "jars"
"""Where ``scripts/fetch_jars.sh NAME`` puts the jars of ``scripts/jars/NAME.pom``."""

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
STOPPED = "stopped"
NOT_AVAILABLE = "not available"
EXTERNAL = "external"


class ComponentUnavailable(EnvironmentProblem):
    """An optional component is not part of this checkout (e.g. its module is not written yet)."""


@dataclass(frozen=True)
class StateDirs:
    """``<root>/logs``, ``<root>/data`` and ``<root>/pids`` of one local stack."""

    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    def create(self) -> StateDirs:
        for path in (self.logs, self.data, self.pids):
            path.mkdir(parents=True, exist_ok=True)
        return self


@dataclass(frozen=True)
class PidRecord:
    """What ``<state>/pids/<name>.json`` holds. ``(pid, start_ticks)`` identifies the process."""

    pid: int
    marker: str
    port: int | None = None
    start_ticks: int | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "pid": self.pid,
                "marker": self.marker,
                "port": self.port,
                "start_ticks": self.start_ticks,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> PidRecord:
        raw = json.loads(text)
        return cls(
            pid=int(raw["pid"]),
            marker=str(raw["marker"]),
            port=raw.get("port"),
            start_ticks=raw.get("start_ticks"),
        )


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after "pid (comm) " (state first); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def process_start_ticks(pid: int) -> int | None:
    """Start time of a live (non-zombie) ``pid`` in clock ticks since boot; None if gone."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds ``pid`` has used so far (its threads included); None if gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cmdline(pid: int) -> str:
    """The command line of ``pid`` (NUL separators turned into spaces); '' if unknown."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def is_our_process(record: PidRecord) -> bool:
    """Alive, and the same process we started (start time, else command-line marker)."""
    ticks = process_start_ticks(record.pid)
    if ticks is None:
        return False
    if record.start_ticks is not None:
        return ticks == record.start_ticks
    return record.marker in process_cmdline(record.pid)


def port_in_use(host: str, port: int) -> bool:
    """True if something already listens on (or holds) ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like the servers themselves: connections lingering in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (for tests and throwaway stacks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ('' if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll ``check`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def stop_pid(
    pid: int, sig: int = signal.SIGTERM, timeout: float = 20.0, *, group: bool = False
) -> bool:
    """Send ``sig``, then SIGKILL if ``pid`` outlives ``timeout``; True if it was killed hard.

    ``group``: signal ``pid``'s whole process group (a leader started by :func:`spawn`, whose
    children - task runners, web workers - must not outlive it).
    """
    kill = os.killpg if group else os.kill
    with contextlib.suppress(ProcessLookupError):
        kill(pid, sig)
    if wait_for(lambda: not _alive(pid), timeout, interval=0.1):
        if group:  # children the leader left behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        return False
    logger.warning("pid %d ignored signal %d for %.0fs; sending SIGKILL", pid, sig, timeout)
    with contextlib.suppress(ProcessLookupError):
        kill(pid, signal.SIGKILL)
    wait_for(lambda: not _alive(pid), 5.0, interval=0.1)
    return True


def _alive(pid: int) -> bool:
    _reap(pid)
    return process_start_ticks(pid) is not None


def _reap(pid: int) -> None:
    """Collect our own exited child so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def spawn(
    argv: Sequence[str],
    log_path: Path,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    user: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` detached from our session, stdout+stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            user=user,
            start_new_session=True,
        )


class Service:
    """One managed process. Subclasses set ``name`` and implement the hooks."""

    name: ClassVar[str] = "service"
    stop_signal: ClassVar[int] = signal.SIGTERM
    stop_timeout: ClassVar[float] = 20.0
    start_timeout: ClassVar[float] = 60.0
    stop_group: ClassVar[bool] = False  # stop the process group this process leads

    def __init__(self, state: StateDirs) -> None:
        self.state = state

    # --- hooks for subclasses ---------------------------------------------------------

    @property
    def port(self) -> int | None:
        return None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def marker(self) -> str:
        """A string unique to this stack's process command line (e.g. its config path)."""
        raise NotImplementedError

    def check_environment(self) -> None:
        """Raise :class:`EnvironmentProblem` (one line: problem + fix) if we cannot start."""

    def launch(self) -> subprocess.Popen[bytes]:
        """Start the process (after :meth:`prepare`)."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Create data directories / config files before launching (idempotent)."""

    def ready(self) -> bool:
        """True once the service answers (called while waiting and by :meth:`health`)."""
        return True

    def after_ready(self) -> None:
        """One-off work once healthy (topics, databases)."""

    def purge(self) -> list[Path]:
        """Delete data kept outside the state dir (``capa clean``); returns what went."""
        return []

    # --- the common lifecycle ---------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.state.logs / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.state.pids / f"{self.name}.json"

    def running(self) -> PidRecord | None:
        """Our PID record if its process is still alive, else None (stale files are removed)."""
        try:
            record = PidRecord.from_json(self.pid_path.read_text())
        except (OSError, ValueError, KeyError):
            return None
        if is_our_process(record):
            return record
        self.pid_path.unlink(missing_ok=True)
        return None

    def health(self) -> str:
        if self.running() is None:
            return STOPPED
        return HEALTHY if self.ready() else UNHEALTHY

    def start(self) -> str:
        """Start (or adopt the already running) process and wait until healthy."""
        self.state.create()
        if self.running() is None:
            self._start_fresh()
        self._wait_healthy()
        self.after_ready()
        return HEALTHY

    def _start_fresh(self) -> None:
        self.check_environment()
        self._check_port_free()
        self.prepare()
        proc = self.launch()
        record = PidRecord(proc.pid, self.marker, self.port, process_start_ticks(proc.pid))
        self.pid_path.write_text(record.to_json())
        logger.info("started %s pid=%d port=%s", self.name, proc.pid, self.port)

    def _check_port_free(self) -> None:
        if self.port is not None and port_in_use(self.host, self.port):
            raise EnvironmentProblem(
                f"{self.name}: port {self.port} on {self.host} is already in use by another "
                f"process; stop it or choose another port ({self.port_setting()})"
            )

    def port_setting(self) -> str:
        return f"set CAPA__{self.name.upper()}__PORT"

    def _wait_healthy(self) -> None:
        def check() -> bool:
            if self.running() is None:
                raise EnvironmentProblem(self.failure("exited during start-up"))
            return self.ready()

        if not wait_for(check, self.start_timeout, interval=0.25):
            raise EnvironmentProblem(self.failure(f"not healthy after {self.start_timeout:.0f}s"))

    def failure(self, what: str) -> str:
        last = tail(self.log_path, 1).strip() or "(empty log)"
        return f"{self.name} {what}; see {self.log_path} (last line: {last[:200]})"

    def stop(self) -> bool:
        """Stop our process by PID (no-op if not running). True if it was running."""
        record = self.running()
        if record is None:
            self.pid_path.unlink(missing_ok=True)
            return False
        stop_pid(record.pid, self.stop_signal, self.stop_timeout, group=self.stop_group)
        self.pid_path.unlink(missing_ok=True)
        logger.info("stopped %s pid=%d", self.name, record.pid)
        return True

    def describe(self) -> dict[str, Any]:
        record = self.running()
        return {
            "component": self.name,
            "pid": record.pid if record else None,
            "port": self.port,
            "health": self.health(),
        }


class ConfiguredService(Service):
    """A service configured by one config section that has a ``port`` (and maybe a ``host``)."""

    def __init__(self, state: StateDirs, config: Any) -> None:
        super().__init__(state)
        self.config = config

    @property
    def port(self) -> int:
        return int(self.config.port)

    @property
    def host(self) -> str:
        return str(getattr(self.config, "host", "127.0.0.1"))


class JavaService(ConfiguredService):
    """A JVM process run from Maven jars (``<JARS_ROOT>/<name>`` unless ``config.jars_dir``)
    with one properties file in its home ``<state>/data/<name>`` (the file is its marker)."""

    properties_name: ClassVar[str] = "server.properties"

    @property
    def home(self) -> Path:
        return self.state.data / self.name

    @property
    def properties_path(self) -> Path:
        return (self.home / self.properties_name).resolve()

    @property
    def marker(self) -> str:
        return str(self.properties_path)

    @property
    def jars_dir(self) -> Path:
        return Path(self.config.jars_dir or JARS_ROOT / self.name)

    def java(self, *args: str) -> list[str]:
        """``java -cp '<jars_dir>/*' ARGS`` (JVM options first in ``args``, then the main class)."""
        return ["java", "-cp", f"{self.jars_dir.resolve()}/*", *args]

    def launch_main(self, main_class: str, *jvm_options: str) -> subprocess.Popen[bytes]:
        """Spawn ``main_class`` on its properties file with the configured heap, logging to
        ``log_path`` from the service's home."""
        argv = self.java(
            *self.config.heap.split(),
            *jvm_options,
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            main_class,
            str(self.properties_path),
        )
        return spawn(argv, self.log_path, cwd=self.home)

    def check_java(self) -> None:
        if shutil.which("java") is None:
            raise EnvironmentProblem(
                f"{self.name}: `java` not found on PATH; install a JDK 17 "
                "(apt-get install openjdk-17-jdk-headless)"
            )
