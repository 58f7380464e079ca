"""``capa ingest datastream`` and ``capa bridge``: the two ways changes reach Kafka.

capa ingest datastream --bucket B [--prefix P] [--once] [--checkpoint FILE]
    Read a Datastream bucket (``<prefix>/<schema>_<table>/yyyy/mm/dd/hh/mm/<file>``)
    into the canonical topic, each file exactly once (durable checkpoint). Without
    ``--once`` it keeps polling until Ctrl-C / SIGTERM. Exit 3 if any file or record
    went to the dead-letter topic, else 0.

capa bridge
    Run the Debezium bridge (PostgreSQL -> canonical topic) in the foreground; the same
    process ``capa up`` manages. Stop with Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from capa import console
from capa.config import load_settings

EXIT_OK, EXIT_DEAD_LETTERS = 0, 3


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ingest = subparsers.add_parser("ingest", help="read a change source into the Kafka topic")
    kinds = ingest.add_subparsers(dest="source_kind", metavar="SOURCE", required=True)
    ds = kinds.add_parser("datastream", help="a Google Datastream GCS bucket (source F3)")
    ds.add_argument("--bucket", help="bucket name (default CAPA__DATASTREAM__BUCKET)")
    ds.add_argument("--prefix", help="stream path prefix inside the bucket")
    ds.add_argument("--source", help="source name stamped on events (default f3)")
    ds.add_argument("--checkpoint", type=Path, help="checkpoint JSON file")
    ds.add_argument("--once", action="store_true", help="one pass over the bucket, then exit")
    ds.add_argument("--interval", type=_positive_seconds, help="seconds between polls")
    ds.set_defaults(func=run_datastream)

    bridge = subparsers.add_parser("bridge", help="run the Debezium bridge in the foreground")
    bridge.set_defaults(func=run_bridge)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0, e.g. 10")
    return value


def _datastream_overrides(args: argparse.Namespace) -> dict[str, Any]:
    pairs = {
        "bucket": args.bucket,
        "prefix": args.prefix,
        "source_name": args.source,
        "checkpoint_path": args.checkpoint,
        "poll_interval_s": args.interval,
    }
    return {k: v for k, v in pairs.items() if v is not None}


def run_datastream(args: argparse.Namespace) -> int:
    from connectors.datastream.reader import build_reader

    base = load_settings()
    section = base.datastream.model_copy(update=_datastream_overrides(args))
    settings = base.model_copy(update={"datastream": section})
    stop = threading.Event()
    reader = build_reader(settings, stop=stop)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if not args.once:  # a one-pass run ends before anything could scrape it
        from capa import metrics

        observe = settings.observe
        port = metrics.serve_metrics(observe.host, observe.datastream_metrics_port)
        if port:
            console.info(f"metrics: http://{observe.host}:{port}/metrics")
    try:
        stats = reader.poll_once() if args.once else reader.run(section.poll_interval_s)
    finally:
        reader.producer.close()
    console.info(
        f"datastream gs://{section.bucket}/{section.prefix}: {stats.files} file(s), "
        f"{stats.events} event(s), {stats.dead_letters} dead letter(s) "
        f"-> {settings.kafka.topic}"
    )
    return EXIT_DEAD_LETTERS if stats.dead_letters else EXIT_OK


def run_bridge(args: argparse.Namespace) -> int:
    from connectors.debezium.bridge import BridgeProcess

    process = BridgeProcess(load_settings())
    signal.signal(signal.SIGTERM, process.request_stop)
    signal.signal(signal.SIGINT, process.request_stop)
    console.step("Debezium bridge running; Ctrl-C to stop")
    return process.run()
