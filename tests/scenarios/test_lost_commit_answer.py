"""A commit that lands but whose answer never comes back: no duplicate, no loss, a clear outcome.

A fault proxy (tests/support/fault_proxy.py) sits between lakesink and the real moto S3 server.
Armed, it lets the PUT of a log entry `_delta_log/<version>.json` reach the server (the commit is
applied) and then cuts the client's connection instead of answering, either with a reset (RST) or
with a clean close (FIN). What happens then, as these tests pin down: lakesink creates log entries
with boto3 (lakesink.delta.log_store), which re-sends the PUT after either (still `If-None-Match: *`);
the server answers 412 because the entry exists; lakesink reads that entry back, finds this
write's id in its commitInfo and returns "committed" (a concurrent copy's commit would be
"skipped"). The table-creating commit (version 0) and checkpoints are delta-rs's.

All counts are read from the server directly (not through the proxy), with delta-rs and DuckDB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pyarrow as pa
import pytest

from lakesink import CommitOutcomeUnknown, CommitPolicy, Sink
from tests.support.checks import assert_exactly_once, lakesink_status, log_operations, table_files, table_version
from tests.support.data import write_ndjson_files
from tests.support.fault_proxy import DELTA_LOG_ANY, FaultProxy
from tests.support.moto_server import MotoServer

APP_ID = "job"
HOW = ["reset", "close"]


@pytest.fixture
def proxy(moto_server: MotoServer) -> Iterator[FaultProxy]:
    with FaultProxy(moto_server.endpoint) as started:
        yield started


@pytest.fixture
def proxied_options(moto_server: MotoServer, proxy: FaultProxy) -> dict[str, str]:
    """Storage options that reach the moto server through the fault proxy."""
    return {**moto_server.storage_options(), "AWS_ENDPOINT_URL": proxy.endpoint}


def rows(position: int) -> pa.Table:
    return pa.table({"id": pa.array([position * 10 + i for i in range(5)], pa.int64())})


def ids(*positions: int) -> list[int]:
    return [p * 10 + i for p in positions for i in range(5)]


def log_put_outcomes(proxy: FaultProxy, version: int) -> list[tuple[int | None, str]]:
    """(server status, what the client got) for every PUT of log entry `version`."""
    return [(e.status, e.action) for e in proxy.matching(rf"/_delta_log/{version:020d}\.json(?:\?|$)", method="PUT")]


@pytest.mark.parametrize("how", HOW)
def test_a_commit_whose_answer_is_lost_after_it_landed_is_reported_committed_and_its_rows_are_in_once(
    how: str, proxy: FaultProxy, proxied_options: dict[str, str], s3_bucket: str, s3_options: dict[str, str]
) -> None:
    """The write returns committed (the log shows its own commit landed), the table holds that batch
    once, the txn is the position, no second commit was made, and a retry is skipped."""
    uri = f"s3://{s3_bucket}/table"
    with Sink(uri, app_id=APP_ID, storage_options=proxied_options) as sink:
        assert sink.write(rows(1), position=1).status == "committed"
        proxy.drop_response_after_apply(how=how)
        result = sink.write(rows(2), position=2)
        assert not proxy.armed(), "the fault never fired"
        print(f"{how}: write returned {result.status} ({result.reason}); log PUTs of version 2: {log_put_outcomes(proxy, 2)}")
        assert result.status in ("committed", "skipped")
        assert result.committed_position == 2

        assert log_operations(uri, s3_options) == ["CREATE TABLE", "WRITE", "WRITE"]
        assert_exactly_once(uri, s3_options, ids(1, 2))
        with Sink(uri, app_id=APP_ID, storage_options=s3_options) as direct:
            assert direct.committed_position() == 2

        retry = sink.write(rows(2), position=2)
        assert (retry.status, retry.reason) == ("skipped", "already committed")
        assert table_version(uri, s3_options) == 2

    # What boto3 did with the lost answer (see the module docstring): re-sent it, and was refused.
    expected_puts = [(200, f"dropped ({how})"), (412, "relayed")]
    assert log_put_outcomes(proxy, 2) == expected_puts, f"boto3 {boto3.__version__} changed its retries"
    assert (result.status, result.reason) == ("committed", "the answer was lost; the log shows this write's commit landed")
    assert result.rows == len(ids(2))


@pytest.mark.parametrize("how", HOW)
def test_a_lost_answer_to_the_table_creating_commit_still_creates_the_table_once(
    how: str, proxy: FaultProxy, proxied_options: dict[str, str], s3_bucket: str, s3_options: dict[str, str]
) -> None:
    """The first write of a new table, the answer to version 0 lost: the table has one CREATE TABLE
    commit (delta-rs re-sending it as version 1 would replace the table's id), and the rows once."""
    uri = f"s3://{s3_bucket}/table"
    proxy.drop_response_after_apply(how=how)
    with Sink(uri, app_id=APP_ID, storage_options=proxied_options) as sink:
        result = sink.write(rows(1), position=1)
    assert not proxy.armed()
    print(f"{how}: log PUTs of version 0: {log_put_outcomes(proxy, 0)}; write returned {result.status}")
    assert result.status == "committed"
    assert log_operations(uri, s3_options) == ["CREATE TABLE", "WRITE"]
    assert_exactly_once(uri, s3_options, ids(1))


@pytest.mark.parametrize("how", HOW)
def test_lost_answers_to_the_checkpoint_write_are_retried_and_change_no_row(
    how: str, proxy: FaultProxy, proxied_options: dict[str, str], s3_bucket: str, s3_options: dict[str, str]
) -> None:
    """The commit of version 20 is followed by a checkpoint (delta-rs's create_checkpoint, in the
    background); its first two answers are lost. object_store re-sends that PUT (it overwrites), the
    write is committed, and later writes read the table through the checkpoint with every row once."""
    uri = f"s3://{s3_bucket}/table"
    checkpoint = r"/_delta_log/\d{20}\.checkpoint\.parquet"
    with Sink(uri, app_id=APP_ID, storage_options=proxied_options) as sink:
        for position in range(1, 20):
            sink.write(rows(position), position=position)
        proxy.drop_response_after_apply(checkpoint, how=how, times=2)
        assert sink.write(rows(20), position=20).status == "committed"  # version 20: the checkpoint
        sink.close()  # waits for the background checkpoint; the sink reopens the table on the next write
        assert not proxy.armed()
        outcomes = [(e.status, e.action) for e in proxy.matching(checkpoint, method="PUT")]
        print(f"{how}: checkpoint PUTs {outcomes}")
        assert outcomes == [(200, f"dropped ({how})")] * 2 + [(200, "relayed")]
        for position in range(21, 24):
            assert sink.write(rows(position), position=position).status == "committed"
    with Sink(uri, app_id=APP_ID, storage_options=s3_options) as direct:
        assert direct.committed_position() == 23
    assert_exactly_once(uri, s3_options, ids(*range(1, 24)))


def test_a_lost_answer_with_the_log_unreadable_raises_commit_outcome_unknown_and_a_retry_is_skipped(
    proxy: FaultProxy, proxied_options: dict[str, str], s3_bucket: str, s3_options: dict[str, str]
) -> None:
    """The commit lands, its answer is lost, and from then on every request for the log is refused:
    the write cannot decide and raises CommitOutcomeUnknown (a TransientError naming the position);
    once the store answers again, the same write is skipped and the rows are in once."""
    uri = f"s3://{s3_bucket}/table"
    with Sink(uri, app_id=APP_ID, storage_options=proxied_options,
              commit_policy=CommitPolicy(resolve_attempts=2, backoff_seconds=0.01)) as sink:
        assert sink.write(rows(1), position=1).status == "committed"
        files_before = table_files(uri, s3_options)
        proxy.drop_response_after_apply(then=lambda: proxy.refuse(DELTA_LOG_ANY, times=1_000_000))
        with pytest.raises(CommitOutcomeUnknown) as unknown:
            sink.write(rows(2), position=2)
        assert (unknown.value.position, unknown.value.app_id, unknown.value.retryable) == (2, APP_ID, True)
        refused = len([e for e in proxy.events if e.action == "refused"])
        print(f"CommitOutcomeUnknown after {refused} refused log requests: {str(unknown.value)[:200]}")
        proxy.disarm()

        # It had landed: the server's log has it, whatever the writer could not see.
        assert log_operations(uri, s3_options) == ["CREATE TABLE", "WRITE", "WRITE"]
        retry = sink.write(rows(2), position=2)
        assert retry.status == "skipped"
        assert retry.committed_position == 2
    assert table_version(uri, s3_options) == 2
    assert len(table_files(uri, s3_options)) == len(files_before) + 1
    assert_exactly_once(uri, s3_options, ids(1, 2))


@pytest.mark.parametrize("how", HOW)
def test_lakesink_ingest_through_lost_commit_answers_exits_0_and_writes_every_record_once(
    how: str, proxy: FaultProxy, moto_server: MotoServer, s3_bucket: str, s3_options: dict[str, str], tmp_path: Path
) -> None:
    """A real `lakesink ingest` whose 4th and a later commit lose their answers: it exits 0, counts
    those two batches as its own commits (the log shows they landed), and the table holds every record once."""
    dataset = write_ndjson_files(tmp_path / "source", files=6, rows_per_file=20)
    uri = f"s3://{s3_bucket}/table"
    proxy.drop_response_after_apply(how=how, after=3)
    proxy.drop_response_after_apply(how=how, after=8)
    env = {**moto_server.env(), "AWS_ENDPOINT_URL": proxy.endpoint}
    done = subprocess.run(
        [sys.executable, "-m", "lakesink", "ingest", str(dataset.directory), uri, "--app-id", APP_ID, "--batch-rows", "10",
         "--json"],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr
    dropped = [e for e in proxy.events if e.action.startswith("dropped")]
    assert len(dropped) == 2, [(e.method, e.path, e.action) for e in proxy.events if "_delta_log" in e.path]
    report = json.loads(done.stdout)
    batches = len(dataset.batch_positions(10))
    print(f"{how}: dropped answers to {[e.path.rsplit('/', 1)[-1] for e in dropped]}; report {report}")
    assert report["skipped_batches"] == 0
    assert report["commits"] == batches
    assert report["rows_written"] == dataset.total
    assert report["end_position"] == dataset.end_position

    assert log_operations(uri, s3_options) == ["CREATE TABLE"] + ["WRITE"] * batches
    assert lakesink_status(uri, moto_server.env())["positions"] == {APP_ID: dataset.end_position}
    assert_exactly_once(uri, s3_options, dataset.ids)
