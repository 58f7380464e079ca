"""Extract readers: CSV and NDJSON files, UTF-8 or latin-1, into raw records.

Each record keeps its line number and the original text so that a reject can quote it.
A record that cannot even be split into fields (a JSON syntax error, a CSV line with the
wrong number of fields) is still yielded, with ``error`` set and ``fields`` None.
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from connectors.crm.errors import CrmExtractError

logger = logging.getLogger(__name__)

ENCODINGS = ("auto", "utf-8", "latin-1", "cp1252")


class RawRecord(NamedTuple):
    object: str
    file: str
    line_no: int  # 1-based line of the record's first line in the file
    raw: str  # the original text of the record
    fields: dict[str, Any] | None
    error: str | None = None


def decode_text(data: bytes, encoding: str, name: str) -> tuple[str, str]:
    """Bytes -> (text, encoding used). ``auto``: UTF-8 (BOM stripped), else latin-1."""
    if encoding not in ENCODINGS:
        raise CrmExtractError(
            f"{name}: encoding {encoding!r} is not supported; use one of {ENCODINGS}"
        )
    if encoding == "auto":
        try:
            return _strip_bom(data).decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            logger.info("%s is not valid UTF-8; reading it as latin-1", name)
            return data.decode("latin-1"), "latin-1"
    try:
        return _strip_bom(data).decode(encoding) if encoding == "utf-8" else data.decode(
            encoding
        ), encoding
    except UnicodeDecodeError as exc:
        raise CrmExtractError(
            f"{name} is not valid {encoding} "
            f"(byte {exc.start}: {data[exc.start : exc.start + 1]!r}); "
            "set its encoding to 'latin-1' or 'auto' in the manifest"
        ) from exc


def _strip_bom(data: bytes) -> bytes:
    return data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data


def read_csv(text: str, obj: str, name: str) -> Iterator[RawRecord]:
    """CSV with a header line; the original (possibly multi-line) text is kept per record."""
    consumed: list[str] = []
    lines = iter(text.splitlines(keepends=True))

    def feed() -> Iterator[str]:
        for line in lines:
            consumed.append(line)
            yield line

    reader = csv.reader(feed())
    header = next(reader, None)
    if header is None:
        return
    header = [h.strip() for h in header]
    line_no = len(consumed) + 1
    consumed.clear()
    for values in reader:
        raw = "".join(consumed).rstrip("\r\n")
        start, line_no = line_no, line_no + len(consumed)
        consumed.clear()
        if not values:
            continue  # blank line
        yield _csv_record(obj, name, start, raw, header, values)


def _csv_record(
    obj: str, name: str, line_no: int, raw: str, header: list[str], values: list[str]
) -> RawRecord:
    if len(values) != len(header):
        error = f"line has {len(values)} fields, the header has {len(header)}"
        return RawRecord(obj, name, line_no, raw, None, error)
    return RawRecord(obj, name, line_no, raw, dict(zip(header, values, strict=True)))


def read_ndjson(text: str, obj: str, name: str) -> Iterator[RawRecord]:
    """One JSON object per line; blank lines are skipped."""
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            yield RawRecord(
                obj, name, line_no, line, None, f"not valid JSON: {exc.msg} at column {exc.colno}"
            )
            continue
        if not isinstance(value, dict):
            yield RawRecord(
                obj, name, line_no, line, None, f"not a JSON object but {type(value).__name__}"
            )
            continue
        yield RawRecord(obj, name, line_no, line, value)


READERS: dict[str, Callable[[str, str, str], Iterator[RawRecord]]] = {
    "csv": read_csv,
    "ndjson": read_ndjson,
    "jsonl": read_ndjson,
}


def read_records(
    data: bytes, *, obj: str, name: str, fmt: str, encoding: str = "auto"
) -> Iterator[RawRecord]:
    """File bytes -> raw records (format from the :data:`READERS` registry)."""
    try:
        reader = READERS[fmt]
    except KeyError:
        raise CrmExtractError(
            f"{name}: format {fmt!r} is unknown; use one of {sorted(READERS)}"
        ) from None
    text, used = decode_text(data, encoding, name)
    logger.debug("reading %s as %s (%s)", name, fmt, used)
    yield from reader(text, obj, name)
