"""Errors of the CRM connector (all :class:`capa.errors.CapaError`)."""

from __future__ import annotations

from capa.errors import ConfigError, DecodeError, TerminalError, TransientError


class CrmContractError(ConfigError):
    """The contract YAML is invalid."""


class CrmExtractError(DecodeError):
    """An extract (manifest, file list) cannot be read as a whole."""


class CrmRejectThresholdExceeded(TerminalError):
    """Too many rows of a load failed validation: the load applies nothing."""


class CrmApiError(TerminalError):
    """The CRM HTTP API answered with something capa cannot use."""


class CrmApiUnavailable(TransientError):
    """The CRM HTTP API cannot be reached right now (retry with backoff)."""
