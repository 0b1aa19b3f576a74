#!/usr/bin/env bash
# Runs the container reader's fuzz target for a while (CI runs only its seeds).
# Usage: bench/fuzz.sh [duration, default 5m]
set -euo pipefail
cd "$(dirname "$0")/.."
go test ./format/ -run '^$' -fuzz '^FuzzParse$' -fuzztime "${1:-5m}"
