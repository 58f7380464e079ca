"""The local SparkSession with Delta Lake (jars pre-fetched from Maven Central).

Jars come from ``bash scripts/fetch_jars.sh spark`` (``scripts/jars/spark.pom``) and are passed
with ``spark.jars``: ``spark.jars.packages`` would resolve over the network at every start.
The BigQuery mode of the builder (``delta=False``) runs without Delta and takes the
spark-bigquery-connector from ``.cache/jars/spark-bigquery`` (``scripts/jars/spark-bigquery.pom``)
when present. ``managed=True`` is for spark-submit / Dataproc Serverless: the cluster already
chose master, jars and resources, so only the SQL settings (and ``conf``) are applied.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from capa.config import SparkConfig, load_settings
from capa.errors import EnvironmentProblem

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JARS = REPO / ".cache" / "jars" / "spark"
BIGQUERY_JARS = REPO / ".cache" / "jars" / "spark-bigquery"
# Local-machine sizing: never applied to a managed (spark-submit / Dataproc) session.
LOCAL_ONLY = (
    "spark.sql.shuffle.partitions",
    "spark.default.parallelism",
    "spark.ui.enabled",
    "spark.ui.showConsoleProgress",
    "spark.driver.memory",
)

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
    # Generated code is cached per query shape; the default 100 entries are too few for one
    # session that builds every model fully and incrementally (the serve mode, notebooks):
    # each build would compile its query classes again.
    "spark.sql.codegen.cache.maxEntries": "2000",
}


def spark_settings() -> SparkConfig:
    """The ``spark`` section of capa's settings (``CAPA__SPARK__*`` / capa.yaml)."""
    return load_settings().spark


def delta_jars(jars_dir: Path | None = None) -> list[Path]:
    folder = Path(jars_dir or spark_settings().jars_dir or DEFAULT_JARS)
    jars = sorted(folder.glob("*.jar"))
    if not any(j.name.startswith("delta-spark") for j in jars):
        raise EnvironmentProblem(
            f"no Delta Lake jars in {folder}; run `bash scripts/fetch_jars.sh spark` (or set "
            "CAPA__SPARK__JARS_DIR to a folder holding delta-spark_4.1_2.13 and delta-storage)"
        )
    return jars


def bigquery_jars(jars_dir: Path | None = None) -> list[Path]:
    """The pre-fetched spark-bigquery-connector jars (a local session's BigQuery mode)."""
    folder = Path(jars_dir or spark_settings().bigquery_jars_dir or BIGQUERY_JARS)
    jars = sorted(folder.glob("*.jar"))
    if not any("bigquery" in j.name for j in jars):
        raise EnvironmentProblem(
            f"no spark-bigquery-connector jar in {folder}; run "
            "`bash scripts/fetch_jars.sh spark-bigquery` (or set CAPA__SPARK__BIGQUERY_JARS_DIR)"
        )
    import pyspark

    if (
        any(j.name.startswith("spark-3.5-bigquery") for j in jars)
        and int(pyspark.__version__.split(".")[0]) >= 4
    ):
        raise EnvironmentProblem(
            f"{folder} holds the Spark 3.5 BigQuery connector, which fails on pyspark "
            f"{pyspark.__version__}; run the BigQuery mode from .venvs/spark35 "
            "(`bash scripts/setup.sh spark35`), see deploy/README.md"
        )
    return jars


def _is_delta_setting(key: str) -> bool:
    return key.startswith("spark.databricks.delta.") or key in (
        "spark.sql.extensions",
        "spark.sql.catalog.spark_catalog",
    )


def spark_session(
    app: str = "capa-consumption",
    master: str | None = None,
    *,
    delta: bool = True,
    managed: bool = False,
    conf: dict[str, str] | None = None,
) -> Any:
    """Start (or reuse) the local[2] session with Delta configured (``delta=False``: the
    BigQuery mode, connector instead of Delta; ``managed``: keep the cluster's session setup)."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Python workers must run in this (spark) environment, not whatever python3 is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app)
    if not managed:
        builder = builder.master(master or spark_settings().master)
        jars = delta_jars() if delta else bigquery_jars()
        if jars:
            builder = builder.config("spark.jars", ",".join(str(j) for j in jars))
    for key, value in SPARK_CONF.items():
        if (delta or not _is_delta_setting(key)) and not (managed and key in LOCAL_ONLY):
            builder = builder.config(key, value)
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def add_session_arguments(parser: Any) -> None:
    """``--session`` and ``--conf`` of the builder's command line."""
    parser.add_argument(
        "--session",
        choices=("local", "managed"),
        default="local",
        help="'local': start local[2] with the pre-fetched jars (default); 'managed': use the "
        "session spark-submit / Dataproc Serverless configured (master, jars, resources)",
    )
    parser.add_argument(
        "--conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Spark setting, repeatable (e.g. spark.driver.extraJavaOptions=...)",
    )


def session_options(args: Any, *, delta: bool) -> dict[str, Any]:
    """Keyword arguments of :func:`spark_session` from parsed builder arguments."""
    conf = {}
    for item in getattr(args, "conf", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            from capa.errors import ConfigError

            raise ConfigError(f"--conf takes KEY=VALUE, got {item!r}")
        conf[key.strip()] = value
    return {"delta": delta, "managed": getattr(args, "session", "local") == "managed", "conf": conf}
