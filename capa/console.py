"""User-facing output: progress, tables and errors go through here, never bare print.

Data output (``capa normalize``, ``capa sql --json``) goes to stdout through
:func:`emit_json`; human messages go to stderr so stdout stays machine-readable.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO


def emit_json(obj: Any, stream: TextIO | None = None) -> None:
    """One JSON object per line on stdout (or ``stream``)."""
    out = stream or sys.stdout
    out.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str))
    out.write("\n")


def info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def step(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def error(message: str) -> None:
    print(f"capa: error: {message}", file=sys.stderr, flush=True)


def table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], stream: TextIO | None = None
) -> None:
    """A plain aligned text table."""
    out = stream or sys.stdout
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
        if n == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")
    out.flush()
