"""`--log-format json`: one JSON object per event, each commit with its fields, no secret anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.data import write_ndjson_files


def test_json_logs_carry_each_commit_and_the_run_and_no_secret(tmp_path: Path) -> None:
    dataset = write_ndjson_files(tmp_path / "src", files=3, rows_per_file=100)
    table = tmp_path / "table"
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": "CANARY-json-log-secret", "AWS_ACCESS_KEY_ID": "CANARY-key-id"}
    run = subprocess.run(
        [sys.executable, "-m", "lakesink", "--log-format", "json", "ingest", str(dataset.directory), str(table),
         "--app-id", "events", "--batch-rows", "120", "--json"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "CANARY" not in run.stderr + run.stdout
    events = [json.loads(line) for line in run.stderr.splitlines()]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= e.keys() for e in events)
    commits = [e for e in events if e["message"].startswith("committed position")]
    assert [e["position"] for e in commits] == dataset.batch_positions(120)
    assert all(e["app_id"] == "events" and e["table"] == str(table) and e["rows"] > 0 and e["seconds"] >= 0 for e in commits)
    assert [e["version"] for e in commits] == list(range(1, len(commits) + 1))
    (done,) = [e for e in events if e["message"].startswith("ingest done")]
    assert done["rows"] == dataset.total and done["commits"] == len(commits) and done["position"] == dataset.end_position
