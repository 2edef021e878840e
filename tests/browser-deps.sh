#!/usr/bin/env bash
# What every Chromium test needs, installed once: Node.js and npm (tests/node.sh), Debian's
# chromium (installed when missing, as root) and the packages of tests/browser, pinned by its
# package-lock.json: playwright-core (which never downloads a browser: it drives
# /usr/bin/chromium) and React's UMD builds. Used by the client's tests (tests/js.sh,
# tests/browser/*.test.js) and by the EventSource test of tests/tests/e2e/sse.rs
# (tests/browser/eventsource.mjs). tests/run.sh runs this once, before `cargo test`.
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
if [ ! -d tests/browser/node_modules/playwright-core ] || [ ! -d tests/browser/node_modules/react-dom ]; then
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi
