"""The benchmark harness's aggregation and Markdown writing, on synthetic JSON results
(no benchmark runs here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import run_all
from bench.common import BenchResultError, make_result, read_result, write_result
from bench.run_all import END, START, BenchRuns, Target, render, splice, summarise


def streaming_result(apply_rate: float, bare: float, p99: float, rows: int = 20_000) -> dict:
    return make_result(
        "streaming",
        {"rows": rows, "rate": 2000},
        {"sustained_apply": apply_rate, "latency_p99": p99, "backlog_catch_up": 12.0},
        baselines={"sustained_apply": bare},
        baseline_labels={"sustained_apply": "bare confluent-kafka read of the same topic"},
        units={"sustained_apply": "events/s", "latency_p99": "s", "backlog_catch_up": "s"},
    )


def streaming_runs(rows: int = 1_000_000) -> BenchRuns:
    runs = BenchRuns("streaming", [".venvs/beam/bin/python", "-m", "bench.bench_streaming"])
    runs.results = [
        streaming_result(5_000, 100_000, 2.0, rows),
        streaming_result(7_000, 140_000, 4.0, rows),
        streaming_result(6_000, 120_000, 2.5, rows),
    ]
    return runs


def by_name(rows: list[run_all.FigureRow]) -> dict[str, run_all.FigureRow]:
    return {r.figure: r for r in rows}


def test_summary_gives_min_median_max_and_ratio_of_medians() -> None:
    rows = by_name(summarise(streaming_runs(), run_all.BENCHMARKS["streaming"].targets))
    apply = rows["sustained_apply"]
    assert (apply.low, apply.median, apply.high) == (5_000, 6_000, 7_000)
    assert apply.baseline == 120_000
    assert apply.ratio == pytest.approx(0.05)
    assert apply.met is False  # target: ratio >= 0.5
    assert rows["latency_p99"].median == 2.5 and rows["latency_p99"].met is True
    assert rows["latency_p99"].ratio is None  # no baseline, no ratio


def test_target_for_other_params_is_not_judged() -> None:
    rows = by_name(summarise(streaming_runs(rows=20_000), run_all.BENCHMARKS["streaming"].targets))
    assert rows["sustained_apply"].met is None  # the 0.5 ratio is stated for 1M rows
    backlog = rows["backlog_catch_up"]
    assert backlog.median == 12.0 and backlog.met is None
    assert "rows=1000000" in backlog.target


def test_target_judges_value_or_ratio_in_its_direction() -> None:
    at_most = Target("incremental_build", "ratio", "<=", 0.2)
    assert at_most.judge(0.19, {}) is True and at_most.judge(0.21, {}) is False
    at_least = Target("x", "value", ">=", 30_000, {"events": 100_000})
    assert at_least.judge(31_000, {"events": 100_000}) is True
    assert at_least.judge(31_000, {"events": 20_000}) is None


def test_failed_runs_are_reported_and_medians_use_the_rest() -> None:
    runs = streaming_runs()
    runs.results = runs.results[:2]
    runs.failures.append("run 3: exit 1: 'KafkaException' (log /tmp/x.log)")
    text = "\n".join(run_all.bench_section(runs, expected=3))
    assert "2 of 3 runs succeeded" in text
    assert "- failed run 3: exit 1" in text
    assert "| sustained_apply | events/s | 6,000 | 5,000 | 7,000 | 120,000 | 0.050 |" in text


def test_benchmark_with_no_successful_run_has_no_table() -> None:
    runs = BenchRuns("spark", ["x"], failures=["run 1: timed out after 1200 s"])
    text = "\n".join(run_all.bench_section(runs, expected=1))
    assert "0 of 1 runs succeeded" in text and "| figure |" not in text
    assert "- failed run 1: timed out" in text


MACHINE = {
    "nproc": 2,
    "cpu": "Test CPU @ 2.0GHz",
    "memory_gib": 24.0,
    "kernel": "6.1",
    "java": 'openjdk version "17.0.9"',
    "beam_env": {"python": "3.11.7", "apache-beam": "2.70.0", "deltalake": "1.6.6"},
    "spark_env": {"python": "3.11.7", "pyspark": "4.1.0"},
}


def rendered() -> str:
    from datetime import UTC, datetime

    return render(
        [streaming_runs()],
        3,
        "python -m bench.run_all --quick",
        MACHINE,
        ("9.00 8.00 7.00", "10.00 9.00 8.00"),
        datetime(2026, 11, 24, 5, 0, tzinfo=UTC),
        600.0,
    )


def test_render_has_machine_details_command_and_tables() -> None:
    text = rendered()
    assert text.startswith(START) and text.endswith(END)
    assert "`python -m bench.run_all --quick`" in text and "10.0 min" in text
    assert "| cores (nproc) | 2 |" in text and "Test CPU @ 2.0GHz" in text
    assert "9.00 8.00 7.00 / 10.00 9.00 8.00" in text
    assert "apache-beam 2.70.0" in text and "pyspark 4.1.0" in text
    assert "### streaming:" in text
    assert "| sustained_apply | events/s | 6,000 |" in text and "**no**" in text
    assert "bare confluent-kafka read of the same topic" in text


def test_splice_replaces_only_between_markers() -> None:
    document = f"# Benchmarks\n\nintro\n\n{START}\nold numbers\n{END}\n\n## Apply\n\nhand text\n"
    out = splice(document, f"{START}\nnew numbers\n{END}")
    assert "old numbers" not in out and "new numbers" in out
    assert out.startswith("# Benchmarks\n\nintro\n\n") and out.endswith("## Apply\n\nhand text\n")
    assert splice(out, f"{START}\nnewer\n{END}").count(START) == 1


def test_splice_without_markers_inserts_under_the_title() -> None:
    out = splice("# Benchmarks\n\n## Apply\n\nhand text\n", f"{START}\nx\n{END}")
    assert out.index("# Benchmarks") < out.index(START) < out.index("## Apply")
    assert out.endswith("## Apply\n\nhand text\n")


def test_main_writes_the_section_into_the_file(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Streaming\n\nkept\n")

    def fake_runner(name: str, runs: int, quick: bool, logs: Path, timeout_s: float) -> BenchRuns:
        assert (name, runs, quick) == ("streaming", 2, True)
        return streaming_runs()

    code = run_all.main(
        ["--quick", "--runs", "2", "--only", "streaming", "--out", str(doc)], runner=fake_runner
    )
    text = doc.read_text()
    assert code == 0
    assert text.count(START) == 1 and "## Streaming\n\nkept\n" in text
    assert "--only streaming" in text


def test_unknown_benchmark_name_is_quoted() -> None:
    with pytest.raises(SystemExit, match="'nope'"):
        run_all.select("streaming,nope")


def test_defaults_skip_opt_in_benchmarks() -> None:
    assert run_all.select(None) == [
        "normalize",
        "apply",
        "apply_mor",
        "streaming",
        "initial_sync",
        "datastream_backfill",
        "capture",
        "spark",
    ]


def test_result_json_round_trip_and_validation(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_result(path, streaming_result(1.0, 2.0, 3.0))
    assert read_result(path)["baselines"] == {"sustained_apply": 2.0}
    path.write_text(json.dumps({"name": "x", "params": {}, "figures": {"a": "fast"}}))
    with pytest.raises(BenchResultError, match="'fast'"):
        read_result(path)
    with pytest.raises(BenchResultError, match="name no figure"):
        make_result("x", {}, {"a": 1.0}, baselines={"b": 2.0})
    path.write_text("not json")
    with pytest.raises(BenchResultError, match="not JSON"):
        read_result(path)


def test_machine_parsers() -> None:
    cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: x\n"
    assert run_all.cpu_model(cpuinfo) == "AMD EPYC 7B13"
    assert run_all.memory_gib("MemTotal:       25165824 kB\n") == 24.0


def test_run_once_reports_a_missing_interpreter(tmp_path: Path) -> None:
    bench = run_all.Benchmark("t", "bench.nothing", ".venvs/none/bin/python", (), ())
    with pytest.raises(RuntimeError, match=r"\.venvs/none/bin/python is missing"):
        run_all.run_once(bench, run_all.bench_argv(bench, True), tmp_path / "x.log", 10)


def spark_result(incremental: float, full: float, identical: bool) -> dict:
    return make_result(
        "spark_incremental",
        {"orders": 20_000},
        {"incremental_build": incremental},
        baselines={"incremental_build": full},
        baseline_labels={"incremental_build": "full rebuild of the same input"},
        units={"incremental_build": "s"},
        checks={"incremental_equals_full": identical},
    )


def test_spark_ratio_target_and_a_failed_check_are_shown() -> None:
    runs = BenchRuns("spark", ["x"])
    runs.results = [
        spark_result(10, 60, True),
        spark_result(12, 40, False),
        spark_result(30, 50, True),
    ]
    row = summarise(runs, (Target("incremental_build", "ratio", "<=", 0.2),))[0]
    assert (row.median, row.baseline) == (12, 50)
    assert row.ratio == pytest.approx(0.24) and row.met is False  # target: ratio <= 0.2
    text = "\n".join(run_all.bench_section(runs, expected=3))
    assert "incremental_equals_full: **FAILED in 1 run(s)**" in text
    assert "- full rebuild of the same input: incremental_build" in text


def test_one_baseline_serving_several_figures_is_listed_once() -> None:
    result = make_result(
        "n",
        {},
        {"a.x": 1.0, "b.x": 2.0},
        baselines={"a.x": 3.0, "b.x": 4.0},
        baseline_labels={"a.x": "json.loads alone", "b.x": "json.loads alone"},
    )
    assert run_all.baseline_notes([result]) == ["", "Baselines:", "- json.loads alone: a.x, b.x"]


FAKE_BENCH = """
import argparse, json, sys, time
parser = argparse.ArgumentParser()
parser.add_argument("--mode")
parser.add_argument("--json-out", dest="json_out")
args = parser.parse_args()
if args.mode == "sleep":
    time.sleep(120)
if args.mode == "fail":
    sys.exit("boom: the broker did not start")
result = {"name": "fake", "params": {}, "figures": {"x": 2.0}, "baselines": {"x": 4.0}}
open(args.json_out, "w").write(json.dumps(result))
"""


def fake_benchmark(tmp_path: Path, mode: str) -> run_all.Benchmark:
    (tmp_path / "fake_bench.py").write_text(FAKE_BENCH)
    return run_all.Benchmark(
        "fake",
        "fake_bench",
        run_all.BEAM_PY,
        (),
        ("--mode", mode),
        env={"PYTHONPATH": str(tmp_path)},
    )


def test_run_once_reads_the_json_of_a_real_subprocess(tmp_path: Path) -> None:
    bench = fake_benchmark(tmp_path, "ok")
    result = run_all.run_once(bench, run_all.bench_argv(bench, True), tmp_path / "r.log", 60)
    assert result["figures"] == {"x": 2.0} and result["baselines"] == {"x": 4.0}


def test_run_once_reports_exit_code_and_last_log_line(tmp_path: Path) -> None:
    bench = fake_benchmark(tmp_path, "fail")
    with pytest.raises(RuntimeError, match="exit 1: 'boom: the broker did not start'"):
        run_all.run_once(bench, run_all.bench_argv(bench, True), tmp_path / "r.log", 60)


def test_run_once_stops_a_run_past_its_timeout(tmp_path: Path) -> None:
    bench = fake_benchmark(tmp_path, "sleep")
    with pytest.raises(RuntimeError, match="timed out after 2 s"):
        run_all.run_once(bench, run_all.bench_argv(bench, True), tmp_path / "r.log", 2)
