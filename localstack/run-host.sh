#!/usr/bin/env bash
# LocalStack (S3 only) run directly on this host, for machines without Docker.
#
#   localstack/run-host.sh           install if needed, serve on 127.0.0.1:${PORT:-4566}, create bucket "lake"
#   localstack/run-host.sh install   only install (virtualenv, packages, certificate); idempotent
#   localstack/run-host.sh serve     only serve (what the test suite runs; nothing installed, no bucket)
#
# Environment: LOCALSTACK_VENV (default localstack/.venv: LocalStack's pins clash with lakesink's, so it
# gets a virtualenv of its own), PORT (4566), LOCALSTACK_BUCKET (lake; empty for none), PYTHON (python3),
# FILESYSTEM_ROOT (LocalStack's state and temp files; default $LOCALSTACK_VENV/filesystem).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# 4.13.0, the release the project's issue names (4.14.0 is the last free one: from 2026.3.0 on, LocalStack
# needs an auth token, and localstack-core on PyPI no longer holds a runtime that starts).
LOCALSTACK_VERSION=4.13.0
venv=${LOCALSTACK_VENV:-$here/.venv}
port=${PORT:-4566}
bucket=${LOCALSTACK_BUCKET-lake}
python=${PYTHON:-python3}
cert=$venv/localstack-cert.pem
marker=$venv/.installed-localstack-core-$LOCALSTACK_VERSION

install() {
    if [ -f "$marker" ] && [ -s "$cert" ]; then
        return
    fi
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --upgrade pip
    fi
    # This release imports cbor2's private modules (cbor2._decoder), which cbor2 6 no longer has;
    # without service_identity, twisted warns at start and skips TLS hostname checks.
    "$venv/bin/pip" install --quiet "localstack-core[runtime]==$LOCALSTACK_VERSION" 'cbor2<6' service_identity
    if [ ! -s "$cert" ]; then
        # LocalStack serves HTTP and HTTPS on one port and otherwise downloads a certificate at start:
        # a self-signed one (key and certificate in one PEM file, as CUSTOM_SSL_CERT_PATH wants) keeps it offline.
        # The venv's Python has `cryptography` (a LocalStack dependency), so openssl is not needed.
        "$venv/bin/python" - "$cert" <<'EOF'
import datetime
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost.localstack.cloud")])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (
    x509.CertificateBuilder()
    .subject_name(name)
    .issuer_name(name)
    .public_key(key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(days=1))
    .not_valid_after(now + datetime.timedelta(days=3650))
    .add_extension(
        x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.DNSName("localhost.localstack.cloud"),
                                     x509.DNSName("*.localhost.localstack.cloud")]),
        critical=False,
    )
    .sign(key, hashes.SHA256())
)
with open(sys.argv[1], "wb") as out:
    out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    out.write(cert.public_bytes(serialization.Encoding.PEM))
EOF
    fi
    touch "$marker"
}

create_bucket_when_ready() {
    # In the background: poll the health endpoint, then create the bucket with the venv's boto3.
    "$venv/bin/python" - "$port" "$bucket" <<'EOF' &
import json
import sys
import time
import urllib.request

import boto3

port, bucket = sys.argv[1], sys.argv[2]
endpoint = f"http://127.0.0.1:{port}"
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(f"{endpoint}/_localstack/health", timeout=2) as answer:
            if json.load(answer)["services"].get("s3") in ("available", "running"):
                break
    except (OSError, ValueError, KeyError):
        pass
    time.sleep(0.5)
else:
    sys.exit(f"LocalStack did not become ready on {endpoint}; bucket {bucket} not created")
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
try:
    s3.create_bucket(Bucket=bucket)
except s3.exceptions.BucketAlreadyOwnedByYou:
    pass
print(f"bucket s3://{bucket} ready at {endpoint}", file=sys.stderr)
EOF
}

serve() {
    if [ ! -x "$venv/bin/python" ] || [ ! -s "$cert" ]; then
        echo "LocalStack is not installed in $venv: run $0 install" >&2
        exit 1
    fi
    export FILESYSTEM_ROOT=${FILESYSTEM_ROOT:-$venv/filesystem}
    # hypercorn binds only GATEWAY_LISTEN (the default twisted server listens on every interface);
    # DNS_ADDRESS=0 turns off LocalStack's DNS server (port 53), DISABLE_EVENTS=1 its usage reports.
    # OVERRIDE_IN_DOCKER=0: inside any container (a /.dockerenv file) LocalStack would take itself for its
    # own image and use /var/lib/localstack, /etc/localstack and $TMPDIR/localstack (emptied at start,
    # so two servers would share and wipe it) instead of FILESYSTEM_ROOT.
    env CUSTOM_SSL_CERT_PATH="$cert" SKIP_SSL_CERT_DOWNLOAD=1 \
        GATEWAY_SERVER=hypercorn GATEWAY_LISTEN="127.0.0.1:$port" \
        SERVICES=s3 DNS_ADDRESS=0 DISABLE_EVENTS=1 OVERRIDE_IN_DOCKER=0 \
        "$venv/bin/python" -m localstack.runtime.main &
    server=$!
    trap stop_server INT TERM
    # A trapped signal interrupts `wait`; wait again until the server is really gone.
    status=0
    while kill -0 "$server" 2>/dev/null; do
        wait "$server" || status=$?
    done
    exit "$status"
}

stop_server() {
    kill -TERM "$server" 2>/dev/null || true
    # LocalStack 4.13 on hypercorn often stays up after its shutdown has run (its event loop is told to
    # stop from another thread and never woken), so it gets 5 s and is then killed: it keeps no state.
    for _ in $(seq 50); do
        kill -0 "$server" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$server" 2>/dev/null || true
}

case "${1:-run}" in
    install) install ;;
    serve) serve ;;
    run)
        install
        if [ -n "$bucket" ]; then
            create_bucket_when_ready
        fi
        serve
        ;;
    *)
        echo "usage: $0 [run|install|serve]" >&2
        exit 2
        ;;
esac
