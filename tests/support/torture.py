"""The seeded SIGKILL torture: real `lakesink ingest` processes killed at random moments, rerun to completion.

The seed is printed; LAKESINK_TORTURE_SEED replays it (the kill delays and batch sizes; the timing of
the processes themselves still varies from run to run).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.checks import (
    assert_exactly_once,
    assert_prefix_exactly_once,
    lakesink_status,
    log_operations,
    parquet_files_on_store,
    table_exists,
    table_files,
)
from tests.support.data import Dataset

APP_ID = "job"


def ingest_command(dataset: Dataset, uri: str, batch_rows: int, *, app_id: str = APP_ID) -> list[str]:
    return [sys.executable, "-m", "lakesink", "ingest", str(dataset.directory), uri, "--app-id", app_id,
            "--batch-rows", str(batch_rows), "--json"]


def run_ingest(dataset: Dataset, uri: str, env: Mapping[str, str], batch_rows: int, crash_at: str | None = None,
               ) -> subprocess.CompletedProcess[str]:
    run_env = {k: v for k, v in env.items() if k != "LAKESINK_CRASH_AT"}
    if crash_at is not None:
        run_env["LAKESINK_CRASH_AT"] = crash_at
    return subprocess.run(ingest_command(dataset, uri, batch_rows), env=run_env, capture_output=True, text=True, timeout=240)


def committed_position(uri: str, storage_options: Mapping[str, str], env: Mapping[str, str],
                       app_id: str = APP_ID) -> int | None:
    """The app id's txn position as `lakesink status --json` reports it (None: no table or no commit yet)."""
    if not table_exists(uri, storage_options):
        return None
    positions = lakesink_status(uri, env)["positions"]
    assert isinstance(positions, dict)
    return positions.get(app_id)


def txn_position(uri: str, storage_options: Mapping[str, str], app_id: str = APP_ID) -> int | None:
    """The app id's txn version read in this process by delta-rs: cheaper than `lakesink status` between kills."""
    from deltalake import DeltaTable

    if not table_exists(uri, storage_options):
        return None
    version = DeltaTable(uri, storage_options=dict(storage_options)).transaction_version(app_id)
    return None if version is None else int(version)


@dataclass
class TortureLog:
    seed: int
    planned: int
    uri: str = ""
    killed: int = 0
    finished_before_kill: int = 0
    ids_checked: int = 0
    orphans: int = 0
    seconds: float = 0.0
    positions: list[int | None] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)

    def figures(self) -> str:
        moved = sum(1 for before, after in zip([None, *self.positions], self.positions, strict=False) if after != before)
        return (f"{self.uri}: seed {self.seed}, {self.killed}/{self.planned} SIGKILLs ({moved} runs committed before "
                f"dying), {self.finished_before_kill} runs "
                f"finished before their kill, {self.ids_checked} ids checked: 0 lost, 0 duplicated, "
                f"{self.orphans} unreferenced staged files, {self.seconds:.1f}s")


def torture_seed() -> int:
    override = os.environ.get("LAKESINK_TORTURE_SEED")
    return int(override) if override else random.SystemRandom().randrange(2**32)


def sigkill_torture(dataset: Dataset, uri: str, storage_options: Mapping[str, str], env: Mapping[str, str], *,
                    kills: int, batch_rows: int, seed: int, scratch: Path, share: float = 0.6) -> TortureLog:
    """Start `lakesink ingest`, SIGKILL it after a random delay, `kills` times; check after each kill
    that the txn position did not go back and the table holds exactly the records before it; then
    run to completion and count every id with both readers.

    Each run draws its --batch-rows from batch_rows/2 .. 2*batch_rows, so a rerun cuts its batches
    at other places than the run it resumes (and re-stages over ledgers of uncommitted batches).
    The kills are spread so that all of them together let about `share` of the work commit: each
    run commits a few batches (or none, killed late in start-up) before it dies, and the source
    lasts for all `kills`.
    """
    rng = random.Random(seed)
    log = TortureLog(seed=seed, planned=kills, uri=uri)
    started_all = time.monotonic()
    print(f"torture seed {seed} (LAKESINK_TORTURE_SEED={seed} to replay), {kills} kills, {uri}")

    # Calibrate the delays on a scratch table: a whole run, then a run with nothing left to do.
    calibration = f"{uri}-calibration"
    started = time.monotonic()
    assert run_ingest(dataset, calibration, env, batch_rows).returncode == 0
    whole = time.monotonic() - started
    started = time.monotonic()
    assert run_ingest(dataset, calibration, env, batch_rows).returncode == 0
    idle = time.monotonic() - started
    window = share * max(whole - idle, 0.05) / kills
    print(f"calibration: whole run {whole:.2f}s, start-up {idle:.2f}s, mean work per kill {window:.3f}s")

    stderr_path = scratch / "stderr.txt"
    previous: int | None = None
    # Start-up time measured once is only an estimate (the machine's load varies): steer the kills so
    # the source is consumed on plan, `share` of it after the last kill, by nudging where in start-up
    # they begin and scaling the window to the work and kills left.
    lead = 0.9
    for attempt in range(kills):
        done = len(dataset.ids_before(previous)) / dataset.total
        planned = share * attempt / kills
        lead = max(0.3, lead * 0.95) if done > planned else min(1.0, lead * 1.02)
        left = max(0.0, (share - done) / share) if share else 0.0
        scaled = window * kills * left / (kills - attempt)
        # From late in start-up to about 2*window into the commits.
        delay = idle * rng.uniform(lead - 0.1, lead) + rng.uniform(0, 2 * scaled)
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
        position = txn_position(uri, storage_options)
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
    log.ids_checked = assert_exactly_once(uri, storage_options, dataset.ids)
    progress = [len(dataset.ids_before(p)) for p in log.positions]
    # Batches staged by a killed run and cut elsewhere by the next one stay on the store unreferenced
    # (garbage for a vacuum, never rows: no log entry points to them).
    log.orphans = len(set(parquet_files_on_store(uri, storage_options)) - set(table_files(uri, storage_options)))
    log.seconds = time.monotonic() - started_all
    print(f"records committed after each kill {progress}")
    print(f"TORTURE {log.figures()}")
    return log
