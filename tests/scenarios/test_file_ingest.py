"""`lakesink ingest` and `lakesink status` on file sources: resume, contract checks, bad input, exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

import lakesink
from lakesink.sources.files import FilePosition
from tests.conftest import run_cli
from tests.support.moto_server import MotoServer


def write_ndjson(path: Path, ids: range, **extra: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": i, "name": f"n{i}", **extra}) + "\n" for i in ids))


def ids_in(uri: str, options: dict[str, str] | None = None) -> list[int]:
    table = DeltaTable(uri, storage_options=options).to_pyarrow_dataset().to_table(columns=["id"], use_threads=False)
    return sorted(table.column("id").to_pylist())


def test_ingest_then_rerun_adds_nothing_and_exits_zero(tmp_path: Path) -> None:
    for f in range(3):
        write_ndjson(tmp_path / "src" / f"part-{f}.ndjson", range(f * 100, f * 100 + 100))
    table = str(tmp_path / "lake")
    first = run_cli("ingest", str(tmp_path / "src"), table, "--app-id", "job", "--batch-rows", "70", "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert (report["rows_written"], report["commits"], report["files_read"]) == (300, 5, 3)
    version = DeltaTable(table).version()
    again = run_cli("ingest", str(tmp_path / "src"), table, "--app-id", "job", "--batch-rows", "70")
    assert again.returncode == 0 and again.stdout.startswith("0 rows")
    assert DeltaTable(table).version() == version
    assert ids_in(table) == list(range(300))


def test_batches_span_files_and_a_rerun_resumes_mid_file(tmp_path: Path) -> None:
    write_ndjson(tmp_path / "src" / "a.ndjson", range(0, 10))
    write_ndjson(tmp_path / "src" / "b.ndjson", range(10, 25))
    table = str(tmp_path / "lake")
    lakesink.ingest(str(tmp_path / "src" / "a.ndjson"), table, app_id="job", batch_rows=4)
    position = FilePosition.decode(lakesink.table_status(table).positions["job"])
    assert position == FilePosition(1, 0)
    report = lakesink.ingest(str(tmp_path / "src"), table, app_id="job", batch_rows=4)
    assert report.rows_written == 15 and report.commits == 4
    assert ids_in(table) == list(range(25))


def test_new_files_that_sort_after_are_ingested_on_the_next_run(tmp_path: Path) -> None:
    write_ndjson(tmp_path / "src" / "2026-11-01.ndjson", range(0, 5))
    table = str(tmp_path / "lake")
    lakesink.ingest(str(tmp_path / "src"), table, app_id="job")
    write_ndjson(tmp_path / "src" / "2026-11-02.ndjson", range(5, 9))
    assert lakesink.ingest(str(tmp_path / "src"), table, app_id="job").rows_written == 4
    assert ids_in(table) == list(range(9))


def test_a_new_file_sorting_before_ingested_ones_is_a_contract_violation(tmp_path: Path) -> None:
    write_ndjson(tmp_path / "src" / "b.ndjson", range(0, 5))
    table = str(tmp_path / "lake")
    lakesink.ingest(str(tmp_path / "src"), table, app_id="job")
    write_ndjson(tmp_path / "src" / "a.ndjson", range(5, 9))
    result = run_cli("ingest", str(tmp_path / "src"), table, "--app-id", "job")
    assert result.returncode == 1
    assert "SourceContractViolation" in result.stderr and "'a.ndjson'" in result.stderr and "sort after" in result.stderr
    assert ids_in(table) == list(range(5))


def test_a_file_changed_after_ingest_is_a_contract_violation(tmp_path: Path) -> None:
    write_ndjson(tmp_path / "src" / "a.ndjson", range(0, 5))
    write_ndjson(tmp_path / "src" / "b.ndjson", range(5, 10))
    table = str(tmp_path / "lake")
    lakesink.ingest(str(tmp_path / "src"), table, app_id="job")
    write_ndjson(tmp_path / "src" / "a.ndjson", range(0, 6))
    with pytest.raises(lakesink.SourceContractViolation, match=r"'a.ndjson' changed after it was ingested"):
        lakesink.ingest(str(tmp_path / "src"), table, app_id="job")
    assert ids_in(table) == list(range(10))


def test_a_malformed_line_names_file_and_line_and_commits_nothing_from_its_batch(tmp_path: Path) -> None:
    write_ndjson(tmp_path / "src" / "a.ndjson", range(0, 5))
    table = str(tmp_path / "lake")
    lakesink.ingest(str(tmp_path / "src"), table, app_id="job")
    before = lakesink.table_status(table)
    bad = tmp_path / "src" / "b.ndjson"
    bad.write_text('{"id": 5, "name": "ok"}\n\n{"id": 6, "name": "ok"}\n{"id": 7, "name": \n{"id": 8}\n')
    result = run_cli("ingest", str(tmp_path / "src"), table, "--app-id", "job", "--batch-rows", "100", "--json")
    assert result.returncode == 1
    error = json.loads(result.stdout)
    assert error["error"] == "BadRecord" and error["kind"] == "terminal"
    assert f"{tmp_path / 'src' / 'b.ndjson'}:4: not valid JSON" in error["message"]
    assert "byte offset 49" in error["message"] and "Fix or remove that line" in error["message"]
    assert "--bad-records PATH" in error["message"]
    after = lakesink.table_status(table)
    assert (after.table_version, after.positions) == (before.table_version, before.positions)


@pytest.mark.parametrize(
    ("line", "why"),
    [('{"id": 6}{"id": 7}', "Extra data"), ('{"id": 6,\n "name": "split"}', "not valid JSON"), ("[6, 7]", "a JSON list")],
)
def test_a_record_is_one_line_so_two_objects_on_a_line_or_one_over_two_lines_are_bad(line: str, why: str, tmp_path: Path) -> None:
    # pyarrow alone reads `{..}{..}` as two records and a split object as one: positions count
    # lines, so both must be refused, not read.
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.ndjson").write_text('{"id": 5}\n' + line + "\n")
    with pytest.raises(lakesink.BadRecord, match=rf"a\.ndjson:2: .*{why}"):
        lakesink.ingest(str(tmp_path / "src"), str(tmp_path / "lake"), app_id="job")


def test_a_value_of_the_wrong_type_names_the_line_and_leaves_the_position(tmp_path: Path) -> None:
    write_ndjson(tmp_path / "src" / "a.ndjson", range(0, 5))
    table = str(tmp_path / "lake")
    lakesink.ingest(str(tmp_path / "src"), table, app_id="job")
    status = lakesink.table_status(table)
    (tmp_path / "src" / "b.ndjson").write_text('{"id": 5, "name": "x"}\n{"id": "six", "name": "y"}\n')
    with pytest.raises(lakesink.BadRecord, match=r"b.ndjson:2: field 'id' = 'six' is not int64"):
        lakesink.ingest(str(tmp_path / "src"), table, app_id="job")
    after = lakesink.table_status(table)
    assert (after.table_version, after.positions) == (status.table_version, status.positions)


def test_a_bad_csv_value_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.csv").write_text("id,name\n1,a\n2,b\n")
    table = str(tmp_path / "lake")
    lakesink.ingest(str(tmp_path / "src"), table, app_id="job")
    before = lakesink.table_status(table)
    (tmp_path / "src" / "b.csv").write_text('id,name\n3,"c\nc"\n\nfour,d\n')
    with pytest.raises(lakesink.BadRecord, match=r"b.csv:5: column 'id' = 'four' is not int64 .*byte offset 17"):
        lakesink.ingest(str(tmp_path / "src"), table, app_id="job")
    (tmp_path / "src" / "c.csv").write_text("id,name\n5,e,extra\n")
    with pytest.raises(lakesink.BadRecord, match=r"b.csv:5: "):
        lakesink.ingest(str(tmp_path / "src"), table, app_id="job")
    after = lakesink.table_status(table)
    assert (after.table_version, after.positions) == (before.table_version, before.positions)
    assert ids_in(table) == [1, 2]


def test_a_later_file_whose_column_changes_type_names_its_line_and_commits_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_ndjson(src / "a.ndjson", range(0, 5), score=1.5)
    write_ndjson(src / "b.ndjson", range(5, 10), score=2.5)
    (src / "c.ndjson").write_text('{"id": 10, "score": 3.5}\n{"id": 11, "score": "high"}\n')
    table = str(tmp_path / "lake")
    # One run, no table yet: the first file's types hold for the files after it.
    with pytest.raises(lakesink.BadRecord, match=r"c\.ndjson:2: field 'score' = 'high' is not double as the table requires"):
        lakesink.ingest(str(src), table, app_id="job")
    assert not Path(table, "_delta_log").exists()
    lakesink.ingest(str(src / "a.ndjson"), table, app_id="job")
    before = lakesink.table_status(table)
    result = run_cli("ingest", str(src), table, "--app-id", "job")
    assert result.returncode == 1 and "c.ndjson:2: field 'score' = 'high' is not double" in result.stderr
    after = lakesink.table_status(table)
    assert (after.table_version, after.positions) == (before.table_version, before.positions)


def test_a_later_parquet_file_whose_column_changes_type_names_the_file_and_commits_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.table({"id": [1, 2], "score": [1.5, 2.5]}), src / "1.parquet")
    pq.write_table(pa.table({"id": [3, 4], "score": ["high", "low"]}), src / "2.parquet")
    table = str(tmp_path / "lake")
    lakesink.ingest(str(src / "1.parquet"), table, app_id="job")
    before = lakesink.table_status(table)
    with pytest.raises(lakesink.SchemaMismatch, match=r"2\.parquet \(records 1\.\.2\): column 'score' is double in the table"):
        lakesink.ingest(str(src), table, app_id="job")
    after = lakesink.table_status(table)
    assert (after.table_version, after.positions) == (before.table_version, before.positions)


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_a_record_longer_than_max_record_bytes_says_so_and_how_to_raise_the_limit(fmt: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    long_name = "x" * 5000
    if fmt == "ndjson":
        (src / "a.ndjson").write_text('{"id": 1, "name": "a"}\n')
        (src / "b.ndjson").write_text(f'{{"id": 2, "name": "b"}}\n{{"id": 3, "name": "{long_name}"}}\n{{"id": 4, "name": "d"}}\n')
    else:
        (src / "a.csv").write_text("id,name\n1,a\n")
        (src / "b.csv").write_text(f"id,name\n2,b\n3,{long_name}\n4,d\n")
    table = str(tmp_path / "lake")
    lakesink.ingest(str(src / f"a.{fmt}"), table, app_id="job")
    before = lakesink.table_status(table)
    result = run_cli("ingest", str(src), table, "--app-id", "job", "--max-record-bytes", "1024")
    assert result.returncode == 1, result.stderr
    assert f"b.{fmt}:{2 if fmt == 'ndjson' else 3}: the record at byte offset" in result.stderr
    assert "longer than the record size limit of 1024 bytes" in result.stderr and "--max-record-bytes" in result.stderr
    after = lakesink.table_status(table)
    assert (after.table_version, after.positions) == (before.table_version, before.positions)
    raised = run_cli("ingest", str(src), table, "--app-id", "job", "--max-record-bytes", "8192")
    assert raised.returncode == 0, raised.stderr
    assert ids_in(table) == [1, 2, 3, 4]


def test_the_default_record_limit_is_8_mib_and_can_be_raised(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.ndjson").write_text('{"id": 1, "name": "' + "x" * (9 << 20) + '"}\n{"id": 2, "name": "b"}\n')
    table = str(tmp_path / "lake")
    with pytest.raises(lakesink.BadRecord, match=r"a\.ndjson:1: .*longer than the record size limit of 8388608 bytes"):
        lakesink.ingest(str(src), table, app_id="job")
    assert lakesink.ingest(str(src), table, app_id="job", max_record_bytes=16 << 20).rows_written == 2


def test_formats_follow_the_extension_and_a_glob_narrows_the_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_ndjson(src / "1.jsonl", range(0, 3))
    src.joinpath("2.csv").write_text("id,name\n3,c\n4,d\n")
    pq.write_table(pa.table({"id": [5, 6], "name": ["e", "f"]}), src / "3.parquet")
    src.joinpath("notes.txt").write_text("not data")
    table = str(tmp_path / "lake")
    with pytest.raises(lakesink.ConfigError, match=r"notes\.txt"):
        lakesink.ingest(str(src), table, app_id="job")
    report = lakesink.ingest(str(src / "[0-9].*"), table, app_id="job")
    assert report.rows_written == 7 and ids_in(table) == list(range(7))


def test_empty_files_are_ingested_as_no_records(tmp_path: Path) -> None:
    write_ndjson(tmp_path / "src" / "a.ndjson", range(0, 3))
    (tmp_path / "src" / "b.ndjson").write_text("")
    (tmp_path / "src" / "c.ndjson").write_text("\n\n")
    (tmp_path / "src" / "c1.csv").write_text("")
    (tmp_path / "src" / "c2.csv").write_text("id,name\n")
    (tmp_path / "src" / "c3.ndjson").write_text(" \r\n\t\n")
    write_ndjson(tmp_path / "src" / "d.ndjson", range(3, 5))
    table = str(tmp_path / "lake")
    assert lakesink.ingest(str(tmp_path / "src"), table, app_id="job", batch_rows=3).rows_written == 5
    assert FilePosition.decode(lakesink.table_status(table).positions["job"]) == FilePosition(7, 0)
    assert lakesink.ingest(str(tmp_path / "src"), table, app_id="job").commits == 0
    assert ids_in(table) == list(range(5))


def test_partitioned_ingest_is_readable_by_duckdb_and_polars(tmp_path: Path) -> None:
    for day in (1, 2, 3):
        write_ndjson(tmp_path / "src" / f"{day}.ndjson", range(day * 10, day * 10 + 10), day=f"2026-11-0{day}")
    table = str(tmp_path / "lake")
    result = run_cli("ingest", str(tmp_path / "src"), table, "--app-id", "job", "--partition-by", "day", "--batch-rows", "7")
    assert result.returncode == 0, result.stderr
    import duckdb
    import duckdb_extensions

    con = duckdb.connect()
    duckdb_extensions.import_extension("delta", con=con)
    duck = con.sql(f"select count(*), count(distinct id), count(distinct day) from delta_scan('{table}')").fetchone()
    assert duck == (30, 30, 3)
    frame = pl.read_delta(table)
    assert frame.height == 30 and frame["id"].n_unique() == 30


def test_partition_values_with_dots_slashes_nul_and_unicode_land_in_their_own_directory_via_the_cli(tmp_path: Path) -> None:
    values = ["../escape", "..", "/", "a/b", "nul\x00byte", "é ü 日本", "%2F", "plain"]
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.ndjson").write_text("".join(json.dumps({"id": i, "p": v}) + "\n" for i, v in enumerate(values)))
    table = tmp_path / "lake"
    result = run_cli("ingest", str(src), str(table), "--app-id", "job", "--partition-by", "p")
    assert result.returncode == 0, result.stderr
    data_files = [p.relative_to(table) for p in table.rglob("*.parquet") if not p.relative_to(table).parts[0].startswith("_")]
    assert len(data_files) == len(values)
    assert not list(tmp_path.glob("escape*")) and sorted(os.listdir(tmp_path)) == ["lake", "src"]
    for path in data_files:
        assert len(path.parts) == 2 and path.parts[0].startswith("p=") and "\x00" not in str(path), path
    import duckdb
    import duckdb_extensions

    con = duckdb.connect()
    duckdb_extensions.import_extension("delta", con=con)
    duck = con.execute("select id, p from delta_scan(?) order by id", [str(table)]).fetchall()
    assert [p for _, p in duck] == values
    assert ids_in(str(table)) == list(range(len(values)))


def test_status_json_reports_version_files_rows_and_positions(tmp_path: Path) -> None:
    write_ndjson(tmp_path / "src" / "a.ndjson", range(0, 10))
    table = str(tmp_path / "lake")
    lakesink.ingest(str(tmp_path / "src"), table, app_id="job-a", batch_rows=4)
    lakesink.ingest(str(tmp_path / "src"), table, app_id="job-b", batch_rows=100)
    result = run_cli("status", table, "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["table_version"] == 4 and status["rows"] == 20 and status["files"] == 4
    assert status["positions"] == {"job-a": FilePosition(1, 0).encode(), "job-b": FilePosition(1, 0).encode()}


def test_status_reads_positions_from_checkpoints_too(tmp_path: Path) -> None:
    table = str(tmp_path / "lake")
    with lakesink.Sink(table, app_id="early", checkpoint_interval=5) as early:
        early.write(pa.table({"id": [0]}), position=1)
    with lakesink.Sink(table, app_id="late") as late:
        for position in range(1, 13):
            late.write(pa.table({"id": [position]}), position=position)
    assert any(name.endswith(".checkpoint.parquet") for name in os.listdir(Path(table, "_delta_log")))
    assert lakesink.table_status(table).positions == {"early": 1, "late": 12}


def test_exit_codes_usage_terminal(tmp_path: Path) -> None:
    assert run_cli("ingest", str(tmp_path)).returncode == 2
    missing = run_cli("ingest", str(tmp_path / "nothing-here"), str(tmp_path / "t"), "--app-id", "j")
    assert missing.returncode == 1 and "no files found" in missing.stderr
    assert run_cli("status", str(tmp_path / "t")).returncode == 1


def test_help_teaches_usage_exit_codes_and_an_example() -> None:
    top = run_cli("--help").stdout
    assert "Exit codes" in top and "AWS_ENDPOINT_URL" in top
    ingest_help = run_cli("ingest", "--help").stdout
    assert "Rerun the same command after a crash" in ingest_help and "lakesink ingest ./events/" in ingest_help


def test_ingest_from_an_s3_prefix_into_an_s3_table(moto_server: MotoServer, s3_bucket: str, tmp_path: Path) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint, aws_access_key_id="testing",
                      aws_secret_access_key="testing-secret", region_name="us-east-1")  # fmt: skip
    for f in range(3):
        body = "".join(json.dumps({"id": i}) + "\n" for i in range(f * 50, f * 50 + 50))
        s3.put_object(Bucket=s3_bucket, Key=f"incoming/{f}.ndjson", Body=body.encode())
    table = f"s3://{s3_bucket}/lake/events"
    env = moto_server.env()
    first = run_cli("ingest", f"s3://{s3_bucket}/incoming", table, "--app-id", "job", "--batch-rows", "40", env=env)
    assert first.returncode == 0, first.stderr
    again = run_cli("ingest", f"s3://{s3_bucket}/incoming/", table, "--app-id", "job", env=env)
    assert again.returncode == 0 and again.stdout.startswith("0 rows"), again.stdout + again.stderr
    status = json.loads(run_cli("status", table, "--json", env=env).stdout)
    assert status["rows"] == 150 and status["positions"] == {"job": FilePosition(3, 0).encode()}
    assert ids_in(table, moto_server.storage_options()) == list(range(150))


def test_two_copies_with_different_batch_sizes_never_duplicate(tmp_path: Path) -> None:
    import subprocess
    import sys

    for f in range(8):
        write_ndjson(tmp_path / "src" / f"{f:02d}.ndjson", range(f * 500, f * 500 + 500))
    table = str(tmp_path / "lake")
    copies = [
        subprocess.Popen([sys.executable, "-m", "lakesink", "ingest", str(tmp_path / "src"), table, "--app-id", "job",
                          "--batch-rows", str(rows), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rows in (170, 230, 310)
    ]  # fmt: skip
    outcomes = [copy.communicate(timeout=300) for copy in copies]
    codes = [copy.returncode for copy in copies]
    assert all(code in (0, 1) for code in codes), outcomes
    assert all("ConcurrentWriterError" in err for code, (_, err) in zip(codes, outcomes, strict=True) if code == 1)
    assert run_cli("ingest", str(tmp_path / "src"), table, "--app-id", "job").returncode == 0
    assert ids_in(table) == list(range(4000))
