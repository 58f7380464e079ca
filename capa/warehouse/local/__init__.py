"""The ``local`` warehouse: Delta Lake tables in a directory (delta-rs), read with DuckDB."""

from capa.warehouse.local.warehouse import LocalWarehouse

__all__ = ["LocalWarehouse"]
