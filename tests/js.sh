#!/usr/bin/env bash
# The JavaScript side: unit tests of the browser client (clients/js, node's test runner, fake
# clock and sockets), then the Chromium tests (tests/browser) against real gateway processes
# and redis-server. Installs what they need with tests/browser-deps.sh (Debian's chromium,
# playwright-core pinned by tests/browser/package-lock.json) unless the caller already did
# (tests/run.sh sets BROWSER_DEPS_READY=1). Needs the gateway-e2e binary that
# `cargo test -p e2e` builds (tests/run.sh runs this after cargo test), or GATEWAY_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${BROWSER_DEPS_READY:-}" != 1 ]; then
  ./tests/browser-deps.sh
fi

node --test clients/js/test/client.test.js
node --test tests/browser/client.test.js
