#!/usr/bin/env bash
# Make bqemulator (DuckDB-backed) start offline: copy the DuckDB extensions it loads
# (spatial, avro) from the installed PyPI wheels into DuckDB's extension directory.
# Idempotent. Usage: scripts/setup_bqemulator.sh [PYTHON]  (default .venvs/beam/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venvs/beam/bin/python}
"$PY" - <<'PY'
import importlib, pathlib, shutil
import duckdb
version = "v" + duckdb.__version__
dest = pathlib.Path.home() / ".duckdb" / "extensions" / version / "linux_amd64"
dest.mkdir(parents=True, exist_ok=True)
for name in ("spatial", "avro"):
    package = pathlib.Path(importlib.import_module(f"duckdb_extension_{name}").__file__).parent
    source = package / "extensions" / version / f"{name}.duckdb_extension"
    if not source.is_file():
        raise SystemExit(f"setup_bqemulator: {source} missing; install duckdb-extension-{name}=={duckdb.__version__}")
    target = dest / source.name
    if not target.exists() or target.stat().st_size != source.stat().st_size:
        shutil.copyfile(source, target)
PY
