"""Metrics a user can scrape: a watch run's Prometheus endpoint (on loopback) and textfile agree with
what the table holds."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from lakesink.sink import Sink
from tests.support.data import write_ndjson_files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def listening_addresses(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp writes them) listening on `port`."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:] + Path("/proc/net/tcp6").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if int(hex_port, 16) == port and state == "0A":  # LISTEN
            found.add(address)
    return found


def test_a_watch_run_serves_metrics_on_loopback_and_writes_the_textfile(tmp_path: Path) -> None:
    dataset = write_ndjson_files(tmp_path / "src", files=5, rows_per_file=200)
    table, textfile, port = tmp_path / "table", tmp_path / "lakesink.prom", free_port()
    run = subprocess.Popen(
        [sys.executable, "-m", "lakesink", "ingest", str(dataset.directory), str(table), "--app-id", "events", "--watch",
         "--poll", "0.2s", "--batch-rows", "150", "--metrics-port", str(port), "--metrics-file", str(textfile), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (table / "_delta_log").exists():
                with Sink(str(table), app_id="events") as sink:
                    if sink.committed_position() == dataset.end_position:
                        break
            time.sleep(0.2)
        time.sleep(0.6)  # a poll after the last commit sets the lag gauges
        scraped = samples(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only
    finally:
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err[-2000:]
    labels = (("app_id", "events"), ("table", str(table)))
    commits = json.loads(out)["commits"]
    assert scraped[("lakesink_rows_written_total", labels)] == dataset.total
    assert scraped[("lakesink_commits_total", labels)] == commits == 7  # 1,000 rows in commits of 150
    assert scraped[("lakesink_commit_seconds_count", labels)] == commits
    assert scraped[("lakesink_commit_seconds_bucket", (*labels[:1], ("le", "+Inf"), *labels[1:]))] == commits
    assert scraped[("lakesink_files_written_total", labels)] >= commits
    assert scraped[("lakesink_bytes_written_total", labels)] > 0
    assert scraped[("lakesink_source_lag_files", labels)] == 0 and scraped[("lakesink_source_lag_bytes", labels)] == 0
    assert scraped[("lakesink_in_flight_bytes", ())] == 0  # nothing read and unwritten once it is idle
    written = samples(textfile.read_text())
    assert written[("lakesink_rows_written_total", labels)] == dataset.total
