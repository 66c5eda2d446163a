"""The Python API: every input type, positions, partitions, schema rules, secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

import lakesink
from lakesink.storage.objects import open_store
from lakesink.write.stage import stage_batch


def read_table(uri: str, options: dict[str, str]) -> pa.Table:
    return DeltaTable(uri, storage_options=options).to_pyarrow_dataset().to_table(use_threads=False)


def log_lines(uri: str, options: dict[str, str]) -> list[dict[str, object]]:
    store = open_store(uri, lakesink.StorageOptions.resolve(options))
    lines = []
    for info in store.list_files("_delta_log"):
        if info.path.endswith(".json"):
            lines += [json.loads(line) for line in store.read_bytes(info.path).splitlines() if line.strip()]
    return lines


def test_public_surface_is_exactly_all() -> None:
    import types

    public = {n for n in dir(lakesink) if not n.startswith("_") and not isinstance(getattr(lakesink, n), types.ModuleType)}
    assert public | {"__version__"} == set(lakesink.__all__)
    assert lakesink.__all__ == sorted(lakesink.__all__, key=lambda n: (n.startswith("_") or n.islower(), n))


def test_importing_lakesink_does_not_import_click() -> None:
    import subprocess
    import sys

    code = "import sys, lakesink; print('click' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.mark.parametrize(
    "make",
    [
        lambda ids: pa.table({"id": ids, "name": [f"n{i}" for i in ids]}),
        lambda ids: pa.RecordBatch.from_pydict({"id": ids, "name": [f"n{i}" for i in ids]}),
        lambda ids: pl.DataFrame({"id": ids, "name": [f"n{i}" for i in ids]}),
        lambda ids: pd.DataFrame({"id": ids, "name": [f"n{i}" for i in ids]}),
        lambda ids: [{"id": i, "name": f"n{i}"} for i in ids],
    ],
    ids=["pyarrow-table", "record-batch", "polars", "pandas", "list-of-dicts"],
)
def test_each_input_type_is_committed_once_and_read_back(make, table_uri: str, storage_options: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    with lakesink.Sink(table_uri, app_id="job", storage_options=storage_options) as sink:
        assert sink.committed_position() is None
        first = sink.write(make([1, 2, 3]), position=1)
        second = sink.write(make([4, 5]), position=2)
        assert (first.status, first.rows, second.status, second.rows) == ("committed", 3, "committed", 2)
        assert sink.committed_position() == 2
    table = read_table(table_uri, storage_options)
    assert sorted(table.column("id").to_pylist()) == [1, 2, 3, 4, 5]
    assert table.schema.field("name").type == pa.string()


def test_replayed_position_is_skipped_and_leaves_the_table_unchanged(table_uri: str, storage_options: dict[str, str]) -> None:
    with lakesink.Sink(table_uri, app_id="job", storage_options=storage_options) as sink:
        sink.write(pa.table({"id": [1]}), position=10)
        version = DeltaTable(table_uri, storage_options=storage_options).version()
        again = sink.write(pa.table({"id": [1]}), position=10)
        lower = sink.write(pa.table({"id": [2]}), position=3)
    assert (again.status, again.reason) == ("skipped", "already committed")
    assert lower.status == "skipped" and lower.committed_position == 10
    assert DeltaTable(table_uri, storage_options=storage_options).version() == version
    assert read_table(table_uri, storage_options).column("id").to_pylist() == [1]


def test_a_fresh_sink_resumes_from_the_txn_in_the_log(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    with lakesink.Sink(uri, app_id="job") as sink:
        sink.write(pa.table({"id": [1]}), position=5)
    with lakesink.Sink(uri, app_id="job") as sink, lakesink.Sink(uri, app_id="other") as other:
        assert sink.committed_position() == 5
        assert other.committed_position() is None
        assert sink.write(pa.table({"id": [1]}), position=5).status == "skipped"


@pytest.mark.parametrize("bad", [-1, 2**63, 1.5, "3", True, None])
def test_positions_outside_int64_or_not_ints_are_rejected(bad: object, tmp_path: Path) -> None:
    with lakesink.Sink(str(tmp_path / "t"), app_id="job") as sink, pytest.raises(lakesink.InvalidPosition):
        sink.write(pa.table({"id": [1]}), position=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "t").exists()


def test_empty_batch_advances_the_position_without_adding_files(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    with lakesink.Sink(uri, app_id="job") as sink:
        sink.write(pa.table({"id": [1]}), position=1)
        result = sink.write(pa.table({"id": pa.array([], pa.int64())}), position=2)
        assert (result.status, result.files, sink.committed_position()) == ("committed", 0, 2)
    assert len(DeltaTable(uri).file_uris()) == 1


def test_partition_values_with_slashes_dots_nul_and_unicode_stay_inside_their_directory(
    table_uri: str, storage_options: dict[str, str]
) -> None:
    values = ["../escape", "a/b", "nul\x00byte", "é ü 日本", "50%=?#&", None, "plain"]
    rows = pa.table({"id": list(range(len(values))), "p": values})
    with lakesink.Sink(table_uri, app_id="job", storage_options=storage_options, partition_by=["p"]) as sink:
        sink.write(rows, position=1)
    store = open_store(table_uri, lakesink.StorageOptions.resolve(storage_options))
    data_files = [i.path for i in store.list_files() if i.path.endswith(".parquet") and not i.path.startswith("_")]
    assert len(data_files) == len(values)
    for path in data_files:
        parts = path.split("/")
        assert len(parts) == 2 and parts[0].startswith("p=") and not {".", ".."} & set(parts), path
        assert "\x00" not in path
    got = read_table(table_uri, storage_options).sort_by("id")
    assert got.column("p").to_pylist() == values
    if not table_uri.startswith("s3://"):
        import duckdb
        import duckdb_extensions

        con = duckdb.connect()
        duckdb_extensions.import_extension("delta", con=con)
        duck = con.sql(f"select id, p from delta_scan('{table_uri}') order by id").fetchall()
        assert [p for _, p in duck] == values
        assert pl.read_delta(table_uri).sort("id")["p"].to_list() == values


def test_partition_by_a_missing_column_fails_before_the_table_is_created(tmp_path: Path) -> None:
    with lakesink.Sink(str(tmp_path / "t"), app_id="job", partition_by=["day"]) as sink:
        with pytest.raises(lakesink.SchemaMismatch, match="'day'"):
            sink.write(pa.table({"id": [1]}), position=1)
    assert not (tmp_path / "t").exists()


def test_a_new_column_is_rejected_without_opt_in_and_nothing_changes(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    with lakesink.Sink(uri, app_id="job") as sink:
        sink.write(pa.table({"id": [1]}), position=1)
        with pytest.raises(lakesink.SchemaMismatch, match=r"'extra'.*evolve_schema=True"):
            sink.write(pa.table({"id": [2], "extra": ["x"]}), position=2)
        assert sink.committed_position() == 1
    assert DeltaTable(uri).version() == 1


def test_a_new_nullable_column_is_added_when_the_caller_opts_in(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    with lakesink.Sink(uri, app_id="job", evolve_schema=True) as sink:
        sink.write(pa.table({"id": [1]}), position=1)
        sink.write(pa.table({"id": [2], "extra": ["x"]}), position=2)
    got = read_table(uri, {}).sort_by("id").to_pylist()
    assert got == [{"id": 1, "extra": None}, {"id": 2, "extra": "x"}]


def test_a_type_conflict_names_the_column_and_changes_nothing(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    with lakesink.Sink(uri, app_id="job", evolve_schema=True) as sink:
        sink.write(pa.table({"id": [1], "amount": [1.5]}), position=1)
        with pytest.raises(lakesink.SchemaMismatch, match="'amount' is double in the table but string"):
            sink.write(pa.table({"id": [2], "amount": ["lots"]}), position=2)
        assert sink.committed_position() == 1
    assert DeltaTable(uri).version() == 1


def test_narrower_ints_widen_and_missing_nullable_columns_become_null(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    with lakesink.Sink(uri, app_id="job") as sink:
        sink.write(pa.table({"id": pa.array([1], pa.int64()), "note": ["a"]}), position=1)
        sink.write(pa.table({"id": pa.array([2], pa.int32())}), position=2)
    assert read_table(uri, {}).sort_by("id").to_pylist() == [{"id": 1, "note": "a"}, {"id": 2, "note": None}]


def test_a_list_of_dicts_with_clashing_types_names_the_row(tmp_path: Path) -> None:
    with lakesink.Sink(str(tmp_path / "t"), app_id="job") as sink, pytest.raises(lakesink.BadRecord, match="row 2"):
        sink.write([{"id": 1}, {"id": 2}, {"id": "three"}], position=1)


def test_unsupported_input_says_what_to_pass(tmp_path: Path) -> None:
    with lakesink.Sink(str(tmp_path / "t"), app_id="job") as sink, pytest.raises(lakesink.ConfigError, match="polars or pandas"):
        sink.write(42, position=1)


def test_restaging_the_same_batch_overwrites_the_same_files(tmp_path: Path) -> None:
    store = open_store(str(tmp_path), lakesink.StorageOptions.resolve({}))
    rows = pa.table({"id": [1, 2, 3], "p": ["a", "b", "a"]})
    first = stage_batch(store, rows, app_id="job", position=7, partition_by=["p"])
    second = stage_batch(store, rows, app_id="job", position=7, partition_by=["p"])
    assert [f.path for f in first] == [f.path for f in second]
    assert len([i for i in store.list_files() if i.path.endswith(".parquet")]) == 2
    stats = json.loads(first[0].stats)
    assert stats["numRecords"] == 2 and stats["minValues"] == {"id": 1} and stats["maxValues"] == {"id": 3}


def test_secrets_never_reach_repr_errors_or_the_delta_log(table_uri: str, storage_options: dict[str, str]) -> None:
    canary = "CANARY-SECRET-4f9a1c"
    options = {**storage_options, "AWS_SECRET_ACCESS_KEY": canary} if storage_options else {"AWS_SESSION_TOKEN": canary}
    sink = lakesink.Sink(table_uri, app_id="job", storage_options=options)
    assert canary not in repr(sink) and canary not in str(lakesink.StorageOptions.resolve(options))
    if table_uri.startswith("s3://"):
        with pytest.raises(lakesink.ConfigError, match="bucket does not exist") as failure:
            lakesink.Sink("s3://no-such-bucket-here/t", app_id="job", storage_options=options)
        assert canary not in str(failure.value) and canary not in repr(failure.value)
    sink.write(pa.table({"id": [1]}), position=1)
    log = log_lines(table_uri, storage_options)
    assert canary not in json.dumps(log)
    info = next(line["commitInfo"] for line in log if "commitInfo" in line and "lakesink.appId" in line["commitInfo"])
    assert {k for k in info if k.startswith("lakesink.")} == {
        "lakesink.version", "lakesink.appId", "lakesink.position", "lakesink.writeId"
    }  # fmt: skip


def test_a_batch_cut_from_an_older_position_is_stale_and_writes_nothing(table_uri: str, storage_options: dict[str, str]) -> None:
    first = lakesink.Sink(table_uri, app_id="job", storage_options=storage_options)
    first.write(pa.table({"id": [0]}), position=1, previous=None)
    behind = lakesink.Sink(table_uri, app_id="job", storage_options=storage_options)  # sees position 1
    first.write(pa.table({"id": list(range(1, 10))}), position=10, previous=1)
    # `behind` read rows 1..14 as one batch after position 1; a copy committed 10 in the meantime.
    result = behind.write(pa.table({"id": list(range(1, 15))}), position=15, previous=1)
    assert (result.status, result.committed_position) == ("stale", 10)
    assert behind.write(pa.table({"id": list(range(10, 15))}), position=15, previous=10).status == "committed"
    assert sorted(read_table(table_uri, storage_options).column("id").to_pylist()) == list(range(15))


def test_results_render_as_small_html_tables_in_notebooks_and_read_well_as_repr(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    with lakesink.Sink(uri, app_id="nb", storage_options={"AWS_SECRET_ACCESS_KEY": "CANARY-nb"}) as sink:
        assert "(not created yet)" in sink._repr_html_()
        result = sink.write([{"id": 1, "name": "<b>x</b>"}], position=7)
        html = sink._repr_html_()
        assert "<table>" in html and "nb" in html and ">7<" in html and "CANARY" not in html
    assert "<td style='text-align:left'>committed</td>" in result._repr_html_()
    assert repr(result).startswith("WriteResult(status='committed'")
    status = lakesink.table_status(uri)
    assert "TableStatus" in status._repr_html_() and "nb=7" in status._repr_html_()
    assert "&lt;" not in status._repr_html_()  # nothing to escape here; escaping is checked below
    from lakesink.display import html_table

    assert html_table("<t>", [("a&b", "<x>")]) == (
        "<table><caption style='text-align:left'><b>&lt;t&gt;</b></caption><tr><th style='text-align:left'>a&amp;b</th>"
        "<td style='text-align:left'>&lt;x&gt;</td></tr></table>"
    )
