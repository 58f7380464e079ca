"""The embedded Debezium engine (pydbzengine), run in a thread with failures surfaced.

pydbzengine's ``DebeziumEngine.run()`` just returns when the connector fails; this module
builds the engine with a ``CompletionCallback`` so the reason reaches Python, runs it in a
daemon thread, and stops it with ``close()``. Properties come from :mod:`capa.config`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capa.config import CapaSettings

logger = logging.getLogger(__name__)

POSTGRES_CONNECTOR = "io.debezium.connector.postgresql.PostgresConnector"

#: Debezium's per-value conversion failures (it sends NULL instead), one line each, for the
#: bridge to read (connectors/debezium/conversions.py); relative to the state dir (the cwd)
CONVERSIONS_LOG = "logs/conversions.log"

#: log4j2 config: console to stderr (the bridge's log), file under ./logs (cwd = state dir),
#: and the conversion-failure lines alone (message only, no stack trace) in CONVERSIONS_LOG
LOG4J2 = f"""\
rootLogger.level=INFO
appender.console.type=Console
appender.console.name=stderr
appender.console.target=SYSTEM_ERR
appender.console.layout.type=PatternLayout
appender.console.layout.pattern=%d [%level] [%t] %c{{2}} - %m%n
appender.file.type=File
appender.file.name=file
appender.file.fileName=logs/pydbzengine.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=%d [%level] [%t] %c{{6}} - %m%n
rootLogger.appenderRef.stderr.ref=stderr
rootLogger.appenderRef.file.ref=file
appender.conversions.type=File
appender.conversions.name=conversions
appender.conversions.fileName={CONVERSIONS_LOG}
appender.conversions.layout.type=PatternLayout
appender.conversions.layout.pattern=%m%n
appender.conversions.layout.alwaysWriteExceptions=false
appender.conversions.filter.value.type=RegexFilter
appender.conversions.filter.value.regex=Failed to properly convert data value .*
appender.conversions.filter.value.onMatch=ACCEPT
appender.conversions.filter.value.onMismatch=DENY
logger.conversions.name=io.debezium.relational.TableSchemaBuilder
logger.conversions.appenderRef.conversions.ref=conversions
"""


def offsets_file(settings: CapaSettings) -> Path:
    return settings.state_dir.resolve() / "debezium" / f"{settings.debezium.engine_name}.offsets"


def debezium_properties(settings: CapaSettings) -> dict[str, str]:
    """Engine + PostgreSQL connector properties for the configured source."""
    pg, dbz = settings.postgres, settings.debezium
    props = {
        "name": dbz.engine_name,
        "connector.class": POSTGRES_CONNECTOR,
        "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
        "offset.storage.file.filename": str(offsets_file(settings)),
        "offset.flush.interval.ms": str(dbz.offset_flush_interval_ms),
        "database.hostname": pg.host,
        "database.port": str(pg.port),
        "database.user": pg.user,
        "database.password": pg.password.get_secret_value(),
        "database.dbname": pg.database,
        "topic.prefix": dbz.source_name,
        "plugin.name": "pgoutput",
        "slot.name": dbz.slot_name,
        "publication.name": dbz.publication,
        "publication.autocreate.mode": "filtered" if dbz.table_include_list else "all_tables",
        "snapshot.mode": dbz.snapshot_mode,
        "decimal.handling.mode": dbz.decimal_handling_mode,
        "skipped.operations": "none",
        # Columns of types without a Debezium converter (geometric, tsquery, multirange,
        # pg_lsn ...) are otherwise dropped with only a WARN line; with these two they arrive
        # as their text, tagged with the source type (connectors/debezium/values.py).
        "include.unknown.datatypes": "true",
        "datatype.propagate.source.type": ".+",
        "provide.transaction.metadata": "false",
        "heartbeat.interval.ms": str(dbz.heartbeat_interval_ms),
        "poll.interval.ms": str(dbz.poll_interval_ms),
        "converter.schemas.enable": str(dbz.json_schemas).lower(),
    }
    props.update(signal_properties(settings))
    if dbz.table_include_list:
        # the signal table must be captured: its watermark rows close the snapshot windows
        signal = dbz.signal_table.replace(".", "\\.")
        props["table.include.list"] = f"{dbz.table_include_list},{signal}"
    return props


def signal_properties(settings: CapaSettings) -> dict[str, str]:
    """Incremental snapshots ('capa resync'): the source signalling channel (a row in
    ``debezium.signal_table``) and notifications to ``debezium.notification_topic``."""
    dbz = settings.debezium
    return {
        "signal.enabled.channels": "source",
        "signal.data.collection": dbz.signal_table,
        "incremental.snapshot.chunk.size": str(dbz.incremental_snapshot_chunk_size),
        "notification.enabled.channels": "sink",
        "notification.sink.topic.name": dbz.notification_topic,
    }


def jvm_options(log4j_config: Path) -> list[str]:
    """-Xrs leaves SIGTERM/SIGINT to Python, so the bridge can stop the engine cleanly."""
    return ["-Xrs", f"-Dlog4j2.configurationFile={log4j_config}"]


def write_log4j_config(state_dir: Path) -> Path:
    path = state_dir / "debezium" / "log4j2.properties"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(LOG4J2)
    return path


Completion = Callable[[bool, str, Any], None]


def _completion_callback(sink: Completion) -> Any:
    import jpype

    @jpype.JImplements("io.debezium.engine.DebeziumEngine$CompletionCallback")
    class CompletionCallback:
        @jpype.JOverride
        def handle(self, success: Any, message: Any, error: Any) -> None:
            sink(bool(success), "" if message is None else str(message), error)

    return CompletionCallback()


class EmbeddedDebezium:
    """One pydbzengine engine with a completion callback, running in a daemon thread."""

    def __init__(
        self, properties: dict[str, str], handler: Any, jvm_opts: list[str] | None = None
    ) -> None:
        from pydbzengine import DebeziumEngine

        self.success: bool | None = None
        self.message = ""
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

        class _Engine(DebeziumEngine):
            def _build_engine(engine: Any) -> Any:
                return self._build(engine)

        self.engine = _Engine(
            properties=properties, handler=handler, format="json", jvm_opts=jvm_opts
        )

    def _build(self, engine: Any) -> Any:
        engine._ensure_jvm_started()
        from pydbzengine.engine._jvm import JDebeziumEngine, JProperties

        java_props = JProperties()
        for key, value in engine.properties.items():
            java_props.setProperty(str(key), str(value))
        return (
            JDebeziumEngine.create(engine._resolve_format())
            .using(java_props)
            .using(_completion_callback(self._on_complete))
            .notifying(engine.consumer)
            .build()
        )

    _closing = False

    def _on_complete(self, success: bool, message: str, error: Any) -> None:
        self.success = success
        self.message = message
        level = logging.INFO if success else logging.ERROR
        logger.log(level, "Debezium engine finished (success=%s): %s", success, message)
        if error is not None and not success:
            logger.error("Debezium engine error: %s", error)

    def prepare(self) -> None:
        """Start the JVM and build the engine in the calling thread."""
        _ = self.engine.engine

    def start(self) -> None:
        self.prepare()
        self._thread = threading.Thread(target=self._run, name="debezium-engine", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.engine.run()
        except BaseException as exc:  # handler failure re-raised by pydbzengine
            if self._closing and _is_interruption(exc):
                # close() interrupts the task; a batch caught mid-commit is not committed
                # and is re-delivered on restart, so this is a clean stop, not a failure.
                logger.info("Debezium engine interrupted by close(): %s", exc)
            else:
                self.error = exc
                logger.error("Debezium engine stopped on a handler error: %s", exc)
        finally:
            self._done.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """True once the engine thread has ended."""
        return self._done.wait(timeout_s)

    def close(self) -> None:
        self._closing = True
        self.engine.close()

    @property
    def failed(self) -> bool:
        return self.error is not None or self.success is False


def _is_interruption(exc: BaseException) -> bool:
    """A Java InterruptedException surfacing through JPype (directly or as a cause)."""
    seen: BaseException | None = exc
    while seen is not None:
        if "InterruptedException" in f"{type(seen).__name__} {seen}":
            return True
        seen = seen.__cause__ or seen.__context__
    return False
