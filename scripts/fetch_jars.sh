#!/usr/bin/env bash
# Fetch JVM artifacts from Maven Central (idempotent). Each scripts/jars/<name>.pom lists one
# component's dependencies; its runtime closure is copied into .cache/jars/<name>/.
# Usage: scripts/fetch_jars.sh [name ...]   (default: every pom)
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "capa fetch_jars: error: $*" >&2; exit 1; }
command -v mvn >/dev/null || die "mvn not found; install Maven (apt-get install maven)"
command -v java >/dev/null || die "java not found; install a JDK 17 (apt-get install openjdk-17-jdk-headless)"
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for pom in scripts/jars/*.pom; do [ -e "$pom" ] && names+=("$(basename "$pom" .pom)"); done
fi
mkdir -p .cache/jars
for name in "${names[@]}"; do
  pom="scripts/jars/$name.pom"; out=".cache/jars/$name"; stamp="$out/.capa-pom.sha"
  [ -f "$pom" ] || die "no $pom"
  want=$(sha256sum "$pom" | cut -d' ' -f1)
  exec 8>".cache/jars/.$name.lock"; flock 8
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then flock -u 8; continue; fi
  echo "==> fetching $name jars from Maven Central" >&2
  rm -rf "$out"; mkdir -p "$out"
  mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$PWD/$out" \
    || die "Maven could not fetch the $name jars (is Maven Central reachable? rerun to retry)"
  echo "$want" > "$stamp"
  flock -u 8
done
