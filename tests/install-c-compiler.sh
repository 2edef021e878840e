#!/usr/bin/env bash
# aws-lc-sys (the TLS and JWT crypto) compiles C while the workspace builds, so `cargo clippy`
# and `cargo test` need a C compiler. Installs gcc when none is present (as root with
# apt-get), otherwise says exactly what to install. Called by .ci/run (before clippy) and by
# tests/run.sh.
set -euo pipefail
if command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || command -v clang >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing a C compiler for aws-lc-sys: gcc libc6-dev"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null
else
  echo "no C compiler (aws-lc-sys needs one to build): sudo apt-get install -y gcc libc6-dev" >&2
  exit 1
fi
