#!/usr/bin/env bash
# node-redis for the Node.js publishing snippets of docs/PROTOCOL.md, which the end-to-end tests
# run (tests/tests/e2e/sentinel.rs). Installs Debian's nodejs and npm when missing (as root),
# then the pinned packages of tests/node/package-lock.json.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing programs; install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
if [ ! -d tests/node/node_modules/redis ]; then
  npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
fi
