#!/usr/bin/env bash
# Container benchmarks: write and read throughput against a plain copy of
# the same bytes, open-to-first-tensor latency, and the size of OPT-125m
# shaped 2:4 bf16 linears against dense bf16. Output: bench/out/format.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/out
go test ./format/ -run '^$' -bench 'Write|Read|OpenToFirstTensor|OPT125m' -benchtime "${BENCHTIME:-2s}" -count "${COUNT:-3}" | tee bench/out/format.txt
