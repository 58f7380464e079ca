"""Warehouse adapters, picked through a registry (STYLE rule 2).

``open_warehouse(spec)`` takes ``"local:DIR"``, ``"bigquery:PROJECT"`` (or
``"bigquery:PROJECT@http://127.0.0.1:PORT"`` for an emulator, optionally followed by
``?field=value&...`` for other :class:`~capa.config.BigQueryWarehouseConfig` fields, e.g.
``bigquery:P?apply_mode=merge&merge_interval_s=600``) or a
:class:`~capa.config.LocalWarehouseConfig` / :class:`~capa.config.BigQueryWarehouseConfig`.
Adapters are imported lazily: opening a local warehouse never loads google.cloud.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from pydantic import ValidationError

from capa.errors import ConfigError

if TYPE_CHECKING:
    from capa.config import BigQueryWarehouseConfig, LocalWarehouseConfig
    from capa.warehouse.base import Warehouse


def _local(config: LocalWarehouseConfig, **options: Any) -> Warehouse:
    from capa.warehouse.local import LocalWarehouse

    settings = {
        "merge_on_read": config.merge_on_read,
        "compact_interval_s": config.compact_interval_s,
        "compact_pending_rows": config.compact_pending_rows,
        "change_data_feed": config.change_data_feed,
    }
    return LocalWarehouse(config.path, **{**settings, **options})


def _bigquery(config: BigQueryWarehouseConfig, **options: Any) -> Warehouse:
    from capa.warehouse.bigquery import BigQueryWarehouse

    return BigQueryWarehouse(config, **options)


WAREHOUSES: dict[str, Callable[..., Warehouse]] = {"local": _local, "bigquery": _bigquery}


def parse_spec(spec: str) -> LocalWarehouseConfig | BigQueryWarehouseConfig:
    """``local:DIR`` / ``bigquery:PROJECT[@ENDPOINT]`` -> a typed warehouse config."""
    from capa.config import BigQueryWarehouseConfig, LocalWarehouseConfig

    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ConfigError(f"warehouse {spec!r} is not 'local:DIR' or 'bigquery:PROJECT'")
    if kind == "local":
        return LocalWarehouseConfig.model_validate({"path": rest})
    if kind == "bigquery":
        rest, _, query = rest.partition("?")
        project, _, endpoint = rest.partition("@")
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
        try:
            return BigQueryWarehouseConfig.model_validate(
                {"project": project, "api_endpoint": endpoint or None, **options}
            )
        except ValidationError as exc:
            raise ConfigError(f"warehouse {spec!r}: {exc}") from exc
    raise ConfigError(f"unknown warehouse type {kind!r} in {spec!r}; known: {sorted(WAREHOUSES)}")


def open_warehouse(spec: Any, **options: Any) -> Warehouse:
    """Open the warehouse named by ``spec`` (a string or a warehouse config)."""
    config = parse_spec(spec) if isinstance(spec, str) else spec
    factory = WAREHOUSES.get(getattr(config, "type", ""))
    if factory is None:
        raise ConfigError(f"unknown warehouse config {config!r}; known types: {sorted(WAREHOUSES)}")
    return factory(config, **options)
