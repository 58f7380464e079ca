"""The ``bigquery`` warehouse: staged rows + MERGE per table (google-cloud-bigquery, lazy)."""

from capa.warehouse.bigquery.warehouse import BigQueryWarehouse

__all__ = ["BigQueryWarehouse"]
