#!/usr/bin/env bash
# Print the path of a Terraform-compatible CLI (terraform or OpenTofu) for the offline checks
# of deploy/gcp (fmt -check; see tests/integration/test_terraform_fmt.py), installing one if
# needed. Order: $CAPA_TERRAFORM, terraform or tofu on PATH, the cached build in
# .cache/tofu/bin/tofu, else build OpenTofu from the Go module proxy into that cache
# (needs Go; a one-time build of several minutes on 2 cores).
# The google provider cannot be downloaded here, so `init`/`validate`/`plan` are not run.
# Usage: scripts/setup_terraform.sh            -> prints the binary path on stdout
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOFU_VERSION=${CAPA_TOFU_VERSION:-v1.10.6}
CACHE="$ROOT/.cache/tofu"
BIN="$CACHE/bin/tofu"

die() { echo "setup_terraform: error: $*" >&2; exit 1; }

works() { "$1" version >/dev/null 2>&1; }

found() {
  if [ -n "${CAPA_TERRAFORM:-}" ]; then
    works "$CAPA_TERRAFORM" || die "CAPA_TERRAFORM=$CAPA_TERRAFORM does not run '$CAPA_TERRAFORM version'"
    echo "$CAPA_TERRAFORM"; return 0
  fi
  local name path
  for name in terraform tofu; do
    path=$(command -v "$name" 2>/dev/null) && works "$path" && { echo "$path"; return 0; }
  done
  [ -x "$BIN" ] && works "$BIN" && { echo "$BIN"; return 0; }
  return 1
}

build_tofu() {
  command -v go >/dev/null 2>&1 || die "no terraform/tofu on PATH and no Go to build OpenTofu; install Go or set CAPA_TERRAFORM"
  mkdir -p "$CACHE/bin"
  exec 9>"$CACHE/.lock"; flock 9
  [ -x "$BIN" ] && return 0
  echo "==> building OpenTofu $TOFU_VERSION from the Go module proxy (one time, cached in $CACHE)" >&2
  # `go install pkg@version` refuses modules with replace directives (OpenTofu has some), so
  # download the module and build it as the main module.
  local dir
  dir=$(go mod download -json "github.com/opentofu/opentofu@$TOFU_VERSION" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') \
    || die "go mod download github.com/opentofu/opentofu@$TOFU_VERSION failed (Go module proxy reachable?)"
  (cd "$dir" && CGO_ENABLED=0 go build -trimpath -o "$BIN.tmp" ./cmd/tofu) || die "building OpenTofu failed"
  mv "$BIN.tmp" "$BIN"
}

if ! found; then
  build_tofu
  found || die "built $BIN but it does not run"
fi
