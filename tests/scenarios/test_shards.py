"""Many writers on one table: a file source split into shards (`lakesink ingest --shard I/N`).

Each shard is its own `lakesink ingest` process and app id (`<app id>/shard-I-of-N`), reading only
its own files and committing blind appends to one table while the others do. Real subprocesses,
SIGKILLed at random moments and at named crash points, restarted until each finishes; then every
id is counted by delta-rs and DuckDB, and the log's versions must run 0..V without a gap. Kill
schedules are seeded (printed; LAKESINK_TORTURE_SEED replays them; process timing still varies).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

import pytest

import lakesink
from lakesink import ConfigError, Sink
from lakesink.commit import CommitPolicy
from lakesink.config import Shard
from lakesink.delta.log_store import LogStore, open_log_store
from lakesink.layout import parse_shard_app_id, parse_shard_key, shard_app_id, shard_key
from lakesink.sources.files import FilePosition, FileSource, shard_of
from lakesink.storage.options import StorageOptions
from tests.support.checks import assert_exactly_once, lakesink_status, log_operations, table_version
from tests.support.data import write_ndjson_files
from tests.support.moto_server import MotoServer
from tests.support.torture import torture_seed

APP_ID = "job"


def shard_command(
    source: Path, uri: str, shard: str | None, batch_rows: int, app_id: str = APP_ID, *, as_json: bool = True,
    verbose: bool = False,
) -> list[str]:
    command = [sys.executable, "-m", "lakesink", *(["-v"] if verbose else []), "ingest", str(source), uri, "--app-id",
               app_id, "--batch-rows", str(batch_rows), *(["--json"] if as_json else [])]  # fmt: skip
    return [*command, "--shard", shard] if shard is not None else command


def shard_files(source: Path, index: int, count: int) -> list[str]:
    return [f.path for f in FileSource(str(source)).sharded(Shard(index, count)).files]


def shard_end(source: Path, index: int, count: int) -> int | None:
    """The position shard `index` of `count` commits once it has ingested all its files (None: it has none)."""
    files = len(shard_files(source, index, count))
    return FilePosition(files, 0).encode() if files else None


# -- (1) which files a shard owns ----------------------------------------------------------------------


# Golden values: the split must never change (files would move between shards whose positions do
# not cover them). If this fails, the hash changed: that breaks every sharded job's resume.
GOLDEN = {
    "part-00000.ndjson": {2: 1, 4: 3, 7: 3, 1000: 107},
    "part-00001.ndjson": {2: 0, 4: 2, 7: 2, 1000: 186},
    "2026/11/01/events-0001.ndjson": {2: 1, 4: 3, 7: 2, 1000: 699},
    "landing/ü-ñ.csv": {2: 0, 4: 2, 7: 0, 1000: 886},
}


def test_the_shard_of_a_path_is_a_fixed_hash_of_its_name_and_the_shards_split_a_listing_disjointly_and_completely(
    tmp_path: Path,
) -> None:
    for path, by_count in GOLDEN.items():
        assert {count: shard_of(path, count) for count in by_count} == by_count, path
        assert shard_of(path, 1) == 0
    # The same in another interpreter with another str hash seed (Python's hash() would differ).
    probe = f"from lakesink.sources.files import shard_of; print([shard_of(p, 1000) for p in {list(GOLDEN)!r}])"
    other = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONHASHSEED": "12345"},
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert json.loads(other.stdout) == [by_count[1000] for by_count in GOLDEN.values()]

    source = tmp_path / "source"
    write_ndjson_files(source / "a", files=30, rows_per_file=1)
    write_ndjson_files(source / "b", files=30, rows_per_file=1)
    listing = FileSource(str(source))
    everything = [f.path for f in listing.files]
    for count in (1, 2, 3, 4, 7):
        shards = [listing.sharded(Shard(index, count)) for index in range(count)]
        owned = [[f.path for f in s.files] for s in shards]
        assert sorted(p for paths in owned for p in paths) == everything, f"{count} shards: not a partition"
        for index, paths in enumerate(owned):
            assert paths == sorted(paths), "a shard is read in path order"
            assert all(shard_of(p, count) == index for p in paths)
            assert shards[index].shard == Shard(index, count)
    # A glob and its folder have the same root, so both split the files alike.
    globbed = FileSource(str(source / "*" / "*.ndjson")).sharded(Shard(1, 4))
    assert [f.path for f in globbed.files] == [f.path for f in listing.sharded(Shard(1, 4)).files]
    assert Counter(shard_of(p, 4) for p in everything) == Counter({i: len(shard_files(source, i, 4)) for i in range(4)})


def test_shard_names_and_values_are_built_and_parsed_in_one_place() -> None:
    assert shard_key(1, 4) == "shard-1-of-4"
    assert shard_app_id("events", 1, 4) == "events/shard-1-of-4"
    assert parse_shard_key("shard-1-of-4") == (1, 4)
    assert parse_shard_app_id("eu/events/shard-0-of-16") == ("eu/events", 0, 16)
    for key in ("shard-4-of-4", "shard-01-of-4", "shard-0-of-0", "shard-1-of-4x", "orders/3", "shard-a-of-4"):
        assert parse_shard_key(key) is None, key
    assert parse_shard_app_id("shard-0-of-4") is None and parse_shard_app_id("job/topic/3") is None
    assert Shard.parse("3/8") == Shard.of((3, 8)) == Shard.of("3/8") == Shard(3, 8)
    assert str(Shard(3, 8)) == "3/8"
    for bad in ("4/4", "-1/4", "1/0", "1", "a/b"):
        with pytest.raises(ConfigError, match="I/N"):
            Shard.parse(bad)
    with pytest.raises(ConfigError):
        Shard.of((1, 2, 3))  # type: ignore[arg-type]


# -- (2) four writers, SIGKILLed and restarted ----------------------------------------------------------

CRASH_POINTS = ("after_stage", "before_commit", "after_commit")


@dataclass
class ShardWriter:
    """One shard's `lakesink ingest` process, killed `kills_left` more times before it may finish."""

    index: int
    kills_left: int
    proc: subprocess.Popen[str] | None = None
    kill_at: float | None = None  # a SIGKILL from here at this monotonic time (None: none planned)
    stderr: IO[str] | None = None
    runs: int = 0
    killed: int = 0
    conflicts: int = 0  # log entries another shard created first (from the runs' -v logs)
    finished: dict[str, object] | None = None
    plan: list[str] = field(default_factory=list)


def _start(writer: ShardWriter, source: Path, uri: str, env: dict[str, str], rng: random.Random, scratch: Path) -> None:
    run_env = {k: v for k, v in env.items() if k != "LAKESINK_CRASH_AT"}
    writer.kill_at = None
    batch_rows = rng.randint(4, 12)  # each run cuts its batches elsewhere than the one it resumes
    if writer.kills_left:
        if rng.random() < 0.5:
            point = f"{rng.choice(CRASH_POINTS)}:{rng.randint(1, 6)}"
            run_env["LAKESINK_CRASH_AT"] = point
            writer.plan.append(f"{batch_rows}rows@{point}")
        else:
            delay = rng.uniform(0.3, 2.5)
            writer.kill_at = time.monotonic() + delay
            writer.plan.append(f"{batch_rows}rows@{delay:.2f}s")
    else:
        writer.plan.append(f"{batch_rows}rows@end")
    writer.runs += 1
    writer.stderr = (scratch / f"shard-{writer.index}-run-{writer.runs}.err").open("w+")
    writer.proc = subprocess.Popen(shard_command(source, uri, f"{writer.index}/4", batch_rows, verbose=True), env=run_env,
                                   stdout=subprocess.PIPE, stderr=writer.stderr, text=True)  # fmt: skip


def run_killed_shards(source: Path, uri: str, env: dict[str, str], *, kills: int, seed: int, scratch: Path) -> list[ShardWriter]:
    """Four shard writers at once; each is SIGKILLed `kills` times (by this test after a random delay,
    or by itself at a random crash point), restarted each time, and then runs to its end. Every run
    must end by SIGKILL or exit 0: no ConcurrentWriterError, no transient error."""
    rng = random.Random(seed)
    writers = [ShardWriter(index, kills) for index in range(4)]
    for writer in writers:
        _start(writer, source, uri, env, rng, scratch)
    deadline = time.monotonic() + 240
    while any(w.finished is None for w in writers):
        assert time.monotonic() < deadline, f"seed {seed}: shards still running: {[w.plan for w in writers]}"
        time.sleep(0.02)
        for writer in writers:
            proc = writer.proc
            if writer.finished is not None or proc is None:
                continue
            if proc.poll() is None:
                if writer.kill_at is not None and time.monotonic() >= writer.kill_at:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=60)
                else:
                    continue
            out = proc.stdout.read() if proc.stdout is not None else ""
            assert writer.stderr is not None
            writer.stderr.seek(0)
            err = writer.stderr.read()
            writer.stderr.close()
            writer.conflicts += err.count("another writer created log entry")
            if proc.returncode == -signal.SIGKILL:
                writer.killed += 1
                writer.kills_left -= 1
                _start(writer, source, uri, env, rng, scratch)
                continue
            assert proc.returncode == 0, (
                f"seed {seed}: shard {writer.index} run {writer.runs} ({writer.plan[-1]}) exited {proc.returncode}: {err}"
            )
            writer.finished = json.loads(out)
    return writers


def log_versions_on_store(uri: str, moto_server: MotoServer) -> list[int]:
    """The versions of the JSON log entries in `_delta_log`, as the store lists them."""
    pattern = re.compile(r"(?:^|/)_delta_log/(\d{20})\.json$")
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        pages = moto_server.client().get_paginator("list_objects_v2").paginate(
            Bucket=parsed.netloc, Prefix=parsed.path.strip("/") + "/_delta_log/"
        )
        names = [item["Key"] for page in pages for item in page.get("Contents", [])]
    else:
        names = [f"_delta_log/{name}" for name in os.listdir(Path(uri, "_delta_log"))]
    return sorted(int(m.group(1)) for m in (pattern.search(n) for n in names) if m)


@pytest.mark.timeout(400)
def test_four_shard_writers_sigkilled_and_restarted_write_every_record_once_with_contiguous_versions(
    tmp_path: Path, table_uri: str, storage_options: dict[str, str], moto_server: MotoServer
) -> None:
    """Four `lakesink ingest --shard I/4` processes on one source (60 files, 2,400 ids) and one table,
    in batches of 4 to 12 records (hundreds of commits racing for the next log entry), each SIGKILLed
    three times at random (a delay, or a crash point before, at or after its commit) and restarted
    with another batch size, then run to its end. Every run ends by its SIGKILL or exits 0; each
    shard's position is the end of its own files; the log is versions 0..V, each an entry in
    `_delta_log`, one CREATE TABLE and V WRITEs, each WRITE one shard's and each shard's positions
    growing; every id is in the table exactly once (delta-rs and DuckDB)."""
    seed = torture_seed()
    started = time.monotonic()
    source = tmp_path / "source"
    dataset = write_ndjson_files(source, files=60, rows_per_file=40)
    env = moto_server.env()
    print(f"shards seed {seed} (LAKESINK_TORTURE_SEED={seed} to replay), {table_uri}, "
          f"files per shard {[len(shard_files(source, i, 4)) for i in range(4)]}")  # fmt: skip
    writers = run_killed_shards(source, table_uri, env, kills=3, seed=seed, scratch=tmp_path)

    ends = {shard_app_id(APP_ID, i, 4): shard_end(source, i, 4) for i in range(4)}
    for writer in writers:
        assert writer.finished is not None and writer.finished["end_position"] == ends[writer.finished["app_id"]]
    status = lakesink_status(table_uri, env)
    assert status["positions"] == {app: end for app, end in ends.items() if end is not None}

    version = table_version(table_uri, storage_options)
    assert log_versions_on_store(table_uri, moto_server) == list(range(version + 1)), "the log has a gap"
    assert log_operations(table_uri, storage_options) == ["CREATE TABLE"] + ["WRITE"] * version
    from deltalake import DeltaTable

    history = sorted(DeltaTable(table_uri, storage_options=storage_options).history(), key=lambda e: int(e["version"]))
    by_shard: dict[str, list[int]] = {}
    for entry in history[1:]:
        assert entry["lakesink.appId"] in ends, entry
        by_shard.setdefault(entry["lakesink.appId"], []).append(int(entry["lakesink.position"]))
    for app, positions in by_shard.items():
        assert positions == sorted(set(positions)), f"{app}: positions went back or repeated: {positions}"
        assert positions[-1] == ends[app]
    checked = assert_exactly_once(table_uri, storage_options, dataset.ids)
    print(
        f"SHARDS {table_uri}: seed {seed}, {sum(w.killed for w in writers)} SIGKILLs, "
        f"{sum(w.runs for w in writers)} runs, {version} commits (versions 0..{version} contiguous) and "
        f"{sum(w.conflicts for w in writers)} lost races for the next entry, "
        f"{checked} ids checked: 0 lost, 0 duplicated; {time.monotonic() - started:.1f}s"
    )
    for writer in writers:
        commits = len(by_shard.get(shard_app_id(APP_ID, writer.index, 4), []))
        print(f"  shard {writer.index}/4: {writer.runs} runs {writer.plan}, {commits} commits, {writer.conflicts} lost races")


# -- (3) the split of a job cannot change --------------------------------------------------------------


def test_changing_the_number_of_shards_of_a_job_is_refused_naming_what_the_table_holds(tmp_path: Path) -> None:
    """A table holding shards of 4 of `job`: a run with --shard I/2 or without --shard exits 1 naming
    the shards the table holds and what to do, having written nothing; the same split reruns (adds
    nothing) and another app id is a job of its own. An unsharded job refuses shards the same way."""
    source = tmp_path / "source"
    write_ndjson_files(source, files=12, rows_per_file=5)
    table = str(tmp_path / "table")
    for index in range(4):
        done = subprocess.run(shard_command(source, table, f"{index}/4", 7), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    version = table_version(table, {})
    committed = [shard_app_id(APP_ID, i, 4) for i in range(4) if shard_end(source, i, 4) is not None]
    held = f"{len(committed)} of 4 shards committed: {', '.join(committed)}"

    whole = "this run reads the whole source under app id 'job' itself"
    for shard, doing in (("1/2", "this run is job/shard-1-of-2"), (None, whole)):
        refused = subprocess.run(shard_command(source, table, shard, 7), capture_output=True, text=True, timeout=120)
        assert refused.returncode == 1, refused.stderr
        answer = json.loads(refused.stdout)
        assert (answer["ok"], answer["error"], answer["kind"]) == (False, "ConfigError", "terminal")
        message = answer["message"]
        assert f"holds positions of app id 'job' split into shards ({held}), but {doing}." in message, message
        assert "Keep the job's split (--shard I/4 for I in 0..3)" in message and "a new --app-id" in message
        assert "nothing was written" in message
    assert table_version(table, {}) == version

    again = subprocess.run(shard_command(source, table, "2/4", 5), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and json.loads(again.stdout)["commits"] == 0, again.stderr
    with pytest.raises(ConfigError, match=r"Keep the job's split \(shard=I/4 for I in 0\.\.3\)"):
        lakesink.ingest(str(source), table, app_id=APP_ID, shard=(0, 8))
    other = subprocess.run(shard_command(source, table, "0/2", 100, app_id="other"), capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert other.returncode == 0, other.stderr

    plain = str(tmp_path / "plain")
    assert subprocess.run(shard_command(source, plain, None, 100), capture_output=True, timeout=120).returncode == 0
    refused = subprocess.run(shard_command(source, plain, "0/4", 7, as_json=False), capture_output=True, text=True,
                             timeout=120)  # fmt: skip
    assert refused.returncode == 1
    message = " ".join(refused.stderr.split())
    end = FilePosition(12, 0).encode()
    assert f"holds position {end} of app id 'job' itself, committed by runs over the whole source, but this run is " \
           "job/shard-0-of-4" in message, message  # fmt: skip
    assert "without --shard I/N" in message
    with pytest.raises(ConfigError, match="without shard=I/N"):
        lakesink.watch(str(source), plain, app_id=APP_ID, stop=threading.Event(), shard="0/4", max_rounds=1)


# -- (4) status -----------------------------------------------------------------------------------------


def test_status_shows_each_shards_position_against_its_own_files_and_lag(tmp_path: Path) -> None:
    """`lakesink status --json --source`: one entry per shard (`job/shard-I-of-N`, shard "I/N", job
    "job"), its file index counting the shard's own files; a file landing later is lag of its own
    shard only. A shard without files commits nothing and is not listed."""
    source = tmp_path / "source"
    write_ndjson_files(source, files=12, rows_per_file=5)  # shard 1 of 4 owns none of these
    assert shard_files(source, 1, 4) == []
    table = str(tmp_path / "table")
    for index in range(4):
        done = subprocess.run(shard_command(source, table, f"{index}/4", 7), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["app_id"] == f"job/shard-{index}-of-4" and report["files_total"] == len(shard_files(source, index, 4))
    (source / "part-00012.ndjson").write_text('{"id": 60, "name": "late", "score": 1.0}\n')
    late = shard_of("part-00012.ndjson", 4)

    status = lakesink_status_with_source(table, source)
    assert status["positions"] == {shard_app_id(APP_ID, i, 4): shard_end(source, i, 4) for i in (0, 2, 3)} | {
        shard_app_id(APP_ID, late, 4): FilePosition(len(shard_files(source, late, 4)) - 1, 0).encode()
    }
    apps = {a["app_id"]: a for a in status["apps"]}  # type: ignore[attr-defined]
    for index in (0, 2, 3):
        app = apps[shard_app_id(APP_ID, index, 4)]
        files = shard_files(source, index, 4)
        covered = len(files) - (1 if index == late else 0)
        assert (app["shard"], app["job"], app["file_index"], app["record"]) == (f"{index}/4", APP_ID, covered, 0)
        assert app["last_file"] == files[covered - 1]
        lag = (1, (source / "part-00012.ndjson").stat().st_size) if index == late else (0, 0)
        assert (app["lag_files"], app["lag_bytes"]) == lag

    text = subprocess.run([sys.executable, "-m", "lakesink", "status", table], capture_output=True, text=True, timeout=120)
    assert text.returncode == 0, text.stderr
    line = next(x for x in text.stdout.splitlines() if x.startswith("app job/shard-0-of-4:"))
    covered0 = len(shard_files(source, 0, 4)) - (1 if late == 0 else 0)
    assert f"position {FilePosition(covered0, 0).encode()} = file {covered0} of shard 0/4, record 0" in line, line


def lakesink_status_with_source(table: str, source: Path) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-m", "lakesink", "status", table, "--source", str(source), "--json"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


# -- watch, and the commit under contention ---------------------------------------------------------------


def test_watching_each_shard_ingests_its_own_files_and_together_every_record_once(tmp_path: Path) -> None:
    """`lakesink.watch(..., shard=(I, 2))` for both shards, two polls each: every id once."""
    source = tmp_path / "source"
    dataset = write_ndjson_files(source, files=10, rows_per_file=8)
    table = str(tmp_path / "table")
    for index in range(2):
        report = lakesink.watch(str(source), table, app_id=APP_ID, stop=threading.Event(), shard=(index, 2),
                                poll_seconds=0.01, max_rounds=2, batch_rows=5)  # fmt: skip
        assert report.app_id == f"job/shard-{index}-of-2" and report.end_position == shard_end(source, index, 2)
    assert_exactly_once(table, {}, dataset.ids)


class InFlight:
    """A real log store where, `times` times, another writer's create of the entry we try is in flight:
    our create is refused (as S3 answers 409) while nothing is readable yet; then that writer's
    commit (`land`, another app id) is there."""

    def __init__(self, real: LogStore, land: object, times: int) -> None:
        self.real, self.land, self.times = real, land, times
        self.pending: int | None = None  # the entry being created by the other writer
        self.raced: set[int] = set()
        self.refused = 0

    def create(self, version: int, body: bytes) -> bool:
        if self.times and version not in self.raced:
            self.times -= 1
            self.raced.add(version)
            self.pending, self.refused = version, self.refused + 1
            return False
        return self.real.create(version, body)

    def read(self, version: int) -> bytes | None:
        if self.pending == version:
            self.pending = None
            self.land()  # type: ignore[operator]  # the other writer's create lands after our read
            return None
        return self.real.read(version)


def test_creates_refused_while_other_app_ids_commits_are_in_flight_never_exhaust_the_attempts(
    table_uri: str, storage_options: dict[str, str]
) -> None:
    """Five times in one write, another app id's commit of the entry we try is in flight (refused,
    unreadable, then there): with max_attempts=3 the write still lands after them, each position once.
    (Such refusals counted as unanswered creates, and gave up as CommitOutcomeUnknown.)"""
    import pyarrow as pa

    def rows(first: int) -> pa.Table:
        return pa.table({"id": pa.array(range(first, first + 3), pa.int64())})

    other = Sink(table_uri, app_id="other", storage_options=storage_options)
    others: list[int] = []

    def land() -> None:
        first = 1000 + 10 * len(others)
        assert other.write(rows(first), position=len(others) + 1).status == "committed"
        others.append(first)

    real = open_log_store(table_uri, StorageOptions.resolve(storage_options, environ={}))
    assert real is not None
    store = InFlight(real, land, times=0)
    policy = CommitPolicy(max_attempts=3, resolve_attempts=2, backoff_seconds=0.01)
    with other, Sink(table_uri, app_id=APP_ID, storage_options=storage_options, log_store=store, commit_policy=policy,
                     sleep=lambda _: None) as sink:  # fmt: skip
        assert sink.write(rows(0), position=1).status == "committed"
        store.times = 5
        result = sink.write(rows(10), position=2)
        assert (result.status, store.refused, len(others)) == ("committed", 5, 5)
        assert result.table_version == 7  # created, ours, five of theirs, ours
    assert_exactly_once(table_uri, storage_options, [0, 1, 2, 10, 11, 12] + [f + i for f in others for i in range(3)])
