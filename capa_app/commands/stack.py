"""``capa up`` / ``capa status`` / ``capa down``: the local stack (see :mod:`capa_app.stack`).

capa up                         # kafka, postgres, debezium (bridge if present)
capa up --only kafka,postgres
capa up --profile onprem        # kafka, postgres, Spark master + worker, Airflow (3 processes)
capa status                     # the profile the last `up` started
capa down                       # stops only what capa started (any profile), by PID
capa clean                      # down, then delete the state dir (and data kept elsewhere)
"""

from __future__ import annotations

import argparse

from capa import console
from capa.config import CapaSettings, load_settings
from capa_app.stack import COMPONENTS, DEFAULT_PROFILE, PROFILES, Stack, parse_components
from capa_app.stack.base import NOT_AVAILABLE

_ONLY_HELP = f"comma-separated components of {','.join(COMPONENTS)} (default: the profile's)"
_PROFILE_HELP = (
    f"which stack: {', '.join(PROFILES)} (default {DEFAULT_PROFILE}: the embedded stack; "
    "onprem: Spark standalone cluster and Airflow, see deploy/README.md)"
)


def _stack() -> Stack:
    return Stack(load_settings())


def cmd_up(args: argparse.Namespace) -> int:
    names = parse_components(args.only, args.profile)
    stack = _stack()
    console.step(f"starting {', '.join(names)} (state in {stack.state.root})")
    results = stack.up(names, strict=args.only is not None, profile=args.profile)
    for result in results:
        if result.health == NOT_AVAILABLE:
            console.info(f"  {result.component}: not available ({result.detail})")
        else:
            console.info(f"  {result.component}: {result.health} in {result.seconds:.1f}s")
    console.table(["component", "pid", "port", "health"], _rows(stack.status(names)))
    _initial_sync_lines(stack.settings)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    stack = _stack()
    rows = stack.status(args.only, args.profile)
    console.table(["component", "pid", "port", "health"], _rows(rows))
    _initial_sync_lines(stack.settings)
    return 0


def _initial_sync_lines(settings: CapaSettings) -> None:
    """The fast initial sync's progress (per table rows done/total, rate, ETA), if one ran."""
    from connectors.pgsync.progress import initial_sync_status, sync_lines

    sync = initial_sync_status(settings)
    if sync is None:
        return
    console.info(f"initial sync: {sync['status']} ({sync.get('seconds', 0)} s)")
    for line in sync_lines(sync):
        console.info(f"  {line}")


def cmd_down(args: argparse.Namespace) -> int:
    chosen = args.only or args.profile
    names = parse_components(args.only, args.profile or DEFAULT_PROFILE) if chosen else None
    stopped = _stack().down(names)
    console.step(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    removed = _stack().clean()
    console.step(f"removed {', '.join(removed)}" if removed else "nothing to remove")
    return 0


def _rows(status: list[dict[str, object]]) -> list[list[object]]:
    return [[s["component"], s["pid"] or "-", s["port"] or "-", s["health"]] for s in status]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    commands = {
        "up": (cmd_up, "start the local stack (idempotent) and wait until healthy"),
        "status": (cmd_status, "show component, pid, port and health"),
        "down": (cmd_down, "stop the processes capa started (by PID)"),
    }
    for name, (func, help_text) in commands.items():
        parser = subparsers.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--only", metavar="LIST", default=None, help=_ONLY_HELP)
        default = DEFAULT_PROFILE if name == "up" else None
        parser.add_argument(
            "--profile", choices=sorted(PROFILES), default=default, help=_PROFILE_HELP
        )
        parser.set_defaults(func=func)
    clean_help = "stop the stack, then delete its state dir and data it keeps elsewhere"
    parser = subparsers.add_parser("clean", help=clean_help, description=clean_help)
    parser.set_defaults(func=cmd_clean)
