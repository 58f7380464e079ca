"""Settings of the DAGs: Airflow Variables read at run time through templates, else env, else
defaults; and the profile, a parse-time choice (env only).

The profile is read from the environment (``CAPA__DAGS__PROFILE``: ``local`` | ``onprem`` |
``gcp``, default ``local``), not from an Airflow Variable: the operator classes depend on it, so
it is needed while the file is parsed, and Airflow advises against Variable reads at parse time
(one metadata-database query per parse). Composer gets it from ``deploy/composer/environment.json``.
"""

from __future__ import annotations

from pathlib import Path

from capa.config import env_setting

REPO = Path(__file__).resolve().parents[2]
PROFILE_ENV = "CAPA__DAGS__PROFILE"


def setting(name: str, default: str) -> str:
    """Jinja: Airflow Variable ``capa_<name>``, else env ``CAPA__DAGS__<NAME>`` (the older
    ``CAPA_<NAME>`` still works, deprecated), else ``default``."""
    env = f"CAPA__DAGS__{name.upper()}"
    fallback = env_setting(env, default, deprecated=f"CAPA_{name.upper()}").replace("'", "")
    return "{{ var.value.get('capa_" + name + "', '" + fallback + "') }}"


def profile_name() -> str:
    """The deployment profile of the DAGs (``CAPA__DAGS__PROFILE``, default ``local``)."""
    return env_setting(PROFILE_ENV, "local")


def required_env(name: str) -> str:
    """A setting a profile cannot run without (Composer gets them from deploy/gcp/composer.tf)."""
    value = env_setting(name, "")
    if not value:
        raise ValueError(
            f"env {name} is empty: the {profile_name()!r} DAG profile needs it; on Composer "
            "deploy/gcp/composer.tf sets it, elsewhere export it or use CAPA__DAGS__PROFILE=local"
        )
    return value


LAKEHOUSE = setting("lakehouse", str(REPO / ".state" / "lakehouse"))
SPARK_PYTHON = setting("spark_python", str(REPO / ".venvs" / "spark" / "bin" / "python"))
FRESHNESS_MINUTES = setting("freshness_minutes", "60")
BEAM_PYTHON = env_setting(
    "CAPA__DAGS__BEAM_PYTHON",
    str(REPO / ".venvs" / "beam" / "bin" / "python"),
    deprecated="CAPA_BEAM_PYTHON",
)
STATE_DIR = env_setting("CAPA__STATE_DIR", str(REPO / ".state"), deprecated="CAPA_STATE_DIR")
