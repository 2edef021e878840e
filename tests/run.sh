#!/usr/bin/env bash
# Runs the whole test suite: unit tests of every crate and the end-to-end tests against real
# redis-server, nginx and gateway processes, plus the checks of the deploy files. Installs what
# the tests need when it can (Debian packages as root, Python packages with pip) and otherwise
# says exactly what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

# aws-lc-sys (TLS, JWT crypto) compiles C during the build.
./tests/install-c-compiler.sh

# The flood test (hostile::a_flood_of_failed_handshakes_and_half_open_connections_leaves_no_trace)
# holds about 2,000 sockets across the test process and its gateway, and load tests more:
# raise the open-file limit towards the hard limit (at most 20,000), and say what it is.
hard_nofile=$(ulimit -Hn)
wanted_nofile=20000
if [ "$hard_nofile" != unlimited ] && [ "$hard_nofile" -lt "$wanted_nofile" ]; then
  wanted_nofile=$hard_nofile
fi
if [ "$(ulimit -Sn)" -lt "$wanted_nofile" ]; then
  ulimit -Sn "$wanted_nofile"
fi
echo "open-file limit for the tests: $(ulimit -Sn) (hard limit $hard_nofile)"

# Tests that need privileges this machine may lack are skipped here, loudly, with the
# reason, rather than passing without running. The mount-namespace check of the nginx
# config compose mounts needs CAP_SYS_ADMIN (root in CI).
skipped=()
skip_args=()
if ! unshare --mount --fork true >/dev/null 2>&1; then
  skipped+=("deploy::nginx_accepts_the_exact_config_compose_mounts: needs CAP_SYS_ADMIN to create a mount namespace (run as root)")
  skip_args+=(--skip deploy::nginx_accepts_the_exact_config_compose_mounts)
fi
report_skipped() {
  for reason in "${skipped[@]}"; do
    echo "SKIPPED $reason" >&2
  done
}
report_skipped

# program -> Debian package that provides it
needed=(
  redis-server:redis-server
  redis-cli:redis-tools
  nginx:nginx
  openssl:openssl
  curl:curl
  python3:python3
  systemd-analyze:systemd
  unshare:util-linux
)
missing=()
for entry in "${needed[@]}"; do
  program=${entry%%:*} package=${entry#*:}
  command -v "$program" >/dev/null 2>&1 || [ -x "/usr/sbin/$program" ] || missing+=("$package")
done
if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
  missing+=(python3-pip)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Installing nginx must not start it as a system service on ports 80/443: the tests run
    # their own nginx. policy-rc.d answering 101 tells the package scripts not to start it.
    remove_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
      chmod 0755 /usr/sbin/policy-rc.d
      remove_policy=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ -z "$remove_policy" ] || rm -f /usr/sbin/policy-rc.d
  else
    echo "missing programs; install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

# Python packages for the cross-language test (redis-py runs the README snippet) and the
# deploy checks (YAML parsing, Compose schema, Kubernetes schemas). Pinned so CI is repeatable.
python_packages=(redis==8.1.0 PyYAML==6.0.3 jsonschema==4.26.0 kubernetes-validate==1.37.0)
if ! python3 -c "import redis, yaml, jsonschema, kubernetes_validate" 2>/dev/null; then
  echo "installing Python packages: ${python_packages[*]}"
  # Debian's own python3 refuses pip installs outside a venv (PEP 668) unless told otherwise.
  python3 -m pip install --quiet --disable-pip-version-check "${python_packages[@]}" 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "${python_packages[@]}"
fi

# node-redis for the Node.js snippets of docs/PROTOCOL.md that the end-to-end tests run.
./tests/node.sh
# Chromium and playwright-core for the EventSource test of tests/tests/e2e/sse.rs.
./tests/sse-browser.sh

# The skip filters go to the test binaries, after a `--` (added unless the caller gave one).
test_args=("$@")
if [ ${#skip_args[@]} -gt 0 ]; then
  case " $* " in
    *" -- "*) test_args+=("${skip_args[@]}") ;;
    *) test_args+=(-- "${skip_args[@]}") ;;
  esac
fi
cargo test --workspace --locked "${test_args[@]}"

# The browser client's unit tests and the Chromium tests (uses the gateway-e2e binary just built).
./tests/js.sh

# The Python client (clients/python) in a virtualenv of its own.
./tests/python.sh

# Said again at the end, where it is seen.
report_skipped
