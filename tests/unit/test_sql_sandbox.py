"""``capa sql`` is read-only and sandboxed, and one broken table does not break the others.

The real CLI runs in a subprocess over a real lakehouse (written by ``capa apply``'s
warehouse); broken tables are made the way disks and crashes make them: a corrupt
``_delta_log`` commit, a data file that is gone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_apply_cases import event, full_row

from capa.errors import QueryRefused
from capa.events import Op
from capa.warehouse import open_warehouse

ROOT = Path(__file__).resolve().parents[2]


def capa_sql(lake: Path, query: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "capa_app.cli",
            "sql",
            "--warehouse",
            f"local:{lake}",
            *extra,
            query,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lake")
    warehouse = open_warehouse(f"local:{root}")
    warehouse.apply([event(Op.INSERT, k, 10 + k, after=full_row(k, k)) for k in (1, 2, 3)])
    warehouse.close()
    raw = root / "raw"
    for broken in ("f2_public_badlog", "f2_public_nofile"):
        shutil.copytree(raw / "f2_public_orders", raw / broken)
    commits = sorted((raw / "f2_public_badlog" / "_delta_log").glob("*.json"))
    commits[-1].write_text('{"add": {"path": ')  # a torn write of the last commit
    for data in (raw / "f2_public_nofile").rglob("*.parquet"):
        data.unlink()
    return root


REFUSED = {
    "read_text": "SELECT * FROM read_text('/etc/passwd')",
    "read_csv": "SELECT * FROM read_csv('/etc/passwd')",
    "glob": "SELECT * FROM glob('/etc/*')",
    "copy-to": "COPY (SELECT 1) TO '{out}'",
    "copy-select-in-view": "COPY raw.f2_public_orders TO '{out}'",
    "export": "EXPORT DATABASE '{outdir}'",
    "attach": "ATTACH '{db}' AS other",
    "set-external": "SET enable_external_access = true",
    "reset-lock": "RESET lock_configuration",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "create": "CREATE TABLE t AS SELECT 1",
    "create-view": "CREATE VIEW raw.v AS SELECT 1",
    "insert": "INSERT INTO raw.f2_public_orders (id) VALUES (9)",
    "drop": "DROP VIEW raw.f2_public_orders",
    "two-statements": "SELECT 1; CREATE TABLE t AS SELECT 1",
    "pragma": "PRAGMA enable_profiling",
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_writes_files_and_settings_are_refused(case: str, lake: Path, tmp_path: Path) -> None:
    out, outdir, db = tmp_path / "x.csv", tmp_path / "export", tmp_path / "other.db"
    query = REFUSED[case].format(out=out, outdir=outdir, db=db)

    result = capa_sql(lake, query)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("capa: error: refused: capa sql ")
    assert not out.exists() and not outdir.exists() and not db.exists()


def test_a_file_name_as_a_table_is_not_read(lake: Path) -> None:
    # With external access off DuckDB does not even try the replacement scan of a path.
    result = capa_sql(lake, "SELECT * FROM '/etc/passwd'")
    assert result.returncode == 1 and "root:" not in result.stdout + result.stderr
    assert "Table with name /etc/passwd does not exist" in result.stderr


def test_read_only_queries_still_answer(lake: Path) -> None:
    result = capa_sql(
        lake, "WITH o AS (SELECT id FROM raw.f2_public_orders) SELECT sum(id) AS s FROM o", "--json"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"s": 6}
    described = capa_sql(lake, "DESCRIBE raw.f2_public_orders_changelog")
    assert described.returncode == 0 and "_capa_position" in described.stdout


@pytest.mark.parametrize("broken", ["f2_public_badlog", "f2_public_nofile"])
def test_a_broken_table_fails_only_the_queries_that_name_it(lake: Path, broken: str) -> None:
    good = capa_sql(lake, "SELECT count(*) AS n FROM raw.f2_public_orders", "--json")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout) == {"n": 3}

    bad = capa_sql(lake, f"SELECT id FROM raw.{broken} WHERE id > 1")

    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr
    (line,) = bad.stderr.splitlines()
    assert f"table raw.{broken} cannot be read" in line and "repair or remove" in line
    joined = capa_sql(
        lake, f"SELECT * FROM raw.f2_public_orders o JOIN raw.{broken} b ON o.id = b.id"
    )
    assert joined.returncode == 1 and f"raw.{broken}" in joined.stderr


def test_the_python_api_is_sandboxed_too(lake: Path) -> None:
    warehouse = open_warehouse(f"local:{lake}")
    with pytest.raises(QueryRefused):
        list(warehouse.query("INSERT INTO raw.f2_public_orders (id) VALUES (?)", [9]))
    with pytest.raises(QueryRefused):
        list(warehouse.query("SELECT * FROM read_text(?)", ["/etc/passwd"]))
    assert [
        r["id"] for r in warehouse.query("SELECT id FROM raw.f2_public_orders WHERE id = ?", [2])
    ] == [2]
