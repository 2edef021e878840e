#!/usr/bin/env bash
# The Python client's tests (clients/python): builds the gateway and notify binaries, makes a
# virtualenv under target/ with pinned packages, installs the package from its folder (as a
# user would, so a file missing from the package fails here) and runs pytest against real
# redis-server and gateway processes. Called by tests/run.sh after the cargo tests.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/python-client-venv
# Pinned so CI is repeatable. channels: the test project keeps calling
# channels.layers.get_channel_layer(), as migrated code does; websockets: the browser stand-in;
# ruff and mypy: the package's fmt/clippy (style, and its type hints hold, as py.typed promises).
packages=(redis==8.1.0 pytest==9.2.0 Django==5.2.19 channels==4.3.2 websockets==17.4
  ruff==0.17.6 mypy==2.4.1)

if ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: python3-venv"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  else
    echo "python3 cannot make virtualenvs; install it with: sudo apt-get install -y python3-venv" >&2
    exit 1
  fi
fi

cargo build --locked -q -p e2e --bin gateway-e2e --bin notify-e2e

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${packages[@]}"
# setuptools builds in the source folder: start clean so no deleted module is packaged.
rm -rf clients/python/build clients/python/src/*.egg-info
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps ./clients/python

cd clients/python
../../"$venv"/bin/ruff format --check --quiet src tests
../../"$venv"/bin/ruff check --quiet src tests
../../"$venv"/bin/mypy src/notification_gateway
exec ../../"$venv"/bin/python -m pytest -q -p no:cacheprovider tests "$@"
