"""Schemas users expect: inference that samples across files and reads dates and zones right, a
declared schema (`--schema`, API `schema=`) that every format is read into."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

import lakesink
from tests.conftest import run_cli
from tests.support.checks import query_duckdb

UTC = dt.UTC


def table_types(uri: str) -> dict[str, str]:
    return {f.name: str(f.type) for f in pa.schema(DeltaTable(uri).schema().to_arrow())}


def ndjson(path: Path, *records: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_whole_numbers_in_the_first_file_and_fractions_in_a_later_one_make_a_double_column(tmp_path: Path) -> None:
    ndjson(tmp_path / "src" / "a.ndjson", {"id": 1, "amount": 5}, {"id": 2, "amount": 7})
    ndjson(tmp_path / "src" / "b.ndjson", {"id": 3, "amount": 5.5})
    uri = str(tmp_path / "t")
    assert lakesink.ingest(str(tmp_path / "src"), uri, app_id="x", batch_rows=1).rows_written == 3
    assert table_types(uri)["amount"] == "double"
    assert sorted(r["amount"] for r in pl.read_delta(uri).to_dicts()) == [5.0, 5.5, 7.0]


def test_dates_become_dates_and_zoned_timestamps_utc_instants(tmp_path: Path) -> None:
    ndjson(
        tmp_path / "src" / "a.ndjson",
        {"id": 1, "day": "2026-11-01", "at": "2026-11-01T12:00:00+02:00", "local": "2026-11-01 08:00:00"},
        {"id": 2, "day": "2026-11-02", "at": "2026-11-01T12:00:00.5Z", "local": None},
    )
    uri = str(tmp_path / "t")
    done = run_cli("-v", "ingest", str(tmp_path / "src"), uri, "--app-id", "x", "--partition-by", "day")
    assert done.returncode == 0, done.stderr
    assert "schema inferred from a sample" in done.stderr and "day date32" in done.stderr
    assert table_types(uri) == {"id": "int64", "day": "date32[day]", "at": "timestamp[us, tz=UTC]", "local": "timestamp[us]"}
    assert sorted(p.name for p in Path(uri).iterdir() if not p.name.startswith("_")) == ["day=2026-11-01", "day=2026-11-02"]
    rows = sorted(query_duckdb(uri, 'id, day, "at", "local"'))
    assert [(r[0], r[1], r[2].astimezone(UTC), r[3]) for r in rows] == [
        (1, dt.date(2026, 11, 1), dt.datetime(2026, 11, 1, 10, 0, tzinfo=UTC), dt.datetime(2026, 11, 1, 8, 0)),
        (2, dt.date(2026, 11, 2), dt.datetime(2026, 11, 1, 12, 0, 0, 500000, tzinfo=UTC), None),
    ]
    status = run_cli("status", uri)
    assert "day date32[day]" in status.stdout and "at timestamp[us, tz=UTC]" in status.stdout


def write_source(directory: Path, fmt: str) -> None:
    directory.mkdir(parents=True)
    rows = pa.table({"id": [1, 2], "amount": [5, 7], "day": ["2026-11-01", "2026-11-02"], "note": ["a", "b"]})
    if fmt == "ndjson":
        ndjson(directory / "a.ndjson", *rows.to_pylist())
    elif fmt == "csv":
        pacsv.write_csv(rows, directory / "a.csv")
    else:
        pq.write_table(rows.set_column(2, "day", pa.array([dt.date(2026, 11, 1), dt.date(2026, 11, 2)])), directory / "a.parquet")


@pytest.mark.parametrize("fmt", ["ndjson", "csv", "parquet"])
def test_every_format_is_read_into_a_declared_schema(tmp_path: Path, fmt: str) -> None:
    write_source(tmp_path / "src", fmt)
    uri = str(tmp_path / "t")
    done = run_cli(
        "ingest",
        str(tmp_path / "src"),
        uri,
        "--app-id",
        "x",
        "--schema",
        "id BIGINT NOT NULL, amount DOUBLE, day DATE, note STRING",
    )
    assert done.returncode == 0, done.stderr
    assert table_types(uri) == {"id": "int64", "amount": "double", "day": "date32[day]", "note": "string"}
    assert sorted(query_duckdb(uri, "id, amount, day")) == [(1, 5.0, dt.date(2026, 11, 1)), (2, 7.0, dt.date(2026, 11, 2))]


def test_a_schema_file_may_hold_a_delta_schema(tmp_path: Path) -> None:
    write_source(tmp_path / "src", "ndjson")
    columns = [("id", "long"), ("amount", "decimal(10,2)"), ("day", "date"), ("note", "string")]
    schema = {"type": "struct", "fields": [{"name": n, "type": t, "nullable": True, "metadata": {}} for n, t in columns]}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    uri = str(tmp_path / "t")
    done = run_cli("ingest", str(tmp_path / "src"), uri, "--app-id", "x", "--schema", f"@{tmp_path / 'schema.json'}")
    assert done.returncode == 0, done.stderr
    assert table_types(uri)["amount"] == "decimal128(10, 2)"


def test_a_declared_schema_that_disagrees_with_the_table_is_refused_naming_the_column(tmp_path: Path) -> None:
    write_source(tmp_path / "src", "ndjson")
    uri = str(tmp_path / "t")
    assert run_cli("ingest", str(tmp_path / "src"), uri, "--app-id", "x", "--schema", "id BIGINT, amount DOUBLE").returncode == 1
    assert (
        run_cli(
            "ingest", str(tmp_path / "src"), uri, "--app-id", "x", "--schema", "id BIGINT, amount DOUBLE, day DATE, note STRING"
        ).returncode
        == 0
    )
    done = run_cli("ingest", str(tmp_path / "src"), uri, "--app-id", "x", "--schema", "amount BIGINT")
    assert done.returncode == 1
    assert "'amount' is int64" in done.stderr and "--schema" in done.stderr


def test_a_column_the_declared_schema_leaves_out_follows_the_evolve_rules(tmp_path: Path) -> None:
    write_source(tmp_path / "src", "ndjson")
    uri = str(tmp_path / "t")
    refused = run_cli("ingest", str(tmp_path / "src"), uri, "--app-id", "x", "--schema", "id BIGINT, amount DOUBLE, day DATE")
    assert refused.returncode == 1 and "'note'" in refused.stderr and "--evolve-schema" in refused.stderr
    assert not (tmp_path / "t" / "_delta_log").exists() or DeltaTable(uri).version() == 0
    added = run_cli(
        "ingest", str(tmp_path / "src"), uri, "--app-id", "x", "--schema", "id BIGINT, amount DOUBLE, day DATE", "--evolve-schema"
    )
    assert added.returncode == 0, added.stderr
    assert table_types(uri)["note"] == "string"


def test_a_value_the_declared_type_cannot_read_is_a_bad_record_that_can_be_quarantined(tmp_path: Path) -> None:
    ndjson(
        tmp_path / "src" / "a.ndjson",
        {"id": 1, "day": "2026-11-01"},
        {"id": 2, "day": "yesterday"},
        {"id": 3, "day": "2026-11-03"},
    )
    uri = str(tmp_path / "t")
    failed = run_cli("ingest", str(tmp_path / "src"), uri, "--app-id", "x", "--schema", "id BIGINT, day DATE")
    assert failed.returncode == 1 and "a.ndjson:2" in failed.stderr
    done = run_cli(
        "ingest", str(tmp_path / "src"), uri, "--app-id", "x", "--schema", "id BIGINT, day DATE", "--bad-records", f"{uri}_bad"
    )
    assert done.returncode == 0, done.stderr
    assert sorted(r[0] for r in query_duckdb(uri, "id")) == [1, 3]
    assert [r[0] for r in query_duckdb(f"{uri}_bad", "line")] == [2]


def test_a_parquet_text_column_that_looks_like_timestamps_stays_text(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    pq.write_table(
        pa.table({"id": [1, 2], "ts": ["2026-11-01T12:00:00Z", "2026-11-02T12:00:00Z"]}), tmp_path / "src" / "a.parquet"
    )
    uri = str(tmp_path / "t")
    assert lakesink.ingest(str(tmp_path / "src"), uri, app_id="x").rows_written == 2
    assert table_types(uri)["ts"] == "string"


def test_a_fraction_in_a_later_file_than_the_first_records_is_found(tmp_path: Path) -> None:
    for number in range(12):
        ndjson(tmp_path / "src" / f"{number:02d}.ndjson", *({"id": number * 1000 + i, "amount": i} for i in range(500)))
    ndjson(tmp_path / "src" / "12.ndjson", {"id": 99_999, "amount": 0.5})
    uri = str(tmp_path / "t")
    assert lakesink.ingest(str(tmp_path / "src"), uri, app_id="x").rows_written == 12 * 500 + 1
    assert table_types(uri)["amount"] == "double"
