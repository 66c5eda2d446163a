"""Exactly-once with several writers of the same app id at the same time, and replays.

Two or four real `lakesink ingest` processes on one source/table/app id, Sinks racing over the
same positions in separate 'spawn' processes, zombies with stale snapshots, and replays of
committed positions. After each: every record id counted with delta-rs and DuckDB.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from lakesink import Sink
from tests.support.checks import (
    assert_exactly_once,
    lakesink_status,
    log_operations,
    read_column_deltalake,
    table_files,
    table_version,
)
from tests.support.data import Dataset, write_ndjson_files
from tests.support.moto_server import MotoServer
from tests.support.writers import create_table, position_ids, write_positions

APP_ID = "job"


@pytest.fixture
def dataset(tmp_path: Path) -> Dataset:
    # 12 files x 25 records, ingested in batches of 20: 15 commits, batches spanning files.
    return write_ndjson_files(tmp_path / "source", files=12, rows_per_file=25)


def _ingest_cmd(dataset: Dataset, uri: str, batch_rows: int = 20) -> list[str]:
    return [sys.executable, "-m", "lakesink", "ingest", str(dataset.directory), uri, "--app-id", APP_ID,
            "--batch-rows", str(batch_rows), "--json"]


@pytest.mark.parametrize("copies", [2, 4])
def test_concurrent_ingest_processes_with_one_app_id_all_finish_and_write_every_record_once(
    copies: int, dataset: Dataset, table_uri: str, storage_options: dict[str, str], moto_server: MotoServer
) -> None:
    """Two (four) copies of one job started together: every copy exits 0 having reached the end of
    the source, their commits add up to exactly one commit per batch, and the table is created once."""
    reports = _run_copies(dataset, table_uri, moto_server, [20] * copies)
    batches = len(dataset.batch_positions(20))
    assert sum(r["commits"] for r in reports) == batches
    assert log_operations(table_uri, storage_options) == ["CREATE TABLE"] + ["WRITE"] * batches
    assert lakesink_status(table_uri, moto_server.env())["positions"] == {APP_ID: dataset.end_position}
    assert_exactly_once(table_uri, storage_options, dataset.ids)


def test_concurrent_ingest_processes_with_different_batch_sizes_write_every_record_once(
    dataset: Dataset, table_uri: str, storage_options: dict[str, str], moto_server: MotoServer
) -> None:
    """Four copies of one job with batches of 20, 7, 13 and 20 records, so their batches end at
    different positions: every copy exits 0, and no record is written twice by a batch cut from a
    position another copy has moved past."""
    reports = _run_copies(dataset, table_uri, moto_server, [20, 7, 13, 20])
    commits = sum(r["commits"] for r in reports)
    assert log_operations(table_uri, storage_options) == ["CREATE TABLE"] + ["WRITE"] * commits
    assert lakesink_status(table_uri, moto_server.env())["positions"] == {APP_ID: dataset.end_position}
    assert_exactly_once(table_uri, storage_options, dataset.ids)


def _run_copies(dataset: Dataset, uri: str, moto_server: MotoServer, batch_rows: list[int]) -> list[dict]:
    """Start one `lakesink ingest` per entry of `batch_rows` at once; assert each exits 0 at the end of the source."""
    procs = [
        subprocess.Popen(_ingest_cmd(dataset, uri, rows), env=moto_server.env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for rows in batch_rows
    ]
    outputs = [p.communicate(timeout=240) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, f"a copy exited {proc.returncode}: {out}{err}"
    reports = [json.loads(out) for out, _ in outputs]
    commits, skipped = [r["commits"] for r in reports], [r["skipped_batches"] for r in reports]
    print(f"batch rows {batch_rows}: commits {commits}, skipped {skipped}")
    assert all(r["end_position"] == dataset.end_position for r in reports)
    assert sum(r["rows_written"] for r in reports) == dataset.total
    return reports


def _run_writers(uri: str, storage_options: dict[str, str], writers: int, positions: list[int], out_dir: Path) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")  # never fork a process that has started deltalake's runtime
    barrier = ctx.Barrier(writers)
    procs = []
    for n in range(writers):
        out = out_dir / f"writer-{n}.json"
        proc = ctx.Process(target=write_positions, args=(uri, storage_options, APP_ID, f"w{n}", positions, barrier, str(out)))
        proc.start()
        procs.append((proc, out))
    reports = []
    for proc, out in procs:
        proc.join(timeout=240)
        assert proc.exitcode == 0, f"writer process exited {proc.exitcode}"
        reports.append(json.loads(out.read_text()))
    return reports


@pytest.mark.parametrize("writers", [2, 4])
def test_sinks_racing_over_the_same_positions_commit_each_position_exactly_once_by_exactly_one_writer(
    writers: int, table_uri: str, storage_options: dict[str, str], tmp_path: Path
) -> None:
    """Sinks in separate processes, one app id, each writing positions 1..40 in order: each position
    is reported committed by exactly one writer, its rows are in the table once, and they are that
    writer's rows (the `writer` column); the others report it skipped."""
    positions = list(range(1, 41))
    reports = _run_writers(table_uri, storage_options, writers, positions, tmp_path)
    for report in reports:
        assert report["error"] is None, f"{report['writer']} failed: {report['error']}"
        assert [r["position"] for r in report["results"]] == positions

    committed_by: dict[int, list[str]] = {p: [] for p in positions}
    for report in reports:
        for result in report["results"]:
            assert result["status"] in ("committed", "skipped"), result
            if result["status"] == "committed":
                committed_by[result["position"]].append(report["writer"])
            else:
                assert result["committed_position"] >= result["position"], result
    print({w["writer"]: sum(r["status"] == "committed" for r in w["results"]) for w in reports})
    assert {p: len(ws) for p, ws in committed_by.items() if len(ws) != 1} == {}

    rows = read_column_deltalake(table_uri, storage_options, ["id", "writer"])
    writer_of_id = {}
    for row in rows:
        writer_of_id.setdefault(row["id"], []).append(row["writer"])
    for p in positions:
        for i in position_ids(p):
            assert writer_of_id.get(i) == committed_by[p], (
                f"position {p}: id {i} written by {writer_of_id.get(i)}, reported committed by {committed_by[p]}"
            )
    assert_exactly_once(table_uri, storage_options, [i for p in positions for i in position_ids(p)])
    assert log_operations(table_uri, storage_options) == ["CREATE TABLE"] + ["WRITE"] * len(positions)
    with Sink(table_uri, app_id=APP_ID, storage_options=storage_options) as sink:
        assert sink.committed_position() == 40


def test_processes_creating_the_table_at_the_same_time_create_it_once(
    table_uri: str, storage_options: dict[str, str], tmp_path: Path
) -> None:
    """Three processes racing `TableHandle.create` (a Sink's first write) on a new table, six times:
    each table has one CREATE TABLE commit, not one per racer. A second one would replace the
    table's metadata (a new table id, and the loser's schema and partitioning) under data already
    committed against the first."""
    ctx = multiprocessing.get_context("spawn")
    racers = 3
    for trial in range(6):
        uri = f"{table_uri}-{trial}"
        barrier = ctx.Barrier(racers)
        procs = []
        for n in range(racers):
            out = tmp_path / f"create-{trial}-{n}.json"
            proc = ctx.Process(target=create_table, args=(uri, storage_options, barrier, str(out)))
            proc.start()
            procs.append((proc, out))
        for proc, out in procs:
            proc.join(timeout=120)
            assert proc.exitcode == 0
            report = json.loads(out.read_text())
            assert report["error"] is None, report["error"]
        assert log_operations(uri, storage_options) == ["CREATE TABLE"], f"trial {trial}"


def test_sinks_whose_first_writes_race_create_the_table_once_and_commit_once(
    table_uri: str, storage_options: dict[str, str], tmp_path: Path
) -> None:
    """Three Sinks whose first write is the same position of a new table: one commits, two skip,
    one CREATE TABLE commit, every row once."""
    for trial in range(3):
        uri = f"{table_uri}-{trial}"
        out_dir = tmp_path / f"trial-{trial}"
        out_dir.mkdir()
        reports = _run_writers(uri, storage_options, 3, [1], out_dir)
        for report in reports:
            assert report["error"] is None, f"{report['writer']} failed: {report['error']}"
        assert Counter(r["results"][0]["status"] for r in reports) == {"committed": 1, "skipped": 2}
        assert log_operations(uri, storage_options) == ["CREATE TABLE", "WRITE"], f"trial {trial}"
        assert_exactly_once(uri, storage_options, position_ids(1))


def test_replaying_committed_positions_is_skipped_and_changes_nothing(table_uri: str, storage_options: dict[str, str]) -> None:
    """Writing positions 1..5 again (same Sink, then a new Sink) returns "skipped" for each and
    leaves the table version, its files and its rows as they were."""
    def rows(p: int) -> pa.Table:
        return pa.table({"id": pa.array(position_ids(p), pa.int64()), "writer": pa.array(["a"] * 3)})

    with Sink(table_uri, app_id=APP_ID, storage_options=storage_options) as sink:
        for p in range(1, 6):
            assert sink.write(rows(p), position=p).status == "committed"
        version, files = table_version(table_uri, storage_options), table_files(table_uri, storage_options)
        again = sink.write(rows(5), position=5)
        assert (again.status, again.reason, again.table_version) == ("skipped", "already committed", version)
    with Sink(table_uri, app_id=APP_ID, storage_options=storage_options) as replay:
        results = [replay.write(rows(p), position=p) for p in range(1, 6)]
    assert [r.status for r in results] == ["skipped"] * 5
    assert [r.committed_position for r in results] == [5] * 5
    assert [r.reason for r in results] == ["lower than the committed position 5"] * 4 + ["already committed"]
    assert table_version(table_uri, storage_options) == version
    assert table_files(table_uri, storage_options) == files
    assert_exactly_once(table_uri, storage_options, [i for p in range(1, 6) for i in position_ids(p)])


def test_a_zombie_sink_with_a_stale_snapshot_cannot_commit_a_position_another_sink_committed(
    table_uri: str, storage_options: dict[str, str]
) -> None:
    """A Sink that opened the table at position 2 while another Sink went on to 6: the zombie's write
    of 3 is rejected by the commit's conflict check (not its stale snapshot) and reported skipped."""
    def rows(p: int, writer: str) -> pa.Table:
        return pa.table({"id": pa.array(position_ids(p), pa.int64()), "writer": pa.array([writer] * 3)})

    with Sink(table_uri, app_id=APP_ID, storage_options=storage_options) as live:
        for p in (1, 2):
            live.write(rows(p, "live"), position=p)
        zombie = Sink(table_uri, app_id=APP_ID, storage_options=storage_options)
        assert zombie.committed_position() == 2
        for p in range(3, 7):
            assert live.write(rows(p, "live"), position=p).status == "committed"
        version = table_version(table_uri, storage_options)
        stale = zombie.write(rows(3, "zombie"), position=3)
        assert stale.status == "skipped"
        assert stale.committed_position == 6
        assert table_version(table_uri, storage_options) == version
        zombie.close()
    written = read_column_deltalake(table_uri, storage_options, ["writer"])
    assert {r["writer"] for r in written} == {"live"}
    assert_exactly_once(table_uri, storage_options, [i for p in range(1, 7) for i in position_ids(p)])


def test_rerunning_a_finished_ingest_adds_nothing(dataset: Dataset, table_uri: str, storage_options: dict[str, str],
                                                   moto_server: MotoServer) -> None:
    """The same `lakesink ingest` rerun after it finished (with another batch size too): exit 0,
    nothing written, table version unchanged."""
    first = subprocess.run(_ingest_cmd(dataset, table_uri), env=moto_server.env(), capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stderr
    version = table_version(table_uri, storage_options)
    for batch_rows in (20, 7):
        again = subprocess.run(_ingest_cmd(dataset, table_uri, batch_rows), env=moto_server.env(), capture_output=True,
                               text=True, timeout=240)
        assert again.returncode == 0, again.stderr
        report = json.loads(again.stdout)
        assert (report["commits"], report["rows_written"], report["table_version"]) == (0, 0, version)
    assert table_version(table_uri, storage_options) == version
    assert_exactly_once(table_uri, storage_options, dataset.ids)


