"""``capa normalize``: source records (files) -> canonical change events on stdout.

    capa normalize --format {debezium-json,datastream-json,datastream-avro} [--source NAME] PATH...

One JSON object per canonical event on stdout (:func:`capa.codec.event_to_json`). Rejected
records go to stderr as JSON lines with ``reason``, ``file``, ``index`` and the original
text / bytes (base64); skipped records (heartbeats, transaction BEGIN/END, logical messages,
tombstones) are counted in a one-line summary on stderr. Exit 0 when every record
normalised, 3 when any went to dead-letter, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from capa import console
from capa.codec import event_to_json
from capa.errors import DecodeError
from connectors.base import NORMALIZERS, READERS, DeadLetter, Skip, get_normalizer, normalize_one

EXIT_OK, EXIT_USAGE, EXIT_DEAD_LETTERS = 0, 2, 3


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "normalize",
        help="turn Debezium / Datastream files into canonical change events (JSON lines)",
    )
    parser.add_argument("--format", required=True, choices=sorted(NORMALIZERS), help="input format")
    parser.add_argument("--source", help="source name stamped on events (default: from the input)")
    parser.add_argument(
        "--column-types",
        type=Path,
        help='Debezium schemaless input: JSON file {"schema.table": {"column": HINT}}, '
        "HINT decimal(S), timestamptz, uuid, json ... (see connectors/debezium/values.py)",
    )
    parser.add_argument(
        "--primary-key",
        action="append",
        default=[],
        metavar="TABLE=COL[,COL]",
        help="Debezium input without record keys: key columns of a table (repeatable)",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="input files")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        normalizer = get_normalizer(args.format, **_options(args))
    except (DecodeError, OSError, ValueError, TypeError, AttributeError) as exc:
        console.error(f"{exc}")
        return EXIT_USAGE
    missing = [str(p) for p in args.paths if not p.is_file()]
    if missing:
        console.error(f"no such file: {', '.join(missing)}")
        return EXIT_USAGE
    counts: Counter[str] = Counter()
    read = READERS[args.format]
    try:
        for path in args.paths:
            for item in _read(read, path):
                outcome = item if isinstance(item, DeadLetter) else normalize_one(normalizer, item)
                _emit(outcome, counts, item)
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `capa normalize ... | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the interpreter's final flush
        return EXIT_OK
    console.info(_summary(counts))
    return EXIT_DEAD_LETTERS if counts["dead_letter"] else EXIT_OK


def _read(read: Any, path: Path) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return [DeadLetter(str(path), None, f"cannot read file: {exc}", b"")]
    return read(data, str(path))


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"source": args.source}
    if not args.format.startswith("debezium"):
        if args.column_types or args.primary_key:
            raise ValueError("--column-types/--primary-key apply to --format debezium-json only")
        return options
    if args.column_types:
        try:
            options["column_types"] = json.loads(args.column_types.read_text())
        except ValueError as exc:
            raise ValueError(f"--column-types {args.column_types}: not valid JSON: {exc}") from None
    keys = {}
    for spec in args.primary_key:
        table, sep, cols = spec.partition("=")
        if not sep or not table or not cols:
            raise ValueError(
                f"--primary-key {spec!r}: expected TABLE=COL[,COL], e.g. public.orders=id"
            )
        keys[table] = [c.strip() for c in cols.split(",") if c.strip()]
    options["primary_keys"] = keys
    return options


def _emit(outcome: Any, counts: Counter[str], item: Any = None) -> None:
    if isinstance(outcome, DeadLetter):
        counts["dead_letter"] += 1
        console.emit_json(outcome.to_json(), stream=sys.stderr)
    elif isinstance(outcome, Skip):
        counts[f"skipped_{outcome.kind}"] += 1
    else:
        try:
            console.emit_json(event_to_json(outcome))
        except UnicodeEncodeError as exc:  # a lone UTF-16 surrogate from a JSON "\\udXXX" escape
            reason = f"record holds text that is not valid Unicode: {exc}"
            _emit(DeadLetter(item.file, item.index, reason, item.raw_bytes()), counts)
            return
        counts["events"] += 1


def _summary(counts: Counter[str]) -> str:
    skipped = sum(v for k, v in counts.items() if k.startswith("skipped_"))
    detail = ", ".join(
        f"{k[8:]} {v}" for k, v in sorted(counts.items()) if k.startswith("skipped_")
    )
    events, dead = counts["events"], counts["dead_letter"]
    text = f"normalize: {events} events, {dead} dead letters, {skipped} skipped"
    return f"{text} ({detail})" if detail else text
