"""The local SparkSession with Delta Lake (jars pre-fetched from Maven Central).

Jars come from ``bash scripts/fetch_jars.sh spark`` (``scripts/jars/spark.pom``) and are passed
with ``spark.jars``: ``spark.jars.packages`` would resolve over the network at every start.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from capa.errors import EnvironmentProblem

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JARS = REPO / ".cache" / "jars" / "spark"

SPARK_CONF: dict[str, str] = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "2",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.memory": "2g",
    # Delta log replay defaults to 50 partitions: far too many for small local tables.
    "spark.databricks.delta.snapshotPartitions": "2",
    # New consumption tables get a change data feed (downstream models read it incrementally)
    # and no deletion vectors: delta-rs (capa.consumption.read_table, publish) cannot read them.
    "spark.databricks.delta.properties.defaults.enableChangeDataFeed": "true",
    "spark.databricks.delta.properties.defaults.enableDeletionVectors": "false",
}


def delta_jars(jars_dir: Path | None = None) -> list[Path]:
    folder = Path(jars_dir or os.environ.get("CAPA_SPARK_JARS") or DEFAULT_JARS)
    jars = sorted(folder.glob("*.jar"))
    if not any(j.name.startswith("delta-spark") for j in jars):
        raise EnvironmentProblem(
            f"no Delta Lake jars in {folder}; run `bash scripts/fetch_jars.sh spark` "
            "(or set CAPA_SPARK_JARS to a folder holding delta-spark_4.1_2.13 and delta-storage)"
        )
    return jars


def spark_session(app: str = "capa-consumption", master: str | None = None) -> Any:
    """Start (or reuse) the local[2] session with Delta configured."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Python workers must run in this (spark) environment, not whatever python3 is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(master or os.environ.get("CAPA_SPARK_MASTER", "local[2]"))
    builder = builder.appName(app).config("spark.jars", ",".join(str(j) for j in delta_jars()))
    for key, value in SPARK_CONF.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
