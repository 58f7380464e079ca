"""deploy/gcp through a real Terraform-compatible CLI (terraform or OpenTofu), offline.

``scripts/setup_terraform.sh`` finds (or builds into .cache/tofu) the binary. Only ``fmt``
runs: it parses every file with the real HCL parser and checks canonical formatting.
``init``/``validate``/``plan`` need the google provider from the Terraform registry, which
this machine cannot reach (docs/emulated.md says so).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TF_DIR = ROOT / "deploy" / "gcp"


@pytest.fixture(scope="session")
def terraform() -> str:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup_terraform.sh")],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert result.returncode == 0, f"setup_terraform.sh failed:\n{result.stderr}"
    return result.stdout.strip().splitlines()[-1]


def run(terraform: str, *args: str, cwd: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    rc_file = tmp_path / "terraformrc"
    rc_file.touch()
    env = dict(
        os.environ, TF_CLI_CONFIG_FILE=str(rc_file), TF_IN_AUTOMATION="1", CHECKPOINT_DISABLE="1"
    )
    return subprocess.run(
        [terraform, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_deploy_gcp_is_parsed_and_formatted(terraform: str, tmp_path: Path) -> None:
    result = run(
        terraform,
        "fmt",
        "-check",
        "-recursive",
        "-diff",
        "-no-color",
        str(TF_DIR),
        cwd=ROOT,
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, f"terraform fmt -check failed:\n{result.stdout}\n{result.stderr}"


def test_tfvars_example_is_formatted(terraform: str, tmp_path: Path) -> None:
    copy = tmp_path / "example.tfvars"
    shutil.copy(TF_DIR / "terraform.tfvars.example", copy)
    result = run(
        terraform, "fmt", "-check", "-diff", "-no-color", str(copy), cwd=tmp_path, tmp_path=tmp_path
    )
    assert result.returncode == 0, f"terraform.tfvars.example is not formatted:\n{result.stdout}"


def test_the_check_catches_bad_formatting_and_bad_syntax(terraform: str, tmp_path: Path) -> None:
    work = tmp_path / "tf"
    work.mkdir()
    original = (TF_DIR / "bigquery.tf").read_text()
    (work / "misaligned.tf").write_text(
        original.replace('  dataset_id    = "raw"', 'dataset_id = "raw"')
    )
    result = run(
        terraform, "fmt", "-check", "-no-color", str(work), cwd=tmp_path, tmp_path=tmp_path
    )
    assert result.returncode != 0 and "misaligned.tf" in result.stdout
    (work / "misaligned.tf").unlink()
    (work / "broken.tf").write_text(
        original.replace(
            'resource "google_bigquery_dataset" "raw" {',
            'resource "google_bigquery_dataset" "raw" {{',
        )
    )
    result = run(
        terraform, "fmt", "-check", "-no-color", str(work), cwd=tmp_path, tmp_path=tmp_path
    )
    assert result.returncode != 0 and "Error" in result.stderr
