"""capa's exception hierarchy.

Every error raised by capa code derives from :class:`CapaError` and carries one of two
mix-ins that tell the caller what to do with it:

* :class:`TerminalError` - retrying cannot help (bad input, unknown table, bad config).
  A record that causes one goes to the dead-letter output with the reason.
* :class:`TransientError` - the world may heal (broker down, lock conflict, timeout).
  Retry with backoff; the record is never dead-lettered for it.

Messages quote the bad value and say how to fix it.
"""

from __future__ import annotations


class CapaError(Exception):
    """Root of all capa errors."""


class TerminalError(CapaError):
    """Retrying will not help: dead-letter the record or stop with a clear message."""


class TransientError(CapaError):
    """May succeed if retried later (with backoff)."""


# --- configuration and environment -------------------------------------------------


class ConfigError(TerminalError):
    """Configuration is missing or invalid."""


class EnvironmentProblem(TerminalError):
    """The machine lacks something capa needs (Java, a free port, a binary...)."""


def missing_google_credentials(service: str, cause: Exception) -> ConfigError:
    """The error for a Google client built without Application Default Credentials."""
    first = str(cause).split(". ")[0]
    return ConfigError(
        f"no Google credentials for {service} ({first}): set GOOGLE_APPLICATION_CREDENTIALS "
        "or run `gcloud auth application-default login`; for a local emulator set its "
        "endpoint (STORAGE_EMULATOR_HOST, bigquery:PROJECT@http://127.0.0.1:PORT)"
    )


# --- input decoding / normalisation -----------------------------------------------


class DecodeError(TerminalError):
    """An input record or file cannot be parsed or mapped to a change event."""

    def __init__(self, reason: str, *, raw: bytes | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


class UnknownTableError(DecodeError):
    """The event names a table that is not configured / not known."""


class TableNameError(DecodeError):
    """A source table's (source, schema, table) gives no usable raw table name (too long)."""


class SchemaDriftError(DecodeError):
    """A column changed type in a way that cannot be applied automatically."""


# --- sinks and services -------------------------------------------------------------


class WarehouseError(CapaError):
    """A warehouse write failed."""


class WarehouseTerminalError(WarehouseError, TerminalError):
    """A warehouse rejected the data (e.g. incompatible type change)."""


class WarehouseTransientError(WarehouseError, TransientError):
    """A warehouse write may succeed on retry (e.g. commit conflict)."""


class QueryRefused(TerminalError):
    """A query the read-only SQL sandbox does not run (a write, a file, a setting...)."""


class ServiceFailed(TerminalError):
    """A process capa started (the apply job, the bridge...) exited while it was needed."""


class SlotLost(TerminalError):
    """A replication slot lost changes capa had not captured yet (dropped, or made again
    past capa's position): capture stops; the remedy is a re-sync of the tables."""


class ServiceUnavailable(TransientError):
    """A service (Kafka, PostgreSQL, an emulator) is not reachable right now."""
