"""S3 faults injected by a real loopback proxy in front of the real moto server: exactly once, or a
clean exit 75 (transient) within a bounded time and a rerun that finishes exactly once.

The proxy (tests/support/fault_proxy.py) answers 503 SlowDown / 500 InternalError, resets
connections (RST) before forwarding, black-holes requests (reads them, never answers), or adds
latency, each for a method + path regex + count. lakesink talks to S3 with two clients, and the
faults hit both: delta-rs (object_store) for the log (`_delta_log/*.json` GET/PUT, LIST of the
log), pyarrow (the AWS C++ SDK) for staged Parquet files and ledgers (multipart PUTs). What they
do, as these tests pin down (delta-rs 1.6.6, pyarrow 26):

* 5xx: both retry with exponential backoff and jitter, `max_retries` times (pyarrow:
  max_retries + 1 attempts); a longer storm surfaces as StorageUnavailable (exit 75), or, on the
  commit path, as CommitOutcomeUnknown (exit 75) once lakesink could not read the log back.
* RST before the request is applied: GETs/LISTs and data-file PUTs are retried by the clients;
  the log PUT (If-None-Match) is not, and lakesink re-checks the txn and commits again.
* black hole: the `timeout` fires (delta-rs: whole request; pyarrow: the request stalls), reads
  are retried, the log PUT is not; with the test's short timeouts a run ends in seconds.

Every run ends in a known state: the table is read directly from moto (never through the proxy)
and every id is counted with delta-rs and DuckDB.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest

from lakesink import CommitOutcomeUnknown, CommitPolicy, ConfigError, Sink, TransientError
from lakesink.delta.errors import describe_store_error
from lakesink.sources.files import FilePosition
from lakesink.storage.options import RETRY_DEFAULTS, StorageOptions
from tests.support.checks import assert_exactly_once, assert_prefix_exactly_once, log_operations, table_version
from tests.support.data import Dataset, write_ndjson_files
from tests.support.fault_proxy import DELTA_LOG_ENTRY, FaultProxy, ProxyEvent
from tests.support.moto_server import MotoServer

APP_ID = "job"
BATCH_ROWS = 10
# Short budgets, so a storm or a black hole ends a run in seconds: 2 retries (pyarrow: 3 attempts),
# 1 s timeouts, a 2 s retry window and 10-100 ms backoff for delta-rs.
FAST = {
    "max_retries": "2",
    "timeout": "1s",
    "connect_timeout": "1s",
    "retry_timeout": "2s",
    "backoff_config.init_backoff": "10ms",
    "backoff_config.max_backoff": "100ms",
}
DATA_FILE = r"/part-\d{20}-\d{5}-[^/?]*\.parquet"  # a staged Parquet file (pyarrow multipart upload)
LOG_READ = r"_delta_log"  # GET of log entries and _last_checkpoint, LIST of the log (prefix=..._delta_log)
EVERYTHING = r"."
STORM = 1_000_000


@pytest.fixture
def proxy(moto_server: MotoServer) -> Iterator[FaultProxy]:
    with FaultProxy(moto_server.endpoint) as started:
        yield started


@pytest.fixture
def dataset(tmp_path: Path) -> Dataset:
    return write_ndjson_files(tmp_path / "source", files=4, rows_per_file=10)


@dataclass(frozen=True)
class Run:
    returncode: int
    seconds: float
    stdout: str
    stderr: str

    def report(self) -> dict[str, object]:
        return json.loads(self.stdout)


def ingest(dataset: Dataset, uri: str, moto: MotoServer, proxy: FaultProxy, options: Mapping[str, str] = FAST,
           *, timeout: float = 90) -> Run:
    """`lakesink ingest --json` as a real subprocess, talking to moto through the proxy."""
    command = [sys.executable, "-m", "lakesink", "ingest", str(dataset.directory), uri, "--app-id", APP_ID,
               "--batch-rows", str(BATCH_ROWS), "--json"]
    for key, value in options.items():
        command += ["--storage-option", f"{key}={value}"]
    env = {**moto.env(), "AWS_ENDPOINT_URL": proxy.endpoint}
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    return Run(done.returncode, time.monotonic() - started, done.stdout, done.stderr)


def faulted(proxy: FaultProxy) -> list[ProxyEvent]:
    return [e for e in proxy.events if e.action != "relayed"]


def describe(events: list[ProxyEvent]) -> list[str]:
    return [f"{e.method} {e.path.split('?')[0].rsplit('/', 1)[-1]}: {e.action}" for e in events]


def committed_position(uri: str, options: Mapping[str, str]) -> int | None:
    with Sink(uri, app_id=APP_ID, storage_options=dict(options)) as sink:
        return sink.committed_position()


def assert_retried_through(events: list[ProxyEvent]) -> None:
    """Every request that got an injected error answer was sent again until it was relayed.

    Each request's tries are looked at apart: other requests (another writer thread's upload) may
    come in between, and two threads' uploads may each take one of the injected errors."""
    answered = [e for e in events if e.action.startswith("answered")]
    assert answered, "no error was injected"
    for request in {(e.method, e.path) for e in answered}:
        tries = [e.action.split()[0] for e in events if (e.method, e.path) == request]
        first = tries.index("answered")
        after = tries[first:]
        assert "relayed" in after and set(after[: after.index("relayed")]) == {"answered"}, (request, tries)


def assert_failed_transiently(run: Run, *, within: float, mentions: str) -> dict[str, object]:
    """Exit 75 with one JSON error object naming the cause, in less than `within` seconds."""
    assert run.returncode == 75, f"exit {run.returncode} after {run.seconds:.1f}s: {run.stdout} {run.stderr}"
    assert run.seconds < within, f"took {run.seconds:.1f}s"
    error = run.report()
    assert (error["ok"], error["kind"]) == (False, "transient"), error
    assert re.search(mentions, str(error["message"])), error["message"]
    assert "↳" not in str(error["message"]) and "\x1b" not in str(error["message"]), "the message is delta-rs's raw error chain"
    return error


def assert_resumes_exactly_once(dataset: Dataset, uri: str, moto: MotoServer, proxy: FaultProxy, s3: Mapping[str, str]) -> Run:
    """After a failed run: the committed prefix is exact; with the fault gone, a rerun finishes exactly once."""
    position = committed_position(uri, s3)
    if position is not None:
        assert_prefix_exactly_once(uri, s3, dataset.ids_before(position))
    proxy.disarm()
    rerun = ingest(dataset, uri, moto, proxy)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert rerun.report()["end_position"] == dataset.end_position
    assert_exactly_once(uri, s3, dataset.ids)
    operations = log_operations(uri, s3)
    assert operations == ["CREATE TABLE"] + ["WRITE"] * (len(operations) - 1)
    return rerun


# -- defaults ---------------------------------------------------------------------------------------------


def test_every_store_client_gets_bounded_timeouts_and_retries_unless_the_options_set_them() -> None:
    """delta-rs gets lakesink's defaults under the lower-case keys it reads (it ignores MAX_RETRIES),
    pyarrow the same budget, and a user's option (any case) wins over a default."""
    defaults = StorageOptions.resolve({}, environ={}).for_delta()
    assert defaults == {"connect_timeout": "5000ms", "timeout": "30000ms", "max_retries": "5", "retry_timeout": "60000ms"}
    assert RETRY_DEFAULTS["MAX_RETRIES"] == "5"
    given = StorageOptions.resolve({"MAX_RETRIES": "1", "timeout": "2m", "backoff_config.init_backoff": "10ms"}, environ={})
    assert given.for_delta() == {
        "connect_timeout": "5000ms", "timeout": "120000ms", "max_retries": "1", "retry_timeout": "60000ms",
        "backoff_config.init_backoff": "10ms",
    }
    assert "MAX_RETRIES" in repr(given) and "'1'" in repr(given)  # not a secret: shown, not redacted


@pytest.mark.parametrize("bad", [{"timeout": "soon"}, {"max_retries": "-1"}, {"connect_timeout": "0s"}])
def test_a_timeout_or_retry_option_that_is_not_a_duration_or_count_is_a_config_error(bad: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=next(iter(bad)).upper()):
        StorageOptions.resolve(bad, environ={}).for_delta()


# -- 503 / 500 -------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_bursts_of_503_slowdown_and_500_internal_error_are_absorbed_by_retries_and_every_record_lands_once(
    dataset: Dataset, proxy: FaultProxy, moto_server: MotoServer, s3_bucket: str, s3_options: dict[str, str]
) -> None:
    """Two errors in a row (within the retry budget) on the log PUT, the log LIST, a data-file PUT and
    the ledger PUT: each client retries with backoff, the run exits 0, and each id is in once."""
    uri = f"s3://{s3_bucket}/table"
    proxy.slow_down(DELTA_LOG_ENTRY, method="PUT", times=2, after=2)  # the 3rd commit
    proxy.internal_error(r"list-type=2&prefix=[^&]*_delta_log", method="GET", times=2)  # the open's LIST
    proxy.internal_error(DATA_FILE, method="PUT", times=2, after=1)  # the 2nd data file
    proxy.slow_down(r"/_lakesink/ledger/", method="PUT", times=2, after=2)
    run = ingest(dataset, uri, moto_server, proxy)
    injected = faulted(proxy)
    print(f"exit {run.returncode} in {run.seconds:.1f}s; injected: {describe(injected)}")
    assert run.returncode == 0, run.stdout + run.stderr
    assert not proxy.armed(), "a fault never fired"
    assert len(injected) == 8
    report = run.report()
    assert (report["commits"], report["rows_written"]) == (len(dataset.batch_positions(BATCH_ROWS)), dataset.total)
    # Each errored request was sent again, and the third try got through.
    for pattern in (DELTA_LOG_ENTRY, DATA_FILE, r"/_lakesink/ledger/"):
        assert_retried_through(proxy.matching(pattern, method="PUT"))
    assert_retried_through(proxy.matching(r"list-type=2", method="GET"))
    assert_exactly_once(uri, s3_options, dataset.ids)
    assert log_operations(uri, s3_options) == ["CREATE TABLE"] + ["WRITE"] * report["commits"]  # type: ignore[operator]


STORMS = {
    # Whatever comes next after 8 requests: opening (3) and creating (1) the table, then each commit
    # makes 3 (data file, ledger, log entry): the storm begins inside the 2nd commit.
    "every request": (EVERYTHING, 8),
    # The log only, from a commit in the middle of the run on (lakesink: the log entry's create,
    # then every attempt to read it back and decide the outcome). Opening the table (`_last_checkpoint`,
    # a LIST) and creating it take the first 3 log requests, then each commit makes one PUT: the
    # storm begins with the 2nd commit.
    "the log": (LOG_READ, 4),
}


@pytest.mark.timeout(150)
@pytest.mark.parametrize("storm", STORMS)
def test_a_503_storm_longer_than_the_retry_budget_exits_75_in_bounded_time_and_a_rerun_finishes_exactly_once(
    storm: str, dataset: Dataset, proxy: FaultProxy, moto_server: MotoServer, s3_bucket: str, s3_options: dict[str, str]
) -> None:
    """From some request in the middle of the run on, every request (or every log request) gets 503
    SlowDown: the run gives up with exit 75 and a message naming the 503, each request having been
    tried max_retries + 1 times; the committed prefix is exact, and a rerun after the storm commits
    the rest, each record once."""
    pattern, after = STORMS[storm]
    uri = f"s3://{s3_bucket}/table"
    proxy.slow_down(pattern, times=STORM, after=after)
    run = ingest(dataset, uri, moto_server, proxy)
    error = assert_failed_transiently(run, within=60, mentions=r"503 SlowDown|SLOW_DOWN")
    answered = [e for e in proxy.events if e.action == "answered 503 SlowDown"]
    first = answered[0]
    same_request = [e for e in answered if (e.method, e.path) == (first.method, first.path)]
    print(f"{storm}: exit 75 in {run.seconds:.1f}s ({error['error']}); {len(answered)} requests answered 503; "
          f"the first ({first.method} {first.path[:70]}) was sent {len(same_request)} times; {error['message']}")
    assert len(same_request) >= int(FAST["max_retries"]) + 1  # the first try and every retry
    assert error["error"] in ("StorageUnavailable", "CommitOutcomeUnknown")
    assert_resumes_exactly_once(dataset, uri, moto_server, proxy, s3_options)


# -- connection resets ------------------------------------------------------------------------------------

RESET_TARGETS = {
    "data-file PUT": ("PUT", DATA_FILE),
    "log GET/LIST": ("GET", LOG_READ),
    "log PUT": ("PUT", DELTA_LOG_ENTRY),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", RESET_TARGETS)
def test_two_connection_resets_are_retried_and_the_run_writes_every_record_once(
    target: str, dataset: Dataset, proxy: FaultProxy, moto_server: MotoServer, s3_bucket: str, s3_options: dict[str, str]
) -> None:
    """Two RSTs before the request reaches the server: pyarrow and object_store re-send reads and
    data-file PUTs; a reset log PUT is not re-sent by object_store, so lakesink re-checks the txn
    (not there) and commits again. Exit 0, every id once."""
    method, pattern = RESET_TARGETS[target]
    uri = f"s3://{s3_bucket}/table"
    # A run reads the log once, when it opens the table (its own commits it knows): reset those reads.
    proxy.refuse(pattern, method=method, times=2, after=0 if method == "GET" else 1)
    run = ingest(dataset, uri, moto_server, proxy)
    print(f"{target}: exit {run.returncode} in {run.seconds:.1f}s; {describe(faulted(proxy))}")
    assert run.returncode == 0, run.stdout + run.stderr
    assert not proxy.armed()
    assert_exactly_once(uri, s3_options, dataset.ids)
    assert log_operations(uri, s3_options) == ["CREATE TABLE"] + ["WRITE"] * len(dataset.batch_positions(BATCH_ROWS))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", ["data-file PUT", "log GET/LIST"])
def test_connections_reset_for_good_end_the_run_with_exit_75_and_a_rerun_finishes_exactly_once(
    target: str, dataset: Dataset, proxy: FaultProxy, moto_server: MotoServer, s3_bucket: str, s3_options: dict[str, str]
) -> None:
    method, pattern = RESET_TARGETS[target]
    uri = f"s3://{s3_bucket}/table"
    proxy.refuse(pattern, method=method, times=STORM, after=0 if method == "GET" else 1)
    run = ingest(dataset, uri, moto_server, proxy)
    refused = [e for e in proxy.events if e.action == "refused"]
    print(f"{target}: exit {run.returncode} in {run.seconds:.1f}s after {len(refused)} resets: {run.stdout.strip()}")
    # pyarrow and delta-rs say "reset"; boto3 (the log reads) "connection was closed".
    assert_failed_transiently(run, within=30, mentions=r"(?i)reset|connection was closed")
    assert_resumes_exactly_once(dataset, uri, moto_server, proxy, s3_options)


@pytest.mark.timeout(60)
def test_a_log_put_reset_for_good_raises_a_transient_error_and_the_same_write_commits_once_after(
    proxy: FaultProxy, moto_server: MotoServer, s3_bucket: str, s3_options: dict[str, str]
) -> None:
    """Every commit PUT is reset (never applied): boto3 sends each create max_retries + 1 times, lakesink
    reads the entry back (absent) and tries again, and after its attempts the write raises a
    TransientError (exit 75 in the CLI); nothing landed, and the same write commits once the store answers.

    In-process with a quick CommitPolicy: the CLI's default policy backs off for ~50 s in total before
    it gives up on a commit, which is the point in production and too slow for CI.
    """
    uri = f"s3://{s3_bucket}/table"
    options = {**moto_server.storage_options(), "AWS_ENDPOINT_URL": proxy.endpoint, **FAST}
    policy = CommitPolicy(max_attempts=3, resolve_attempts=2, backoff_seconds=0.01)
    with Sink(uri, app_id=APP_ID, storage_options=options, commit_policy=policy) as sink:
        assert sink.write(pa.table({"id": [0, 1]}), position=1).status == "committed"
        proxy.refuse(DELTA_LOG_ENTRY, method="PUT", times=STORM)
        started = time.monotonic()
        with pytest.raises(TransientError) as failure:
            sink.write(pa.table({"id": [2, 3]}), position=2)
        seconds = time.monotonic() - started
        puts = [e for e in proxy.matching(DELTA_LOG_ENTRY, method="PUT") if e.action == "refused"]
        print(f"{type(failure.value).__name__} after {seconds:.1f}s and {len(puts)} reset log PUTs: {failure.value}")
        assert isinstance(failure.value, CommitOutcomeUnknown)
        assert seconds < 20 and len(puts) == policy.max_attempts * (int(FAST["max_retries"]) + 1)
        assert table_version(uri, s3_options) == 1
        proxy.disarm()
        assert sink.write(pa.table({"id": [2, 3]}), position=2).status == "committed"
    assert_exactly_once(uri, s3_options, [0, 1, 2, 3])


# -- black holes ------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", ["data-file PUT", "log GET/LIST"])
def test_a_black_holed_store_times_out_with_exit_75_instead_of_hanging_and_a_rerun_finishes_exactly_once(
    target: str, dataset: Dataset, proxy: FaultProxy, moto_server: MotoServer, s3_bucket: str, s3_options: dict[str, str]
) -> None:
    """Requests are accepted and never answered: the timeout fires on every attempt, the retries run
    out, and the run exits 75 within seconds; nothing waits forever. A rerun finishes exactly once."""
    method, pattern = RESET_TARGETS[target]
    uri = f"s3://{s3_bucket}/table"
    # pyarrow's attempt on a black-holed upload takes the stall timeout plus ~6 s: keep to 2 attempts.
    options = {**FAST, "max_retries": "1"} if method == "PUT" else FAST
    proxy.black_hole(pattern, method=method, times=STORM, after=0 if method == "GET" else 1)
    run = ingest(dataset, uri, moto_server, proxy, options)
    held = [e for e in proxy.events if e.action == "black-holed"]
    print(f"{target}: exit {run.returncode} in {run.seconds:.1f}s, {len(held)} requests black-holed: {run.stdout.strip()}")
    assert_failed_transiently(run, within=45, mentions=r"(?i)timed out|timeout was reached|read timeout")
    assert len(held) >= int(options["max_retries"]) + 1
    assert_resumes_exactly_once(dataset, uri, moto_server, proxy, s3_options)


@pytest.mark.timeout(120)
def test_a_black_holed_log_put_times_out_and_the_commit_is_checked_and_sent_again_exactly_once(
    dataset: Dataset, proxy: FaultProxy, moto_server: MotoServer, s3_bucket: str, s3_options: dict[str, str]
) -> None:
    """The 3rd commit's PUT is never answered (nor applied): boto3's read timeout fires and it sends
    the create again (still If-None-Match: *), which lands. Exit 0, one WRITE per batch, every id once."""
    uri = f"s3://{s3_bucket}/table"
    proxy.black_hole(DELTA_LOG_ENTRY, method="PUT", times=1, after=2)
    run = ingest(dataset, uri, moto_server, proxy)
    puts = [(e.path.rsplit("/", 1)[-1], e.action) for e in proxy.matching(DELTA_LOG_ENTRY, method="PUT")]
    print(f"exit {run.returncode} in {run.seconds:.1f}s; log PUTs: {puts}")
    assert run.returncode == 0, run.stdout + run.stderr
    assert puts[2:4] == [("00000000000000000002.json", "black-holed"), ("00000000000000000002.json", "relayed")]
    assert run.seconds < 30
    assert_exactly_once(uri, s3_options, dataset.ids)
    assert log_operations(uri, s3_options) == ["CREATE TABLE"] + ["WRITE"] * len(dataset.batch_positions(BATCH_ROWS))


@pytest.mark.timeout(60)
def test_a_black_holed_log_put_for_good_raises_a_transient_error_in_bounded_time_and_commits_once_after(
    proxy: FaultProxy, moto_server: MotoServer, s3_bucket: str, s3_options: dict[str, str]
) -> None:
    """Every commit PUT hangs: each attempt ends at the 1 s timeout, the write raises
    CommitOutcomeUnknown (exit 75 in the CLI) after its attempts, and commits once after."""
    uri = f"s3://{s3_bucket}/table"
    options = {**moto_server.storage_options(), "AWS_ENDPOINT_URL": proxy.endpoint, **FAST}
    policy = CommitPolicy(max_attempts=2, resolve_attempts=2, backoff_seconds=0.01)
    with Sink(uri, app_id=APP_ID, storage_options=options, commit_policy=policy) as sink:
        assert sink.write(pa.table({"id": [0]}), position=1).status == "committed"
        proxy.black_hole(DELTA_LOG_ENTRY, method="PUT", times=STORM)
        started = time.monotonic()
        with pytest.raises(CommitOutcomeUnknown) as failure:
            sink.write(pa.table({"id": [1]}), position=2)
        seconds = time.monotonic() - started
        print(f"CommitOutcomeUnknown after {seconds:.1f}s: {failure.value}")
        assert seconds < 15
        assert [e.action for e in proxy.matching(DELTA_LOG_ENTRY, method="PUT")][-2:] == ["black-holed"] * 2
        proxy.disarm()
        assert sink.write(pa.table({"id": [1]}), position=2).status == "committed"
    assert_exactly_once(uri, s3_options, [0, 1])


# -- latency ----------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_slow_store_only_slows_the_run_and_a_read_slower_than_the_timeout_is_retried(
    dataset: Dataset, proxy: FaultProxy, moto_server: MotoServer, s3_bucket: str, s3_options: dict[str, str]
) -> None:
    """50 ms on every request, and 1.5 s (over the 1 s timeout) on one log read (the open's first):
    that read times out and is sent again; the run exits 0 with every id once."""
    uri = f"s3://{s3_bucket}/table"
    proxy.add_latency(0.05)
    proxy.add_latency(1.5, r"_delta_log/_last_checkpoint", method="GET", times=1)
    run = ingest(dataset, uri, moto_server, proxy)
    slow = [e for e in proxy.events if e.delay > 1]
    print(f"exit {run.returncode} in {run.seconds:.1f}s; the slow read: {describe(slow)}; {len(proxy.events)} requests")
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(slow) == 1
    again = [e for e in proxy.matching(re.escape(slow[0].path.split("?")[0]), method="GET") if e.at > slow[0].at]
    assert again, "the timed-out read was not sent again"
    assert_exactly_once(uri, s3_options, dataset.ids)


# -- local disk full --------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, or a skip where this machine does not let us mount one."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    try:
        command = ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)]
        done = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("cannot mount a small tmpfs here: no mount command")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root / CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path, *, leave: int) -> Path:
    """Write a filler file until the disk is full, then give back `leave` bytes."""
    filler = directory / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    with open(filler, "r+b") as out:
        out.truncate(max(0, filler.stat().st_size - leave))
    return filler


@pytest.mark.timeout(120)
def test_a_full_local_disk_while_staging_exits_75_leaves_the_table_unchanged_and_a_rerun_after_freeing_space_is_exact(
    small_disk: Path, tmp_path: Path
) -> None:
    """A local table on a 2 MiB disk; the first two files are ingested, then the disk fills with 8 KiB
    to spare (a ledger fits, a batch's Parquet file does not). The next run exits 75 with "no space
    left on device", the table is unchanged (no commit, no half-written file), and once the filler
    is deleted the same command finishes with every record once.

    Exit 75, not 1: nothing about the input or settings is wrong and the command is to be rerun as is,
    which is the transient contract; the message says what to free."""
    source = tmp_path / "source"
    dataset = write_ndjson_files(source, files=4, rows_per_file=1000)
    uri = str(small_disk / "table")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    later = tmp_path / "later"
    later.mkdir()
    for name in sorted(os.listdir(source))[2:]:
        (source / name).rename(later / name)  # a rename keeps the modification time the ledger records

    def run(directory: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lakesink", "ingest", str(directory), uri, "--app-id", APP_ID,
                               "--batch-rows", "1000", "--json"], env=env, capture_output=True, text=True, timeout=60)

    assert run(source).returncode == 0
    for name in os.listdir(later):
        (later / name).rename(source / name)
    before = sorted(p.relative_to(uri).as_posix() for p in Path(uri).rglob("*") if p.is_file() and "_lakesink" not in p.parts)
    filler = fill(small_disk, leave=8192)
    full = run(source)
    print(f"disk full: exit {full.returncode}: {full.stdout.strip()}")
    assert full.returncode == 75, full.stdout + full.stderr
    error = json.loads(full.stdout)
    assert error["error"] == "StorageUnavailable" and "no space left on device" in error["message"]
    after = sorted(p.relative_to(uri).as_posix() for p in Path(uri).rglob("*") if p.is_file() and "_lakesink" not in p.parts)
    assert after == before, "a failed staging left files behind"
    assert table_version(uri, None) == 2
    assert_exactly_once(uri, None, dataset.ids_before(FilePosition(2, 0).encode()))

    filler.unlink()
    rerun = run(source)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert json.loads(rerun.stdout)["rows_written"] == 2000
    assert_exactly_once(uri, None, dataset.ids)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (  # a failed LIST: object_store puts the status inline, before the S3 error body
            "Generic S3 error: Error performing list request: Error performing GET http://127.0.0.1:1/bkt?list-type=2"
            "&prefix=t%2F_delta_log%2F in 220.1ms, after 2 retries, max_retries: 2, retry_timeout: 2s  - Server returned "
            'non-2xx status code: 503 Service Unavailable: <?xml version="1.0" encoding="UTF-8"?>\n'
            "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
            "GET /bkt (list t/_delta_log/): 503 SlowDown (Please reduce your request rate.), after 2 retries in 220.1ms",
        ),
        (  # a failed GET: the status on a line of its own in the error chain
            "Error performing GET http://127.0.0.1:1/bkt/t/_delta_log/_last_checkpoint in 2.1s, after 5 retries\n"
            "  ↳ 503 Service Unavailable\n<Error><Code>SlowDown</Code></Error>",
            "GET /bkt/t/_delta_log/_last_checkpoint: 503 SlowDown, after 5 retries in 2.1s",
        ),
    ],
)
def test_a_store_error_is_described_in_one_line_naming_the_request_the_status_and_the_retries(raw: str, expected: str) -> None:
    assert describe_store_error(raw) == expected
