"""Pipeline options of the streaming apply job, and the runner registry.

Defaults come from capa's typed configuration (``capa.yaml`` / ``CAPA__*`` env), so a
plain ``python -m beam_jobs.streaming_apply`` runs against the local stack; flags override.

Runners (``--runner``), picked through :data:`RUNNERS` (a registry, not if/elif):

* ``FnApiRunner`` (default; also what ``DirectRunner`` means here): the in-process Python
  portable runner. We construct it directly so Beam never tries to download Prism.
* ``FlinkRunner`` (on-prem streaming): ``--flink_master=HOST:8081 --flink_job_server_jar=JAR
  --environment_type=LOOPBACK`` (or ``PROCESS``/``DOCKER`` on a cluster).
* ``DataflowRunner`` (GCP): ``--project --region --temp_location gs://... --streaming
  --warehouse bigquery:PROJECT`` (usually launched from the Flex Template in deploy/dataflow).
* ``PrismRunner`` (optional): ``--prism_location=/abs/path/prism``.
* ``SparkRunner``/``PortableRunner``: passed through; Spark's portable streaming mode has no
  self-checkpointing SDFs, so use it for bounded backfills (``--stop_at_end``) only.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from capa.config import load_settings
from capa.errors import ConfigError


def _fn_api_runner() -> Any:
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    return FnApiRunner()


# Runner name -> factory of a runner object; None = pass the name through to Beam.
RUNNERS: dict[str, Callable[[], Any] | None] = {
    "FnApiRunner": _fn_api_runner,
    "DirectRunner": _fn_api_runner,
    "DataflowRunner": None,
    "FlinkRunner": None,
    "PrismRunner": None,
    "SparkRunner": None,
    "PortableRunner": None,
}


class StreamingApplyOptions(PipelineOptions):
    """Flags of ``beam_jobs.streaming_apply`` (see ``--help``)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        settings = load_settings()
        kafka, apply = settings.kafka, settings.apply
        parser.add_argument(
            "--bootstrap",
            default=kafka.bootstrap,
            help="Kafka bootstrap servers HOST:PORT of the canonical topic.",
        )
        parser.add_argument("--topic", default=kafka.topic, help="Canonical change-event topic.")
        parser.add_argument(
            "--dlq_topic",
            default=kafka.dlq_topic,
            help="Dead-letter topic: original bytes + reason headers.",
        )
        parser.add_argument(
            "--schema_registry_url",
            default=kafka.schema_registry_url,
            help="Confluent schema registry (only for Confluent-framed values).",
        )
        parser.add_argument(
            "--warehouse",
            default=_default_warehouse(settings),
            help="Warehouse spec: local:DIR or bigquery:PROJECT[...].",
        )
        parser.add_argument(
            "--consumer_group",
            default=apply.consumer_group,
            help="Kafka group whose committed offsets mark what is applied.",
        )
        parser.add_argument(
            "--commit_interval_s",
            type=float,
            default=apply.commit_interval_s,
            help="Max seconds one bundle reads before it is applied and committed.",
        )
        parser.add_argument(
            "--max_batch_events",
            type=int,
            default=apply.max_batch_events,
            help="Max events per warehouse commit (a bundle may hold several).",
        )
        parser.add_argument(
            "--pipelined_apply",
            type=_flag,
            default=apply.pipelined,
            help="Apply and commit a batch while the next one is read and decoded (true/false; "
            "default: true on the in-process runner only, see capa.config.ApplyConfig).",
        )
        parser.add_argument(
            "--poll_timeout_ms",
            type=int,
            default=200,
            help="How long an idle partition waits for new records per bundle.",
        )
        parser.add_argument(
            "--stop_at_end",
            "--bounded",
            dest="stop_at_end",
            action="store_true",
            default=False,
            help="Stop once caught up to the end offsets seen at start (tests, backfills).",
        )
        parser.add_argument(
            "--accept_offset_gap",
            "--accept-offset-gap",
            dest="accept_offset_gap",
            type=_flag,
            nargs="?",
            const=True,
            default=apply.accept_offset_gap,
            help="Resume past events that retention deleted before they were applied (logged "
            "and counted as offset_gap_events; true/false, bare flag = true); without it the "
            "job stops on such a gap and names the topic, partition and lost events.",
        )
        parser.add_argument(
            "--status_file",
            default=str(settings.state_dir / "apply-status.json"),
            help="JSON status (lag, rates, latency) rewritten after each commit; '' to disable.",
        )
        parser.add_argument(
            "--log_interval_s", type=float, default=10.0, help="Seconds between progress log lines."
        )
        local = settings.warehouse if settings.warehouse.type == "local" else None
        parser.add_argument(
            "--merge_on_read",
            type=_flag,
            default=True,
            help="local warehouse: append each batch to a pending log served as "
            "base + pending (fast commits), compacted on the schedule below "
            "(true/false).",
        )
        parser.add_argument(
            "--compact_interval_s",
            type=float,
            default=local.compact_interval_s if local else 300.0,
            help="local warehouse, merge-on-read: compact at least this often.",
        )
        parser.add_argument(
            "--compact_pending_rows",
            type=int,
            default=local.compact_pending_rows if local else 1_000_000,
            help="local warehouse, merge-on-read: compact at this many pending rows.",
        )


def _flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is not true/false")


def _default_warehouse(settings: Any) -> str:
    wh = settings.warehouse
    return f"local:{wh.path}" if wh.type == "local" else f"bigquery:{wh.project}"


def pipelined_apply(opts: StreamingApplyOptions, runner: Any) -> bool:
    """The flag, or by default: only on the in-process runner (see ApplyConfig.pipelined)."""
    if opts.pipelined_apply is not None:
        return bool(opts.pipelined_apply)
    return not isinstance(runner, str)


def build_options(argv: list[str] | None) -> tuple[PipelineOptions, Any]:
    """Parse argv -> (PipelineOptions, runner object or name)."""
    options = PipelineOptions(argv)
    standard = options.view_as(StandardOptions)
    name = standard.runner or "FnApiRunner"
    if name not in RUNNERS:
        raise ConfigError(
            f"--runner={name!r} is not supported; choose one of {', '.join(sorted(RUNNERS))}"
        )
    factory = RUNNERS[name]
    if factory is not None:
        standard.runner = None
        return options, factory()
    standard.streaming = not options.view_as(StreamingApplyOptions).stop_at_end
    return options, name
