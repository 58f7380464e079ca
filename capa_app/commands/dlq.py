"""``capa dlq``: the dead-letter topic, listed, shown and replayed.

    capa dlq list [--json]                 dead letters grouped by table, origin and reason
    capa dlq show ID [--json]              one dead letter: headers, reason, the original
    capa dlq replay [--table T] [--reason TEXT] [--id ID ...] [--dry-run] [--warehouse SPEC]

The topic is ``kafka.dlq_topic`` (``--topic`` overrides it). Every command reads it from
the beginning with assigned partitions and commits nothing (no consumer group offsets), so
nothing is consumed: the topic stays the record of what failed. ``ID`` is
``PARTITION@OFFSET`` on the dead-letter topic, as ``list`` prints it.

``replay`` decodes each chosen original again the way its path does
(:mod:`connectors.replay`) and applies the events through ``capa apply``'s path
(:func:`capa_app.commands.apply.apply_events`) to the configured warehouse (or
``--warehouse``). Apply is idempotent by source position, so a letter replayed twice, or
one whose change already reached the replica, writes nothing the second time. A letter
that still fails (undecodable, or rejected again) is reported with its reason and left
where it is. Fix the cause first: the reason says what it was.

Exit codes: 0 done; 3 replay: some chosen letters still fail; 2 usage (a malformed or
unknown ID, a bad ``--warehouse``); 1 Kafka or the warehouse cannot be reached.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from capa import console
from capa.codec import event_to_json
from capa.config import CapaSettings, load_settings
from capa.errors import ConfigError, DecodeError, ServiceUnavailable
from capa.events import ChangeEvent
from capa.warehouse.base import RAW_NAMESPACE

EXIT_OK, EXIT_USAGE, EXIT_STILL_FAILING = 0, 2, 3
_ID = re.compile(r"^(\d+)@(\d+)$")
_HEADER_PREFIX = "capa.dlq."


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    dlq = subparsers.add_parser("dlq", help="list, show and replay the dead-letter topic")
    dlq.add_argument("--topic", help="dead-letter topic (default: kafka.dlq_topic)")
    sub = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    lister = sub.add_parser("list", help="dead letters grouped by table and reason, with counts")
    lister.add_argument("--json", action="store_true", help="one JSON object per group")
    lister.set_defaults(func=run_list)
    show = sub.add_parser("show", help="one dead letter: headers, reason, the original")
    show.add_argument("id", type=_letter_id, metavar="ID", help="PARTITION@OFFSET (from list)")
    show.add_argument("--json", action="store_true", help="one JSON object")
    show.set_defaults(func=run_show)
    replay = sub.add_parser("replay", help="decode and apply dead letters again, once fixed")
    replay.add_argument("--table", help="only letters of this raw table (raw.NAME or NAME)")
    replay.add_argument("--reason", help="only letters whose reason contains this text")
    replay.add_argument(
        "--id", dest="ids", action="append", type=_letter_id, default=[], metavar="ID",
        help="only this letter (repeatable)",
    )  # fmt: skip
    replay.add_argument("--dry-run", action="store_true", help="decode and report, apply nothing")
    replay.add_argument("--warehouse", help="local:DIR or bigquery:PROJECT (default: config)")
    replay.set_defaults(func=run_replay)


def _letter_id(text: str) -> str:
    if not _ID.match(text.strip()):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a dead-letter id; use PARTITION@OFFSET as `capa dlq list` prints it"
        )
    return text.strip()


# --- reading the topic ----------------------------------------------------------------------


@dataclass
class Entry:
    """One record of the dead-letter topic, with its original decoded again (or why not)."""

    id: str
    value: bytes | None
    headers: dict[str, str]
    events: list[ChangeEvent] = field(default_factory=list)
    error: str | None = None

    @property
    def reason(self) -> str:
        return self.headers.get(_HEADER_PREFIX + "reason", "")

    @property
    def origin(self) -> str:
        return self.headers.get(_HEADER_PREFIX + "origin", "")

    @property
    def tables(self) -> list[str]:
        return sorted({f"{RAW_NAMESPACE}.{e.table_id}" for e in self.events})


def read_entries(settings: CapaSettings, topic: str) -> list[Entry]:
    """Every dead letter on ``topic``, decoded again; reads without committing anything."""
    from confluent_kafka import KafkaException

    from connectors.kafka.consumer import read_topic
    from connectors.kafka.dlq import dead_letter_from_message
    from connectors.replay import OriginalDecoder

    quiet = {"log_level": 0}  # librdkafka would print every failed connect; we say it once
    try:
        messages = read_topic(settings.kafka, topic, timeout_s=120, client_settings=quiet)
    except KafkaException as exc:  # broker down, bad address
        raise ServiceUnavailable(
            f"cannot read the dead-letter topic {topic!r} at {settings.kafka.bootstrap}: {exc}; "
            "start Kafka (capa up) or set CAPA__KAFKA__BOOTSTRAP_SERVERS"
        ) from None
    decoder = OriginalDecoder(settings.kafka, default_source=settings.debezium.source_name)
    entries = []
    for msg in sorted(messages, key=lambda m: (m.partition(), m.offset())):
        raw_headers = msg.headers() or []
        entry = Entry(f"{msg.partition()}@{msg.offset()}", msg.value(), _text_headers(raw_headers))
        truncated = entry.headers.get(_HEADER_PREFIX + "truncated") == "true"
        try:
            entry.events = decoder.events(
                dead_letter_from_message(msg.value(), raw_headers), truncated=truncated
            )
        except DecodeError as exc:
            entry.error = exc.reason
        entries.append(entry)
    return entries


def _text_headers(headers: Iterable[tuple[str, bytes | None]]) -> dict[str, str]:
    return {k: (v or b"").decode("utf-8", "replace") for k, v in headers}


# --- list / show ----------------------------------------------------------------------------


def run_list(args: argparse.Namespace) -> int:
    settings, topic = _settings(args)
    entries = read_entries(settings, topic)
    groups: dict[tuple[str, str, str], list[str]] = {}
    for entry in entries:
        table = ", ".join(entry.tables) or "(undecodable)"
        groups.setdefault((table, entry.origin, entry.reason), []).append(entry.id)
    rows = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    if args.json:
        for (table, origin, reason), ids in rows:
            console.emit_json(
                {"count": len(ids), "table": table, "origin": origin, "reason": reason, "ids": ids}
            )
    else:
        console.table(
            ["count", "table", "origin", "reason", "ids"],
            [(len(ids), t, o, _short(r, 100), _ids(ids)) for (t, o, r), ids in rows],
        )
    console.info(f"{topic}: {len(entries)} dead letter(s) in {len(groups)} group(s)")
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    settings, topic = _settings(args)
    found = {e.id: e for e in read_entries(settings, topic)}
    entry = found.get(args.id)
    if entry is None:
        console.error(f"no dead letter {args.id!r} on {topic!r}; `capa dlq list` shows the ids")
        return EXIT_USAGE
    if args.json:
        console.emit_json(_as_json(entry, topic))
    else:
        _print_entry(entry, topic)
    return EXIT_OK


def _as_json(entry: Entry, topic: str) -> dict[str, Any]:
    return {
        "id": entry.id,
        "topic": topic,
        "reason": entry.reason,
        "origin": entry.origin,
        "headers": entry.headers,
        "tables": entry.tables,
        "events": [event_to_json(e) for e in entry.events],
        "decode_error": entry.error,
        "original_base64": base64.b64encode(entry.value or b"").decode("ascii"),
    }


def _print_entry(entry: Entry, topic: str) -> None:
    out = sys.stdout
    out.write(f"id:      {entry.id} on {topic}\nreason:  {entry.reason}\norigin:  {entry.origin}\n")
    out.write("headers:\n")
    for key, value in entry.headers.items():
        out.write(f"  {key}: {value}\n")
    out.write(f"original ({len(entry.value or b'')} bytes):\n")
    out.write(_pretty_original(entry) + "\n")


def _pretty_original(entry: Entry) -> str:
    if entry.events:
        return "\n".join(json.dumps(event_to_json(e), indent=2, default=str) for e in entry.events)
    raw = entry.value or b""
    note = f"(does not decode: {entry.error})\n"
    try:
        return note + json.dumps(json.loads(raw), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        shown = raw[:512]
        more = f" ... {len(raw) - len(shown)} more bytes" if len(raw) > len(shown) else ""
        return note + repr(shown) + more


# --- replay ---------------------------------------------------------------------------------


def run_replay(args: argparse.Namespace) -> int:
    settings, topic = _settings(args)
    entries = read_entries(settings, topic)
    unknown = sorted(set(args.ids) - {e.id for e in entries})
    if unknown:
        console.error(f"no dead letter {', '.join(unknown)} on {topic!r}; see `capa dlq list`")
        return EXIT_USAGE
    chosen = [e for e in entries if _chosen(e, args)]
    counts: Counter[str] = Counter(chosen=len(chosen))
    ready = [e for e in chosen if _report_undecodable(e, counts)]
    if args.dry_run:
        for entry in ready:
            _report(entry, "would apply", f"{len(entry.events)} event(s)")
    elif ready:
        from capa.warehouse import open_warehouse

        try:
            warehouse = open_warehouse(args.warehouse or settings.warehouse)
        except ConfigError as exc:
            console.error(str(exc))
            return EXIT_USAGE
        try:
            _apply(warehouse, ready, counts)
        finally:
            warehouse.close()
    console.info(_summary(counts, topic, dry_run=args.dry_run))
    return EXIT_STILL_FAILING if counts["still_failing"] else EXIT_OK


def _chosen(entry: Entry, args: argparse.Namespace) -> bool:
    if args.ids and entry.id not in args.ids:
        return False
    if args.reason and args.reason not in entry.reason:
        return False
    if args.table:
        wanted = args.table if "." in args.table else f"{RAW_NAMESPACE}.{args.table}"
        return wanted.lower() in entry.tables
    return True


def _report_undecodable(entry: Entry, counts: Counter[str]) -> bool:
    if entry.error is None:
        return True
    counts["still_failing"] += 1
    _report(entry, "still failing", f"the original does not decode: {entry.error}")
    return False


def _apply(warehouse: Any, ready: Sequence[Entry], counts: Counter[str]) -> None:
    """Apply the letters' events as ``capa apply`` does; report each letter's outcome."""
    from capa_app.commands.apply import apply_events

    owner = {id(event): entry for entry in ready for event in entry.events}
    dead = apply_events(warehouse, [e for entry in ready for e in entry.events], counts)
    failed: dict[str, str] = {}
    for letter in dead:
        failed.setdefault(owner[id(letter.event)].id, letter.reason)
    for entry in ready:
        if entry.id in failed:
            counts["still_failing"] += 1
            _report(entry, "still failing", f"rejected again: {failed[entry.id]}")
        else:
            counts["replayed"] += 1
            _report(entry, "replayed", ", ".join(entry.tables))


def _report(entry: Entry, outcome: str, detail: str) -> None:
    console.emit_json({"id": entry.id, "outcome": outcome, "detail": detail})


def _summary(counts: Counter[str], topic: str, *, dry_run: bool) -> str:
    if dry_run:
        ok = counts["chosen"] - counts["still_failing"]
        return (
            f"capa dlq replay --dry-run: {counts['chosen']} chosen, {ok} would be applied, "
            f"{counts['still_failing']} do not decode"
        )
    return (
        f"capa dlq replay: {counts['chosen']} chosen, {counts['replayed']} replayed "
        f"({counts['events']} events: {counts['applied']} rows written, {counts['stale']} "
        f"no-ops already applied), {counts['still_failing']} still failing (left on {topic})"
    )


# --- shared ---------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> tuple[CapaSettings, str]:
    settings = load_settings()
    return settings, args.topic or settings.kafka.dlq_topic


def _short(text: str, width: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 3] + "..."


def _ids(ids: list[str]) -> str:
    return ", ".join(ids[:3]) + (f" (+{len(ids) - 3})" if len(ids) > 3 else "")
