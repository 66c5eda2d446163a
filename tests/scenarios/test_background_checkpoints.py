"""Checkpoints are written in the background (lakesink.delta.checkpointer): no commit waits for one.

A real moto server behind the fault proxy holds a checkpoint's PUT (black hole) while the writer
keeps committing; a real subprocess is SIGKILLed right after its background checkpoint Parquet
landed and before `_last_checkpoint` did, and a rerun finishes. Every table is read back directly
from moto, every id counted with delta-rs and DuckDB.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from lakesink import Sink
from lakesink.config import Upsert
from lakesink.delta.checkpointer import BackgroundCheckpointer
from lakesink.storage.objects import open_store
from lakesink.storage.options import StorageOptions
from tests.support.checks import assert_exactly_once, assert_prefix_exactly_once
from tests.support.fault_proxy import FaultProxy
from tests.support.moto_server import MotoServer

APP_ID = "job"
CHECKPOINT_PUT = r"/_delta_log/\d{20}\.checkpoint\.parquet"


@pytest.fixture
def proxy(moto_server: MotoServer) -> Iterator[FaultProxy]:
    with FaultProxy(moto_server.endpoint) as started:
        yield started


def rows(position: int) -> pa.Table:
    return pa.table({"id": pa.array([position * 10 + i for i in range(3)], pa.int64())})


def ids(*positions: int) -> list[int]:
    return [p * 10 + i for p in positions for i in range(3)]


def checkpoint_versions(uri: str, options: dict[str, str]) -> list[int]:
    store = open_store(uri, StorageOptions.resolve(options, environ={}))
    names = [i.path.rsplit("/", 1)[-1] for i in store.list_files("_delta_log")]
    return sorted(int(n.split(".")[0]) for n in names if n.endswith(".checkpoint.parquet"))


def last_checkpoint(uri: str, options: dict[str, str]) -> dict[str, object] | None:
    store = open_store(uri, StorageOptions.resolve(options, environ={}))
    try:
        return dict(json.loads(store.read_bytes("_delta_log/_last_checkpoint")))
    except FileNotFoundError:
        return None


def assert_last_checkpoint_complete(uri: str, options: dict[str, str], positions: list[int]) -> int:
    """`_last_checkpoint` names a checkpoint that is there, whole (its row count), and holds the txn
    of its version; returns that version."""
    pointer = last_checkpoint(uri, options)
    assert pointer is not None, "no _last_checkpoint"
    version = int(str(pointer["version"]))
    store = open_store(uri, StorageOptions.resolve(options, environ={}))
    body = store.read_bytes(f"_delta_log/{version:020d}.checkpoint.parquet")
    checkpoint = pq.read_table(pa.BufferReader(body))
    assert checkpoint.num_rows == pointer["size"]
    txns = [t for t in checkpoint.column("txn").to_pylist() if t]
    assert [(t["appId"], t["version"]) for t in txns] == [(APP_ID, positions[version - 1])]
    return version


def wait_for(condition: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_commits_keep_landing_while_a_checkpoint_put_is_held_and_the_held_intervals_coalesce(
    proxy: FaultProxy, moto_server: MotoServer, s3_bucket: str
) -> None:
    """The checkpoint of version 20 is held by the store (its PUT black-holed, answered only by the
    client's 10 s timeout); 45 more commits land meanwhile, and the checkpoints due at 40 and 60
    coalesce into one of 60. Afterwards `_last_checkpoint` names a whole checkpoint and both
    readers see every row once."""
    uri = f"s3://{s3_bucket}/table"
    direct = moto_server.storage_options()
    proxied = {**direct, "AWS_ENDPOINT_URL": proxy.endpoint, "timeout": "10s"}
    positions = list(range(1, 66))
    with Sink(uri, app_id=APP_ID, storage_options=proxied) as sink:
        for position in positions[:19]:
            assert sink.write(rows(position), position=position).committed
        proxy.black_hole(CHECKPOINT_PUT, method="PUT")
        assert sink.write(rows(20), position=20).committed  # version 20: a checkpoint is due
        wait_for(lambda: not proxy.armed(), "the checkpoint PUT of version 20 to reach the store")
        for position in positions[20:]:
            assert sink.write(rows(position), position=position).committed
        # Structural: all 45 commits returned while the checkpoint's PUT was still unanswered.
        held = proxy.matching(CHECKPOINT_PUT, method="PUT")
        print("checkpoint PUTs while committing:", [(e.path.rsplit("/", 1)[-1], e.action) for e in held])
        assert [e.action for e in held] == ["black-holed"]
        assert last_checkpoint(uri, direct) is None
    # close() waited for the worker: the held checkpoint ended (retried or given up), then one of 60.
    outcomes = [(e.path.rsplit("/", 1)[-1].split(".")[0], e.action) for e in proxy.matching(CHECKPOINT_PUT, method="PUT")]
    print("checkpoint PUTs:", outcomes)
    written = checkpoint_versions(uri, direct)
    assert 60 in written and 40 not in written, written
    assert assert_last_checkpoint_complete(uri, direct, positions) == 60
    assert DeltaTable(uri, storage_options=direct).version() == 65
    assert_exactly_once(uri, direct, ids(*positions))


KILLED_WRITER = """
import sys
import pyarrow as pa
from lakesink import Sink
uri, last = sys.argv[1], int(sys.argv[2])
with Sink(uri, app_id="job") as sink:
    for position in range(1, last + 1):
        sink.write(pa.table({"id": pa.array([position * 10 + i for i in range(3)], pa.int64())}), position=position)
print("done")
"""


def test_a_writer_killed_between_its_checkpoint_and_last_checkpoint_leaves_a_readable_table_and_a_rerun_completes(
    proxy: FaultProxy, moto_server: MotoServer, s3_bucket: str
) -> None:
    """A real `python` process writes 45 positions; the moment the store applied the Parquet of its
    background checkpoint of version 20, the process is SIGKILLed (before `_last_checkpoint` is
    written). The table reads with every committed row once; a rerun skips what landed, commits the
    rest, checkpoints version 40, and both readers count every id exactly once."""
    uri = f"s3://{s3_bucket}/table"
    direct = moto_server.storage_options()
    env = {**moto_server.env(), "AWS_ENDPOINT_URL": proxy.endpoint}
    env.pop("LAKESINK_CRASH_AT", None)
    positions = list(range(1, 46))
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, uri, str(len(positions))],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proxy.kill_after_apply(proc.pid, CHECKPOINT_PUT)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == -9, f"the writer was not killed at its checkpoint (rc {proc.returncode}):\n{err[-2000:]}"
    killed = proxy.matching(CHECKPOINT_PUT, method="PUT")
    assert [e.action for e in killed] == [f"applied, then killed pid {proc.pid}"], killed
    assert checkpoint_versions(uri, direct) == [20]
    assert last_checkpoint(uri, direct) is None  # the checkpoint landed, the pointer never did
    committed = DeltaTable(uri, storage_options=direct).version()
    print(f"killed at version {committed} with checkpoint 20 written and no _last_checkpoint")
    assert committed >= 20
    assert_prefix_exactly_once(uri, direct, ids(*positions[:committed]))

    rerun = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, uri, str(len(positions))],
        env=moto_server.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert DeltaTable(uri, storage_options=direct).version() == len(positions)
    assert assert_last_checkpoint_complete(uri, direct, positions) == 40
    assert_exactly_once(uri, direct, ids(*positions))


def test_merges_leave_their_checkpoint_to_the_background_worker(tmp_path: object) -> None:
    """Keyed writes commit through delta-rs, whose post-commit hook would checkpoint inline; it is
    told not to, and the checkpoint due at version 20 is written by the worker (done by close)."""
    uri = str(tmp_path) + "/keyed"
    upsert = Upsert(key=("id",), order_by="seq")
    with Sink(uri, app_id=APP_ID) as sink:
        for position in range(1, 23):
            batch = pa.table({"id": pa.array([position % 5], pa.int64()), "seq": pa.array([position], pa.int64())})
            assert sink.write(batch, position=position, mode=upsert).committed
    assert checkpoint_versions(uri, {}) == [20]
    pointer = last_checkpoint(uri, {})
    assert pointer is not None and pointer["version"] == 20
    assert sorted(DeltaTable(uri).to_pyarrow_table().column("id").to_pylist()) == [0, 1, 2, 3, 4]


def test_a_failed_background_checkpoint_is_a_warning_without_secrets_never_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A checkpoint the store refuses (nothing listens at the endpoint) is logged as a warning with
    the secret key redacted; the caller never sees an exception, and close returns at once."""
    secret = "not-to-be-printed-8d1f"
    options = StorageOptions.resolve(
        {
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
            "max_retries": "0",
            "timeout": "1s",
            "connect_timeout": "1s",
        },
        environ={},
    )
    checkpointer = BackgroundCheckpointer("s3://nowhere/table", options)
    with caplog.at_level(logging.WARNING, logger="lakesink.delta.checkpointer"):
        checkpointer.checkpoint(20, cleanup_expired_logs=True)
        assert checkpointer.close(timeout=60)
    assert checkpointer.failures == 1 and checkpointer.last_checkpointed is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "checkpoint version 20" in warnings[0], warnings
    assert secret not in caplog.text
