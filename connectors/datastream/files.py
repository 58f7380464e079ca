"""Input file decoding for the normalisers (Datastream and Debezium dumps).

JSON files may hold one record per line (``.jsonl``), a JSON array of records, one
(pretty-printed) object, or several pretty-printed objects one after another (console
consumer output). Gzip is detected by its magic bytes (``.jsonl.gz``) and inflated with a
bound (every member of the stream, counted together): a stream that inflates past it is
one dead letter for the whole file, never a truncated read. Avro files are
object container files (Datastream's Avro output); each record comes with column type
hints read from the writer schema (``logicalType: json`` columns -> ``json``).

Nothing here raises for bad content: an unparseable file or line is yielded as a
:class:`~connectors.base.DeadLetter` with the reason and the original bytes.
"""

from __future__ import annotations

import io
import json
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

from capa.config import DatastreamConfig
from connectors.base import DeadLetter, RawRecord

_GZIP_MAGIC = b"\x1f\x8b"
_AVRO_MAGIC = b"Obj\x01"
_DECODER = json.JSONDecoder()
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib reads the gzip header and checks CRC + length

DEFAULT_MAX_FILE_BYTES: int = DatastreamConfig.model_fields["max_file_bytes"].default


class InflateLimitExceeded(Exception):
    """The gzip stream inflates past the bound."""


def maybe_gunzip(
    data: bytes, name: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> bytes | DeadLetter:
    """``data`` itself, or its gunzipped content if it is gzip (at most ``max_bytes``).

    A corrupt stream, or one that would inflate past ``max_bytes``, is a dead letter for
    the whole file (reason names the limit), never a partial read.
    """
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gunzip_bounded(data, max_bytes)
    except InflateLimitExceeded:
        reason = (
            f"gzip file inflates to more than {max_bytes} bytes (datastream.max_file_bytes); "
            "not read"
        )
        return DeadLetter(name, None, reason, data)
    except (OSError, EOFError, zlib.error) as exc:
        return DeadLetter(name, None, f"corrupt gzip file: {exc}", data)


def gunzip_bounded(data: bytes, max_bytes: int) -> bytes:
    """Every member of a gzip stream, inflated piecewise: never more than ``max_bytes + 1``
    bytes are produced (:class:`InflateLimitExceeded` past ``max_bytes``)."""
    out = bytearray()
    rest = data
    while rest:
        if not rest.startswith(_GZIP_MAGIC):
            raise OSError(f"bytes after gzip member at offset {len(data) - len(rest)} are not gzip")
        inflater = zlib.decompressobj(_GZIP_WBITS)
        _inflate_member(inflater, rest, out, max_bytes)
        rest = inflater.unused_data.lstrip(b"\x00")  # gzip allows zero padding between members
    return bytes(out)


def _inflate_member(inflater: Any, data: bytes, out: bytearray, max_bytes: int) -> None:
    pending = data
    while not inflater.eof:
        piece = inflater.decompress(pending, max_bytes + 1 - len(out))
        out += piece
        if len(out) > max_bytes:
            raise InflateLimitExceeded(max_bytes)
        pending = inflater.unconsumed_tail
        if not piece and not pending:
            raise EOFError("gzip stream ended before the end-of-stream marker")


def read_json_file(data: bytes, name: str) -> Iterator[RawRecord | DeadLetter]:
    """All records of a JSON / JSON-lines file (see module docstring)."""
    unzipped = maybe_gunzip(data, name)
    if isinstance(unzipped, DeadLetter):
        yield unzipped
        return
    try:
        text = unzipped.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if _looks_like_byte_lines(unzipped):  # one bad line must not take the others with it
            yield from _byte_lines(unzipped, name)
        else:
            yield DeadLetter(name, None, f"file is not UTF-8 text: {exc}", unzipped)
        return
    if not text.strip():
        yield DeadLetter(name, None, "file is empty: no JSON record found", unzipped)
        return
    whole = _loads(text)
    if whole is not _FAIL:
        yield from _whole_document(whole, name)
    elif _looks_like_lines(text):
        yield from _json_lines(text, name)
    else:
        yield from _json_stream(text, name)


_FAIL = object()


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _FAIL


def _whole_document(doc: Any, name: str) -> Iterator[RawRecord]:
    if isinstance(doc, list):
        for index, item in enumerate(doc):
            yield RawRecord(name, index, item, None)
    else:
        yield RawRecord(name, 0, doc, None)


_PROBE_LINES = 16


def _looks_like_lines(text: str) -> bool:
    """JSON lines: the first non-blank line is a complete JSON value on its own, or (the
    first line being broken) one of the next few is a complete JSON object on its own
    (a line of a pretty-printed document never is: it ends with a comma or a bracket)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return False
    if _loads(lines[0]) is not _FAIL:
        return True
    return any(isinstance(_loads(line), dict) for line in lines[1:_PROBE_LINES])


def _looks_like_byte_lines(data: bytes) -> bool:
    """:func:`_looks_like_lines` for a file that is not all UTF-8 (bad lines are skipped)."""
    text = "\n".join(line.decode("utf-8", "replace") for line in data.splitlines()[:_PROBE_LINES])
    return _looks_like_lines(text)


def _json_lines(text: str, name: str) -> Iterator[RawRecord | DeadLetter]:
    index = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        yield _json_line(line, line.encode(), name, index)
        index += 1


def _byte_lines(data: bytes, name: str) -> Iterator[RawRecord | DeadLetter]:
    """JSON lines of a file holding bytes that are not UTF-8: each line decoded alone."""
    index = 0
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8-sig" if index == 0 else "utf-8")
        except UnicodeDecodeError as exc:
            yield DeadLetter(name, index, f"line {index + 1} is not UTF-8 text: {exc}", raw)
        else:
            yield _json_line(line, raw, name, index)
        index += 1


def _json_line(line: str, raw: bytes, name: str, index: int) -> RawRecord | DeadLetter:
    try:
        return RawRecord(name, index, json.loads(line), raw)
    except ValueError as exc:
        reason = f"line {index + 1} is not valid JSON: {exc}"
    except RecursionError:
        reason = f"line {index + 1} is not valid JSON: nested too deeply"
    return DeadLetter(name, index, reason, raw)


def _json_stream(text: str, name: str) -> Iterator[RawRecord | DeadLetter]:
    """Concatenated JSON values; the unparseable rest becomes one dead letter."""
    pos, index, end = 0, 0, len(text)
    while True:
        while pos < end and text[pos].isspace():
            pos += 1
        if pos >= end:
            return
        try:
            value, stop = _DECODER.raw_decode(text, pos)
        except (ValueError, RecursionError) as exc:
            reason = f"not valid JSON from character {pos}: {exc}"
            yield DeadLetter(name, index if index else None, reason, text[pos:].encode())
            return
        yield RawRecord(name, index, value, text[pos:stop].encode())
        index, pos = index + 1, stop


# --- Avro ------------------------------------------------------------------------------------


def read_avro_file(data: bytes, name: str) -> Iterator[RawRecord | DeadLetter]:
    """All records of an Avro object container file (fastavro decodes logical types)."""
    import fastavro

    if not data.startswith(_AVRO_MAGIC):
        yield DeadLetter(
            name, None, "not an Avro object container file (no 'Obj\\x01' header)", data
        )
        return
    try:
        reader = fastavro.reader(io.BytesIO(data))
        hints = payload_hints(reader.writer_schema)
        if TEMPORAL_LOGICAL & set(hints.values()):
            # fastavro's date/timestamp readers fail on numbers outside years 1..9999
            # (PostgreSQL infinity), and with them the rest of the file: read the numbers
            # instead and let the normaliser convert them (saturating, see capa.values).
            reader = fastavro.reader(io.BytesIO(plain_temporal_header(data)))
    except Exception as exc:  # fastavro raises many types on corrupt headers
        yield DeadLetter(name, None, f"corrupt Avro header: {type(exc).__name__}: {exc}", data)
        return
    index = 0
    try:
        for record in reader:
            yield RawRecord(name, index, record, None, hints)
            index += 1
    except Exception as exc:  # truncated / corrupt block
        reason = f"corrupt Avro data after record {index}: {type(exc).__name__}: {exc}"
        yield DeadLetter(name, index, reason, data)
        return
    if index == 0:  # valid but empty, or truncated at a block boundary: say so
        yield DeadLetter(
            name, None, "Avro file holds no records (empty or truncated after the header)", data
        )


def payload_hints(schema: Any) -> dict[str, str]:
    """Column -> hint for ``payload`` fields of a Datastream writer schema: ``json``, or the
    temporal logical type (``date``, ``timestamp-micros`` ...) so that a value fastavro
    leaves as a number (out of Python's range: ``infinity``) can be saturated."""
    if not isinstance(schema, Mapping):
        return {}
    for top in schema.get("fields") or ():
        if isinstance(top, Mapping) and top.get("name") == "payload":
            payload = _non_null(top.get("type"))
            if isinstance(payload, Mapping):
                return {
                    str(f.get("name")): hint
                    for f in payload.get("fields") or ()
                    if (hint := _field_hint(f.get("type")))
                }
    return {}


TEMPORAL_LOGICAL = frozenset(
    {"date", "timestamp-micros", "timestamp-millis", "local-timestamp-micros"}
    | {"local-timestamp-millis"}
)


def plain_temporal_header(data: bytes) -> bytes:
    """The same container file with temporal logical types removed from its schema.

    Only the header's ``avro.schema`` changes: a logical type does not change the binary
    encoding, so the blocks that follow are kept byte for byte.
    """
    import fastavro
    from fastavro.read import HEADER_SCHEMA

    buf = io.BytesIO(data)
    header: Any = fastavro.schemaless_reader(buf, HEADER_SCHEMA)  # type: ignore[call-arg]
    schema = json.loads(header["meta"]["avro.schema"])
    header["meta"]["avro.schema"] = json.dumps(_without_temporal_logical(schema)).encode()
    out = io.BytesIO()
    fastavro.schemaless_writer(out, HEADER_SCHEMA, header)
    return out.getvalue() + data[buf.tell() :]


def _without_temporal_logical(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_without_temporal_logical(s) for s in schema]
    if not isinstance(schema, Mapping):
        return schema
    if schema.get("logicalType") in TEMPORAL_LOGICAL:
        return {k: v for k, v in schema.items() if k != "logicalType"}
    return {k: _without_temporal_logical(v) for k, v in schema.items()}


def _field_hint(kind: Any) -> str:
    if _has_json_logical(kind):
        return "json"
    logical = _non_null(kind)
    if logical == "float":  # a real: canonicalised as on every path (capa.values)
        return "float32"
    if isinstance(logical, Mapping) and logical.get("logicalType") in TEMPORAL_LOGICAL:
        return str(logical["logicalType"])
    return ""


def _non_null(kind: Any) -> Any:
    if isinstance(kind, list):
        rest = [k for k in kind if k != "null"]
        return rest[0] if len(rest) == 1 else None
    return kind


def _has_json_logical(kind: Any, depth: int = 0) -> bool:
    """True for ``{"logicalType": "json"}``, also inside unions and array records."""
    if depth > 8:
        return False
    if isinstance(kind, list):
        return any(_has_json_logical(k, depth + 1) for k in kind)
    if not isinstance(kind, Mapping):
        return False
    if kind.get("logicalType") == "json":
        return True
    if kind.get("type") == "record" and str(kind.get("name", "")).startswith(
        "multidimensionalArray"
    ):
        return any(
            f.get("name") == "elementValue" and _has_json_logical(f.get("type"), depth + 1)
            for f in kind.get("fields") or ()
        )
    return False
