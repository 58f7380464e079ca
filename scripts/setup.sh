#!/usr/bin/env bash
# capa setup: installs everything the project needs on a fresh machine (idempotent).
#   - uv (from PyPI) and three Python environments from pinned lock files:
#       .venvs/beam    capa CLI, connectors, Beam jobs, tests
#       .venvs/spark   Spark SQL consumption models
#       .venvs/spark35 the Spark models' BigQuery mode on Spark 3.5 (tests against bqemulator)
#       .venvs/airflow Airflow DAGs (Beam/Spark run as subprocesses of their own envs)
#   - PostgreSQL 15 from Debian packages when missing
#   - prometheus/promtool and chromium from Debian packages (observability tests), service not started
#   - JVM jars from Maven Central (Kafka broker, Spark packages) via scripts/fetch_jars.sh
# Usage: scripts/setup.sh [beam|spark|spark35|airflow|jars|postgres|observe|all] ...
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${CAPA_PYTHON:-python3.11}

die() { echo "capa setup: error: $*" >&2; exit 1; }
step() { echo "==> $*" >&2; }

ensure_uv() {
  command -v uv >/dev/null 2>&1 && return
  [ -x "$HOME/.local/bin/uv" ] && { export PATH="$HOME/.local/bin:$PATH"; return; }
  command -v "$PY" >/dev/null 2>&1 || die "$PY not found; install Python 3.11 or set CAPA_PYTHON"
  step "installing uv from PyPI"
  "$PY" -m pip install --quiet --user uv 2>/dev/null || "$PY" -m pip install --quiet uv \
    || die "could not install uv from PyPI (is the package index reachable?)"
  export PATH="$HOME/.local/bin:$PATH"
}

make_env() {  # make_env NAME (serialised with flock: parallel callers wait, then see the stamp)
  mkdir -p .venvs
  exec 9>".venvs/.$1.lock"; flock 9
  _make_env "$@"
  if [ "$1" = beam ]; then _make_native "$1"; fi
  flock -u 9
}

_make_native() {  # the Rust extension capa_native (native/) into .venvs/NAME; rebuilt when native/ changes
  local env=".venvs/$1" stamp=".venvs/$1/.capa-native.sha" want
  want=$(cd native && find . -path ./target -prune -o -type f -print | LC_ALL=C sort | xargs sha256sum \
    | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  command -v cargo >/dev/null 2>&1 || export PATH="$HOME/.cargo/bin:$PATH"
  command -v cargo >/dev/null 2>&1 \
    || die "cargo not found: the native decoder (native/, Rust + PyO3) needs a Rust toolchain (rustup)"
  step "building the native decoder (native/, Rust) into $env"
  # maturin comes from PyPI through build isolation; the crates from crates.io (native/Cargo.lock)
  uv pip install --quiet --python "$env/bin/python" --reinstall-package capa-native ./native \
    || die "building native/ (capa_native) failed; see the cargo output above"
  echo "$want" > "$stamp"
}

_make_env() {
  local name=$1 env=".venvs/$1" lock="requirements/$1.lock" stamp
  stamp="$env/.capa-lock.sha"
  local want; want=$( (cat "$lock" pyproject.toml; echo "bytecode-1") | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  step "creating the $name environment ($env)"
  [ -x "$env/bin/python" ] || uv venv --quiet --python "$PY" "$env" || die "uv venv $env failed"
  uv pip install --quiet --python "$env/bin/python" -r "$lock" \
    || die "installing $lock failed (PyPI reachable? see the uv output above)"
  uv pip install --quiet --python "$env/bin/python" --no-deps -e . || die "installing capa into $env failed"
  # .pyc files written once here. Where PYTHONDONTWRITEBYTECODE is set (as in this project's CI
  # sessions) Python never writes them itself, and every process start compiled Beam, Airflow
  # and friends from source again: measured 6-9 s of each streaming job's start-up. (A few
  # packages ship files that do not compile, e.g. templates; compileall reports them: ignored.)
  "$env/bin/python" -m compileall -q -j 0 "$env/lib" >/dev/null 2>&1 || true
  echo "$want" > "$stamp"
}

ensure_postgres() {
  [ -x /usr/lib/postgresql/15/bin/initdb ] && return
  step "installing PostgreSQL 15 from Debian packages"
  command -v apt-get >/dev/null || die "PostgreSQL 15 missing and apt-get not available; install postgresql-15"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq postgresql-15 >/dev/null \
    || die "apt-get install postgresql-15 failed"
}

ensure_observe() {  # prometheus + promtool (alert rule tests) and chromium (status page test)
  command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v chromium >/dev/null && return
  step "installing prometheus and chromium from Debian packages"
  command -v apt-get >/dev/null || die "prometheus/chromium missing and apt-get not available; install them"
  export DEBIAN_FRONTEND=noninteractive
  # The package enables a prometheus service listening on :9090; capa's tests start their
  # own processes, so keep the package's service from starting (policy-rc.d exit 101 = deny).
  local policy=/usr/sbin/policy-rc.d own_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
  fi
  local rc=0
  { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends prometheus chromium >/dev/null; } || rc=$?
  [ -n "$own_policy" ] && rm -f "$policy"
  [ $rc -eq 0 ] || die "apt-get install prometheus chromium failed"
}

ensure_java() {
  command -v java >/dev/null || die "java not found; install a JDK 17 (apt-get install openjdk-17-jdk-headless)"
  command -v mvn >/dev/null || die "mvn not found; install Maven (apt-get install maven)"
}

targets=("$@"); [ ${#targets[@]} -eq 0 ] && targets=(all)
for t in "${targets[@]}"; do
  case $t in
    beam|spark|spark35|airflow) ensure_uv; make_env "$t" ;;
    jars) ensure_java; bash scripts/fetch_jars.sh ;;
    postgres) ensure_postgres ;;
    observe) ensure_observe ;;
    all) ensure_uv; ensure_postgres; ensure_observe; ensure_java
         for e in beam spark spark35 airflow; do make_env "$e"; done
         bash scripts/fetch_jars.sh ;;
    *) die "unknown setup target '$t' (beam|spark|spark35|airflow|jars|postgres|observe|all)" ;;
  esac
done
