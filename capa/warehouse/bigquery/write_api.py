"""Storage Write API: rows -> protobuf (pure) and a thin ``AppendRows`` transport.

BigQuery CDC accepts only protobuf rows on a table's ``_default`` stream. The message type
is built from the target's schema fields plus, for CDC writes, the pseudo-columns
``_CHANGE_TYPE`` and ``_CHANGE_SEQUENCE_NUMBER`` (STRING). Values follow the Write API's
documented wire types: INT64 int64, FLOAT64 double, BOOL bool, STRING/JSON string,
NUMERIC/BIGNUMERIC decimal text, BYTES bytes, TIMESTAMP int64 µs since the epoch, DATE
int32 days since the epoch, DATETIME ``YYYY-MM-DD HH:MM:SS.ffffff`` text, TIME
``HH:MM:SS.ffffff`` text; REPEATED columns are repeated fields (no NULL items).

:func:`row_descriptor` and :func:`encode_rows` are pure; :class:`StorageWriter` only sends.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from capa.errors import WarehouseTerminalError

CHANGE_TYPE = "_CHANGE_TYPE"
CHANGE_SEQUENCE_NUMBER = "_CHANGE_SEQUENCE_NUMBER"
PSEUDO_COLUMNS = (CHANGE_TYPE, CHANGE_SEQUENCE_NUMBER)
MAX_REQUEST_BYTES = 9 * 1024 * 1024  # AppendRows requests are capped at 10 MB
_EPOCH_DAY = date(1970, 1, 1)


@dataclass(frozen=True, slots=True)
class Field:
    """A column as the Write API needs it: name, BigQuery type name and mode."""

    name: str
    type: str  # standard or legacy name: INT64/INTEGER, FLOAT64/FLOAT, BOOL/BOOLEAN ...
    repeated: bool = False


_PROTO_TYPES = {
    "INT64": "TYPE_INT64",
    "INTEGER": "TYPE_INT64",
    "FLOAT64": "TYPE_DOUBLE",
    "FLOAT": "TYPE_DOUBLE",
    "BOOL": "TYPE_BOOL",
    "BOOLEAN": "TYPE_BOOL",
    "STRING": "TYPE_STRING",
    "JSON": "TYPE_STRING",
    "NUMERIC": "TYPE_STRING",
    "BIGNUMERIC": "TYPE_STRING",
    "BYTES": "TYPE_BYTES",
    "TIMESTAMP": "TYPE_INT64",
    "DATE": "TYPE_INT32",
    "DATETIME": "TYPE_STRING",
    "TIME": "TYPE_STRING",
}


def fields_of(schema: Sequence[Any], *, cdc: bool) -> tuple[Field, ...]:
    """SchemaFields (plus the CDC pseudo-columns when ``cdc``) -> :class:`Field` s."""
    fields = [
        Field(f.name, str(f.field_type).upper(), f.mode == "REPEATED")
        for f in schema
        if f.name not in PSEUDO_COLUMNS
    ]
    if cdc:
        fields += [Field(name, "STRING") for name in PSEUDO_COLUMNS]
    return tuple(fields)


def row_descriptor(fields: Sequence[Field]) -> Any:
    """A proto2 ``DescriptorProto`` named ``CapaRow`` with one field per column."""
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.DescriptorProto(name="CapaRow")
    labels = descriptor_pb2.FieldDescriptorProto
    for number, field in enumerate(fields, start=1):
        kind = _PROTO_TYPES.get(field.type)
        if kind is None:
            raise WarehouseTerminalError(
                f"column {field.name!r} has BigQuery type {field.type!r}, which capa does not "
                f"write through the Storage Write API; known: {sorted(_PROTO_TYPES)}"
            )
        proto.field.add(
            name=field.name,
            number=number,
            type=getattr(labels, kind),
            label=labels.LABEL_REPEATED if field.repeated else labels.LABEL_OPTIONAL,
        )
    return proto


def encode_rows(fields: Sequence[Field], rows: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """Rows (column -> Python value; absent or None = NULL) -> serialized protobuf rows."""
    message_class = _message_class(fields)
    by_name = {f.name: f for f in fields}
    encoded = []
    for row in rows:
        message = message_class()
        for name, value in row.items():
            field = by_name.get(name)
            if field is None:
                raise WarehouseTerminalError(f"row has column {name!r}, not in the table schema")
            if value is None:
                continue
            if field.repeated:
                getattr(message, name).extend(
                    wire_value(field.type, v) for v in value if v is not None
                )
            else:
                setattr(message, name, wire_value(field.type, value))
        encoded.append(message.SerializeToString())
    return encoded


def _message_class(fields: Sequence[Field]) -> Any:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    file = descriptor_pb2.FileDescriptorProto(name="capa_row.proto", package="capa")
    file.message_type.add().CopyFrom(row_descriptor(fields))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("capa.CapaRow"))


def wire_value(bq_type: str, value: Any) -> Any:
    """One Python value -> its Write API wire value for a column of ``bq_type``."""
    if bq_type == "TIMESTAMP":
        return _timestamp_us(value)
    if bq_type == "DATE":
        return (value - _EPOCH_DAY).days if isinstance(value, date) else int(value)
    if bq_type == "DATETIME":
        return value.isoformat(sep=" ", timespec="microseconds")
    if bq_type == "TIME":
        return value.strftime("%H:%M:%S.%f") if isinstance(value, time) else str(value)
    if bq_type in ("NUMERIC", "BIGNUMERIC"):
        return format(value, "f") if isinstance(value, Decimal) else str(value)
    if bq_type == "JSON":
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    if bq_type == "STRING":
        return value if isinstance(value, str) else str(value)  # uuid, interval text ...
    if bq_type == "BYTES":
        return bytes(value)
    if bq_type in ("FLOAT64", "FLOAT"):
        return float(value)
    return value


def _timestamp_us(value: Any) -> int:
    if isinstance(value, int):
        return value
    if value.tzinfo is None:  # a naive timestamp in a TIMESTAMP column is UTC
        value = value.replace(tzinfo=UTC)
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def request_chunks(serialized: Sequence[bytes]) -> Iterator[list[bytes]]:
    """Cut rows into AppendRows requests under the 10 MB request limit."""
    chunk: list[bytes] = []
    size = 0
    for row in serialized:
        if chunk and size + len(row) > MAX_REQUEST_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += len(row)
    if chunk:
        yield chunk


class StorageWriter:
    """``AppendRows`` on tables' ``_default`` streams (at-least-once; callers are idempotent).

    One gRPC client for the warehouse's lifetime; created lazily, closed by :meth:`close`.
    """

    def __init__(self, endpoint: str | None) -> None:
        self._endpoint = endpoint
        self._client: Any = None

    def append(
        self, table: Sequence[str], fields: Sequence[Field], rows: Sequence[Mapping[str, Any]]
    ) -> int:
        """Append ``rows`` to ``project.dataset.table``; returns the number of rows sent."""
        if not rows:
            return 0
        from google.cloud.bigquery_storage_v1 import types

        project, dataset, name = table
        stream = f"projects/{project}/datasets/{dataset}/tables/{name}/streams/_default"
        schema = types.ProtoSchema(proto_descriptor=row_descriptor(fields))
        requests = [
            types.AppendRowsRequest(
                write_stream=stream,
                proto_rows=types.AppendRowsRequest.ProtoData(
                    writer_schema=schema, rows=types.ProtoRows(serialized_rows=chunk)
                ),
            )
            for chunk in request_chunks(encode_rows(fields, rows))
        ]
        for response in self._writer().append_rows(iter(requests)):
            _raise_on_error(name, response)
        return len(rows)

    def _writer(self) -> Any:
        if self._client is None:
            from google.cloud import bigquery_storage_v1

            if self._endpoint is None:
                self._client = bigquery_storage_v1.BigQueryWriteClient()
            else:
                import grpc
                from google.cloud.bigquery_storage_v1.services.big_query_write.transports import (
                    BigQueryWriteGrpcTransport,
                )

                channel = grpc.insecure_channel(self._endpoint)
                self._client = bigquery_storage_v1.BigQueryWriteClient(
                    transport=BigQueryWriteGrpcTransport(channel=channel)
                )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.transport.close()
            self._client = None


def _raise_on_error(table: str, response: Any) -> None:
    errors = list(getattr(response, "row_errors", []) or [])
    if errors:
        raise WarehouseTerminalError(
            f"BigQuery Storage Write API rejected rows of {table!r}: {errors[:3]}"
        )
    if response.error and response.error.code:
        raise WarehouseTerminalError(
            f"BigQuery Storage Write API failed on {table!r}: {response.error.message}"
        )
