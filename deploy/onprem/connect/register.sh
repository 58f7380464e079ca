#!/bin/sh
# Registers (or updates) every connector config in this directory with the Kafka Connect
# REST API; idempotent (PUT /connectors/<name>/config). The file name is the connector name.
# Usage: register.sh [CONNECT_URL]   (default http://connect:8083)
set -eu
url=${1:-http://connect:8083}
dir=$(dirname "$0")
until curl -fsS "$url/connectors" >/dev/null; do echo "waiting for $url"; sleep 3; done
for config in "$dir"/*.json; do
  name=$(basename "$config" .json)
  echo "registering $name"
  curl -fsS -X PUT -H 'Content-Type: application/json' --data @"$config" \
    "$url/connectors/$name/config" >/dev/null
done
