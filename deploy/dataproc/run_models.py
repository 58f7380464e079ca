"""Dataproc Serverless entry point of the Spark SQL consumption models.

Uploaded as ``gs://<artifacts>/spark/run_models.py`` (deploy/gcp/dataproc.tf) and run by the
batch specs in this folder, with ``capa_spark.zip`` (deploy/dataproc/package.py) on
``python_file_uris`` so that ``capa`` and ``spark_jobs`` import from the archive. It only
hands its arguments to :func:`spark_jobs.build.main`: the same builder that runs locally
(``python -m spark_jobs.build run ...``) runs on Dataproc. The batch spec
(``consumption_models.json.tftpl``) passes builder flags only: ``--warehouse bigquery:PROJECT``
with the raw/consumption datasets selects the BigQuery mode (``spark_jobs/io_bigquery.py``) and
``--session managed`` keeps the session the runtime configured (no ``local[2]``, no local jars:
runtime 3.0 bundles the spark-bigquery-connector).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from spark_jobs.build import main as build_main

    return build_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
