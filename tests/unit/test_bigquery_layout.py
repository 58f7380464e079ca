"""The BigQuery table resources the adapter creates: key, clustering, staleness, partitions."""

from __future__ import annotations

from google.cloud import bigquery

from capa.warehouse import open_warehouse, parse_spec
from capa.warehouse.base import Warehouse
from capa.warehouse.bigquery.tables import max_staleness_interval, table_layout


def test_cdc_replica_declares_key_clustering_and_staleness() -> None:
    table = table_layout(
        bigquery.Table("p.raw.t"), primary_key=("a", "b", "c", "d", "e"), max_staleness_minutes=90
    )
    body = table.to_api_repr()
    assert body["tableConstraints"]["primaryKey"]["columns"] == ["a", "b", "c", "d", "e"]
    assert body["clustering"]["fields"] == ["a", "b", "c", "d"]  # BigQuery clusters on <= 4
    assert body["maxStaleness"] == "0-0 0 1:30:0"
    assert "timePartitioning" not in body


def test_changelog_is_partitioned_by_commit_day() -> None:
    body = table_layout(
        bigquery.Table("p.raw.t_changelog"), primary_key=("id",), partition_by="_capa_commit_ts"
    ).to_api_repr()
    assert body["timePartitioning"] == {"type": "DAY", "field": "_capa_commit_ts"}
    assert body["clustering"]["fields"] == ["id"] and "maxStaleness" not in body


def test_staleness_interval_text() -> None:
    assert [max_staleness_interval(m) for m in (0, 15, 60, 125)] == [
        "0-0 0 0:0:0",
        "0-0 0 0:15:0",
        "0-0 0 1:0:0",
        "0-0 0 2:5:0",
    ]


def test_spec_options_select_the_mode() -> None:
    config = parse_spec("bigquery:proj?apply_mode=merge&merge_interval_s=600")
    assert (config.project, config.apply_mode, config.merge_interval_s) == ("proj", "merge", 600)
    assert parse_spec("bigquery:proj").apply_mode == "cdc"
    emulator = parse_spec("bigquery:p@http://127.0.0.1:9050?write_api_endpoint=127.0.0.1:9060")
    assert (emulator.api_endpoint, emulator.write_api_endpoint) == (
        "http://127.0.0.1:9050",
        "127.0.0.1:9060",
    )


def test_bad_spec_option_is_a_config_error() -> None:
    import pytest

    from capa.errors import ConfigError

    with pytest.raises(ConfigError, match="apply_mode"):
        parse_spec("bigquery:proj?apply_mode=upsert")


def test_adapter_satisfies_the_port() -> None:
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials

    client = bigquery.Client(
        project="p",
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint="http://127.0.0.1:9"),
    )
    warehouse = open_warehouse(parse_spec("bigquery:p@http://127.0.0.1:9"), client=client)
    assert isinstance(warehouse, Warehouse)
    assert callable(warehouse.tables)


def test_model_headers_lay_out_the_published_tables() -> None:
    from spark_jobs.io_bigquery import replace_table_sql
    from spark_jobs.project import load_project

    models = load_project().models
    daily = models["sales_daily"].header.bigquery
    assert replace_table_sql("p.consumption.sales_daily", "p.consumption.s1", daily) == (
        "CREATE OR REPLACE TABLE `p.consumption.sales_daily` "
        "PARTITION BY DATE_TRUNC(`sales_date`, YEAR) CLUSTER BY `sales_date` "
        "AS SELECT * FROM `p.consumption.s1`"
    )
    for name in ("customer_360", "customer_features", "customer_orders"):
        assert models[name].header.bigquery.ddl() == "CLUSTER BY `customer_id`"


def test_layout_rejects_more_than_four_clustering_columns() -> None:
    import pytest
    from pydantic import ValidationError

    from spark_jobs.project import BigQueryLayout

    assert BigQueryLayout(partition_by="d").ddl() == "PARTITION BY `d`"
    with pytest.raises(ValidationError, match="at most 4"):
        BigQueryLayout(cluster_by=("a", "b", "c", "d", "e"))
