"""Build the code archive the Dataproc Serverless batches import: ``capa_spark.zip``.

It holds the ``capa`` and ``spark_jobs`` packages (Python files, the Avro schema and the
model SQL files), laid out so that the zip on ``python_file_uris`` is importable. The
archive is deterministic (sorted entries, fixed timestamps): the same tree gives the same
bytes, so ``terraform plan`` only shows a change when the code changed.

Run: ``python deploy/dataproc/package.py [--out .cache/deploy/capa_spark.zip]``
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("capa", "spark_jobs")
SUFFIXES = (".py", ".sql", ".avsc")
DEFAULT_OUT = ROOT / ".cache" / "deploy" / "capa_spark.zip"
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)


def iter_sources(root: Path = ROOT) -> Iterator[Path]:
    """The files that go into the archive, sorted, relative to ``root``."""
    for package in PACKAGES:
        base = root / package
        if not (base / "__init__.py").is_file():
            raise FileNotFoundError(f"{base}/__init__.py is missing: run from a capa checkout")
        for path in sorted(base.rglob("*")):
            if path.is_file() and path.suffix in SUFFIXES and "__pycache__" not in path.parts:
                yield path.relative_to(root)


def build(out: Path = DEFAULT_OUT, root: Path = ROOT) -> list[str]:
    """Write the archive to ``out``; return the archived names."""
    out.parent.mkdir(parents=True, exist_ok=True)
    names = []
    tmp = out.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for rel in iter_sources(root):
            info = zipfile.ZipInfo(rel.as_posix(), date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, (root / rel).read_bytes())
            names.append(rel.as_posix())
    tmp.replace(out)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="archive path")
    args = parser.parse_args(argv)
    names = build(args.out)
    print(f"wrote {args.out} ({len(names)} files)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
