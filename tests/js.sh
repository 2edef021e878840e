#!/usr/bin/env bash
# The JavaScript side: unit tests of the browser client (clients/js, node's test runner, fake
# clock and sockets), then the Chromium tests (tests/browser) against real gateway processes
# and redis-server. Installs Debian's chromium when missing (as root) and playwright-core,
# pinned by tests/browser/package-lock.json. Needs the gateway-e2e binary that
# `cargo test -p e2e` builds (tests/run.sh runs this after cargo test), or GATEWAY_BIN.
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
  # playwright-core never downloads a browser: it drives Debian's. React (UMD builds) for the
  # page that uses the hook.
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi

node --test clients/js/test/client.test.js
node --test tests/browser/client.test.js
