"""The Spark model builder in BigQuery mode, through the real spark-bigquery-connector, against
bqemulator: the consumption tables it publishes equal the lakehouse-mode build of the same raw
rows.

Set-up (all on free loopback ports, stopped afterwards):

* bqemulator with its REST and (plaintext) gRPC ports;
* ``tls_proxy.py``: TLS with a self-signed certificate made here, in front of the gRPC port
  (the connector's Storage Read/Write clients only speak TLS); the JVM trusts the certificate
  through a PKCS12 truststore passed with ``--conf spark.driver.extraJavaOptions=...``;
* a sample raw lakehouse (spark_jobs.sample, with tombstones) built locally by the lakehouse
  mode in ``.venvs/spark`` (Spark 4.1 + Delta); the same raw replicas, tombstones included, are
  loaded into the emulator's ``raw`` dataset (Parquet load jobs);
* ``python -m spark_jobs.build run --warehouse bigquery:...`` in ``.venvs/spark35`` (Spark 3.5,
  spark-3.5-bigquery 0.42.1: the newest connector on the reachable Maven Central; the Spark 4
  artifacts are not there) reads ``raw`` with the Storage Read API and publishes
  ``consumption`` through Storage Write API pending streams + ``CREATE OR REPLACE TABLE``,
  replacing stale tables of another schema. An extra model whose check fails is built last:
  both modes stop there with exit 1, and its stale BigQuery table stays untouched.

Emulator gaps worked around here (docs/emulated.md, "Dataproc Serverless"): raw tables are
created with the legacy type names real BigQuery reports (INTEGER, FLOAT, BOOLEAN; the emulator
echoes INT64/BOOL as given and the connector's LegacySQLTypeName cannot map those), and reads
use ``--read-format AVRO`` (ARROW read sessions return no rows to the connector).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from google.api_core.retry import Retry

from capa_app.stack.base import free_port
from spark_jobs import sample
from spark_jobs.io_bigquery import BigQueryTarget, make_client
from spark_jobs.project import MODELS_DIR, load_project

ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
SPARK_PYTHON = ROOT / ".venvs" / "spark" / "bin" / "python"
SPARK35_PYTHON = ROOT / ".venvs" / "spark35" / "bin" / "python"
PROJECT = "capa-spark-bq"
RETRY = Retry(timeout=15)
# What BigQuery's tables.get answers (legacy SQL names), by Arrow type.
LEGACY_TYPES = [
    (pa.types.is_boolean, "BOOLEAN"),
    (pa.types.is_integer, "INTEGER"),
    (pa.types.is_floating, "FLOAT"),
    (pa.types.is_decimal, "NUMERIC"),
    (pa.types.is_string, "STRING"),
    (pa.types.is_timestamp, "TIMESTAMP"),
    (pa.types.is_date, "DATE"),
]


@dataclass(frozen=True)
class Emulator:
    rest: str
    tls_port: int
    truststore: Path
    log: Path

    @property
    def target(self) -> BigQueryTarget:
        return BigQueryTarget(project=PROJECT, http_endpoint=self.rest)


def _start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _wait(ready: Any, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args} exited {process.returncode}:\n{log.read_text()[-3000:]}")
        if ready():
            return
        time.sleep(0.3)
    pytest.fail(f"{process.args} not ready in {timeout}s:\n{log.read_text()[-3000:]}")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    from tls_proxy import make_certificate

    for python in (SPARK_PYTHON, SPARK35_PYTHON):
        if not python.exists():
            pytest.fail(f"{python} missing: run `bash scripts/setup.sh spark spark35 jars`")
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup_bqemulator.sh"), sys.executable], check=True
    )
    work = tmp_path_factory.mktemp("spark-bq")
    rest, grpc, tls = free_port(), free_port(), free_port()
    emu_log, proxy_log = work / "bqemulator.log", work / "tls-proxy.log"
    bqemulator = Path(sys.executable).parent / "bqemulator"
    command = [str(bqemulator), "start", "--rest-port", str(rest), "--grpc-port", str(grpc)]
    emu = _start([*command, "--project", PROJECT, "--log-level", "warning"], emu_log)
    cert, key, store = work / "cert.pem", work / "key.pem", work / "truststore.p12"
    make_certificate(cert, key)
    subprocess.run(
        [
            *("keytool", "-importcert", "-noprompt", "-alias", "bqemulator", "-file", str(cert)),
            *("-keystore", str(store), "-storetype", "PKCS12", "-storepass", "changeit"),
        ],
        check=True,
        capture_output=True,
    )
    proxy = _start(
        [sys.executable, str(HERE / "tls_proxy.py"), str(tls), str(grpc), str(cert), str(key)],
        proxy_log,
    )
    try:
        url = f"http://127.0.0.1:{rest}/bigquery/v2/projects/{PROJECT}/datasets"
        _wait(lambda: _answers(url), emu, emu_log)
        _wait(lambda: "ready" in proxy_log.read_text(), proxy, proxy_log)
        yield Emulator(f"http://127.0.0.1:{rest}", tls, store, emu_log)
    finally:
        _stop(proxy)
        _stop(emu)


def _legacy_type(field: pa.Field) -> str:
    for matches, name in LEGACY_TYPES:
        if matches(field.type):
            return name
    raise AssertionError(f"no BigQuery type for {field}")


def load_raw(client: Any, lake: Path, tables: list[str]) -> None:
    """Every raw replica (tombstones included) into ``raw`` by a Parquet load job."""
    from google.cloud import bigquery

    client.create_dataset(f"{PROJECT}.raw", exists_ok=True, retry=RETRY)
    client.create_dataset(f"{PROJECT}.consumption", exists_ok=True, retry=RETRY)
    for name in tables:
        data = DeltaTable(str(lake / "raw" / name)).to_pyarrow_table()
        table_id = f"{PROJECT}.raw.{name}"
        schema = [bigquery.SchemaField(f.name, _legacy_type(f)) for f in data.schema]
        client.delete_table(table_id, not_found_ok=True, retry=RETRY)
        client.create_table(bigquery.Table(table_id, schema=schema), retry=RETRY)
        parquet = lake / f"{name}.parquet"
        pq.write_table(data, parquet)
        config = bigquery.LoadJobConfig(source_format=bigquery.SourceFormat.PARQUET)
        with parquet.open("rb") as handle:
            job = client.load_table_from_file(handle, table_id, job_config=config)
        job.result(retry=RETRY)
        assert client.get_table(table_id, retry=RETRY).num_rows == data.num_rows


def start_build(python: Path, args: list[str], log: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONPATH": str(ROOT)}
    env.pop("PYSPARK_PYTHON", None)
    with log.open("w") as out:
        return subprocess.Popen(
            [str(python), "-m", "spark_jobs.build", "run", "--full", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )


def finish(process: subprocess.Popen[str], log: Path, returncode: int = 0) -> str:
    try:
        process.wait(timeout=600)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    output = log.read_text()
    assert process.returncode == returncode, f"{process.args}:\n{output[-6000:]}"
    return output


def bigquery_args(emulator: Emulator) -> list[str]:
    trust = (
        f"-Djavax.net.ssl.trustStore={emulator.truststore} "
        "-Djavax.net.ssl.trustStorePassword=changeit -Djavax.net.ssl.trustStoreType=PKCS12"
    )
    return [
        "--warehouse",
        f"bigquery:{PROJECT}",
        "--bigquery-endpoint",
        emulator.rest,
        "--bigquery-grpc-endpoint",
        f"localhost:{emulator.tls_port}",
        "--read-format",
        "AVRO",
        "--conf",
        f"spark.driver.extraJavaOptions={trust}",
    ]


def _normalise(frame: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    out = frame.copy()
    for column in out.columns:
        values = out[column]
        if pd.api.types.is_datetime64_any_dtype(values):
            out[column] = pd.to_datetime(values, utc=True).dt.as_unit("us")
        elif values.map(lambda v: isinstance(v, Decimal)).any():
            out[column] = values.map(lambda v: None if pd.isna(v) else Decimal(v).normalize())
        elif pd.api.types.is_integer_dtype(values):
            out[column] = values.astype("Int64")
        elif values.map(lambda v: hasattr(v, "isoformat") and not hasattr(v, "hour")).any():
            out[column] = values.map(lambda v: None if pd.isna(v) else v.isoformat())
    return out.sort_values(key).reset_index(drop=True)[sorted(out.columns)]


def local_table(consumption: Path, model: str, key: list[str]) -> pd.DataFrame:
    return _normalise(DeltaTable(str(consumption / model)).to_pandas(), key)


def bigquery_table(client: Any, model: str, key: list[str]) -> pd.DataFrame:
    rows = client.query(
        f"SELECT * FROM `{PROJECT}.consumption.{model}`", retry=RETRY, job_retry=None
    ).result(retry=RETRY)
    return _normalise(pd.DataFrame([dict(r.items()) for r in rows]), key)


def assert_same(client: Any, consumption: Path) -> None:
    project = load_project()
    for model in project.models.values():
        key = list(model.header.key)
        local = local_table(consumption, model.name, key)
        published = bigquery_table(client, model.name, key)
        assert len(local) > 0, model.name
        pd.testing.assert_frame_equal(
            published, local, check_dtype=False, check_exact=False, obj=model.name
        )


FAILING_MODEL = """-- Fails its accepted_values check: it must never be published.
-- capa:
--   key: [customer_id]
--   checks:
--     accepted_values:
--       value_band: [none]
SELECT customer_id, value_band FROM {{ ref('customer_features') }}
"""


def models_with_a_failing_one(folder: Path) -> Path:
    """The project's models plus ``zz_failing`` (built last: it refs customer_features)."""
    folder.mkdir()
    for path in MODELS_DIR.glob("*.sql"):
        shutil.copy(path, folder / path.name)
    (folder / "zz_failing.sql").write_text(FAILING_MODEL)
    return folder


def stale_consumption(client: Any) -> None:
    """Published tables from an earlier build, with another schema: the build must replace them."""
    for model in [*load_project().models, "zz_failing"]:
        client.query(
            f"CREATE OR REPLACE TABLE `{PROJECT}.consumption.{model}` AS SELECT 'stale' AS old",
            retry=RETRY,
            job_retry=None,
        ).result(retry=RETRY)


def test_bigquery_mode_equals_lakehouse_build(emulator: Emulator, tmp_path: Path) -> None:
    lake = sample.seed(tmp_path / "lake", customers=30, orders=120, invoices=60)
    lake.delete("f2_public_orders", [1, 2, 3])  # tombstones: hidden by raw('...') in both modes
    lake.delete("crm_crm_contacts", ["K000001"])
    lake.upsert("f3_dbo_invoices", [{**sample.invoice(sample.random.Random(5), 7, 30)}])
    models = ["--models-dir", str(models_with_a_failing_one(tmp_path / "models"))]
    local_log = tmp_path / "local.log"
    local = start_build(SPARK_PYTHON, [*models, "--lakehouse", str(tmp_path / "lake")], local_log)

    client, _ = make_client(emulator.target)
    load_raw(client, tmp_path / "lake", load_project().raw_tables())
    stale_consumption(client)
    bq_log = tmp_path / "bigquery.log"
    started = time.monotonic()
    out = finish(
        start_build(SPARK35_PYTHON, [*models, *bigquery_args(emulator)], bq_log), bq_log, 1
    )
    bigquery_seconds = time.monotonic() - started
    finish(local, local_log, 1)
    print(
        f"BigQuery-mode build {bigquery_seconds:.1f}s, both builds {time.monotonic() - started:.1f}s"
    )

    assert "model 'zz_failing': 1 data-quality check(s) failed" in out, out
    assert_same(client, tmp_path / "lake" / "consumption")
    stale = client.query(
        f"SELECT old FROM `{PROJECT}.consumption.zz_failing`", retry=RETRY, job_retry=None
    ).result(retry=RETRY)
    assert [r["old"] for r in stale] == ["stale"]  # checks run before publishing
    published = [t.table_id for t in client.list_tables(f"{PROJECT}.consumption", retry=RETRY)]
    assert sorted(published) == sorted([*load_project().models, "zz_failing"])  # no stage left
