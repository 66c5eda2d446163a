"""The streaming write path: commit intervals, file sizes, writer threads, Parquet statistics, memory budget."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import random
import re
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

import lakesink
from lakesink.ingest.pipeline import Emitter, Pipeline
from lakesink.storage.objects import open_store
from lakesink.storage.options import StorageOptions
from lakesink.write.file_writer import GroupFiles
from lakesink.write.stage import parquet_writer
from lakesink.write.stats import FloatColumns, stats_from_parquet
from tests.conftest import run_cli
from tests.support.checks import assert_exactly_once, table_files
from tests.support.data import write_ndjson_files

# --- Parquet statistics ------------------------------------------------------------------------


def expected_stats(rows: pa.Table) -> dict[str, Any]:
    """The oracle: Delta stats computed from the data itself, column by column (struct fields as
    nested objects; a float column holding NaN gets no bounds)."""
    ordered = (pa.types.is_integer, pa.types.is_floating, pa.types.is_string, pa.types.is_date32)
    low: dict[str, Any] = {}
    high: dict[str, Any] = {}
    nulls: dict[str, Any] = {}

    def visit(name: str, column: pa.ChunkedArray, low: dict[str, Any], high: dict[str, Any], nulls: dict[str, Any]) -> None:
        if pa.types.is_struct(column.type):
            inner: tuple[dict[str, Any], dict[str, Any], dict[str, Any]] = ({}, {}, {})
            for field, child in zip(column.type, column.flatten(), strict=True):
                visit(field.name, child, *inner)
            for out, got in zip((low, high, nulls), inner, strict=True):
                if got:
                    out[name] = got
            return
        if pa.types.is_nested(column.type):
            return
        nulls[name] = column.null_count
        if column.null_count == len(column) or not any(kind(column.type) for kind in ordered):
            return
        if pa.types.is_floating(column.type) and pc.any(pc.is_nan(column)).as_py():
            return
        bounds = pc.min_max(column)
        lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
        if any(isinstance(v, float) and not math.isfinite(v) for v in (lo, hi)) or any(
            isinstance(v, str) and len(v) > 32 for v in (lo, hi)
        ):
            return
        low[name] = lo.isoformat() if isinstance(lo, dt.date) else lo
        high[name] = hi.isoformat() if isinstance(hi, dt.date) else hi

    for name in rows.column_names:
        visit(name, rows.column(name), low, high, nulls)
    return {"numRecords": rows.num_rows, "minValues": low, "maxValues": high, "nullCount": nulls}


def written_stats(rows: pa.Table, row_group_rows: int) -> dict[str, Any]:
    sink = pa.BufferOutputStream()
    writer = parquet_writer(sink, rows.schema)
    floats = FloatColumns()
    for start in range(0, rows.num_rows, row_group_rows):
        piece = rows.slice(start, row_group_rows)
        writer.write_table(piece, row_group_size=row_group_rows)
        floats.add(piece)
    writer.close()
    parsed: dict[str, Any] = json.loads(stats_from_parquet(writer.writer.metadata, rows.schema, floats=floats))
    return parsed


@pytest.mark.parametrize("seed", range(6))
def test_file_stats_from_the_parquet_footer_equal_stats_computed_from_the_rows(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 400)

    def maybe(value: object) -> object:
        return None if rng.random() < 0.2 else value

    rows = pa.table(
        {
            "i": pa.array([maybe(rng.randint(-(2**40), 2**40)) for _ in range(n)], pa.int64()),
            "small": pa.array([maybe(rng.randint(-100, 100)) for _ in range(n)], pa.int16()),
            "f": pa.array([maybe(rng.uniform(-1e6, 1e6)) for _ in range(n)], pa.float64()),
            "s": pa.array([maybe("".join(rng.choice("aZé€ 0") for _ in range(rng.randint(0, 40)))) for _ in range(n)]),
            "d": pa.array([maybe(dt.date(2000, 1, 1) + dt.timedelta(days=rng.randint(0, 9000))) for _ in range(n)]),
            "ts": pa.array([maybe(dt.datetime(2020, 1, 1) + dt.timedelta(seconds=rng.randint(0, 10**6))) for _ in range(n)]),
            "b": pa.array([maybe(rng.random() < 0.5) for _ in range(n)]),
            "none": pa.nulls(n, pa.string()),
            "st": pa.array([{"a": rng.randint(0, 9)} for _ in range(n)]),
        }
    )
    for row_group_rows in (n, max(1, n // 3), 7):
        assert written_stats(rows, row_group_rows) == expected_stats(rows), f"row groups of {row_group_rows}"


def test_a_row_group_of_nans_only_leaves_its_column_without_bounds_rather_than_wrong_ones() -> None:
    rows = pa.table({"f": [float("nan"), float("nan"), 1.0, 2.0], "i": [1, 2, 3, 4]})
    stats = written_stats(rows, 2)
    assert "f" not in stats["minValues"] and "f" not in stats["maxValues"]
    assert (stats["minValues"]["i"], stats["maxValues"]["i"], stats["nullCount"]) == (1, 4, {"f": 0, "i": 0})
    assert expected_stats(rows) == stats


# --- commit intervals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "rows", "size", "seconds"),
    [
        ("500000rows", 500_000, None, None),
        ("512MB", None, 512 << 20, None),
        ("1GB,60s", None, 1 << 30, 60.0),
        ("2m, 10 records, 64KiB", 10, 64 << 10, 120.0),
        ("1.5h", None, None, 5400.0),
    ],
)
def test_commit_interval_specs_read_as_the_limits_they_name(
    spec: str, rows: int | None, size: int | None, seconds: float | None
) -> None:
    assert lakesink.CommitInterval.parse(spec) == lakesink.CommitInterval(rows=rows, bytes=size, seconds=seconds)


@pytest.mark.parametrize("spec", ["", "10 apples", "-5s", "1GB;60s", "0rows"])
def test_a_commit_interval_that_cannot_be_read_is_a_config_error_naming_it(spec: str) -> None:
    with pytest.raises(lakesink.ConfigError, match=r"commit interval|needs a limit|positive"):
        lakesink.CommitInterval.parse(spec)


def test_a_bad_commit_interval_on_the_command_line_is_a_usage_error(tmp_path: Path) -> None:
    write_ndjson_files(tmp_path / "src", files=1, rows_per_file=3)
    done = run_cli("ingest", str(tmp_path / "src"), str(tmp_path / "lake"), "--app-id", "j", "--commit-interval", "soon")
    assert done.returncode == 2
    assert "cannot read 'soon'" in done.stderr and "500000rows" in done.stderr
    assert not (tmp_path / "lake").exists()


def test_commits_by_bytes_cut_the_source_into_several_commits_and_keep_every_record_exactly_once(tmp_path: Path) -> None:
    data = write_ndjson_files(tmp_path / "src", files=4, rows_per_file=3_000)
    table = str(tmp_path / "lake")
    report = lakesink.ingest(
        str(data.directory), table, app_id="bytes", commit_interval=lakesink.CommitInterval(bytes=100_000, seconds=None)
    )
    # Each 8 MiB read block of these small files is one chunk; a group ends at the end of the
    # chunk that reaches 100 kB, so every file (~190 kB of rows) ends at least one commit.
    assert report.commits >= 4
    assert report.rows_written == data.total
    assert_exactly_once(table, None, data.ids)


def test_a_time_interval_commits_at_the_end_of_each_chunk_read_after_it_passed(tmp_path: Path) -> None:
    data = write_ndjson_files(tmp_path / "src", files=3, rows_per_file=50)
    table = str(tmp_path / "lake")
    report = lakesink.ingest(
        str(data.directory), table, app_id="time", commit_interval=lakesink.CommitInterval(bytes=None, seconds=1e-9)
    )
    assert report.commits == 3  # one chunk per small file
    assert DeltaTable(table).transaction_version("time") == data.end_position
    assert_exactly_once(table, None, data.ids)


# --- files and threads ---------------------------------------------------------------------------


def test_a_commit_larger_than_the_target_file_size_is_written_as_several_files_of_about_that_size(
    tmp_path: Path, table_uri: str, storage_options: dict[str, str]
) -> None:
    data = write_ndjson_files(tmp_path / "src", files=2, rows_per_file=20_000)
    target = 64 << 10
    report = lakesink.ingest(
        str(data.directory),
        table_uri,
        app_id="roll",
        storage_options=storage_options,
        write=lakesink.WriteConfig(target_file_bytes=target, in_flight_bytes=64 << 10),
    )
    assert report.commits == 1
    sizes = pa.table(DeltaTable(table_uri, storage_options=storage_options).get_add_actions(flatten=True)).column("size_bytes")
    assert report.files_written == len(sizes) >= 4
    # A file is finished at the first row group that takes it past the target: one row group more at most.
    assert max(sizes.to_pylist()) < 2 * target + (16 << 10)
    assert_exactly_once(table_uri, storage_options, data.ids)


def test_several_writer_threads_on_a_partitioned_table_write_every_record_exactly_once(tmp_path: Path) -> None:
    data = write_ndjson_files(tmp_path / "src", files=5, rows_per_file=4_000)
    table = str(tmp_path / "lake")
    report = lakesink.ingest(
        str(data.directory),
        table,
        app_id="threads",
        batch_rows=7_000,
        write=lakesink.WriteConfig(write_threads=3, in_flight_bytes=32 << 10),
    )
    assert report.commits == 3
    files = table_files(table, None)
    # Each file's records arrive as one chunk, handed on alone (row groups of 8 kB): the commits'
    # 2, 3 and 2 chunks went to different threads, each writing its own file.
    assert len(files) == report.files_written >= 2 * report.commits
    assert_exactly_once(table, None, data.ids)


def test_a_partitioned_table_gets_one_file_per_partition_and_thread_each_commit(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.ndjson").write_text("".join(json.dumps({"id": i, "bucket": f"b{i % 3}"}) + "\n" for i in range(900)))
    table = str(tmp_path / "lake")
    report = lakesink.ingest(
        str(src), table, app_id="parts", partition_by=["bucket"],
        write=lakesink.WriteConfig(write_threads=2, in_flight_bytes=4 << 10),
    )
    assert report.commits == 1
    dirs = {f.split("/")[-2] for f in table_files(table, None)}
    assert dirs == {"bucket=b0", "bucket=b1", "bucket=b2"}
    assert_exactly_once(table, None, range(900))


# --- the pipeline alone --------------------------------------------------------------------------


def test_the_reader_waits_while_the_in_flight_budget_is_spent(tmp_path: Path) -> None:
    """With a budget of one row group, the reader never gets more than one row group ahead of the
    encoders: the bytes handed on and not yet written never exceed the budget (plus one item)."""
    store = open_store(str(tmp_path / "t"), StorageOptions.resolve({}))
    item = pa.table({"x": pa.array(range(10_000), pa.int64())})
    in_flight = {"now": 0, "max": 0}
    lock = threading.Lock()

    class Counting(GroupFiles):
        def write(self, rows: pa.Table) -> None:
            super().write(rows)
            with lock:
                in_flight["now"] -= rows.nbytes

    def produce(emit: Emitter[int]) -> None:
        for n in range(20):
            with lock:
                in_flight["now"] += item.nbytes
                in_flight["max"] = max(in_flight["max"], in_flight["now"])
            emit.rows(item, group_start=-1)
            if n % 5 == 4:
                emit.seal(n)

    def new_group(start: int) -> GroupFiles:
        return Counting(store, app_id="p", start_position=start, partition_by=())

    with Pipeline(produce, new_group, encoders=1, in_flight_bytes=item.nbytes) as pipe:
        sealed = list(pipe.sealed())
    assert [s.info for s in sealed] == [4, 9, 14, 19]
    assert sum(f.num_records for s in sealed for f in s.files) == 200_000
    # Counted before the reader blocks: one item waiting on the budget, one being written.
    assert in_flight["max"] <= 2 * item.nbytes


def test_an_encoder_error_reaches_the_caller_and_stops_the_reader(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "t"), StorageOptions.resolve({}))
    produced = []

    class Failing(GroupFiles):
        def write(self, rows: pa.Table) -> None:
            raise lakesink.StorageUnavailable("the store went away")

    def produce(emit: Emitter[int]) -> None:
        for n in range(1_000):
            produced.append(n)
            emit.rows(pa.table({"x": [n]}), group_start=-1)
        emit.seal(0)

    pipeline: Pipeline[int] = Pipeline(
        produce, lambda start: Failing(store, app_id="p", start_position=start, partition_by=()), encoders=2, in_flight_bytes=8
    )
    with pytest.raises(lakesink.StorageUnavailable, match="went away"), pipeline:
        list(pipeline.sealed())
    assert len(produced) < 1_000  # the reader stopped early


def test_a_reader_error_comes_after_the_groups_sealed_before_it_so_they_can_still_be_committed(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "t"), StorageOptions.resolve({}))

    def produce(emit: Emitter[int]) -> None:
        for group in range(2):
            emit.rows(pa.table({"x": [group]}), group_start=group - 1)
            emit.seal(group)
        emit.rows(pa.table({"x": [2]}), group_start=1)
        raise lakesink.BadRecord("record 3 is bad")

    got = []
    pipeline: Pipeline[int] = Pipeline(
        produce, lambda start: GroupFiles(store, app_id="p", start_position=start, partition_by=()), encoders=2, in_flight_bytes=1
    )
    with pytest.raises(lakesink.BadRecord, match="record 3"), pipeline:
        for sealed in pipeline.sealed():
            got.append((sealed.info, [f.num_records for f in sealed.files]))
    assert got == [(0, [1]), (1, [1])]
    # The unsealed group's file was dropped: only the two sealed files are on the store.
    assert len([p for p in (tmp_path / "t").rglob("*") if p.is_file()]) == 2


def test_progress_reports_records_read_and_rows_committed_up_to_the_whole_source(tmp_path: Path) -> None:
    data = write_ndjson_files(tmp_path / "src", files=3, rows_per_file=400)
    seen: list[lakesink.IngestProgress] = []
    lakesink.ingest(str(data.directory), str(tmp_path / "lake"), app_id="p", batch_rows=500, on_progress=seen.append)
    last = seen[-1]
    assert (last.records_read, last.rows_written, last.commits) == (1_200, 1_200, 3)
    assert last.bytes_done == last.bytes_total == sum(p.stat().st_size for p in data.directory.iterdir())
    for earlier, later in itertools.pairwise(seen):
        assert later.rows_written >= earlier.rows_written and later.records_read >= earlier.records_read
        assert later.rows_written <= later.records_read


def test_progress_asked_for_without_a_terminal_is_written_as_log_lines(tmp_path: Path) -> None:
    data = write_ndjson_files(tmp_path / "src", files=2, rows_per_file=300)
    done = run_cli("ingest", str(data.directory), str(tmp_path / "lake"), "--app-id", "bar", "--progress")
    assert done.returncode == 0, done.stderr
    assert "600 rows" in done.stdout
    assert re.search(r"^ingest: \d+% \([\d,]+ of [\d,]+ bytes\), [\d,]+ records read, [\d,]+ rows committed", done.stderr, re.M)


@pytest.mark.parametrize(("environ", "expected"), [({}, "True"), ({"MALLOC_TRIM_THRESHOLD_": "1000000"}, "False")])
def test_ingest_tunes_glibc_malloc_once_unless_the_process_set_it_itself(environ: dict[str, str], expected: str) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | environ
    code = "from lakesink.ingest.malloc import keep_block_buffers as k; print(k(), k())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [expected, expected]


def test_after_an_encoder_error_the_groups_every_encoder_had_finished_are_still_handed_on(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "t"), StorageOptions.resolve({}))

    class FailingOnGroupTwo(GroupFiles):
        def write(self, rows: pa.Table) -> None:
            if self.start_position == 1:
                raise lakesink.StorageUnavailable("the store went away")
            super().write(rows)

    def produce(emit: Emitter[int]) -> None:
        for group in range(4):
            emit.rows(pa.table({"x": [group]}), group_start=group - 1)
            emit.seal(group)

    got = []
    pipeline: Pipeline[int] = Pipeline(
        produce,
        lambda start: FailingOnGroupTwo(store, app_id="p", start_position=start, partition_by=()),
        encoders=1,
        in_flight_bytes=1 << 20,
    )
    with pytest.raises(lakesink.StorageUnavailable, match="went away"), pipeline:
        got.extend(sealed.info for sealed in pipeline.sealed())
    assert got == [0, 1]  # groups 0 and 1 (start positions -1 and 0) were whole; group 2 failed
