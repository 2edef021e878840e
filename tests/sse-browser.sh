#!/usr/bin/env bash
# What the Chromium EventSource test (tests/tests/e2e/sse.rs) needs: Debian's chromium
# (installed when missing, as root) and playwright-core, pinned by
# tests/sse-browser/package-lock.json. playwright-core never downloads a browser: it drives
# /usr/bin/chromium. tests/run.sh runs this before `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

./tests/node.sh # node and npm

if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: chromium"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "chromium is missing; install it with: sudo apt-get install -y chromium" >&2
    exit 1
  fi
fi
if [ ! -d tests/sse-browser/node_modules/playwright-core ]; then
  npm ci --prefix tests/sse-browser --no-audit --no-fund --loglevel=error
fi
