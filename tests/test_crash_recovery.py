"""Exactly-once across SIGKILLs: real `lakesink ingest` processes killed at named crash points and
at random moments, then rerun to completion; every record id counted with delta-rs and DuckDB.

Tables are local and on a real moto S3 server (the `table_uri` fixture). Random kills are seeded:
the seed is printed, and LAKESINK_TORTURE_SEED replays it (timing still varies from run to run).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.checks import (
    assert_exactly_once,
    assert_prefix_exactly_once,
    lakesink_status,
    log_operations,
    parquet_files_on_store,
    table_exists,
    table_files,
)
from tests.support.data import Dataset, write_ndjson_files
from tests.support.moto_server import MotoServer

APP_ID = "job"
CRASH_POINTS = ["after_stage", "before_commit", "after_commit"]


def ingest_command(dataset: Dataset, uri: str, batch_rows: int) -> list[str]:
    return [sys.executable, "-m", "lakesink", "ingest", str(dataset.directory), uri, "--app-id", APP_ID,
            "--batch-rows", str(batch_rows), "--json"]


def run_ingest(dataset: Dataset, uri: str, env: Mapping[str, str], batch_rows: int, crash_at: str | None = None,
               ) -> subprocess.CompletedProcess[str]:
    run_env = {k: v for k, v in env.items() if k != "LAKESINK_CRASH_AT"}
    if crash_at is not None:
        run_env["LAKESINK_CRASH_AT"] = crash_at
    return subprocess.run(ingest_command(dataset, uri, batch_rows), env=run_env, capture_output=True, text=True, timeout=240)


def committed_position(uri: str, storage_options: Mapping[str, str], env: Mapping[str, str]) -> int | None:
    """The app id's txn position as `lakesink status --json` reports it (None: no table or no commit yet)."""
    if not table_exists(uri, storage_options):
        return None
    positions = lakesink_status(uri, env)["positions"]
    assert isinstance(positions, dict)
    return positions.get(APP_ID)


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
    (after_commit: including it); the rerun starts there, writes the rest, and re-staging leaves no
    orphaned Parquet file (a re-staged batch overwrites the same object)."""
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
    assert parquet_files_on_store(table_uri, storage_options) == table_files(table_uri, storage_options)


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


# --- random SIGKILLs ----------------------------------------------------------------------------


@dataclass
class TortureLog:
    seed: int
    planned: int
    killed: int = 0
    finished_before_kill: int = 0
    positions: list[int | None] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)


def torture_seed() -> int:
    override = os.environ.get("LAKESINK_TORTURE_SEED")
    return int(override) if override else random.SystemRandom().randrange(2**32)


def sigkill_torture(dataset: Dataset, uri: str, storage_options: Mapping[str, str], env: Mapping[str, str], *,
                    kills: int, batch_rows: int, seed: int, scratch: Path) -> TortureLog:
    """Start `lakesink ingest`, SIGKILL it after a random delay, `kills` times; check after each kill
    that the txn position did not go back and the table holds exactly the records before it; then
    run to completion and count every id with both readers.

    Each run draws its --batch-rows from batch_rows/2 .. 2*batch_rows, so a rerun cuts its batches
    at other places than the run it resumes (and re-stages over ledgers of uncommitted batches).
    """
    rng = random.Random(seed)
    log = TortureLog(seed=seed, planned=kills)
    print(f"torture seed {seed} (LAKESINK_TORTURE_SEED={seed} to replay), {kills} kills, {uri}")

    # Calibrate the delays on a scratch table: a whole run, then a run with nothing left to do.
    calibration = f"{uri}-calibration"
    started = time.monotonic()
    assert run_ingest(dataset, calibration, env, batch_rows).returncode == 0
    whole = time.monotonic() - started
    started = time.monotonic()
    assert run_ingest(dataset, calibration, env, batch_rows).returncode == 0
    idle = time.monotonic() - started
    # Kills land from mid start-up to a little past it: each kill lets less than 1/kills of the
    # work commit on average, so most kills hit a run that still has batches to write.
    window = 1.5 * max(whole - idle, 0.05) / kills
    print(f"calibration: whole run {whole:.2f}s, start-up {idle:.2f}s, kill window {window:.2f}s")

    stderr_path = scratch / "stderr.txt"
    previous: int | None = None
    for attempt in range(kills):
        delay = rng.uniform(0.5 * idle, idle + window)
        rows = rng.randint(max(1, batch_rows // 2), 2 * batch_rows)
        log.delays.append(round(delay, 3))
        with open(stderr_path, "w") as stderr:
            proc = subprocess.Popen(ingest_command(dataset, uri, rows), env=dict(env), stdout=subprocess.DEVNULL,
                                    stderr=stderr)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=60)
        if proc.returncode == -signal.SIGKILL:
            log.killed += 1
        else:
            assert proc.returncode == 0, f"seed {seed}, run {attempt}: exited {proc.returncode}: {stderr_path.read_text()}"
            log.finished_before_kill += 1
        position = committed_position(uri, storage_options, env)
        log.positions.append(position)
        assert previous is None or (position is not None and position >= previous), (
            f"seed {seed}: the txn position went back from {previous} to {position} (positions {log.positions})"
        )
        if position is not None:
            assert_prefix_exactly_once(uri, storage_options, dataset.ids_before(position))
        previous = position
        if proc.returncode == 0:
            break  # the source is done: further kills would only hit no-op runs

    final = run_ingest(dataset, uri, env, batch_rows)
    assert final.returncode == 0, f"seed {seed}: final run exited {final.returncode}: {final.stderr}"
    assert committed_position(uri, storage_options, env) == dataset.end_position
    operations = log_operations(uri, storage_options)
    assert operations == ["CREATE TABLE"] + ["WRITE"] * (len(operations) - 1)
    assert_exactly_once(uri, storage_options, dataset.ids)
    progress = [len(dataset.ids_before(p)) for p in log.positions]
    # Batches staged by a killed run and cut elsewhere by the next one stay on the store unreferenced
    # (garbage for a vacuum, never rows: no log entry points to them).
    orphans = len(set(parquet_files_on_store(uri, storage_options)) - set(table_files(uri, storage_options)))
    print(
        f"seed {seed}: {log.killed} SIGKILLs, {log.finished_before_kill} runs finished before their kill; "
        f"records committed after each kill {progress}; {dataset.total} ids checked: 0 lost, 0 duplicated; "
        f"{orphans} unreferenced staged files"
    )
    return log


@pytest.fixture
def torture_dataset(tmp_path: Path, table_uri: str) -> tuple[Dataset, int, int]:
    """(dataset, batch_rows, kills): ~200 commits locally, ~100 on moto S3 (each commit costs more there)."""
    if table_uri.startswith("s3://"):
        return write_ndjson_files(tmp_path / "source", files=20, rows_per_file=30), 6, 10
    return write_ndjson_files(tmp_path / "source", files=40, rows_per_file=50), 10, 15


def test_random_sigkills_during_ingest_never_lose_or_duplicate_a_record(
    torture_dataset: tuple[Dataset, int, int], table_uri: str, storage_options: dict[str, str], moto_server: MotoServer,
    tmp_path: Path
) -> None:
    """10-15 SIGKILLs at random moments of real `lakesink ingest` runs: after each the txn position
    has not gone back and the table holds exactly the records before it; after a final run,
    every id exactly once."""
    dataset, batch_rows, kills = torture_dataset
    log = sigkill_torture(dataset, table_uri, storage_options, moto_server.env(), kills=kills, batch_rows=batch_rows,
                          seed=torture_seed(), scratch=tmp_path)
    assert log.killed >= 1, f"seed {log.seed}: no run was killed (delays {log.delays})"


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_many_random_sigkills_during_a_long_ingest_never_lose_or_duplicate_a_record(
    table_uri: str, storage_options: dict[str, str], moto_server: MotoServer, tmp_path: Path
) -> None:
    """The long torture: LAKESINK_TORTURE_KILLS kills (default 25, about 2.5 minutes for both
    tables; set it to 200 or more for a real soak) over a bigger source: 1200 commits locally,
    300 on moto S3."""
    kills = int(os.environ.get("LAKESINK_TORTURE_KILLS", "25"))
    if table_uri.startswith("s3://"):
        dataset, batch_rows = write_ndjson_files(tmp_path / "source", files=60, rows_per_file=40), 8
    else:
        dataset, batch_rows = write_ndjson_files(tmp_path / "source", files=200, rows_per_file=60), 10
    log = sigkill_torture(dataset, table_uri, storage_options, moto_server.env(), kills=kills, batch_rows=batch_rows,
                          seed=torture_seed(), scratch=tmp_path)
    assert log.killed >= 1
