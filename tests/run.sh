#!/usr/bin/env bash
# Runs the whole test suite: unit tests of every crate and the end-to-end tests against real
# redis-server and gateway processes. Installs what the tests need when it can (Debian, as root)
# and otherwise says exactly what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

# program -> Debian package that provides it
needed=(redis-server:redis-server openssl:openssl)
missing=()
for entry in "${needed[@]}"; do
  program=${entry%%:*} package=${entry#*:}
  command -v "$program" >/dev/null 2>&1 || [ -x "/usr/sbin/$program" ] || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing programs; install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

cargo test --workspace --locked "$@"
