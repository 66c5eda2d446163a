"""Bulk loads on Ray Data (lakesink.ray.DeltaSink) on a real local Ray cluster (2 CPUs, worker processes):
every id exactly once (delta-rs and DuckDB), a rerun adds nothing, failed worker tasks are retried and
only the attempt that reached the driver is committed, a killed driver commits nothing and leaves
only files `lakesink gc` deletes. Tables are local and on moto S3 (the `table_uri` fixture)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from lakesink.errors import SchemaMismatch, TableError
from lakesink.ray import DeltaSink, StagedTask
from tests.support.checks import (
    assert_exactly_once,
    assert_only_orphans_left_and_gc_clears_them,
    log_operations,
    parquet_files_on_store,
    table_files,
    table_version,
)
from tests.support.moto_server import MotoServer

ROOT = Path(__file__).resolve().parents[2]
ROWS = 50_000
RETRY_EXCEPTIONS = {"max_retries": 3, "retry_exceptions": True}


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A local Ray cluster (2 CPUs) for the module; its GCS address, for drivers in subprocesses."""
    context = ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        # Workers unpickle the tests' functions and classes by reference: they import `tests` as the driver does.
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield str(context.address_info["gcs_address"])
    finally:
        ray.shutdown()


def events(start: int, stop: int, blocks: int = 8) -> ray.data.Dataset:
    """Rows with ids start..stop-1 (each once), a value and a day to partition by, in `blocks` blocks."""

    def columns(batch: dict[str, Any]) -> dict[str, Any]:
        ids = batch["id"] + start
        return {"id": ids, "value": ids * 3, "day": ids % 3}

    return ray.data.range(stop - start, override_num_blocks=blocks).map_batches(columns)


def assert_one_load_commit(uri: str, options: dict[str, str]) -> None:
    assert log_operations(uri, options) == ["CREATE TABLE", "WRITE"]
    names = [f.rsplit("/", 1)[-1] for f in table_files(uri, options)]
    assert len(set(names)) == len(names), "two committed files share a name"


def test_a_ray_load_commits_every_id_exactly_once_and_a_rerun_with_the_same_position_adds_nothing(
    ray_cluster: str, table_uri: str, storage_options: dict[str, str], tmp_path: Path
) -> None:
    sink = DeltaSink(table_uri, app_id="backfill", position=1, storage_options=storage_options, partition_by=["day"])
    events(0, ROWS).write_datasink(sink)  # the blocks gathered into one write task (min_bytes_per_task)
    assert sink.result is not None and sink.result.status == "committed"
    assert (sink.result.table_version, sink.result.rows) == (1, ROWS)
    assert sink.result.files == len(table_files(table_uri, storage_options)) == 3  # a file per day
    assert_one_load_commit(table_uri, storage_options)
    assert_exactly_once(table_uri, storage_options, range(ROWS))
    files = table_files(table_uri, storage_options)

    for position in (1, 0):  # the same load again, and an older one: the workers stage nothing
        again = DeltaSink(table_uri, app_id="backfill", position=position, storage_options=storage_options)
        events(0, ROWS).write_datasink(again)
        assert again.result is not None and again.result.status == "skipped", again.result
        assert table_version(table_uri, storage_options) == 1
        assert parquet_files_on_store(table_uri, storage_options) == files

    # The next load reads Parquet files (Ray's read_parquet) into the existing table: its schema and partitioning.
    source = tmp_path / "source"
    source.mkdir()
    for i in range(5):
        ids = np.arange(ROWS + i * 10_000, ROWS + (i + 1) * 10_000)
        pq.write_table(pa.table({"id": ids, "value": ids * 3, "day": ids % 3}), source / f"part-{i}.parquet")
    more = DeltaSink(table_uri, app_id="backfill", position=2, storage_options=storage_options, min_bytes_per_task=None)
    ray.data.read_parquet(str(source)).write_datasink(more)  # read and write fused: a task per read task
    assert more.result is not None and more.result.status == "committed" and more.result.table_version == 2
    assert_exactly_once(table_uri, storage_options, range(ROWS + 50_000))


def raise_after_staging(marker: Path) -> Callable[[StagedTask], None]:
    def fail(staged: StagedTask) -> None:
        if staged.files and not marker.exists():
            marker.touch()
            raise RuntimeError("the write task fails once, after staging its files")

    return fail


def killed_after_staging(marker: Path) -> Callable[[StagedTask], None]:
    def kill(staged: StagedTask) -> None:
        if staged.files and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies: Ray retries the task on another

    return kill


class FailingOnce(DeltaSink):
    """A DeltaSink whose write task runs `after_write` on what it staged (the fault, once)."""

    def __init__(self, *args: Any, after_write: Callable[[StagedTask], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.after_write = after_write

    def write(self, blocks: Iterable[Any], ctx: object) -> StagedTask:
        staged = super().write(blocks, ctx)
        self.after_write(staged)
        return staged


@pytest.mark.parametrize("fault", ["write raises after staging", "worker killed after staging", "map raises mid-task"])
def test_a_failed_worker_task_is_retried_and_only_the_attempt_that_reached_the_driver_is_committed(
    fault: str, ray_cluster: str, table_uri: str, storage_options: dict[str, str], moto_server: MotoServer, tmp_path: Path
) -> None:
    """One task fails once (a marker file says it did). Ray runs it again; the load ends with one
    commit of every id once, and the failed attempt's files, which no commit names, are orphans that
    `lakesink gc` deletes."""
    marker = tmp_path / "failed-once"
    remote_args = RETRY_EXCEPTIONS if fault != "worker killed after staging" else None  # a lost worker is always retried
    if fault == "map raises mid-task":

        def fail_once(batch: dict[str, Any]) -> dict[str, Any]:
            if 30_000 in batch["id"] and not marker.exists():
                marker.touch()
                raise RuntimeError("the map fails once, mid-task")
            return batch

        dataset = events(0, ROWS).map_batches(fail_once, batch_size=1_000, ray_remote_args_fn=lambda: dict(RETRY_EXCEPTIONS))
        sink = DeltaSink(table_uri, app_id="load", position=7, storage_options=storage_options, min_bytes_per_task=None)
    else:
        dataset = events(0, ROWS)
        fault_of = raise_after_staging if fault == "write raises after staging" else killed_after_staging
        sink = FailingOnce(
            table_uri, app_id="load", position=7, storage_options=storage_options, partition_by=["day"],
            min_bytes_per_task=None, after_write=fault_of(marker),
        )  # fmt: skip
    dataset.write_datasink(sink, ray_remote_args=remote_args)

    assert marker.exists(), "the fault never happened"
    assert sink.result is not None and sink.result.status == "committed" and sink.result.rows == ROWS
    assert_one_load_commit(table_uri, storage_options)
    assert_exactly_once(table_uri, storage_options, range(ROWS))
    orphans = assert_only_orphans_left_and_gc_clears_them(table_uri, storage_options, moto_server.env())
    if fault != "map raises mid-task":
        assert orphans >= 3, "the failed attempt staged a file per day"
    assert_exactly_once(table_uri, storage_options, range(ROWS))


_DRIVER = """
import json, sys
import ray
from lakesink.ray import DeltaSink
from tests.scenarios.test_ray_sink import events
address, uri, options = json.loads(sys.argv[1])
ray.init(address=address, log_to_driver=False)
events(0, {rows}).write_datasink(DeltaSink(uri, app_id="load", position=1, storage_options=options, min_bytes_per_task=None))
"""


def test_a_driver_killed_after_its_workers_staged_commits_nothing_and_gc_removes_the_files(
    ray_cluster: str, table_uri: str, storage_options: dict[str, str], moto_server: MotoServer
) -> None:
    """A real driver process on the cluster is SIGKILLed just before its commit (crash point
    `before_commit`), every task's files staged. The table (created by the first task, before any
    file) has no commit of the load; every file is an orphan `lakesink gc` deletes; the rerun commits once."""
    env = {**moto_server.env(), "PYTHONPATH": str(ROOT), "LAKESINK_CRASH_AT": "before_commit"}
    driver = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_DRIVER.format(rows=ROWS)), json.dumps([ray_cluster, table_uri, storage_options])],
        capture_output=True, text=True, env=env, timeout=240,
    )  # fmt: skip
    assert driver.returncode == -signal.SIGKILL, f"the driver exited {driver.returncode}: {driver.stderr[-3000:]}"
    assert log_operations(table_uri, storage_options) == ["CREATE TABLE"]
    assert parquet_files_on_store(table_uri, storage_options), "the workers staged nothing"
    assert assert_only_orphans_left_and_gc_clears_them(table_uri, storage_options, moto_server.env()) > 0
    assert parquet_files_on_store(table_uri, storage_options) == []

    rerun = DeltaSink(table_uri, app_id="load", position=1, storage_options=storage_options)
    events(0, ROWS).write_datasink(rerun)
    assert rerun.result is not None and rerun.result.status == "committed"
    assert_one_load_commit(table_uri, storage_options)
    assert_exactly_once(table_uri, storage_options, range(ROWS))


def test_a_location_holding_other_files_is_refused_before_any_task_stages(ray_cluster: str, tmp_path: Path) -> None:
    uri = tmp_path / "not-a-table"
    uri.mkdir()
    pq.write_table(pa.table({"id": [1]}), uri / "theirs.parquet")
    with pytest.raises(TableError, match="not a Delta table"):
        events(0, 1_000).write_datasink(DeltaSink(str(uri), app_id="load", position=1))
    assert sorted(p.name for p in uri.iterdir()) == ["theirs.parquet"]


def test_rows_that_do_not_fit_the_table_commit_nothing_and_new_columns_need_evolve_schema(
    ray_cluster: str, tmp_path: Path
) -> None:
    uri = str(tmp_path / "table")
    events(0, 1_000, blocks=2).write_datasink(DeltaSink(uri, app_id="load", position=1))
    wider = events(1_000, 2_000, blocks=2).map_batches(lambda b: {**b, "note": [f"n{i}" for i in b["id"]]})
    with pytest.raises(SchemaMismatch, match="evolve_schema"):
        wider.write_datasink(DeltaSink(uri, app_id="load", position=2))
    assert table_version(uri, None) == 1

    evolving = DeltaSink(uri, app_id="load", position=2, evolve_schema=True)
    wider.write_datasink(evolving)
    assert evolving.result is not None and evolving.result.status == "committed"
    assert log_operations(uri, None)[-2:] == ["ADD COLUMN", "WRITE"]
    assert_exactly_once(uri, None, range(2_000))

    clash = events(2_000, 3_000, blocks=2).map_batches(lambda b: {**b, "value": [str(v) for v in b["value"]]})
    with pytest.raises(SchemaMismatch, match="value"):
        clash.write_datasink(DeltaSink(uri, app_id="load", position=3))
    assert_exactly_once(uri, None, range(2_000))


def test_an_empty_load_records_its_position_in_an_existing_table_and_cannot_create_one(ray_cluster: str, tmp_path: Path) -> None:
    uri = str(tmp_path / "table")
    nothing = events(0, 100, blocks=2).filter(lambda row: False)
    with pytest.raises(TableError, match="no rows to create it"):
        nothing.write_datasink(DeltaSink(uri, app_id="load", position=1))
    assert not any(tmp_path.rglob("*.parquet"))

    events(0, 100, blocks=2).write_datasink(DeltaSink(uri, app_id="load", position=1))
    empty = DeltaSink(uri, app_id="load", position=2)
    nothing.write_datasink(empty)
    assert empty.result is not None
    assert (empty.result.status, empty.result.rows, empty.result.table_version) == ("committed", 0, 2)
    nothing.write_datasink(empty)  # the same sink again: the position is committed now
    assert empty.result is not None and empty.result.status == "skipped"
    assert_exactly_once(uri, None, range(100))
