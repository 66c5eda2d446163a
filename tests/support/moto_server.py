"""A real moto S3 server on a free loopback port, in its own process (delta-rs's Rust client and
pyarrow talk HTTP to it; `mock_aws` would be invisible to them)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MotoServer:
    endpoint: str
    process: subprocess.Popen[bytes]

    def storage_options(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing-secret",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }

    def env(self) -> dict[str, str]:
        """The environment for a `lakesink` subprocess that should use this server."""
        return {**os.environ, **self.storage_options()}

    def client(self) -> Any:
        """A boto3 S3 client for this server (for setup and checks; lakesink itself never uses boto3)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing-secret",
            region_name="us-east-1",
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def reset(self) -> None:
        """Forget every bucket and object (moto's reset endpoint)."""
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST"), timeout=10).read()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto_server(*, attempts: int = 5, environment: dict[str, str] | None = None) -> MotoServer:
    """Start `moto_server` on a free 127.0.0.1 port and wait until it answers.

    `environment` adds to the server's environment (e.g. INITIAL_NO_AUTH_ACTION_COUNT to make it
    check credentials).
    """
    for _ in range(attempts):
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **(environment or {})},
        )
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).read()
                return MotoServer(endpoint=endpoint, process=process)
            except OSError:
                time.sleep(0.1)
        process.kill()  # the port was taken between choosing and binding: try another
    raise RuntimeError("moto server did not start")
