"""The ``capa`` command line.

Subcommands live in their own modules and are found through :data:`COMMANDS`, a registry
from command name to module path; each module exposes ``register(subparsers)`` which adds
its parser and sets ``func`` (taking the parsed args, returning the exit code). Modules
are imported lazily so ``capa --help`` never loads Beam, Spark or a JVM.

Exit codes: 0 success, 2 usage error, 3 some input went to the dead-letter output,
1 any other failure (always with a one-line message naming the problem and the fix),
70 an unexpected internal error (a bug: one line, and the traceback with ``--debug`` or
``CAPA__DEBUG=1``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from pydantic import ValidationError

from capa import console
from capa.config import describe_validation
from capa.errors import CapaError
from capa.runtime import tune_gc

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_DEAD_LETTERS = 3
EXIT_INTERNAL = 70  # sysexits' EX_SOFTWARE: distinct from every documented outcome

COMMANDS: dict[str, str] = {
    "normalize": "capa_app.commands.normalize",
    "apply": "capa_app.commands.apply",
    "sql": "capa_app.commands.sql",
    "up": "capa_app.commands.stack",
    "status": "capa_app.commands.stack",
    "down": "capa_app.commands.stack",
    "clean": "capa_app.commands.stack",
    "demo": "capa_app.commands.demo",
    "verify": "capa_app.commands.verify",
    "ingest": "capa_app.commands.ingest",
    "bridge": "capa_app.commands.ingest",
    "crm": "capa_app.commands.crm",
    "dlq": "capa_app.commands.dlq",
    "serve": "capa_app.commands.serve",
    "resync": "capa_app.commands.resync",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capa", description="capa: streaming-first CDC replication"
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument(
        "--debug",
        action="store_true",
        default=os.environ.get("CAPA__DEBUG", "") not in ("", "0"),
        help="print the traceback of an unexpected error (also CAPA__DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    registered: set[str] = set()
    for module_path in dict.fromkeys(COMMANDS.values()):
        try:
            module = importlib.import_module(module_path)
        except ModuleNotFoundError as exc:
            if exc.name == module_path:
                continue  # command not built yet in this checkout
            raise
        module.register(sub)
        registered.add(module_path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    tune_gc()
    try:
        return int(args.func(args) or 0)
    except CapaError as exc:
        console.error(str(exc))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        console.error("interrupted")
        return 130
    except ValidationError as exc:  # an option value a typed config refused
        console.error(f"invalid value: {describe_validation(exc)}")
        return EXIT_USAGE
    except Exception as exc:  # the last guard: a bug gets one line, not a traceback
        return _unexpected(args, exc)


def _unexpected(args: argparse.Namespace, exc: Exception) -> int:
    if args.debug:
        traceback.print_exc(file=sys.stderr)
    text = str(exc).splitlines()[0][:300] if str(exc) else ""
    console.error(
        f"capa {args.command}: unexpected {type(exc).__name__}: {text} (a bug in capa; rerun "
        "with --debug or CAPA__DEBUG=1 for the traceback and report it)"
    )
    return EXIT_INTERNAL


def entry() -> None:
    """Console-script entry: run, flush, and leave without interpreter teardown.

    Native thread pools (DuckDB, Arrow datasets, delta-rs) sometimes abort with
    ``terminate called without an active exception`` while the interpreter finalises,
    turning a finished command's exit code into SIGABRT. The command's work is done and
    its output flushed at this point, so exit directly with its code.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
