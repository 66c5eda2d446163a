"""Maintenance: `gc` deletes staged files no version references (never a young or a referenced one),
and `verify` finds referenced files that are missing, torn or duplicated. Local and moto S3, real files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

import lakesink
from lakesink.layout import ledger_path
from lakesink.storage.objects import ArrowObjectStore, ObjectInfo, open_store
from lakesink.storage.uri import normalize_table_uri
from lakesink.write.stage import stage_batch
from tests.conftest import run_cli
from tests.support.checks import (
    assert_exactly_once,
    parquet_files_on_store,
    read_ids_deltalake,
    table_files,
)
from tests.support.data import Dataset, write_ndjson_files
from tests.support.moto_server import MotoServer

APP_ID = "job"
HOUR = timedelta(hours=1)


def store_for(uri: str, options: dict[str, str]) -> ArrowObjectStore:
    return open_store(normalize_table_uri(uri), lakesink.StorageOptions.resolve(options))


def run_ingest(dataset: Dataset, uri: str, env: dict[str, str], *, crash_at: str | None = None
               ) -> subprocess.CompletedProcess[str]:
    """A real `python -m lakesink ingest` in batches of 20, SIGKILLed at `crash_at` if given."""
    run_env = {k: v for k, v in env.items() if k != "LAKESINK_CRASH_AT"}
    if crash_at is not None:
        run_env["LAKESINK_CRASH_AT"] = crash_at
    command = [sys.executable, "-m", "lakesink", "ingest", str(dataset.directory), uri, "--app-id", APP_ID,
               "--batch-rows", "20", "--json"]  # fmt: skip
    return subprocess.run(command, env=run_env, capture_output=True, text=True, timeout=240)


def write_batches(uri: str, options: dict[str, str], *, app_id: str, batches: int, rows: int = 10, first_id: int = 0) -> None:
    with lakesink.Sink(uri, app_id=app_id, storage_options=options) as sink:
        for n in range(batches):
            start = first_id + n * rows
            sink.write(pa.table({"id": list(range(start, start + rows))}), position=n + 1)


def stage_orphan(store: ArrowObjectStore, *, position: int, ids: list[int]) -> ObjectInfo:
    """A Parquet file staged like a batch whose writer died before committing it."""
    [staged] = stage_batch(store, pa.table({"id": ids}), app_id="zombie", position=position)
    info = store.info(staged.path)
    assert info is not None
    return info


def with_cli_options(uri: str, options: dict[str, str]) -> list[str]:
    return [uri, *(arg for k, v in options.items() for arg in ("--storage-option", f"{k}={v}"))]


def test_an_old_orphan_is_deleted_while_a_young_orphan_and_every_referenced_file_stay(
    table_uri: str, storage_options: dict[str, str]
) -> None:
    """Referenced means named by any log entry: files a compaction removed stay for time travel."""
    write_batches(table_uri, storage_options, app_id="job", batches=3)
    DeltaTable(table_uri, storage_options=storage_options).optimize.compact()
    store = store_for(table_uri, storage_options)
    referenced = parquet_files_on_store(table_uri, storage_options)
    assert len(referenced) == 4  # three appended files, removed by the compaction, and its output
    ids_before = sorted(read_ids_deltalake(table_uri, storage_options))

    old = stage_orphan(store, position=98, ids=[1000])
    young = stage_orphan(store, position=99, ids=[2000])
    while young.mtime_ns - old.mtime_ns < 10**9:  # S3 listings have whole seconds: a second apart tells them apart
        time.sleep(0.1)
        young = stage_orphan(store, position=99, ids=[2000])
    # The clock puts the grace boundary between the two orphans; every referenced file is older still.
    report = lakesink.collect_garbage(
        table_uri, older_than=HOUR, storage_options=storage_options, clock=lambda: young.mtime_ns / 1e9 + 3600 - 0.5
    )

    assert report.orphan_files == (old.path,) and report.deleted == (old.path,)
    assert (report.deleted_bytes, report.kept_young, report.referenced_files, report.data_files) == (old.size, 1, 4, 6)
    assert store.info(old.path) is None and store.info(young.path) is not None
    assert parquet_files_on_store(table_uri, storage_options) == sorted([*referenced, store_uri(table_uri, young.path)])
    assert sorted(read_ids_deltalake(table_uri, storage_options)) == ids_before == list(range(30))
    first_version = DeltaTable(table_uri, storage_options=storage_options, version=1)
    assert sorted(first_version.to_pyarrow_dataset().to_table(use_threads=False).column("id").to_pylist()) == list(range(10))


def store_uri(table_uri: str, path: str) -> str:
    return f"{table_uri}/{path}"


def test_files_named_only_by_a_checkpoint_or_a_remove_action_are_never_collected(
    table_uri: str, storage_options: dict[str, str]
) -> None:
    """After log cleanup drops the commits before the checkpoint, their files are named only there."""
    write_batches(table_uri, storage_options, app_id="job", batches=21, rows=2)  # checkpoint at version 20
    table = DeltaTable(table_uri, storage_options=storage_options)
    table.optimize.compact()
    # A zero log retention lets delta-rs's own cleanup (run by this commit) delete the early commits.
    table.alter.set_table_properties({"delta.logRetentionDuration": "interval 0 seconds"})
    store = store_for(table_uri, storage_options)
    log = [f.path for f in store.list_files("_delta_log")]
    assert "_delta_log/00000000000000000001.json" not in log and any(".checkpoint." in p for p in log)
    on_store = parquet_files_on_store(table_uri, storage_options)

    report = lakesink.collect_garbage(table_uri, storage_options=storage_options, clock=lambda: time.time() + 30 * 86400)

    assert (report.orphan_files, report.deleted, report.kept_young) == ((), (), 0)
    assert report.referenced_files == report.data_files == len(on_store) == 22
    assert parquet_files_on_store(table_uri, storage_options) == on_store
    assert sorted(read_ids_deltalake(table_uri, storage_options)) == list(range(42))


def test_files_in_percent_encoded_partitions_and_in_a_nested_table_are_never_collected(
    table_uri: str, storage_options: dict[str, str]
) -> None:
    """The log names `day=a%2Fb` as `day=a%252Fb`: gc must decode it as delta-rs does, or delete live data."""
    days = ["a/b", "x y", "é%", "plain"]
    with lakesink.Sink(table_uri, app_id="job", storage_options=storage_options, partition_by=["day"]) as sink:
        sink.write(pa.table({"id": [0, 1, 2, 3], "day": days}), position=1)
    write_batches(f"{table_uri}/nested", storage_options, app_id="inner", batches=1)  # its own log names its files
    on_store = parquet_files_on_store(table_uri, storage_options)
    assert len(on_store) == 5

    report = lakesink.collect_garbage(table_uri, storage_options=storage_options, clock=lambda: time.time() + 86400)

    assert (report.orphan_files, report.deleted, report.referenced_files, report.data_files) == ((), (), 4, 4)
    assert parquet_files_on_store(table_uri, storage_options) == on_store
    assert lakesink.verify_table(table_uri, key_columns=["day", "id"], storage_options=storage_options).ok
    assert sorted(read_ids_deltalake(table_uri, storage_options)) == [0, 1, 2, 3]
    assert read_ids_deltalake(f"{table_uri}/nested", storage_options) == list(range(10))


def test_a_dry_run_lists_the_orphans_and_deletes_nothing(table_uri: str, storage_options: dict[str, str]) -> None:
    write_batches(table_uri, storage_options, app_id="job", batches=2)
    orphan = stage_orphan(store_for(table_uri, storage_options), position=7, ids=[7])
    before = parquet_files_on_store(table_uri, storage_options)

    dry = run_cli("gc", *with_cli_options(table_uri, storage_options), "--older-than", "0s", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert (report["dry_run"], report["orphan_files"], report["deleted"]) == (True, [orphan.path], [])
    assert report["orphan_bytes"] == orphan.size
    assert parquet_files_on_store(table_uri, storage_options) == before

    text = run_cli("gc", *with_cli_options(table_uri, storage_options), "--older-than", "0s", "--dry-run")
    assert text.returncode == 0 and f"would delete  {orphan.path}" in text.stdout
    assert parquet_files_on_store(table_uri, storage_options) == before

    real = run_cli("gc", *with_cli_options(table_uri, storage_options), "--older-than", "0s")
    assert real.returncode == 0 and f"deleted  {orphan.path}" in real.stdout, real.stdout + real.stderr
    assert parquet_files_on_store(table_uri, storage_options) == table_files(table_uri, storage_options)


def test_a_batch_staged_by_an_ingest_killed_after_stage_is_collected_after_the_grace_period_and_a_rerun_stays_exactly_once(
    tmp_path: Path, table_uri: str, storage_options: dict[str, str], moto_server: MotoServer
) -> None:
    dataset = write_ndjson_files(tmp_path / "source", files=3, rows_per_file=25)
    positions = dataset.batch_positions(20)
    env = moto_server.env()
    crashed = run_ingest(dataset, table_uri, env, crash_at="after_stage:2")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    store = store_for(table_uri, storage_options)
    staged = sorted(set(parquet_files_on_store(table_uri, storage_options)) - set(table_files(table_uri, storage_options)))
    # The second batch at least: on the store, in no commit (the encoder may have written later ones too).
    assert len(staged) >= 1
    # On local disk an encoder killed mid-file leaves its `<name>.<pid>.tmp`: garbage too.
    partial = [] if table_uri.startswith("s3://") else [str(p) for p in Path(table_uri).rglob("*.parquet.*.tmp")]
    staged = sorted(staged + partial)
    committed_ledger, orphan_ledger = ledger_path(APP_ID, positions[0]), ledger_path(APP_ID, positions[1])
    assert store.info(orphan_ledger) is not None

    now = lakesink.collect_garbage(table_uri, storage_options=storage_options)
    assert (now.deleted, now.kept_young, now.kept_young_ledgers) == ((), len(staged), 1)

    later = lakesink.collect_garbage(table_uri, storage_options=storage_options, clock=lambda: time.time() + 2 * 3600)
    assert [store_uri(table_uri, p) for p in later.orphan_files] == staged
    assert later.orphan_ledgers == (orphan_ledger,)
    assert set(later.deleted) == {*later.orphan_files, orphan_ledger} and later.kept_young == 0
    assert parquet_files_on_store(table_uri, storage_options) == table_files(table_uri, storage_options)
    assert store.info(committed_ledger) is not None and store.info(orphan_ledger) is None

    rerun = run_ingest(dataset, table_uri, env)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["start_position"] == positions[0]
    assert_exactly_once(table_uri, storage_options, dataset.ids)
    after = lakesink.collect_garbage(table_uri, storage_options=storage_options, clock=lambda: time.time() + 2 * 3600)
    assert (after.orphan_files, after.orphan_ledgers) == ((), ())


def test_verify_passes_on_a_good_table(table_uri: str, storage_options: dict[str, str]) -> None:
    write_batches(table_uri, storage_options, app_id="job", batches=3)
    done = run_cli("verify", *with_cli_options(table_uri, storage_options), "--key", "id", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert (report["ok"], report["files_checked"], report["rows_checked"], report["problems"]) == (True, 3, 30, [])
    assert (report["keys_checked"], report["duplicate_keys"]) == (True, 0)
    text = run_cli("verify", *with_cli_options(table_uri, storage_options))
    assert text.returncode == 0 and "ok " in text.stdout


@pytest.mark.parametrize(
    ("damage", "kind"),
    [("delete", "missing"), ("truncate", "size"), ("overwrite the footer", "unreadable")],
)
def test_verify_fails_and_names_the_file_when_a_referenced_file_is_damaged(
    damage: str, kind: str, table_uri: str, storage_options: dict[str, str]
) -> None:
    write_batches(table_uri, storage_options, app_id="job", batches=3)
    store = store_for(table_uri, storage_options)
    victim = sorted(f.path for f in store.list_files("") if f.path.endswith(".parquet") and "/" not in f.path)[1]
    body = store.read_bytes(victim)
    if damage == "delete":
        store.delete(victim)
    elif damage == "truncate":
        store.write_bytes(victim, body[: len(body) // 2])
    else:
        store.write_bytes(victim, body[:-8] + b"\0" * 8)  # same size, no Parquet footer

    done = run_cli("verify", *with_cli_options(table_uri, storage_options), "--key", "id")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"PROBLEM     {kind}: {victim}" in done.stdout
    assert "what to do" in done.stdout and "not checked on (id)" in done.stdout
    report = lakesink.verify_table(table_uri, storage_options=storage_options)
    assert not report.ok and [(p.path, p.kind) for p in report.problems] == [(victim, kind)]


def test_verify_reports_duplicate_keys_when_the_same_rows_are_appended_by_another_app_id(
    table_uri: str, storage_options: dict[str, str]
) -> None:
    write_batches(table_uri, storage_options, app_id="first", batches=5)  # ids 0..49
    write_batches(table_uri, storage_options, app_id="second", batches=2, first_id=20)  # ids 20..39 again

    done = run_cli("verify", *with_cli_options(table_uri, storage_options), "--key", "id", "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert (report["ok"], report["problems"], report["duplicate_keys"], report["duplicate_rows"]) == (False, [], 20, 20)
    assert report["duplicate_sample"] == [{"key": {"id": i}, "count": 2} for i in range(20, 30)]
    text = run_cli("verify", *with_cli_options(table_uri, storage_options), "--key", "id")
    assert text.returncode == 1 and "duplicates: 20 values of (id)" in text.stdout and "id=20 (2x)" in text.stdout


def test_gc_and_verify_without_a_table_or_with_a_bad_argument_exit_with_a_reason(tmp_path: Path) -> None:
    missing = str(tmp_path / "nothing")
    for command in (["gc", missing], ["verify", missing]):
        done = run_cli(*command)
        assert done.returncode == 1 and "no Delta table" in done.stderr
    assert run_cli("gc", missing, "--older-than", "soon").returncode == 2
    with pytest.raises(lakesink.ConfigError):
        lakesink.collect_garbage(missing, older_than=-HOUR)
    write_batches(str(tmp_path / "t"), {}, app_id="job", batches=1)
    unknown = run_cli("verify", str(tmp_path / "t"), "--key", "nope", "--json")
    assert unknown.returncode == 1 and json.loads(unknown.stdout)["error"] == "ConfigError"


def test_files_a_killed_writers_unlinked_log_entry_names_are_collected_after_the_grace_period(tmp_path: Path) -> None:
    """A local commit is written under a temporary name in `_delta_log`, then linked into place; a
    writer SIGKILLed in between leaves that file behind, naming the batch's files. While it is
    younger than the grace period it may be a commit in flight, and protects them; once older, it
    is a dead writer's, and they are orphans (found in CI: such files outlived `gc --older-than 0s`)."""
    uri = str(tmp_path / "table")
    write_batches(uri, {}, app_id="job", batches=2)
    store = store_for(uri, {})
    orphan = stage_orphan(store, position=3, ids=[1000])
    entry = json.dumps({"add": {"path": orphan.path, "partitionValues": {}, "size": orphan.size, "modificationTime": 0,
                                "dataChange": True}})  # fmt: skip
    temp = tmp_path / "table" / "_delta_log" / f"_commit_{'ab' * 16}.json.tmp"
    temp.write_text(entry + "\n")
    later = time.time() + 3600 - 60  # the temporary entry and the orphan are both 59 minutes old

    kept = lakesink.collect_garbage(uri, older_than=HOUR, clock=lambda: later)
    assert kept.orphan_files == () and store.info(orphan.path) is not None
    collected = lakesink.collect_garbage(uri, older_than=timedelta(minutes=30), clock=lambda: later)
    assert collected.deleted == (orphan.path,) and store.info(orphan.path) is None
    assert temp.exists()  # gc never deletes in _delta_log
    assert sorted(read_ids_deltalake(uri, {})) == list(range(20))
