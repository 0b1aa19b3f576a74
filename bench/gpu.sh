#!/usr/bin/env bash
# The GPU check: conformance of the CUDA backend, then the SlopeLinear and
# decoder-layer tables against cuBLASLt dense bf16 (bench/cmd/gpubench).
#
#   bench/gpu.sh build   # here, with Go: test binaries and gpubench into .gpu/
#   bench/gpu.sh run     # on the GPU machine (no Go needed), from the repo root
#
# `run` sets SLOPE_REQUIRE_GPU=1, so a GPU test that cannot open the GPU
# fails instead of skipping. Output: bench/out/gpu.txt (and $OUT/gpu.txt
# when OUT is set). Environment: QUICK=1 (one shape per table),
# TABLES=linear,layer, SKIP_TESTS=1.
set -uo pipefail
cd "$(dirname "$0")/.."
bins=.gpu
pkgs=(cuda/driver cuda/kernels cuda/blaslt cuda/sparselt cuda)
case "${1:-}" in
build)
	set -e
	mkdir -p "$bins"
	for p in "${pkgs[@]}"; do
		CGO_ENABLED=0 go test -c -trimpath -ldflags="-s -w" -o "$bins/$(echo "$p" | tr / _).test" "./$p"
	done
	CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$bins/gpubench" ./bench/cmd/gpubench
	ls -la "$bins"
	;;
run)
	export SLOPE_REQUIRE_GPU=1
	mkdir -p bench/out
	log=bench/out/gpu.txt
	{
		echo "# bench/gpu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ)"
		nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1
		status=0
		if [[ "${SKIP_TESTS:-0}" != 1 ]]; then
			for p in "${pkgs[@]}"; do
				b="$bins/$(echo "$p" | tr / _).test"
				echo "## go test ./$p (GPU)"
				full="bench/out/gpu-$(echo "$p" | tr / _).log"
				timeout 300 "$b" -test.v -test.count=1 -test.timeout 280s >"$full" 2>&1
				rc=$?
				[[ -n "${OUT:-}" ]] && cp "$full" "$OUT/"
				grep -E -- '^(--- |PASS|FAIL|ok|panic)|NOT RUN|max \||relative|Δ|device:|rror' "$full" | head -150
				echo "## exit $rc"
				[[ $rc == 0 ]] || status=1
			done
		fi
		echo "## gpubench"
		timeout 420 "$bins/gpubench" -tables "${TABLES:-linear,layer}" $([[ "${QUICK:-0}" == 1 ]] && echo -quick) 2>&1
		rc=$?
		echo "## gpubench exit $rc"
		[[ $rc == 0 ]] || status=1
		echo "## status $status"
	} 2>&1 | tee "$log"
	[[ -n "${OUT:-}" ]] && cp "$log" "$OUT/gpu.txt"
	;;
*)
	echo "usage: bench/gpu.sh build|run" >&2
	exit 2
	;;
esac
