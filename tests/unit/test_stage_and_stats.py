"""lakesink.write: staged files are named by their content, and Delta statistics come from the footer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa

from lakesink.storage.objects import open_store
from lakesink.storage.options import StorageOptions
from lakesink.write.partitions import partition_value, split_by_partition
from lakesink.write.stage import parquet_writer, stage_batch
from lakesink.write.stats import FloatColumns, stats_from_parquet


def stats(table: pa.Table, *, row_group_size: int | None = None) -> dict[str, object]:
    """The Delta statistics lakesink logs for `table` written as one file."""
    sink = pa.BufferOutputStream()
    writer = parquet_writer(sink, table.schema)
    writer.write_table(table, row_group_size=row_group_size)
    writer.close()
    floats = FloatColumns()
    floats.add(table)
    return json.loads(stats_from_parquet(writer.writer.metadata, table.schema, floats=floats))  # type: ignore[no-any-return]


def test_stats_bound_every_value_and_count_nulls_across_row_groups() -> None:
    table = pa.table({"i": [3, None, 1, 7], "s": ["b", "a", None, "c"], "f": [1.5, math.inf, 0.5, 2.0]})
    found = stats(table, row_group_size=2)
    assert found["numRecords"] == 4
    assert (found["minValues"]["i"], found["maxValues"]["i"]) == (1, 7)
    assert (found["minValues"]["s"], found["maxValues"]["s"]) == ("a", "c")
    assert "f" not in found["maxValues"]  # an infinite bound is left out rather than written as JSON it is not
    assert found["nullCount"] == {"i": 1, "s": 1, "f": 0}


def test_long_strings_and_timestamps_get_no_bounds_that_could_mislead_skipping() -> None:
    table = pa.table({"s": ["x" * 40, "y"], "t": pa.array([0, 1], pa.timestamp("us"))})
    found = stats(table)
    assert found["minValues"] == {} and found["maxValues"] == {}


def test_a_batch_staged_twice_is_the_same_files_under_the_same_names(tmp_path: Path) -> None:
    store = open_store(str(tmp_path), StorageOptions.resolve({}, environ={}))
    rows = pa.table({"day": ["b", "a", "b"], "v": [1, 2, 3]})
    first = stage_batch(store, rows, app_id="job", position=5, partition_by=["day"])
    again = stage_batch(store, rows, app_id="job", position=5, partition_by=["day"])
    assert first == again
    assert [f.partition_values for f in first] == [(("day", "a"),), (("day", "b"),)]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.parquet")) == sorted(f.path for f in first)
    assert sum(f.num_records for f in first) == 3
    assert stage_batch(store, rows.slice(0, 0), app_id="job", position=6) == []


def test_partition_values_are_serialized_as_the_protocol_says() -> None:
    import datetime as dt

    assert partition_value(True) == "true" and partition_value(None) is None
    assert partition_value(dt.date(2026, 12, 1)) == "2026-12-01"
    assert (
        partition_value(dt.datetime(2026, 12, 1, 13, 0, tzinfo=dt.timezone(dt.timedelta(hours=1))))
        == "2026-12-01 12:00:00.000000"
    )
    parts = split_by_partition(pa.table({"k": [2, None, 2], "v": ["a", "b", "c"]}), ["k"])
    assert [(values, part.column("v").to_pylist()) for values, part in parts] == [
        ((("k", "2"),), ["a", "c"]),
        ((("k", None),), ["b"]),
    ]
