"""lakesink's own commits: create-only log entries, what they hold, and what happens around them.

Every test runs on local disk and on the moto S3 server (through the real clients: os.link and
boto3's conditional PUT), and checks the table with delta-rs and DuckDB.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from lakesink import CommitOutcomeUnknown, CommitPolicy, ConfigError, SchemaMismatch, Sink, StorageUnavailable
from lakesink.delta.log_store import (
    ConditionalPutUnsupported,
    LocalLogStore,
    LogStore,
    S3LogStore,
    open_log_store,
)
from lakesink.storage.options import StorageOptions
from tests.support.checks import assert_exactly_once, log_operations, table_version
from tests.support.moto_server import MotoServer

QUICK = CommitPolicy(max_attempts=3, resolve_attempts=2, backoff_seconds=0.01)


def rows(position: int, n: int = 3) -> pa.Table:
    return pa.table({"id": pa.array([position * 100 + i for i in range(n)], pa.int64())})


def ids(*positions: int, n: int = 3) -> list[int]:
    return [p * 100 + i for p in positions for i in range(n)]


def log_store_of(uri: str, options: dict[str, str]) -> LogStore:
    store = open_log_store(uri, StorageOptions.resolve(options, environ={}))
    assert store is not None
    return store


def add_actions(uri: str, options: dict[str, str]) -> list[dict[str, object]]:
    """Every add action of the current snapshot, without the modification time, sorted by path."""
    adds = pa.table(DeltaTable(uri, storage_options=options).get_add_actions(flatten=True)).drop(["modification_time"])
    return sorted(adds.to_pylist(), key=lambda a: str(a["path"]))


# -- what an entry holds ---------------------------------------------------------------------------


def test_lakesinks_log_entry_describes_the_files_exactly_as_delta_rs_would_and_every_reader_reads_them(
    table_uri: str, storage_options: dict[str, str]
) -> None:
    """The same batches (partition values that need escaping, nulls, an empty string) go to two
    tables: one committed by lakesink's own log entries, one through delta-rs. Both snapshots list
    the same add actions (path, size, partition values, stats), and delta-rs, DuckDB and Polars read
    the same rows from both."""
    data = pa.table(
        {
            "id": pa.array(range(8), pa.int64()),
            "p": ["a b", "x/y%", "", None, "ü=1", "a b", "..", "#?&"],
            "v": [1.5, None, 2.5, 3.5, None, 4.5, 5.5, 6.5],
        }
    )
    ours, theirs = f"{table_uri}/ours", f"{table_uri}/theirs"
    with Sink(ours, app_id="job", storage_options=storage_options, partition_by=["p"]) as sink:
        assert sink.write(data.slice(0, 5), position=1).status == "committed"
        assert sink.write(data.slice(5), position=2).status == "committed"
    refusing = Faulty(log_store_of(theirs, storage_options))
    with Sink(theirs, app_id="job", storage_options=storage_options, partition_by=["p"], log_store=refusing) as sink:
        sink.write(data.slice(0, 5), position=1)  # creates the table; delta-rs commits from here on
        refusing.unsupported = True
        assert sink.write(data.slice(5), position=2).status == "committed"
    latest = DeltaTable(ours, storage_options=storage_options).history(1)[0]
    assert latest["clientVersion"].startswith("lakesink-") and len(latest["lakesink.writeId"]) == 32
    assert DeltaTable(theirs, storage_options=storage_options).history(1)[0]["clientVersion"].startswith("delta-rs")
    # Same content, same names (Sink.write names files by their content): the add actions must match.
    ours_adds = [{**a, "path": str(a["path"]).replace("/ours/", "/")} for a in add_actions(ours, storage_options)]
    theirs_adds = [{**a, "path": str(a["path"]).replace("/theirs/", "/")} for a in add_actions(theirs, storage_options)]
    assert ours_adds == theirs_adds
    assert len(ours_adds) == 7  # 4 partitions in the first batch ("" and null are one: null), 3 in the second
    for uri in (ours, theirs):
        assert_exactly_once(uri, storage_options, range(8))
        dt = DeltaTable(uri, storage_options=storage_options)
        assert dt.transaction_version("job") == 2
        by_id = {r["id"]: (r["p"], r["v"]) for r in dt.to_pyarrow_dataset().to_table(use_threads=False).to_pylist()}
        # Delta writes an empty partition value as null (the Hive default partition).
        assert by_id == {
            i: (p if p != "" else None, v) for i, p, v in zip(range(8), data["p"].to_pylist(), data["v"].to_pylist(), strict=True)
        }
        polars = pl.read_delta(uri, storage_options=storage_options or None).sort("id")
        assert polars["id"].to_list() == list(range(8))


def test_a_checkpoint_is_written_every_interval_and_holds_the_txn_a_new_sink_resumes_from(
    table_uri: str, storage_options: dict[str, str]
) -> None:
    with Sink(table_uri, app_id="job", storage_options=storage_options, checkpoint_interval=5) as sink:
        for position in range(1, 24):
            assert sink.write(rows(position), position=position).status == "committed"
    log = DeltaTable(table_uri, storage_options=storage_options)
    assert log.version() == 23
    checkpoints = sorted(
        int(f.split(".")[0]) for f in _log_names(table_uri, storage_options) if f.endswith(".checkpoint.parquet")
    )
    # Due every 5 versions and written in the background: one that falls due while another is being
    # written is coalesced into the newest (on a slow store 10 or 15 may be skipped), and the last one
    # due (20) is written before the Sink's close returns.
    assert set(checkpoints) <= {5, 10, 15, 20} and checkpoints[0] == 5 and checkpoints[-1] == 20
    last = json.loads(_read_log_file(table_uri, storage_options, "_last_checkpoint"))
    assert last["version"] == 20
    # The checkpoint alone carries the txn of the position committed at version 20.
    checkpoint = pq.read_table(pa.BufferReader(_read_log_file(table_uri, storage_options, f"{20:020d}.checkpoint.parquet")))
    txns = [t for t in checkpoint.column("txn").to_pylist() if t]
    assert [(t["appId"], t["version"]) for t in txns] == [("job", 20)]
    with Sink(table_uri, app_id="job", storage_options=storage_options) as again:
        assert again.committed_position() == 23
        assert again.write(rows(23), position=23).status == "skipped"
    assert_exactly_once(table_uri, storage_options, ids(*range(1, 24)))


def _log_names(uri: str, options: dict[str, str]) -> list[str]:
    from lakesink.storage.objects import open_store

    return [
        i.path.rsplit("/", 1)[-1] for i in open_store(uri, StorageOptions.resolve(options, environ={})).list_files("_delta_log")
    ]


def _read_log_file(uri: str, options: dict[str, str], name: str) -> bytes:
    from lakesink.storage.objects import open_store

    return open_store(uri, StorageOptions.resolve(options, environ={})).read_bytes(f"_delta_log/{name}")


# -- create-only --------------------------------------------------------------------------------------


def test_of_many_concurrent_creates_of_one_log_entry_exactly_one_wins_and_its_body_is_the_entry(
    table_uri: str, storage_options: dict[str, str]
) -> None:
    """8 threads, each with its own client, create the same version at once, 20 versions in a row."""
    if not table_uri.startswith("s3://"):
        Path(table_uri, "_delta_log").mkdir(parents=True)
    stores = [log_store_of(table_uri, storage_options) for _ in range(8)]
    for version in range(20):
        barrier = threading.Barrier(len(stores))
        won: list[int] = []

        def create(
            index: int, store: LogStore, version: int = version, barrier: threading.Barrier = barrier, won: list[int] = won
        ) -> None:
            barrier.wait()
            if store.create(version, f"writer {index}\n".encode()):
                won.append(index)

        threads = [threading.Thread(target=create, args=(i, s)) for i, s in enumerate(stores)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, f"version {version}: {len(won)} writers created it"
        assert stores[0].read(version) == f"writer {won[0]}\n".encode()
    assert stores[0].read(20) is None
    if not table_uri.startswith("s3://"):
        assert sorted(p.name for p in Path(table_uri, "_delta_log").iterdir()) == [f"{v:020d}.json" for v in range(20)]


def test_the_log_store_follows_the_uri_and_leaves_tables_with_a_commit_lock_to_delta_rs(s3_options: dict[str, str]) -> None:
    assert isinstance(open_log_store("/tmp/t", StorageOptions.resolve({}, environ={})), LocalLogStore)
    assert isinstance(open_log_store("s3://b/t", StorageOptions.resolve(s3_options, environ={})), S3LogStore)
    for option in (
        {"AWS_S3_LOCKING_PROVIDER": "dynamodb"},
        {"aws_s3_allow_unsafe_rename": "true"},
        {"conditional_put": "dynamo:x"},
    ):
        assert open_log_store("s3://b/t", StorageOptions.resolve({**s3_options, **option}, environ={})) is None
    secret = s3_options["AWS_SECRET_ACCESS_KEY"]
    assert secret not in repr(open_log_store("s3://b/t", StorageOptions.resolve(s3_options, environ={})))


# -- faults at the create, through the injectable log store -------------------------------------------


class Faulty:
    """A real log store whose next `create`s fail on cue: before applying, or after (the answer is lost)."""

    def __init__(self, real: LogStore) -> None:
        self.real = real
        self.lose_answers = 0
        self.fail_before = 0
        self.fail_reads = 0
        self.unsupported = False
        self.creates = 0

    def create(self, version: int, body: bytes) -> bool:
        self.creates += 1
        if self.unsupported:
            raise ConditionalPutUnsupported("the store does not support If-None-Match (test)")
        if self.fail_before:
            self.fail_before -= 1
            raise StorageUnavailable("connection reset (test: before the store applied it)")
        created = self.real.create(version, body)
        if self.lose_answers:
            self.lose_answers -= 1
            raise StorageUnavailable("connection reset (test: after the store applied it)")
        return created

    def read(self, version: int) -> bytes | None:
        if self.fail_reads:
            self.fail_reads -= 1
            raise StorageUnavailable("connection reset (test: read)")
        return self.real.read(version)


def faulty_sink(table_uri: str, storage_options: dict[str, str]) -> tuple[Sink, Faulty]:
    faulty = Faulty(log_store_of(table_uri, storage_options))
    sink = Sink(
        table_uri, app_id="job", storage_options=storage_options, log_store=faulty, commit_policy=QUICK, sleep=lambda _: None
    )
    return sink, faulty


def test_a_create_whose_answer_is_lost_is_read_back_recognised_as_ours_and_reported_committed_once(
    table_uri: str, storage_options: dict[str, str]
) -> None:
    sink, faulty = faulty_sink(table_uri, storage_options)
    with sink:
        assert sink.write(rows(1), position=1).status == "committed"
        faulty.lose_answers = 1
        result = sink.write(rows(2), position=2)
        assert (result.status, result.table_version) == ("committed", 2)
        assert "answer was lost" in result.reason
        assert faulty.creates == 2  # read back, never sent again
        assert sink.write(rows(2), position=2).status == "skipped"
        assert sink.write(rows(3), position=3).table_version == 3
    assert log_operations(table_uri, storage_options) == ["CREATE TABLE", "WRITE", "WRITE", "WRITE"]
    assert_exactly_once(table_uri, storage_options, ids(1, 2, 3))


def test_a_create_that_failed_before_landing_is_found_absent_and_sent_again_once(
    table_uri: str, storage_options: dict[str, str]
) -> None:
    sink, faulty = faulty_sink(table_uri, storage_options)
    with sink:
        sink.write(rows(1), position=1)
        faulty.fail_before = 2
        result = sink.write(rows(2), position=2)
        assert (result.status, result.table_version, faulty.creates) == ("committed", 2, 4)
    assert log_operations(table_uri, storage_options) == ["CREATE TABLE", "WRITE", "WRITE"]
    assert_exactly_once(table_uri, storage_options, ids(1, 2))


def test_an_unanswered_create_with_an_unreadable_log_is_commit_outcome_unknown_and_the_rerun_decides(
    table_uri: str, storage_options: dict[str, str]
) -> None:
    """The create landed, its answer and every read back are lost: the write raises
    CommitOutcomeUnknown (retryable); the same write again finds its position and skips it."""
    sink, faulty = faulty_sink(table_uri, storage_options)
    with sink:
        sink.write(rows(1), position=1)
        faulty.lose_answers, faulty.fail_reads = 1, QUICK.resolve_attempts
        with pytest.raises(CommitOutcomeUnknown, match="may or may not have landed") as failure:
            sink.write(rows(2), position=2)
        assert failure.value.retryable
    with Sink(table_uri, app_id="job", storage_options=storage_options) as rerun:
        assert rerun.write(rows(2), position=2).status == "skipped"
    assert_exactly_once(table_uri, storage_options, ids(1, 2))


def test_creates_that_never_land_give_up_as_commit_outcome_unknown_with_the_table_unchanged(
    table_uri: str, storage_options: dict[str, str]
) -> None:
    sink, faulty = faulty_sink(table_uri, storage_options)
    with sink:
        sink.write(rows(1), position=1)
        faulty.fail_before = 1_000
        with pytest.raises(CommitOutcomeUnknown, match="staged files are kept"):
            sink.write(rows(2), position=2)
        assert faulty.creates == 1 + QUICK.max_attempts
        assert table_version(table_uri, storage_options) == 1
        faulty.fail_before = 0
        assert sink.write(rows(2), position=2).status == "committed"
    assert_exactly_once(table_uri, storage_options, ids(1, 2))


def test_a_store_without_create_only_puts_commits_through_delta_rs_instead(
    table_uri: str, storage_options: dict[str, str]
) -> None:
    sink, faulty = faulty_sink(table_uri, storage_options)
    with sink:
        faulty.unsupported = True
        for position in (1, 2, 3):
            assert sink.write(rows(position), position=position).status == "committed"
        assert sink.write(rows(2), position=2).status == "skipped"
        assert faulty.creates == 1  # asked once, then never again
    history = DeltaTable(table_uri, storage_options=storage_options).history()
    assert [h["clientVersion"].split("-")[0] for h in history[:3]] == ["delta", "delta", "delta"]
    assert_exactly_once(table_uri, storage_options, ids(1, 2, 3))


# -- other writers between our commits ------------------------------------------------------------------


def test_commits_of_other_writers_are_read_past_and_every_row_of_both_lands_once(
    table_uri: str, storage_options: dict[str, str]
) -> None:
    """Another writer (delta-rs's write_deltalake) appends 1, then 5 times between lakesink's commits:
    lakesink's create of the next version is refused, it reads the entries in its way (one by one, or
    with a refresh when many), and commits after them."""
    others: list[int] = []

    def other(n: int) -> None:
        for _ in range(n):
            start = 10_000 + len(others)
            write_deltalake(
                table_uri, pa.table({"id": pa.array([start], pa.int64())}), mode="append", storage_options=storage_options
            )
            others.append(start)

    with Sink(table_uri, app_id="job", storage_options=storage_options) as sink:
        sink.write(rows(1), position=1)
        other(1)
        assert sink.write(rows(2), position=2).table_version == 3
        other(5)
        assert sink.write(rows(3), position=3).table_version == 9
        assert sink.write(rows(4), position=4).table_version == 10
        assert sink.committed_position() == 4
    assert (
        log_operations(table_uri, storage_options) == ["CREATE TABLE", "WRITE", "WRITE", "WRITE"] + ["WRITE"] * 5 + ["WRITE"] * 2
    )
    assert_exactly_once(table_uri, storage_options, ids(1, 2, 3, 4) + others)


def test_a_column_added_by_another_writer_under_a_commit_still_lets_it_land(
    table_uri: str, storage_options: dict[str, str]
) -> None:
    with Sink(table_uri, app_id="job", storage_options=storage_options) as sink:
        sink.write(rows(1), position=1)
        with Sink(table_uri, app_id="other", storage_options=storage_options, evolve_schema=True) as other:
            other.write(pa.table({"id": pa.array([9_999], pa.int64()), "note": ["new"]}), position=1)
        assert sink.write(rows(2), position=2).status == "committed"
    table = DeltaTable(table_uri, storage_options=storage_options).to_pyarrow_dataset().to_table(use_threads=False)
    assert table.schema.names == ["id", "note"]
    assert {r["id"]: r["note"] for r in table.to_pylist()} == {**{i: None for i in ids(1, 2)}, 9_999: "new"}
    assert_exactly_once(table_uri, storage_options, [*ids(1, 2), 9_999])


def test_a_schema_replaced_by_another_writer_under_a_commit_is_a_schema_mismatch_and_nothing_lands(
    table_uri: str, storage_options: dict[str, str]
) -> None:
    with Sink(table_uri, app_id="job", storage_options=storage_options) as sink:
        sink.write(rows(1), position=1)
        replaced = pa.table({"id": pa.array(["a"], pa.string())})
        write_deltalake(table_uri, replaced, mode="overwrite", schema_mode="overwrite", storage_options=storage_options)
        before = table_version(table_uri, storage_options)
        with pytest.raises(SchemaMismatch, match="changed while position 2"):
            sink.write(rows(2), position=2)
        assert table_version(table_uri, storage_options) == before
        assert DeltaTable(table_uri, storage_options=storage_options).transaction_version("job") == 1


def test_the_s3_log_stores_errors_name_the_request_and_the_fix_and_never_the_secret(moto_server: MotoServer) -> None:
    options = {**moto_server.storage_options(), "AWS_SECRET_ACCESS_KEY": "canary-s3cr3t-do-not-print"}
    store = S3LogStore("s3://no-such-bucket/t", StorageOptions.resolve(options, environ={}))
    with pytest.raises(
        ConfigError, match=r"PUT s3://no-such-bucket/t/_delta_log/0{20}\.json: the bucket does not exist"
    ) as failure:
        store.create(0, b"{}\n")
    assert "canary-s3cr3t" not in str(failure.value) and "canary-s3cr3t" not in repr(store)


def test_a_local_filesystem_without_hard_links_commits_through_delta_rs_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """link(2) answers EPERM (as on FAT or some FUSE mounts): nothing is written by that attempt, and
    the commit, and every later one, goes through delta-rs; each position once."""
    import errno
    import os

    uri = str(tmp_path / "table")
    with Sink(uri, app_id="job") as sink:
        sink.write(rows(1), position=1)
        links: list[str] = []

        def no_link(src: str, dst: str) -> None:
            links.append(dst)
            raise PermissionError(errno.EPERM, "Operation not permitted", dst)

        monkeypatch.setattr(os, "link", no_link)
        for position in (2, 3):
            assert sink.write(rows(position), position=position).status == "committed"
        assert len(links) == 1
    assert not [p for p in Path(uri, "_delta_log").iterdir() if p.name.endswith(".tmp")]
    history = DeltaTable(uri).history()
    assert [h["clientVersion"].split("-")[0] for h in history[:3]] == ["delta", "delta", "lakesink"]
    assert_exactly_once(uri, {}, ids(1, 2, 3))
