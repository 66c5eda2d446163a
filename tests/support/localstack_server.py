"""A real LocalStack (S3 only) on a free loopback port, in its own process, as a drop-in for the moto
server: `LAKESINK_TEST_S3=localstack` makes the session's `moto_server` fixture start this instead.

LocalStack runs from its own virtualenv (its pins clash with lakesink's), installed by
`localstack/run-host.sh install`; this module starts it with `localstack/run-host.sh serve`, so the
server's settings (hypercorn on 127.0.0.1 only, S3 only, offline certificate) live in one place.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.support.moto_server import MotoServer, free_port

REPO = Path(__file__).resolve().parents[2]
RUN_HOST = REPO / "localstack" / "run-host.sh"


def localstack_venv() -> Path:
    """The virtualenv LocalStack is installed in (`LOCALSTACK_VENV`, default localstack/.venv)."""
    return Path(os.environ.get("LOCALSTACK_VENV") or REPO / "localstack" / ".venv")


@dataclass(frozen=True)
class LocalStackServer(MotoServer):
    """The `MotoServer` interface (endpoint, process, storage_options(), env(), client(), create_bucket(),
    reset(), stop()) over LocalStack; `process` is run-host.sh, which leads its own process group."""

    workdir: Path

    def reset(self) -> None:
        """Forget every bucket and object: LocalStack's free edition has no reset endpoint
        (POST /_localstack/state/reset answers 404), so everything is deleted through the S3 API."""
        s3 = self.client()
        for bucket in s3.list_buckets()["Buckets"]:
            name = bucket["Name"]
            for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=name):
                for upload in page.get("Uploads", []):
                    s3.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
            for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
                versions = page.get("Versions", []) + page.get("DeleteMarkers", [])
                doomed = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in versions]
                if doomed:
                    s3.delete_objects(Bucket=name, Delete={"Objects": doomed, "Quiet": True})
            s3.delete_bucket(Bucket=name)

    def stop(self) -> None:
        """Stop the server (run-host.sh kills LocalStack if its own shutdown hangs) and remove its files."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _s3_ready(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/_localstack/health", timeout=2) as answer:
            return json.load(answer).get("services", {}).get("s3") in ("available", "running")
    except (OSError, ValueError):
        return False


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_localstack_server(*, attempts: int = 3, startup_timeout: float = 90) -> LocalStackServer:
    """Start LocalStack (S3 only) on a free 127.0.0.1 port with fresh state and temp directories, and return
    once S3 answers a request. Raises RuntimeError, with the server's log, if it is not installed or does not
    start."""
    venv = localstack_venv()
    if not (venv / "bin" / "python").exists():
        raise RuntimeError(f"LocalStack is not installed in {venv}: run `bash localstack/run-host.sh install` first")
    last_log = ""
    for _ in range(attempts):
        port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix="lakesink-localstack-"))
        (workdir / "tmp").mkdir()
        log = workdir / "localstack.log"
        env = {
            **os.environ,
            "LOCALSTACK_VENV": str(venv),
            "PORT": str(port),
            "FILESYSTEM_ROOT": str(workdir / "filesystem"),
            "TMPDIR": str(workdir / "tmp"),
        }
        with log.open("wb") as out:
            # A process group of its own, so stop() reaches LocalStack even if run-host.sh is gone.
            process = subprocess.Popen(["bash", str(RUN_HOST), "serve"], stdout=out, stderr=subprocess.STDOUT, env=env,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        server = LocalStackServer(endpoint=f"http://127.0.0.1:{port}", process=process, workdir=workdir)
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline and process.poll() is None:
            if _s3_ready(server.endpoint):
                # S3 is loaded on its first request (~0.6 s): pay that here, not in the first test.
                server.client().list_buckets()
                return server
            time.sleep(0.2)
        last_log = _log_tail(log)
        server.stop()  # most likely the port was taken between choosing and binding: try another
    raise RuntimeError(f"LocalStack did not start; its log ends:\n{last_log}")
