"""Maintenance that never breaks exactly-once: compaction while ingest jobs commit (and both are
killed), vacuum's dry run and run; every id exactly once by two readers, fewer live files."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lakesink.errors import ConfigError
from lakesink.maintenance.compact import compact_table, parse_partition_filter
from lakesink.maintenance.status import table_status
from lakesink.maintenance.vacuum import vacuum_table
from tests.support.checks import assert_exactly_once, parquet_files_on_store, table_files
from tests.support.data import write_ndjson_files


def ingest_args(source: Path, table: Path, batch_rows: int) -> list[str]:
    return [sys.executable, "-m", "lakesink", "ingest", str(source), str(table), "--app-id", "events",
            "--batch-rows", str(batch_rows)]  # fmt: skip


def test_compaction_under_a_killed_and_rerun_ingest_keeps_every_id_once_and_fewer_files(tmp_path: Path) -> None:
    rng = random.Random(7)
    dataset = write_ndjson_files(tmp_path / "src", files=60, rows_per_file=100)
    table = tmp_path / "table"
    done = threading.Event()
    compactions: list[object] = []
    failures: list[BaseException] = []

    def compactor() -> None:
        while not done.is_set():
            try:
                if (table / "_delta_log").exists():
                    compactions.append(compact_table(str(table), target_bytes=1 << 20))
            except Exception as exc:  # noqa: BLE001 - a transient conflict is allowed; anything else fails the test
                if not getattr(exc, "retryable", False):
                    failures.append(exc)
            time.sleep(rng.uniform(0.05, 0.3))

    thread = threading.Thread(target=compactor)
    thread.start()
    try:
        for _ in range(6):  # ingest runs, killed at random; each rerun continues after the last commit
            run = subprocess.Popen(ingest_args(dataset.directory, table, rng.choice([10, 15, 25])),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
            try:
                run.wait(timeout=rng.uniform(0.5, 2.0))
            except subprocess.TimeoutExpired:
                run.send_signal(signal.SIGKILL)
            _, err = run.communicate()
            assert run.returncode in (0, -signal.SIGKILL), f"an ingest commit failed under compaction: {err[-2000:]}"
        # A compaction killed mid-way leaves nothing a reader sees.
        killed = subprocess.Popen([sys.executable, "-m", "lakesink", "compact", str(table)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)  # fmt: skip
        time.sleep(0.3)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        final = subprocess.run(ingest_args(dataset.directory, table, 30), capture_output=True, text=True, timeout=300)
        assert final.returncode == 0, final.stderr[-2000:]
    finally:
        done.set()
        thread.join()
    assert not failures, failures
    rewritten = [c.files_removed for c in compactions if c.files_removed]  # type: ignore[attr-defined]
    assert len(rewritten) >= 3, f"too few compactions overlapped the ingest runs: {rewritten}"
    print(f"compactions: {len(compactions)}, rewrote files: {rewritten}")
    before = len(table_files(str(table), None))
    cli = subprocess.run([sys.executable, "-m", "lakesink", "compact", str(table), "--json"], capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    report = json.loads(cli.stdout)
    assert report["files_after"] < before or before == 1, (before, report)
    assert len(table_files(str(table), None)) == report["files_after"]
    assert_exactly_once(str(table), None, dataset.ids)
    assert table_status(str(table)).positions["events"] == dataset.end_position  # the txn survives compaction


def test_vacuum_dry_run_lists_and_run_deletes_only_files_removed_long_enough_ago(tmp_path: Path) -> None:
    dataset = write_ndjson_files(tmp_path / "src", files=6, rows_per_file=50)
    table = tmp_path / "table"
    assert subprocess.run(ingest_args(dataset.directory, table, 40), capture_output=True).returncode == 0
    live_before = set(table_files(str(table), None))
    compact_table(str(table))
    on_store = set(parquet_files_on_store(str(table), None))
    assert live_before <= on_store  # replaced files stay for older versions
    assert vacuum_table(str(table), dry_run=True).files == []  # default retention: 7 days
    with pytest.raises(ConfigError, match="allow_short_retention"):
        vacuum_table(str(table), retention_seconds=0)
    listed = vacuum_table(str(table), retention_seconds=0, dry_run=True, allow_short_retention=True)
    assert {str(table / f) for f in listed.files} == live_before  # named by their path in the table, as the log does
    assert set(parquet_files_on_store(str(table), None)) == on_store
    done = subprocess.run([sys.executable, "-m", "lakesink", "vacuum", str(table), "--retention", "0h",
                           "--allow-short-retention", "--json"], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert {str(table / f) for f in json.loads(done.stdout)["files"]} == live_before
    assert set(parquet_files_on_store(str(table), None)) == set(table_files(str(table), None))
    assert_exactly_once(str(table), None, dataset.ids)


def test_a_where_that_is_not_a_partition_predicate_is_refused() -> None:
    assert parse_partition_filter("day >= '2026-11-01' AND region = eu") == [("day", ">=", "2026-11-01"), ("region", "=", "eu")]
    with pytest.raises(ConfigError, match="cannot read"):
        parse_partition_filter("day between 1 and 2")
