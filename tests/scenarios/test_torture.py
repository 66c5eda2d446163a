"""Exactly-once under many faults: hundreds of random SIGKILLs of real `lakesink ingest` processes,
replays through lost answers giving the same table as a clean run, and unrelated jobs sharing a table.

Every record id is counted with delta-rs and DuckDB. Random faults are seeded: the seed is printed,
and LAKESINK_TORTURE_SEED replays it (timing still varies from run to run).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tests.support.checks import (
    assert_exactly_once,
    assert_prefix_exactly_once,
    lakesink_status,
    log_operations,
    read_column_deltalake,
)
from tests.support.data import Dataset, write_ndjson_files
from tests.support.fault_proxy import DELTA_LOG_ENTRY, FaultProxy
from tests.support.moto_server import MotoServer
from tests.support.torture import (
    APP_ID,
    ingest_command,
    run_ingest,
    sigkill_torture,
    torture_seed,
    txn_position,
)

# --- random SIGKILLs ----------------------------------------------------------------------------

# (files, rows per file, batch rows, kills): 150 kills locally + 50 on moto S3 = 200 in the normal tier.
# Sized so each killed run commits a few batches and the source outlasts every kill.
NORMAL_TIER = {"local": (125, 60, 10, 150), "s3": (30, 30, 6, 50)}


@pytest.mark.timeout(600)
def test_two_hundred_random_sigkills_during_long_ingests_never_lose_or_duplicate_a_record(
    table_uri: str, storage_options: dict[str, str], moto_server: MotoServer, tmp_path: Path
) -> None:
    """150 SIGKILLs (local table) and 50 (moto S3) at random moments of real `lakesink ingest` runs:
    after each the txn position has not gone back and the table holds exactly the records before it;
    after a final run, every id exactly once."""
    files, rows_per_file, batch_rows, kills = NORMAL_TIER["s3" if table_uri.startswith("s3://") else "local"]
    dataset = write_ndjson_files(tmp_path / "source", files=files, rows_per_file=rows_per_file)
    log = sigkill_torture(dataset, table_uri, storage_options, moto_server.env(), kills=kills, batch_rows=batch_rows,
                          seed=torture_seed(), scratch=tmp_path)
    assert log.killed == kills, f"seed {log.seed}: the source ran out after {log.killed} kills (delays {log.delays[-5:]})"


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_many_random_sigkills_during_a_long_ingest_never_lose_or_duplicate_a_record(
    table_uri: str, storage_options: dict[str, str], moto_server: MotoServer, tmp_path: Path
) -> None:
    """The long torture: LAKESINK_TORTURE_KILLS kills per table (e.g. 500: about 10 minutes locally,
    20 on moto S3) over a source big enough to outlast them. Skipped unless the variable is set: the
    normal tier's 200 kills run on every `make test`."""
    if not os.environ.get("LAKESINK_TORTURE_KILLS"):
        pytest.skip("set LAKESINK_TORTURE_KILLS (e.g. 500) to run the long torture")
    kills = int(os.environ["LAKESINK_TORTURE_KILLS"])
    if table_uri.startswith("s3://"):
        dataset = write_ndjson_files(tmp_path / "source", files=max(10, kills), rows_per_file=30)
        batch_rows = 6
    else:
        dataset = write_ndjson_files(tmp_path / "source", files=max(10, kills), rows_per_file=60)
        batch_rows = 10
    log = sigkill_torture(dataset, table_uri, storage_options, moto_server.env(), kills=kills, batch_rows=batch_rows,
                          seed=torture_seed(), scratch=tmp_path)
    assert log.killed >= kills * 0.9, f"seed {log.seed}: only {log.killed} of {kills} runs were killed"


# --- replay equivalence -------------------------------------------------------------------------


def sorted_rows(uri: str, storage_options: dict[str, str]) -> list[tuple[object, ...]]:
    rows = read_column_deltalake(uri, storage_options, ["id", "name", "score"])
    return sorted((r["id"], r["name"], r["score"]) for r in rows)


def logged_positions(uri: str, storage_options: dict[str, str], app_id: str = APP_ID) -> list[int]:
    """The position each WRITE commit of `app_id` carries in its commitInfo, in log order."""
    from deltalake import DeltaTable

    history = sorted(DeltaTable(uri, storage_options=storage_options).history(), key=lambda e: int(e["version"]))
    return [int(e["lakesink.position"]) for e in history if e.get("lakesink.appId") == app_id]


def test_an_ingest_through_kills_and_lost_answers_ends_with_the_same_table_as_a_clean_ingest(
    tmp_path: Path, s3_bucket: str, s3_options: dict[str, str], moto_server: MotoServer
) -> None:
    """The same source ingested once without faults and once through the fault proxy, whose runs lose
    answers to applied log PUTs and are SIGKILLed at random moments (each run with another batch
    size): both tables hold the same multiset of rows; the txn position seen after each run never
    goes back, and the positions the log's commits carry only grow."""
    seed = torture_seed()
    rng = random.Random(seed)
    print(f"replay seed {seed} (LAKESINK_TORTURE_SEED={seed} to replay)")
    dataset = write_ndjson_files(tmp_path / "source", files=16, rows_per_file=25)
    clean_uri, faulty_uri = f"s3://{s3_bucket}/clean", f"s3://{s3_bucket}/faulty"
    clean = run_ingest(dataset, clean_uri, moto_server.env(), 10)
    assert clean.returncode == 0, clean.stderr

    seen: list[int | None] = []
    kills = lost = 0
    with FaultProxy(moto_server.endpoint) as proxy:
        env = {**moto_server.env(), "AWS_ENDPOINT_URL": proxy.endpoint}
        for run in range(8):
            proxy.disarm()
            proxy.drop_response_after_apply(DELTA_LOG_ENTRY, after=rng.randint(0, 3), times=rng.randint(1, 2),
                                            how=rng.choice(["reset", "close"]))
            dropped_before = len([e for e in proxy.events if e.action.startswith("dropped")])
            proc = subprocess.Popen(ingest_command(dataset, faulty_uri, rng.randint(4, 10)), env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                proc.wait(timeout=rng.uniform(1.1, 2.5))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
            _, stderr = proc.communicate(timeout=120)
            assert proc.returncode in (0, -signal.SIGKILL), f"seed {seed}, run {run}: exited {proc.returncode}: {stderr}"
            kills += proc.returncode == -signal.SIGKILL
            lost += len([e for e in proxy.events if e.action.startswith("dropped")]) - dropped_before
            position = txn_position(faulty_uri, s3_options)
            assert not seen or seen[-1] is None or (position is not None and position >= seen[-1]), (
                f"seed {seed}: the position went back: {[*seen, position]}"
            )
            seen.append(position)
            if position is not None:
                assert_prefix_exactly_once(faulty_uri, s3_options, dataset.ids_before(position))
        proxy.disarm()
        final = run_ingest(dataset, faulty_uri, env, 10)
        assert final.returncode == 0, f"seed {seed}: {final.stderr}"
    seen.append(txn_position(faulty_uri, s3_options))
    assert seen[-1] == dataset.end_position
    assert all(a is None or (b is not None and b >= a) for a, b in itertools.pairwise(seen)), seen
    positions = logged_positions(faulty_uri, s3_options)
    assert positions == sorted(set(positions)), f"seed {seed}: commit positions not strictly growing: {positions}"

    assert sorted_rows(faulty_uri, s3_options) == sorted_rows(clean_uri, s3_options)
    checked = assert_exactly_once(faulty_uri, s3_options, dataset.ids)
    assert_exactly_once(clean_uri, s3_options, dataset.ids)
    print(f"REPLAY seed {seed}: {kills} SIGKILLs, {lost} lost answers, positions after each run {seen}; "
          f"{checked} ids checked: 0 lost, 0 duplicated; sorted tables equal")
    assert lost >= 1, f"seed {seed}: no answer was lost"


# --- unrelated jobs on one table ----------------------------------------------------------------


def write_job_source(directory: Path, *, first_id: int, files: int, rows_per_file: int) -> list[int]:
    """One job's own NDJSON source, with ids from `first_id`."""
    write_ndjson_files(directory, files=files, rows_per_file=rows_per_file, first_id=first_id)
    return list(range(first_id, first_id + files * rows_per_file))


@pytest.mark.parametrize("jobs", [4])
def test_unrelated_jobs_writing_one_table_at_once_all_land_with_contiguous_versions_and_their_own_positions(
    jobs: int, tmp_path: Path, table_uri: str, storage_options: dict[str, str], moto_server: MotoServer
) -> None:
    """Four `lakesink ingest` processes with their own app ids and sources, started together on one
    table: every one exits 0 with all its batches committed, the log is versions 0..N with no gap
    (one CREATE TABLE, then one WRITE per batch of any job), each job's ids are in the table exactly
    once and each app id's position is the end of its own source."""
    env = moto_server.env()
    ids: list[int] = []
    procs = []
    for job in range(jobs):
        source = tmp_path / f"source-{job}"
        ids += write_job_source(source, first_id=job * 100_000, files=4 + job, rows_per_file=20)
        dataset = Dataset(directory=source, files=4 + job, rows_per_file=20)
        procs.append((dataset, subprocess.Popen(ingest_command(dataset, table_uri, 15, app_id=f"job-{job}"), env=env,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    batches = 0
    for job, (dataset, proc) in enumerate(procs):
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"job-{job} exited {proc.returncode}: {err}"
        report = json.loads(out)
        assert report["commits"] == len(dataset.batch_positions(15)), report
        batches += report["commits"]

    from deltalake import DeltaTable

    versions = sorted(int(e["version"]) for e in DeltaTable(table_uri, storage_options=storage_options).history())
    assert versions == list(range(batches + 1))
    assert log_operations(table_uri, storage_options) == ["CREATE TABLE"] + ["WRITE"] * batches
    positions = lakesink_status(table_uri, env)["positions"]
    assert positions == {f"job-{job}": dataset.end_position for job, (dataset, _) in enumerate(procs)}
    for job in range(jobs):
        assert logged_positions(table_uri, storage_options, f"job-{job}") == procs[job][0].batch_positions(15)
    checked = assert_exactly_once(table_uri, storage_options, ids)
    print(f"UNRELATED {table_uri}: {jobs} jobs, {batches} commits, versions 0..{batches} contiguous, {checked} ids checked")
    assert Counter(i // 100_000 for i in ids) == {job: (4 + job) * 20 for job in range(jobs)}
