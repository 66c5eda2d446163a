"""Exactly-once across SIGKILLs: real `lakesink ingest` processes killed at named crash points, then
rerun to completion; every record id counted with delta-rs and DuckDB.

Tables are local and on a real moto S3 server (the `table_uri` fixture). Kills at random moments
are in tests/scenarios/test_torture.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.support.checks import (
    assert_exactly_once,
    assert_only_orphans_left_and_gc_clears_them,
    assert_prefix_exactly_once,
    log_operations,
    parquet_files_on_store,
    table_files,
)
from tests.support.data import Dataset, write_ndjson_files
from tests.support.fault_proxy import DELTA_LOG_ENTRY, FaultProxy
from tests.support.moto_server import MotoServer
from tests.support.torture import committed_position, ingest_command, run_ingest

CRASH_POINTS = ["after_stage", "before_commit", "after_commit"]


def assert_finished_exactly_once(dataset: Dataset, uri: str, storage_options: Mapping[str, str], env: Mapping[str, str],
                                 batches: int) -> None:
    assert committed_position(uri, storage_options, env) == dataset.end_position
    assert log_operations(uri, storage_options) == ["CREATE TABLE"] + ["WRITE"] * batches
    assert_exactly_once(uri, storage_options, dataset.ids)


# --- named crash points -------------------------------------------------------------------------


@pytest.fixture
def small_dataset(tmp_path: Path) -> Dataset:
    # 6 files x 25 records in batches of 20: 8 commits, most of them spanning two files.
    return write_ndjson_files(tmp_path / "source", files=6, rows_per_file=25)


@pytest.mark.parametrize("hit", [1, 3])
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_sigkill_at_a_named_crash_point_then_a_rerun_leaves_every_record_exactly_once(
    point: str, hit: int, small_dataset: Dataset, table_uri: str, storage_options: dict[str, str], moto_server: MotoServer
) -> None:
    """Killed at `point` on its `hit`-th batch, the run has committed exactly the batches before it
    (after_commit: including it); the rerun starts there and writes the rest. The files the killed run
    had staged for batches it never committed are orphans no commit names; `lakesink gc` deletes them."""
    env = moto_server.env()
    positions = small_dataset.batch_positions(20)
    crashed = run_ingest(small_dataset, table_uri, env, 20, crash_at=f"{point}:{hit}")
    assert crashed.returncode == -signal.SIGKILL, f"expected SIGKILL at {point}:{hit}, got {crashed.returncode}: {crashed.stderr}"

    done_batches = hit if point == "after_commit" else hit - 1
    expected = positions[done_batches - 1] if done_batches else None
    assert committed_position(table_uri, storage_options, env) == expected
    assert_prefix_exactly_once(table_uri, storage_options, small_dataset.ids_before(expected))

    rerun = run_ingest(small_dataset, table_uri, env, 20)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["start_position"] == expected
    assert report["commits"] == len(positions) - done_batches
    assert report["rows_written"] == small_dataset.total - len(small_dataset.ids_before(expected))

    assert_finished_exactly_once(small_dataset, table_uri, storage_options, env, len(positions))
    assert_only_orphans_left_and_gc_clears_them(table_uri, storage_options, env)
    assert_exactly_once(table_uri, storage_options, small_dataset.ids)


@pytest.mark.parametrize(("point", "commits_per_run"), [("after_stage", 1), ("before_commit", 1), ("after_commit", 2)])
def test_crashing_at_the_same_point_on_every_run_still_ends_exactly_once(
    point: str, commits_per_run: int, small_dataset: Dataset, table_uri: str, storage_options: dict[str, str],
    moto_server: MotoServer
) -> None:
    """Every run armed with `point:2` dies on its second hit; each run still moves the committed
    position forward by the batches before the crash, and the last run exits 0 with the table whole."""
    env = moto_server.env()
    positions = small_dataset.batch_positions(40)  # 4 batches
    seen: list[int | None] = []
    for run in range(1, 10):
        done = run_ingest(small_dataset, table_uri, env, 40, crash_at=f"{point}:2")
        position = committed_position(table_uri, storage_options, env)
        seen.append(position)
        if done.returncode == 0:
            break
        assert done.returncode == -signal.SIGKILL, done.stderr
        assert position == positions[min(run * commits_per_run, len(positions)) - 1], f"run {run}: {seen}"
    else:
        pytest.fail(f"never finished: positions {seen}")
    print(f"{point}:2 -> {run} runs ({run - 1} killed), positions {seen}")
    assert seen[-1] == small_dataset.end_position
    assert_finished_exactly_once(small_dataset, table_uri, storage_options, env, len(positions))


# --- crash points inside a batch's staging, and inside delta-rs (at the fault proxy) ---------------


def write_partitioned_source(directory: Path, *, files: int, rows_per_file: int, buckets: int = 3) -> Dataset:
    """Like `write_ndjson_files`, with a `bucket` column (id % buckets) to partition by: every batch of
    `buckets` or more records stages `buckets` Parquet files."""
    directory.mkdir(parents=True, exist_ok=True)
    next_id = 0
    for index in range(files):
        lines = []
        for _ in range(rows_per_file):
            lines.append(json.dumps({"id": next_id, "bucket": f"b{next_id % buckets}", "name": f"record-{next_id:08d}"}))
            next_id += 1
        (directory / f"part-{index:05d}.ndjson").write_text("\n".join(lines) + "\n")
    return Dataset(directory=directory, files=files, rows_per_file=rows_per_file)


@pytest.mark.parametrize("hit", [1, 3])
def test_a_sigkill_between_the_parquet_files_of_a_partitioned_batch_then_a_rerun_leaves_every_record_exactly_once(
    hit: int, tmp_path: Path, table_uri: str, storage_options: dict[str, str], moto_server: MotoServer
) -> None:
    """`mid_stage`: killed (on the encoder thread) after the first of a batch's three partition files
    is on the store. Nothing of that batch is committed: the commit thread may lag behind the encoder,
    so the committed position is at most the one before the batch. The rerun re-stages the batch
    under new names and finishes; the killed run's files are orphans that `lakesink gc` deletes."""
    env = moto_server.env()
    dataset = write_partitioned_source(tmp_path / "source", files=6, rows_per_file=25)
    positions = dataset.batch_positions(20)
    command = [*ingest_command(dataset, table_uri, 20), "--partition-by", "bucket"]
    crashed = subprocess.run(command, env={**env, "LAKESINK_CRASH_AT": f"mid_stage:{hit}"}, capture_output=True, text=True,
                             timeout=240)
    assert crashed.returncode == -signal.SIGKILL, f"mid_stage:{hit}: exited {crashed.returncode}: {crashed.stderr}"
    committed = committed_position(table_uri, storage_options, env)
    allowed = [None, *positions[: hit - 1]]
    assert committed in allowed, f"committed {committed} after a kill inside batch {hit}; allowed {allowed}"
    if committed is not None:
        assert_prefix_exactly_once(table_uri, storage_options, dataset.ids_before(committed))
    staged_before = set(parquet_files_on_store(table_uri, storage_options))
    assert len(staged_before - set(table_files(table_uri, storage_options) if committed is not None else [])) >= 1

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["start_position"] == committed
    assert_finished_exactly_once(dataset, table_uri, storage_options, env, len(positions))
    assert assert_only_orphans_left_and_gc_clears_them(table_uri, storage_options, env) >= 1
    assert_exactly_once(table_uri, storage_options, dataset.ids)


@pytest.mark.parametrize(
    ("point", "pattern", "after"),
    [
        # The k-th log entry PUT is the (k-1)-th batch's commit (entry 0 is CREATE TABLE).
        ("log entry applied, answer not returned (batch 1)", DELTA_LOG_ENTRY, 1),
        ("log entry applied, answer not returned (batch 5)", DELTA_LOG_ENTRY, 5),
        # The table checkpoints every 20 versions: after the commit of version 20 (batch 20).
        ("checkpoint file written, _last_checkpoint not", r"/_delta_log/\d{20}\.checkpoint\.parquet(?:\?|$)", 0),
        ("_last_checkpoint written, its answer not returned", r"/_delta_log/_last_checkpoint(?:\?|$)", 0),
    ],
)
def test_a_sigkill_after_a_log_or_checkpoint_put_landed_then_a_rerun_leaves_every_record_exactly_once(
    point: str, pattern: str, after: int, tmp_path: Path, s3_bucket: str, s3_options: dict[str, str],
    moto_server: MotoServer
) -> None:
    """Crash points inside a commit (lakesink's log entry PUT, delta-rs's checkpoint), injected at the
    fault proxy: the `lakesink ingest` process is SIGKILLed once moto has applied the matching PUT
    and before the answer reaches it. The committed
    position is exactly the batches whose log entry landed (a landed entry counts although its writer
    never heard back); the rerun resumes there and the table ends exactly once, its position never
    having gone back."""
    dataset = write_ndjson_files(tmp_path / "source", files=6, rows_per_file=25)
    positions = dataset.batch_positions(5)  # 30 commits: one checkpoint, after batch 20
    uri = f"s3://{s3_bucket}/table"
    with FaultProxy(moto_server.endpoint) as proxy:
        options = {**s3_options, "AWS_ENDPOINT_URL": proxy.endpoint}
        env = {**moto_server.env(), **options}
        proc = subprocess.Popen(ingest_command(dataset, uri, 5), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        proxy.kill_after_apply(proc.pid, pattern, after=after)
        _, stderr = proc.communicate(timeout=240)
        assert proc.returncode == -signal.SIGKILL, f"{point}: expected SIGKILL, got {proc.returncode}: {stderr}"
        killed_on = [e for e in proxy.events if e.action.startswith("applied, then killed")]
        assert len(killed_on) == 1, [(e.method, e.path, e.action) for e in proxy.events[-5:]]
    crashed_at = committed_position(uri, s3_options, moto_server.env())
    if pattern == DELTA_LOG_ENTRY:
        expected = positions[after - 1]
        assert crashed_at == expected, f"{point}: killed on {killed_on[0].path}"
    else:
        # The checkpoint of version 20 is written in the background: later batches may land before the kill.
        assert crashed_at in positions[19:], f"{point}: killed on {killed_on[0].path} at position {crashed_at}"
        expected = crashed_at
    done_batches = positions.index(expected) + 1
    assert_prefix_exactly_once(uri, s3_options, dataset.ids_before(expected))

    rerun = run_ingest(dataset, uri, moto_server.env(), 5)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["start_position"] == expected
    assert report["commits"] == len(positions) - done_batches
    assert_finished_exactly_once(dataset, uri, s3_options, moto_server.env(), len(positions))
    print(f"{point}: killed on {killed_on[0].path}, position {crashed_at} kept, rerun committed {report['commits']}")
