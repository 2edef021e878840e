#!/bin/sh
# Creates a self-signed TLS certificate for nginx on first start, when none exists yet.
#
# docker-compose.yml mounts it into the nginx image's /docker-entrypoint.d/, which runs it
# before nginx starts. For a real certificate, put tls.crt (full chain) and tls.key into the
# nginx-certs volume (docs/OPERATIONS.md); this script then leaves them alone.
set -eu

dir=${TLS_DIR:-/etc/nginx/certs}
name=${TLS_COMMON_NAME:-localhost}

if [ -s "$dir/tls.crt" ] && [ -s "$dir/tls.key" ]; then
    exit 0
fi
if ! command -v openssl >/dev/null 2>&1; then
    echo "$0: openssl is missing, cannot create a certificate: put tls.crt and tls.key into $dir" >&2
    exit 1
fi
mkdir -p "$dir"
umask 077
openssl req -x509 -nodes -newkey rsa:2048 -sha256 -days 825 \
    -subj "/CN=$name" -addext "subjectAltName=DNS:$name" \
    -keyout "$dir/tls.key" -out "$dir/tls.crt" 2>/dev/null
chmod 0644 "$dir/tls.crt"
echo "$0: created a self-signed certificate for $name in $dir; replace it with a real one"
