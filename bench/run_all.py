"""Benchmark harness: runs every benchmark N times and writes the top of docs/benchmarks.md.

    .venvs/beam/bin/python -m bench.run_all [--runs 3] [--quick] [--only streaming,spark]
        [--out docs/benchmarks.md]

``make bench`` runs the defaults: the issue's sizes (1M-row tables, 2k events/s latency, 1M
backlog), 3 runs each, about 45-60 minutes on the shared 2-core machine (one run: normalise
~1 min, apply ~2 x 2 min, streaming ~5 min, Spark ~6 min). ``--quick`` uses small sizes
(3 runs took 9.6 minutes at load 5-8, 6 of them Spark); targets stated for the full size
are shown as "n/a".

Each run is a subprocess in the benchmark's own environment (the Spark one with
``.venvs/spark/bin/python``) writing one JSON result (``--json-out``, see ``bench.common``).
Per figure the harness reports min / median / max over the runs, the median of its in-run
baseline (e.g. the bare Kafka read), the ratio of the two medians and the issue's target. The
generated section replaces the text between the ``bench:run_all`` markers; the hand-written
sections below it are kept.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import BenchResultError, read_result

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench:run_all:start -->", "<!-- bench:run_all:end -->"
BEAM_PY, SPARK_PY = ".venvs/beam/bin/python", ".venvs/spark/bin/python"
FORMATS_PY = ".cache/venv-bench-formats/bin/python"


@dataclass(frozen=True)
class Target:
    """An issue's target for one figure: ``on`` the figure's median ("value") or its ratio
    to the baseline ("ratio"); only judged when the run's params match ``when``."""

    figure: str
    on: str
    op: str
    threshold: float
    when: Mapping[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        what = "ratio" if self.on == "ratio" else "median"
        cond = ", ".join(f"{k}={v}" for k, v in self.when.items())
        return f"{what} {self.op} {self.threshold:g}" + (f" (at {cond})" if cond else "")

    def judge(self, value: float | None, params: Mapping[str, Any]) -> bool | None:
        if value is None or any(params.get(k) != v for k, v in self.when.items()):
            return None
        return value >= self.threshold if self.op == ">=" else value <= self.threshold


@dataclass(frozen=True)
class Benchmark:
    title: str
    module: str
    python: str
    args: tuple[str, ...]
    quick_args: tuple[str, ...]
    targets: tuple[Target, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    default: bool = True


BENCHMARKS: dict[str, Benchmark] = {
    "normalize": Benchmark(
        "Normalise + encode (events/s per core, CPU time)",
        "bench.bench_normalize",
        BEAM_PY,
        ("--events", "100000"),
        ("--events", "20000"),
        (
            Target("debezium_orders.normalise_encode", "value", ">=", 30_000),
            Target("datastream_avro.normalise_encode", "value", ">=", 30_000),
        ),
    ),
    "apply": Benchmark(
        "Apply into the local lakehouse, merge-on-write",
        "bench.bench_apply",
        BEAM_PY,
        ("--rows", "1000000", "--batch", "20000", "--batches", "8"),
        ("--rows", "100000", "--batch", "5000", "--batches", "3"),
    ),
    "apply_mor": Benchmark(
        "Apply into the local lakehouse, merge-on-read",
        "bench.bench_apply",
        BEAM_PY,
        ("--rows", "1000000", "--batch", "20000", "--batches", "8", "--merge_on_read"),
        ("--rows", "100000", "--batch", "5000", "--batches", "3", "--merge_on_read"),
    ),
    "streaming": Benchmark(
        "Streaming apply job (Kafka -> Beam -> local lakehouse)",
        "bench.bench_streaming",
        BEAM_PY,
        ("--rows", "1000000", "--updates", "200000", "--rate", "2000", "--latency_s", "60"),
        ("--rows", "20000", "--updates", "20000", "--rate", "2000", "--latency_s", "15"),
        (
            Target("sustained_apply", "ratio", ">=", 0.5, {"rows": 1_000_000}),
            Target("latency_p99", "value", "<=", 3.0, {"rate": 2000}),
            Target("backlog_catch_up", "value", "<=", 90.0, {"rows": 1_000_000}),
        ),
    ),
    "initial_sync": Benchmark(
        "Initial sync of PostgreSQL: fast path vs bare COPY vs Debezium's snapshot",
        "bench.bench_initial_sync",
        BEAM_PY,
        ("--scale", "100", "--debezium_scale", "5"),
        ("--scale", "5", "--debezium_scale", "1"),
        (
            Target("fast_sync_wall", "ratio", "<=", 2.0, {"scale": 100}),
            Target("fast_sync_rows_per_s", "ratio", ">=", 10.0, {"scale": 100}),
            Target("fast_sync_peak_rss", "value", "<=", 1024.0),
        ),
    ),
    "datastream_backfill": Benchmark(
        "Datastream backfill: Kafka path vs the bulk writer (rows/s, wall)",
        "bench.bench_datastream_backfill",
        BEAM_PY,
        ("--rows", "500000"),
        ("--rows", "100000"),
        (Target("bulk_speedup", "value", ">=", 1.0),),  # bulk only where it is faster
    ),
    "capture": Benchmark(
        "Streaming capture of PostgreSQL: stage ceilings and end-to-end sustained rate",
        "bench.bench_capture",
        BEAM_PY,
        ("--backlog_s", "10", "--rates", "2000,4000,6000,8000,10000,13000,17000"),
        ("--rows", "20000", "--source_s", "4", "--backlog_s", "3", "--rates", "2000,4000,8000"),
        (
            # issue #23: keep up with pgbench's fastest single-row rate (5x ~3,500/s)
            Target("e2e_sustained", "value", ">=", 17_500.0),
            Target("e2e_sustained", "ratio", ">=", 1.0),
        ),
    ),
    "spark": Benchmark(
        "Spark models: incremental build vs full rebuild",
        "bench.bench_spark_incremental",
        SPARK_PY,
        ("--orders", "1000000"),
        ("--orders", "20000"),
        (),  # the 0.2 ratio target was retired on 2026-12-07; the ratio is still reported
        env={"SPARK_LOCAL_IP": "127.0.0.1"},
    ),
    "table_formats": Benchmark(
        "Delta (delta-rs) vs Iceberg (pyiceberg) micro-batch MERGE",
        "bench.bench_table_formats",
        FORMATS_PY,
        ("--rows", "1000000"),
        ("--rows", "100000", "--batches", "3"),
        default=False,  # needs the throwaway venv described in bench_table_formats.py
    ),
}


# --- running ------------------------------------------------------------------------------


@dataclass
class BenchRuns:
    name: str
    argv: list[str]
    results: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def bench_argv(bench: Benchmark, quick: bool) -> list[str]:
    return [bench.python, "-m", bench.module, *(bench.quick_args if quick else bench.args)]


def run_once(bench: Benchmark, argv: list[str], log: Path, timeout_s: float) -> dict[str, Any]:
    """One subprocess run; returns its JSON result or raises RuntimeError with the reason."""
    if not (ROOT / bench.python).exists():
        raise RuntimeError(f"interpreter {bench.python} is missing (see {bench.module} docstring)")
    out = log.with_suffix(".json")
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [str(ROOT / argv[0]), *argv[1:], "--json-out", str(out)],
            cwd=ROOT,
            env=os.environ | dict(bench.env),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout stops brokers/jobs too
        )
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            raise RuntimeError(f"timed out after {timeout_s:.0f} s (log {log})") from None
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"exit {proc.returncode}: {tail[0][:160]!r} (log {log})")
    try:
        return read_result(out)
    except (OSError, BenchResultError) as exc:
        raise RuntimeError(f"no valid JSON result: {exc} (log {log})") from exc


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT the run's process group (the benchmark's ``finally`` stops its services), then
    SIGKILL it if it is still there after a minute."""
    for sig, grace in ((signal.SIGINT, 60.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
            return


def run_benchmark(name: str, runs: int, quick: bool, logs: Path, timeout_s: float) -> BenchRuns:
    bench = BENCHMARKS[name]
    collected = BenchRuns(name, bench_argv(bench, quick))
    for i in range(1, runs + 1):
        started = time.monotonic()
        try:
            collected.results.append(
                run_once(bench, collected.argv, logs / f"{name}-{i}.log", timeout_s)
            )
            logger.info("%s run %d/%d: %.0f s", name, i, runs, time.monotonic() - started)
        except RuntimeError as exc:
            logger.warning("%s run %d/%d failed: %s", name, i, runs, exc)
            collected.failures.append(f"run {i}: {exc}")
    return collected


# --- aggregation --------------------------------------------------------------------------


@dataclass(frozen=True)
class FigureRow:
    figure: str
    unit: str
    median: float
    low: float
    high: float
    baseline: float | None
    ratio: float | None
    target: str
    met: bool | None


def summarise(runs: BenchRuns, targets: Sequence[Target]) -> list[FigureRow]:
    """Min / median / max per figure over the runs, the baseline median and the ratio."""
    if not runs.results:
        return []
    by_figure = {t.figure: t for t in targets}
    params = runs.results[0]["params"]
    rows = []
    for figure in runs.results[0]["figures"]:
        values = [r["figures"][figure] for r in runs.results if figure in r["figures"]]
        bases = [r["baselines"][figure] for r in runs.results if figure in r.get("baselines", {})]
        median = statistics.median(values)
        baseline = statistics.median(bases) if bases else None
        ratio = median / baseline if baseline else None
        target = by_figure.get(figure)
        judged = None
        if target is not None:
            judged = target.judge(ratio if target.on == "ratio" else median, params)
        rows.append(
            FigureRow(
                figure,
                runs.results[0].get("units", {}).get(figure, ""),
                median,
                min(values),
                max(values),
                baseline,
                ratio,
                target.text() if target else "",
                judged,
            )
        )
    return rows


# --- machine details ----------------------------------------------------------------------


def _command_output(argv: Sequence[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return (proc.stdout + proc.stderr).strip()


def cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gib(meminfo: str) -> float:
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return 0.0


_VERSIONS = (
    "import importlib.metadata as m, json, sys\n"
    "def v(n):\n"
    "    try: return m.version(n)\n"
    "    except m.PackageNotFoundError: return None\n"
    "print(json.dumps({'python': sys.version.split()[0], **{n: v(n) for n in sys.argv[1:]}}))"
)


def env_versions(python: str, packages: Sequence[str]) -> dict[str, Any]:
    if not (ROOT / python).exists():
        return {"python": f"missing ({python})"}
    text = _command_output([str(ROOT / python), "-c", _VERSIONS, *packages])
    try:
        return dict(json.loads(text.splitlines()[-1]))
    except (ValueError, IndexError):
        return {"python": f"unknown ({text[:80]!r})"}


def machine_details() -> dict[str, Any]:
    def read(path: str) -> str:
        try:
            return Path(path).read_text()
        except OSError:
            return ""

    java = _command_output(["java", "-version"]).splitlines()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(read("/proc/cpuinfo")),
        "memory_gib": round(memory_gib(read("/proc/meminfo")), 1),
        "kernel": platform.release(),
        "java": java[0] if java else "unknown",
        "beam_env": env_versions(BEAM_PY, ("apache-beam", "deltalake", "confluent-kafka")),
        "spark_env": env_versions(SPARK_PY, ("pyspark", "delta-spark", "deltalake")),
    }


# --- markdown -----------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"


def _met(value: bool | None, target: str) -> str:
    if not target:
        return ""
    return {True: "**yes**", False: "**no**", None: "n/a"}[value]


def figure_table(rows: Sequence[FigureRow]) -> list[str]:
    out = [
        "| figure | unit | median | min | max | baseline (median) | ratio | target | met? |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "—" if r.ratio is None else f"{r.ratio:.3f}"
        out.append(
            f"| {r.figure} | {r.unit} | {fmt(r.median)} | {fmt(r.low)} | {fmt(r.high)} "
            f"| {fmt(r.baseline)} | {ratio} | {r.target} | {_met(r.met, r.target)} |"
        )
    return out


def bench_section(runs: BenchRuns, expected: int) -> list[str]:
    bench = BENCHMARKS[runs.name]
    lines = [
        f"### {runs.name}: {bench.title}",
        "",
        f"`{shlex.join(runs.argv)}` — {len(runs.results)} of {expected} runs succeeded.",
    ]
    if runs.results:
        lines += ["", *figure_table(summarise(runs, bench.targets))]
        lines += baseline_notes(runs.results) + check_notes(runs.results)
    if runs.failures:
        lines += ["", *(f"- failed {f}" for f in runs.failures)]
    return [*lines, ""]


def baseline_notes(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per distinct baseline, naming the figures it is the reference for."""
    figures_of: dict[str, list[str]] = {}
    for figure, label in results[0].get("baseline_labels", {}).items():
        figures_of.setdefault(label, []).append(figure)
    if not figures_of:
        return []
    return ["", "Baselines:", *(f"- {label}: {', '.join(f)}" for label, f in figures_of.items())]


def check_notes(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """Correctness checks over all runs: passed in every run, or FAILED in how many."""
    names = dict.fromkeys(k for r in results for k in r.get("checks", {}))
    out = []
    for name in names:
        failed = sum(1 for r in results if not r.get("checks", {}).get(name, False))
        out.append(f"{name}: " + (f"**FAILED in {failed} run(s)**" if failed else "passed"))
    return ["", "Checks: " + "; ".join(out) + "."] if out else []


def machine_table(machine: Mapping[str, Any], load_before: str, load_after: str) -> list[str]:
    beam, spark = machine["beam_env"], machine["spark_env"]
    packages = "; ".join(
        f"{env_name} env: " + ", ".join(f"{k} {v}" for k, v in env.items() if k != "python" and v)
        for env_name, env in (("beam", beam), ("spark", spark))
    )
    return [
        "| machine | |",
        "|---|---|",
        f"| cores (nproc) | {machine['nproc']} |",
        f"| CPU | {machine['cpu']} |",
        f"| memory | {machine['memory_gib']} GiB |",
        f"| load average before / after (1, 5, 15 min) | {load_before} / {load_after} |",
        f"| Python | {beam.get('python')} (beam env), {spark.get('python')} (spark env) |",
        f"| Java | {machine['java']} |",
        f"| kernel | {machine['kernel']} |",
        f"| packages | {packages} |",
    ]


def render(
    all_runs: Sequence[BenchRuns],
    runs: int,
    command: str,
    machine: Mapping[str, Any],
    loads: tuple[str, str],
    started: datetime,
    duration_s: float,
) -> str:
    lines = [
        START,
        "## Latest harness run (generated by `bench/run_all.py`; edits here are overwritten)",
        "",
        f"{started:%Y-%m-%d %H:%M} UTC, `{command}`, {duration_s / 60:.1f} min in total. "
        f"Each benchmark ran {runs} time(s) as a subprocess; the table gives min / median / max "
        "over the runs, the median of the in-run baseline and median / baseline median. "
        '"n/a": the target is stated for other parameters (e.g. full size) than this run\'s.',
        "",
        *machine_table(machine, *loads),
        "",
    ]
    for bench_runs in all_runs:
        lines += bench_section(bench_runs, runs)
    return "\n".join([*lines, END])


def splice(document: str, section: str) -> str:
    """Replace the text between the markers, or insert the section under the H1 title."""
    if START in document and END in document:
        head, rest = document.split(START, 1)
        return head + section + rest.split(END, 1)[1]
    lines = document.splitlines(keepends=True)
    at = next((i + 1 for i, line in enumerate(lines) if line.startswith("# ")), 0)
    return "".join(lines[:at]) + ("\n" if at else "") + section + "\n\n" + "".join(lines[at:])


# --- CLI ----------------------------------------------------------------------------------


def select(only: str | None) -> list[str]:
    if not only:
        return [n for n, b in BENCHMARKS.items() if b.default]
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}")
    return names


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per benchmark (medians)")
    parser.add_argument("--quick", action="store_true", help="small sizes (~10 min in all)")
    parser.add_argument(
        "--only", default=None, help=f"comma-separated subset of {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--out", default="docs/benchmarks.md", help="Markdown file to update")
    parser.add_argument(
        "--timeout_s",
        type=float,
        default=None,
        help="per run (default 20 min with --quick, 2 h otherwise)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    return args


def main(
    argv: Sequence[str] | None = None, runner: Callable[..., BenchRuns] = run_benchmark
) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    names = select(args.only)
    command = shlex.join(
        [".venvs/beam/bin/python", "-m", "bench.run_all", *(sys.argv[1:] if argv is None else argv)]
    )
    started, t0, before = datetime.now(UTC), time.monotonic(), load_average()
    timeout_s = args.timeout_s or (1200.0 if args.quick else 7200.0)
    logs = Path(tempfile.mkdtemp(prefix="capa-bench-logs-"))
    logger.info("benchmarks %s, %d run(s) each; logs in %s", names, args.runs, logs)
    all_runs = [runner(n, args.runs, args.quick, logs, timeout_s) for n in names]
    section = render(
        all_runs,
        args.runs,
        command,
        machine_details(),
        (before, load_average()),
        started,
        time.monotonic() - t0,
    )
    out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
    out.write_text(splice(out.read_text() if out.exists() else "# Benchmarks\n", section))
    logger.info("wrote %s in %.1f min", out, (time.monotonic() - t0) / 60)
    return 0 if all(r.results and not r.failures for r in all_runs) else 1


if __name__ == "__main__":
    sys.exit(main())
