"""``capa apply``: canonical JSON lines -> a warehouse, through the same apply code as the stream.

    capa apply --input EVENTS.jsonl --warehouse local:DIR [--batch-size 20000]

Lines are :func:`capa.codec.event_to_json` objects (``capa normalize`` output). Bad lines
and events the warehouse rejects (schema drift) go to stderr as JSON with ``reason`` and
the original line; the rest is applied. A summary goes to stderr. Exit 0, or 3 when any
line went to dead-letter, 2 for usage errors (missing input file, bad warehouse spec).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from capa import console
from capa.apply import DeadLetter, apply_isolating_failures, check_applicable
from capa.codec import event_from_json
from capa.errors import ConfigError, DecodeError
from capa.events import ChangeEvent

EXIT_OK, EXIT_USAGE, EXIT_DEAD_LETTERS = 0, 2, 3


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "apply", help="apply canonical change events (JSON lines) to a warehouse"
    )
    parser.add_argument(
        "--input", required=True, help="JSON-lines file of canonical events ('-' = stdin)"
    )
    parser.add_argument(
        "--warehouse", required=True, help="local:DIR or bigquery:PROJECT[@ENDPOINT]"
    )
    parser.add_argument("--batch-size", type=int, default=20_000, help="events per apply batch")
    parser.add_argument("--soft-deletes", action="store_true", help="readers see deleted rows too")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from capa.warehouse import open_warehouse

    if args.batch_size < 1:
        console.error(f"--batch-size must be at least 1, got {args.batch_size}")
        return EXIT_USAGE
    if args.input != "-" and not Path(args.input).is_file():
        console.error(
            f"no such input file {args.input!r}; pass a JSON-lines file of canonical events"
        )
        return EXIT_USAGE
    try:
        warehouse = open_warehouse(args.warehouse, soft_deletes=args.soft_deletes)
    except ConfigError as exc:
        console.error(str(exc))
        return EXIT_USAGE
    counts: Counter[str] = Counter()
    with _open(args.input) as stream:
        for batch in _batches(_events(stream, counts), args.batch_size):
            _apply_batch(warehouse, batch, counts)
    warehouse.close()
    console.info(_summary(counts))
    return EXIT_DEAD_LETTERS if counts["dead_letter"] else EXIT_OK


# A line longer than this is dead-lettered unread (its first bytes kept): one runaway line
# must not hold the whole input in memory. Canonical events are far smaller.
MAX_LINE_BYTES = 16 << 20
_KEPT_BYTES = 4096


def _open(path: str) -> BinaryIO:
    if path == "-":
        return open(sys.stdin.fileno(), "rb", closefd=False)
    return open(path, "rb")


def _events(stream: BinaryIO, counts: Counter[str]) -> Iterator[tuple[ChangeEvent, str]]:
    for number, raw in enumerate(_lines(stream), start=1):
        if not raw.strip():
            continue
        counts["lines"] += 1
        if len(raw) > MAX_LINE_BYTES:
            _dead_letter(
                counts,
                reason=f"line is longer than {MAX_LINE_BYTES} bytes; not a canonical event",
                line=number,
                original=raw[:_KEPT_BYTES].decode("utf-8", "replace"),
                truncated=True,
            )
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            reason = f"line is not UTF-8 text: {exc}"
            _dead_letter(counts, reason=reason, line=number, original_base64=_b64(raw))
            continue
        try:
            yield _decode_line(line), line
        except DecodeError as exc:
            _dead_letter(counts, reason=str(exc), line=number, original=line)


def _lines(stream: BinaryIO) -> Iterator[bytes]:
    """Lines as bytes; a line over :data:`MAX_LINE_BYTES` is cut there and the rest of it
    skipped (the caller sees its length and dead-letters it)."""
    while line := stream.readline(MAX_LINE_BYTES + 1):
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while (rest := stream.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                pass
        yield line


def _decode_line(line: str) -> ChangeEvent:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DecodeError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise DecodeError("not valid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"line is JSON {type(obj).__name__}, not an event object")
    try:
        event = event_from_json(obj)
    except (RecursionError, ArithmeticError) as exc:  # values nested or sized past reason
        raise DecodeError(f"not a canonical change event: {type(exc).__name__}") from None
    check_applicable(event)  # a NULL key or an unusable table name: this line only
    return event


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _batches(
    items: Iterator[tuple[ChangeEvent, str]], size: int
) -> Iterator[list[tuple[ChangeEvent, str]]]:
    batch: list[tuple[ChangeEvent, str]] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _apply_batch(
    warehouse: Any, batch: list[tuple[ChangeEvent, str]], counts: Counter[str]
) -> None:
    events = [event for event, _ in batch]
    lines = {event.event_id: line for event, line in batch}
    for letter in apply_events(warehouse, events, counts):
        _dead_letter(
            counts,
            reason=letter.reason,
            event_id=letter.event.event_id,
            original=lines[letter.event.event_id],
        )


def apply_events(
    warehouse: Any, events: Sequence[ChangeEvent], counts: Counter[str]
) -> list[DeadLetter]:
    """Apply ``events`` (idempotent: stale positions are no-ops), isolating the ones the
    warehouse rejects, which are returned; ``counts`` gets events / applied / stale /
    changelog. The one apply path of the CLI (``capa apply``, ``capa dlq replay``)."""
    reports: list[Any] = []
    dead = apply_isolating_failures(lambda part: reports.append(warehouse.apply(part)), events)
    counts["events"] += len(events) - len(dead)
    for report in reports:
        for table in report.tables:
            counts["applied"] += table.applied
            counts["stale"] += table.stale
            counts["changelog"] += table.changelog_rows
    return dead


def _dead_letter(counts: Counter[str], **record: Any) -> None:
    counts["dead_letter"] += 1
    console.emit_json({"dead_letter": True, **record}, stream=sys.stderr)


def _summary(counts: Counter[str]) -> str:
    return (
        f"capa apply: {counts['lines']} lines, {counts['events']} events applied "
        f"({counts['applied']} rows written, {counts['stale']} no-ops, "
        f"{counts['changelog']} changelog rows), {counts['dead_letter']} dead letters"
    )
