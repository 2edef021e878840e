#!/usr/bin/env bash
# Prints the minified and gzipped size of the client and of client + React hook, with a
# pinned esbuild (from npm) and gzip -9. The figures in README.md come from this script.
set -euo pipefail
cd "$(dirname "$0")/.."
esbuild=(npx --yes esbuild@0.28.2)
for entry in src/index.js src/react.js; do
  min=$("${esbuild[@]}" "$entry" --bundle --minify --format=esm --external:react --log-level=error)
  printf '%-14s minified %5d B, gzipped %5d B\n' "$entry" "$(printf '%s' "$min" | wc -c)" "$(printf '%s' "$min" | gzip -9 | wc -c)"
done
