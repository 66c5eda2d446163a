"""What an audit against the Delta protocol and three readers found, each kept as a test.

Every table here is read back by delta-rs, DuckDB's delta extension and Polars: lakesink's log
entries are a promise to every reader, and the readers must agree on every row.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable, QueryBuilder, write_deltalake

import lakesink
from tests.conftest import run_cli
from tests.support.checks import query_duckdb, read_column_deltalake


def adds(uri: str) -> list[dict[str, object]]:
    """Every add action in the log's JSON entries, oldest first."""
    log = Path(uri) / "_delta_log"
    found = []
    for entry in sorted(log.glob("*.json")):
        for line in entry.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                found.append(action["add"])
    return found


def stats_of(uri: str) -> list[dict[str, object]]:
    return [json.loads(str(a["stats"])) for a in adds(uri)]


def polars_rows(uri: str, *, where: pl.Expr | None = None) -> list[dict[str, object]]:
    frame = pl.read_delta(uri)
    return (frame.filter(where) if where is not None else frame).to_dicts()


# -- 1. every column a partition column -------------------------------------------------------------


def test_a_write_whose_every_column_is_a_partition_column_is_refused_and_loses_nothing(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    with lakesink.Sink(uri, app_id="x", partition_by=["p", "q"]) as sink:
        with pytest.raises(lakesink.SchemaMismatch, match=r"every column .* is a partition column"):
            sink.write(pa.table({"p": ["a", "a", "b"], "q": [1, 1, 2]}), position=1)
        assert sink.committed_position() is None
    assert not (tmp_path / "t" / "_delta_log").exists()


def test_the_cli_refuses_partitioning_by_every_column_and_keeps_the_position(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.ndjson").write_text('{"p": "a", "q": 1}\n{"p": "b", "q": 2}\n')
    done = run_cli("ingest", str(src), str(tmp_path / "t"), "--app-id", "x", "--partition-by", "p", "--partition-by", "q")
    assert done.returncode == 1, done.stderr
    assert "every column" in done.stderr
    assert not (tmp_path / "t" / "_delta_log").exists()


# -- 2. dotted column names -------------------------------------------------------------------------


def test_statistics_of_a_dotted_column_name_and_a_struct_field_are_kept_apart(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    data = pa.table(
        {
            "s.x": pa.array([1, 2, 3], pa.int64()),
            "s": pa.array([{"x": None}, {"x": None}, {"x": None}], pa.struct([("x", pa.int64())])),
        }
    )
    with lakesink.Sink(uri, app_id="x") as sink:
        sink.write(data, position=1)
    (stats,) = stats_of(uri)
    assert stats["nullCount"] == {"s.x": 0, "s": {"x": 3}}
    assert (stats["minValues"], stats["maxValues"]) == ({"s.x": 1}, {"s.x": 3})
    assert len(polars_rows(uri, where=pl.col("s.x").is_not_null())) == 3
    assert len(query_duckdb(uri, '"s.x"', where='"s.x" IS NOT NULL')) == 3


def test_nested_fields_get_statistics_as_nested_objects(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    data = pa.table(
        {"s": pa.array([{"a": 5, "b": "q"}, {"a": 9, "b": None}], pa.struct([("a", pa.int64()), ("b", pa.string())]))}
    )
    with lakesink.Sink(uri, app_id="x") as sink:
        sink.write(data, position=1)
    (stats,) = stats_of(uri)
    assert stats["minValues"] == {"s": {"a": 5, "b": "q"}} and stats["maxValues"] == {"s": {"a": 9, "b": "q"}}
    assert stats["nullCount"] == {"s": {"a": 0, "b": 1}}
    assert len(query_duckdb(uri, "s", where="s.a > 8")) == 1


# -- 3. NaN -----------------------------------------------------------------------------------------


def test_a_file_holding_nan_has_no_bounds_so_no_reader_skips_it(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    with lakesink.Sink(uri, app_id="x") as sink:
        sink.write(pa.table({"x": [1.0, math.nan, 2.0], "id": [1, 2, 3]}), position=1)
    (stats,) = stats_of(uri)
    assert "x" not in stats["maxValues"] and "x" not in stats["minValues"] and stats["nullCount"]["x"] == 0
    assert [r[0] for r in query_duckdb(uri, "id", where="x > 5")] == [2]  # NaN sorts above every number
    query = QueryBuilder().register("t", DeltaTable(uri))
    assert pa.table(query.execute("SELECT id FROM t WHERE x > 5").read_all()).column("id").to_pylist() == [2]
    assert [r["id"] for r in polars_rows(uri, where=pl.col("x") > 5)] == [2]


def test_the_streaming_path_drops_bounds_of_a_file_with_nan_too(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    pa.parquet.write_table(pa.table({"x": [1.0, math.nan, 2.0], "id": [1, 2, 3]}), src / "a.parquet")
    lakesink.ingest(str(src), str(tmp_path / "t"), app_id="x")
    (stats,) = stats_of(str(tmp_path / "t"))
    assert "x" not in stats["maxValues"] and stats["maxValues"]["id"] == 3


# -- 4. empty-string partition values ---------------------------------------------------------------


def test_an_empty_partition_value_is_stored_as_null_and_every_reader_agrees(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    with lakesink.Sink(uri, app_id="x", partition_by=["p"]) as sink:
        sink.write(pa.table({"p": ["", None, "x"], "id": [1, 2, 3]}), position=1)
    expected = [(1, None), (2, None), (3, "x")]
    assert sorted((r["id"], r["p"]) for r in read_column_deltalake(uri, None, ["id", "p"])) == expected
    assert sorted(query_duckdb(uri, "id, p")) == expected
    assert sorted((r["id"], r["p"]) for r in polars_rows(uri)) == expected
    assert {a["partitionValues"]["p"] for a in adds(uri)} == {None, "x"}


# -- 5. partition column names ----------------------------------------------------------------------


def test_partition_column_names_with_spaces_plus_or_unicode_are_named_as_delta_rs_names_them(tmp_path: Path) -> None:
    data = pa.table({"my col": ["a b", "x"], "a+b": ["1", "2"], "Ü": ["ü", "é"], "v": [1, 2]})
    ours, theirs = str(tmp_path / "ours"), str(tmp_path / "theirs")
    with lakesink.Sink(ours, app_id="x", partition_by=["my col", "a+b", "Ü"]) as sink:
        sink.write(data, position=1)
    write_deltalake(theirs, data, partition_by=["my col", "a+b", "Ü"])

    def directories(root: str) -> set[str]:
        return {os.path.relpath(d, root) for d, _, files in os.walk(root) if any(f.endswith(".parquet") for f in files)}

    def logged(root: str) -> set[str]:
        return {str(a["path"]).rsplit("/", 1)[0] for a in adds(root)}

    assert directories(ours) == directories(theirs) == {"my col=a%20b/a+b=1/Ü=%C3%BC", "my col=x/a+b=2/Ü=%C3%A9"}
    assert logged(ours) == logged(theirs)
    expected = [("a b", "1", "ü", 1), ("x", "2", "é", 2)]
    assert sorted(tuple(r.values()) for r in pl.read_delta(ours).select("my col", "a+b", "Ü", "v").to_dicts()) == expected
    assert sorted(query_duckdb(ours, '"my col", "a+b", "Ü", v')) == expected


# -- 6. timestamps before year 1000 -----------------------------------------------------------------


def test_timestamp_partition_values_before_year_1000_are_zero_padded(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    moment = dt.datetime(99, 1, 1, 12, 0, 0, 5)
    with lakesink.Sink(uri, app_id="x", partition_by=["ts"]) as sink:
        sink.write(pa.table({"ts": pa.array([moment], pa.timestamp("us")), "v": [1]}), position=1)
    assert [a["partitionValues"] for a in adds(uri)] == [{"ts": "0099-01-01 12:00:00.000005"}]
    assert read_column_deltalake(uri, None, ["ts"]) == [{"ts": moment}]


# -- 7. a committed file is never overwritten -------------------------------------------------------


def test_a_stale_sink_never_overwrites_a_file_another_writer_committed(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    rows = pa.table({"id": [1, 2, 3]})
    with lakesink.Sink(uri, app_id="x") as first:
        first.write(rows, position=4)
        with lakesink.Sink(uri, app_id="x") as late:  # opened before the other commits position 5
            first.write(rows, position=5)
            (committed,) = [a["path"] for a in adds(uri) if "00000000000000000005" in str(a["path"])]
            before = os.stat(Path(uri) / str(committed))
            result = late.write(rows, position=5)
    after = os.stat(Path(uri) / str(committed))
    assert result.status == "skipped"
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_file_a_killed_run_left_is_rewritten_so_gc_leaves_it_until_the_commit(tmp_path: Path) -> None:
    """The same batch staged again finds its file (named by its content) left by a killed run: it is
    not committed, so it is written again (fresh, for gc's grace period) and then committed."""
    from lakesink.storage.objects import open_store
    from lakesink.storage.options import StorageOptions
    from lakesink.write.stage import stage_batch

    uri = str(tmp_path / "t")
    rows = pa.table({"id": [1, 2, 3]})
    with lakesink.Sink(uri, app_id="x") as sink:
        sink.write(pa.table({"id": [0]}), position=1)
        (orphan,) = stage_batch(open_store(uri, StorageOptions.resolve({}, environ={})), rows, app_id="x", position=2)
        os.utime(Path(uri) / orphan.path, ns=(0, 0))  # staged long ago
        assert sink.write(rows, position=2).status == "committed"
    assert os.stat(Path(uri) / orphan.path).st_mtime_ns > 0
    assert sorted(read_column_deltalake(uri, None, ["id"]), key=lambda r: int(r["id"])) == [{"id": i} for i in range(4)]


# -- 8. a partition value too long for a name -------------------------------------------------------


def test_a_partition_value_too_long_for_a_file_name_is_a_terminal_error_naming_the_column(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    with lakesink.Sink(uri, app_id="x", partition_by=["p"]) as sink:
        sink.write(pa.table({"p": ["short"], "v": [1]}), position=1)
        with pytest.raises(lakesink.SchemaMismatch, match="partition column 'p' makes a directory name of 302 bytes"):
            sink.write(pa.table({"p": ["a" * 300], "v": [2]}), position=2)
        assert sink.committed_position() == 1


# -- 9. every error a LakesinkError, checked before the table is created ------------------------------


@pytest.mark.parametrize(
    ("column", "match"),
    [
        (pa.array([3_000_000], pa.date32()), "column 'c' holds a date outside the years 1 to 9999"),
        (pa.array([1], pa.decimal256(40, 2)), "column 'c': Delta decimals have at most 38 digits"),
        (pa.array([1], pa.time64("us")), "Delta has no type for time64"),
    ],
)
def test_what_a_table_cannot_hold_is_refused_before_it_is_created(tmp_path: Path, column: pa.Array, match: str) -> None:
    uri = str(tmp_path / "t")
    with lakesink.Sink(uri, app_id="x") as sink, pytest.raises(lakesink.SchemaMismatch, match=match):
        sink.write(pa.table({"c": column, "v": [1]}), position=1)
    assert not (tmp_path / "t").exists() or not any((tmp_path / "t").rglob("*"))


def test_a_null_in_a_field_the_table_requires_is_a_schema_mismatch(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    required = pa.struct([pa.field("x", pa.int64(), nullable=False)])
    write_deltalake(uri, pa.table({"s": pa.array([{"x": 1}], required)}))
    with lakesink.Sink(uri, app_id="x") as sink, pytest.raises(lakesink.SchemaMismatch, match="requires a value"):
        sink.write(pa.table({"s": pa.array([{"x": 2}, {"x": None}], required)}), position=1)
    assert DeltaTable(uri).version() == 0


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        (pa.array([b"ab", b"cd"], pa.binary(2)), [b"ab", b"cd"]),
        (pa.array([[1, 2], [3, 4]], pa.list_(pa.int64(), 2)), [[1, 2], [3, 4]]),
        (pa.array([[("a", "b")], []], pa.map_(pa.large_string(), pa.large_string())), [[("a", "b")], []]),
        (pa.array([1, 2], pa.decimal256(20, 2)), None),
        (pa.array([{"x": 1}, {"x": None}], pa.struct([pa.field("x", pa.int64(), nullable=False)])), [{"x": 1}, {"x": None}]),
    ],
)
def test_types_delta_stores_in_a_plainer_form_are_converted_and_read_back(
    tmp_path: Path, column: pa.Array, expected: object
) -> None:
    uri = str(tmp_path / "t")
    with lakesink.Sink(uri, app_id="x") as sink:
        assert sink.write(pa.table({"c": column, "id": [1, 2]}), position=1).status == "committed"
    got = [r["c"] for r in sorted(read_column_deltalake(uri, None, ["id", "c"]), key=lambda r: int(r["id"]))]
    want = column.to_pylist() if expected is None else expected
    assert got == want
    assert len(query_duckdb(uri, "c")) == 2 and len(polars_rows(uri)) == 2


# -- 10. the table's statistics settings ------------------------------------------------------------


@pytest.mark.parametrize(
    ("configuration", "indexed"),
    [
        ({"delta.dataSkippingNumIndexedCols": "1"}, {"a"}),
        ({"delta.dataSkippingNumIndexedCols": "-1"}, {"a", "b", "c"}),
        ({"delta.dataSkippingStatsColumns": "c,b"}, {"b", "c"}),
        ({}, {"a", "b", "c"}),
    ],
)
def test_the_tables_statistics_settings_are_honoured(tmp_path: Path, configuration: dict[str, str], indexed: set[str]) -> None:
    uri = str(tmp_path / "t")
    schema = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("c", pa.string())])
    DeltaTable.create(uri, schema=schema, configuration=configuration)
    data = pa.table({"a": [1, 2], "b": [3, 4], "c": ["x", "y"]}, schema=schema)
    with lakesink.Sink(uri, app_id="x") as sink:
        sink.write(data, position=1)
    src = tmp_path / "src"
    src.mkdir()
    pa.parquet.write_table(data, src / "a.parquet")
    lakesink.ingest(str(src), uri, app_id="y")
    for stats in stats_of(uri):
        assert set(stats["nullCount"]) == indexed and set(stats["minValues"]) == indexed
