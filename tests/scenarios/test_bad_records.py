"""Dead-letter mode (`--bad-records PATH`): bad records quarantined, good ones committed, every input
record in exactly one of the two tables, exactly once, across SIGKILLs, reruns with other batch
sizes and concurrent copies; counted with delta-rs and DuckDB. Without it, the same input fails.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

import lakesink
from lakesink.sources.files import FilePosition
from tests.conftest import run_cli
from tests.support.checks import assert_exactly_once, query_duckdb, read_ids_deltalake, table_exists
from tests.support.moto_server import MotoServer

APP_ID = "job"

# Bad lines, by kind: each is one record (one non-blank line) that cannot be read or typed.
BAD_KINDS = {
    "truncated": lambda k: f'{{"id": {k}, "name": ',
    "wrong type": lambda k: f'{{"id": "id-{k}", "name": "x", "score": 1.5}}',
    "array": lambda k: f"[{k}, 1]",
    "two objects": lambda k: f'{{"id": {k}}}{{"id": -1}}',  # pyarrow alone would read two records
}
REASONS = {"truncated": "not valid JSON", "wrong type": "is not int64", "array": "not an object", "two objects": "Extra data"}


@dataclass(frozen=True)
class MixedSource:
    """NDJSON files where record k has id k, some records bad; blank lines between some."""

    directory: Path
    files: int
    good_ids: list[int]
    bad: dict[tuple[str, int], tuple[str, int]]  # (file name, 1-based line) -> (kind, record number k)

    @property
    def records(self) -> int:
        return len(self.good_ids) + len(self.bad)

    @property
    def end_position(self) -> int:
        return FilePosition(self.files, 0).encode()


def write_mixed_source(directory: Path, *, files: int = 6, rows_per_file: int = 25, bad_every: int = 7) -> MixedSource:
    directory.mkdir(parents=True, exist_ok=True)
    kinds = list(BAD_KINDS)
    good: list[int] = []
    bad: dict[tuple[str, int], tuple[str, int]] = {}
    k = 0
    for index in range(files):
        name = f"part-{index:05d}.ndjson"
        lines: list[str] = []
        for row in range(rows_per_file):
            if row == 10:
                lines.append("")  # a blank line is not a record, but it is a line
            if k % bad_every == 3:
                kind = kinds[(k // bad_every) % len(kinds)]
                lines.append(BAD_KINDS[kind](k))
                bad[(name, len(lines))] = (kind, k)
            else:
                lines.append(json.dumps({"id": k, "name": f"record-{k:08d}", "score": k / 7}))
                good.append(k)
            k += 1
        (directory / name).write_text("\n".join(lines) + "\n")
    return MixedSource(directory=directory, files=files, good_ids=good, bad=bad)


def ingest_command(source: Path | str, table: str, bad_records: str | None, batch_rows: int, *extra: str) -> list[str]:
    command = [sys.executable, "-m", "lakesink", "ingest", str(source), table, "--app-id", APP_ID,
               "--batch-rows", str(batch_rows), "--json", *extra]  # fmt: skip
    return command + (["--bad-records", bad_records] if bad_records else [])


def run_ingest(source: MixedSource, table: str, bad_records: str | None, env: Mapping[str, str], batch_rows: int,
               crash_at: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    run_env = {k: v for k, v in env.items() if k != "LAKESINK_CRASH_AT"}
    if crash_at is not None:
        run_env["LAKESINK_CRASH_AT"] = crash_at
    command = ingest_command(source.directory, table, bad_records, batch_rows)
    return subprocess.run(command, env=run_env, capture_output=True, text=True, timeout=240)


def dead_letters(uri: str, options: Mapping[str, str] | None = None) -> list[dict[str, object]]:
    table = DeltaTable(uri, storage_options=dict(options or {}))
    return (
        table.to_pyarrow_dataset()
        .to_table(use_threads=False)
        .sort_by([("source_file", "ascending"), ("line", "ascending")])
        .to_pylist()
    )


def dead_letter_keys_duckdb(uri: str, options: Mapping[str, str] | None = None) -> list[tuple[str, int]]:
    return [(Path(str(f)).name, int(n)) for f, n in query_duckdb(uri, "source_file, line", options)]


def assert_every_record_once(source: MixedSource, table: str, dlq: str, options: Mapping[str, str] | None = None) -> None:
    """Good ids exactly once in the table, bad lines exactly once in the dead-letter table (both readers)."""
    assert_exactly_once(table, options, source.good_ids)
    for reader, keys in [
        ("deltalake", [(Path(str(r["source_file"])).name, int(str(r["line"]))) for r in dead_letters(dlq, options)]),
        ("duckdb", dead_letter_keys_duckdb(dlq, options)),
    ]:
        counts = Counter(keys)
        duplicated = {k: n for k, n in counts.items() if n > 1}
        assert not duplicated, f"{reader}: bad records quarantined twice: {duplicated}"
        assert set(counts) == set(source.bad), (
            f"{reader}: lost {set(source.bad) - set(counts)}, extra {set(counts) - set(source.bad)}"
        )
    print(f"every record once: {len(source.good_ids)} good + {len(source.bad)} quarantined = {source.records} records")


def positions(uri: str, options: Mapping[str, str] | None = None) -> dict[str, int]:
    if not table_exists(uri, options):
        return {}
    return lakesink.table_status(uri, storage_options=dict(options or {})).positions


@pytest.fixture
def source(tmp_path: Path) -> MixedSource:
    # 6 files x 25 records, one in 7 bad (21 bad, 129 good); in batches of 20 the first batch holds two bad ones.
    return write_mixed_source(tmp_path / "source")


# --- what dead-letter mode does -----------------------------------------------------------------


def test_dead_letter_mode_commits_good_rows_and_quarantines_bad_ones_with_file_line_and_reason(
    source: MixedSource, tmp_path: Path
) -> None:
    table, dlq = str(tmp_path / "lake"), str(tmp_path / "lake_bad")
    result = run_cli(*ingest_command(source.directory, table, dlq, 20)[3:])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["rows_written"], report["rows_quarantined"]) == (len(source.good_ids), len(source.bad))
    assert report["rows_written"] + report["rows_quarantined"] == source.records == 150
    assert report["bad_records_uri"] == dlq and report["end_position"] == source.end_position

    rows = dead_letters(dlq)
    assert len(rows) == len(source.bad) == 21
    for row in rows:
        name, line = Path(str(row["source_file"])).name, int(str(row["line"]))
        kind, k = source.bad[(name, line)]
        assert str(row["source_file"]) == str(source.directory / name) and row["app_id"] == APP_ID
        assert REASONS[kind] in str(row["reason"]), row
        lines = (source.directory / name).read_text().split("\n")
        assert row["raw"] == lines[line - 1]
        assert row["byte_offset"] == sum(len(text) + 1 for text in lines[: line - 1])
        # Committed with the batch that holds it: the batches of 20 records end at records 20, 40, ..., 150.
        batch_end = min((k // 20 + 1) * 20, source.records)
        assert row["position"] == FilePosition(*divmod(batch_end, 25)).encode()
    assert_every_record_once(source, table, dlq)
    assert positions(table) == {APP_ID: source.end_position}

    again = run_cli(*ingest_command(source.directory, table, dlq, 20)[3:])
    assert again.returncode == 0 and json.loads(again.stdout)["rows_quarantined"] == 0
    assert_every_record_once(source, table, dlq)


def test_the_summary_line_counts_quarantined_records(source: MixedSource, tmp_path: Path) -> None:
    table, dlq = str(tmp_path / "lake"), str(tmp_path / "bad")
    result = run_cli("ingest", str(source.directory), table, "--app-id", APP_ID, "--bad-records", dlq)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"129 rows (21 bad records quarantined in {dlq}) from 6 of 6 files")


def test_without_bad_records_the_same_input_fails_with_the_clear_error(source: MixedSource, tmp_path: Path) -> None:
    table = str(tmp_path / "lake")
    result = run_cli(*ingest_command(source.directory, table, None, 20)[3:])
    assert result.returncode == 1
    error = json.loads(result.stdout)
    assert error["error"] == "BadRecord"
    assert f"{source.directory}/part-00000.ndjson:4: not valid JSON" in error["message"]
    assert "byte offset" in error["message"] and "--bad-records PATH" in error["message"]
    assert positions(table) == {}


def test_a_bad_record_in_a_later_block_is_quarantined_after_good_blocks_of_its_file(tmp_path: Path) -> None:
    """Small blocks (max_record_bytes) make the fast reader commit part of a file before it meets
    the bad block; the fallback counts records as it did, so positions mean the same records."""
    src = tmp_path / "src"
    src.mkdir()
    lines = []
    for k in range(200):
        lines.append(json.dumps({"id": k}) if k not in (150, 151) else f'{{"id": {k},')
        if k % 9 == 0:
            lines.append("   ")  # blank: not a record
    (src / "a.ndjson").write_text("\n".join(lines) + "\n")
    table, dlq = str(tmp_path / "lake"), str(tmp_path / "bad")
    report = lakesink.ingest(str(src), table, app_id=APP_ID, bad_records=dlq, batch_rows=13, max_record_bytes=64)
    assert (report.rows_written, report.rows_quarantined) == (198, 2)
    assert sorted(read_ids_deltalake(table)) == [k for k in range(200) if k not in (150, 151)]
    bad_lines = [int(str(r["line"])) for r in dead_letters(dlq)]
    assert [lines[n - 1] for n in bad_lines] == ['{"id": 150,', '{"id": 151,']


def test_csv_bad_rows_are_quarantined_with_their_line_and_quoted_line_ends_count_as_one_record(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.csv").write_text("id,name\n1,a\n2,b\n")
    (src / "b.csv").write_text('id,name\n3,c\n\nfour,d\n5,"two\nlines"\n6,e,extra\n7,f\n')
    table, dlq = str(tmp_path / "lake"), str(tmp_path / "bad")
    report = lakesink.ingest(str(src), table, app_id=APP_ID, bad_records=dlq, batch_rows=2)
    assert (report.rows_written, report.rows_quarantined) == (5, 2)
    assert sorted(read_ids_deltalake(table)) == [1, 2, 3, 5, 7]
    got = [(Path(str(r["source_file"])).name, r["line"], r["raw"], r["reason"]) for r in dead_letters(dlq)]
    assert got == [
        ("b.csv", 4, "four,d", "column 'id' = 'four' is not int64 as the table requires"),
        ("b.csv", 7, "6,e,extra", "3 fields where the header has 2"),
    ]
    names = DeltaTable(table).to_pyarrow_table().sort_by("id").column("name").to_pylist()
    assert names == ["a", "b", "c", "two\nlines", "f"]


def test_a_file_whose_column_changes_type_is_quarantined_record_by_record(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.ndjson").write_text("".join(json.dumps({"id": i, "score": i * 1.5}) + "\n" for i in range(5)))
    (src / "b.ndjson").write_text("".join(json.dumps({"id": i, "score": f"high-{i}"}) + "\n" for i in range(5, 8)))
    table, dlq = str(tmp_path / "lake"), str(tmp_path / "bad")
    report = lakesink.ingest(str(src), table, app_id=APP_ID, bad_records=dlq)
    assert (report.rows_written, report.rows_quarantined) == (5, 3)
    assert {str(r["reason"]) for r in dead_letters(dlq)} == {
        f"field 'score' = 'high-{i}' is not double as the table requires" for i in range(5, 8)
    }


def test_a_source_with_no_good_record_quarantines_all_and_creates_no_table(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.ndjson").write_text("not json\n[1]\n")
    table, dlq = str(tmp_path / "lake"), str(tmp_path / "bad")
    report = lakesink.ingest(str(src), table, app_id=APP_ID, bad_records=dlq)
    assert (report.rows_written, report.rows_quarantined, report.table_version) == (0, 2, None)
    assert not table_exists(table, None) and len(dead_letters(dlq)) == 2
    assert lakesink.ingest(str(src), table, app_id=APP_ID, bad_records=dlq).rows_quarantined == 0
    (src / "b.ndjson").write_text('{"id": 1}\n')
    report = lakesink.ingest(str(src), table, app_id=APP_ID, bad_records=dlq)
    assert (report.rows_written, report.rows_quarantined) == (1, 0)
    assert len(dead_letters(dlq)) == 2 and read_ids_deltalake(table) == [1]


def test_the_dead_letter_table_must_be_another_table(source: MixedSource, tmp_path: Path) -> None:
    with pytest.raises(lakesink.ConfigError, match="another table"):
        lakesink.ingest(str(source.directory), str(tmp_path / "lake"), app_id=APP_ID, bad_records=str(tmp_path / "lake/"))


# --- exactly once across SIGKILLs ---------------------------------------------------------------


@pytest.mark.parametrize("hit", [1, 2, 3])
@pytest.mark.parametrize("point", ["after_stage", "before_commit", "after_commit"])
def test_a_sigkill_at_a_crash_point_then_a_rerun_keeps_every_record_once_in_one_of_the_two_tables(
    point: str, hit: int, source: MixedSource, table_uri: str, storage_options: dict[str, str], moto_server: MotoServer
) -> None:
    """Each batch here has bad records, so it reaches each crash point twice: hit 1 in the dead-letter
    write, hit 2 in the good rows' write, hit 3 in the next batch's dead-letter write."""
    env = moto_server.env()
    dlq = f"{table_uri}_bad"
    crashed = run_ingest(source, table_uri, dlq, env, 20, crash_at=f"{point}:{hit}")
    assert crashed.returncode == -signal.SIGKILL, f"expected SIGKILL at {point}:{hit}: {crashed.returncode} {crashed.stderr}"
    # Commits alternate: dead-letter batch 1, table batch 1, dead-letter batch 2, ...
    commits_done = hit if point == "after_commit" else hit - 1
    batch_1, batch_2 = FilePosition(0, 20).encode(), FilePosition(1, 15).encode()
    assert positions(dlq, storage_options).get(APP_ID) == [None, batch_1, batch_1, batch_2][commits_done]
    assert positions(table_uri, storage_options).get(APP_ID) == [None, None, batch_1, batch_1][commits_done]

    rerun = run_ingest(source, table_uri, dlq, env, 20)
    assert rerun.returncode == 0, rerun.stderr
    assert_every_record_once(source, table_uri, dlq, storage_options)
    assert positions(table_uri, storage_options) == {APP_ID: source.end_position}


def test_killed_between_the_two_commits_a_rerun_with_other_batch_sizes_quarantines_nothing_twice(
    source: MixedSource, tmp_path: Path
) -> None:
    """The dead-letter table gets ahead of the table; reruns cut batches ending before and after its
    position: only bad records at or after it are written."""
    table, dlq = str(tmp_path / "lake"), str(tmp_path / "bad")
    killed = 0
    for batch_rows, crash_at in [(40, "after_commit:1"), (13, "after_commit:3"), (57, "after_commit:1"), (9, "after_commit:5")]:
        done = run_ingest(source, table, dlq, {}, batch_rows, crash_at=crash_at)
        assert done.returncode == -signal.SIGKILL, done.stderr
        killed += 1
        assert positions(dlq)[APP_ID] > positions(table).get(APP_ID, -1)  # the dead-letter table is ahead
    done = run_ingest(source, table, dlq, {}, 31)
    assert done.returncode == 0, done.stderr
    print(f"{killed} kills between the two commits")
    assert_every_record_once(source, table, dlq)


def test_repeated_sigkills_with_random_batch_sizes_end_with_every_record_once(source: MixedSource, tmp_path: Path) -> None:
    seed = random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    print(f"seed {seed}")
    table, dlq = str(tmp_path / "lake"), str(tmp_path / "bad")
    kills = 0
    for _ in range(8):
        point = rng.choice(["after_stage", "before_commit", "after_commit"])
        done = run_ingest(source, table, dlq, {}, rng.randint(5, 45), crash_at=f"{point}:{rng.randint(1, 6)}")
        assert done.returncode in (0, -signal.SIGKILL), f"seed {seed}: {done.stderr}"
        kills += done.returncode == -signal.SIGKILL
    done = run_ingest(source, table, dlq, {}, rng.randint(5, 45))
    assert done.returncode == 0, f"seed {seed}: {done.stderr}"
    print(f"seed {seed}: {kills} kills")
    assert_every_record_once(source, table, dlq)


def test_concurrent_copies_with_different_batch_sizes_quarantine_each_bad_record_once(
    source: MixedSource, tmp_path: Path
) -> None:
    table, dlq = str(tmp_path / "lake"), str(tmp_path / "bad")
    copies = [subprocess.Popen(ingest_command(source.directory, table, dlq, rows), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for rows in (11, 17, 29)]  # fmt: skip
    outcomes = [copy.communicate(timeout=300) for copy in copies]
    for copy, (_, err) in zip(copies, outcomes, strict=True):
        assert copy.returncode == 0 or (copy.returncode == 1 and "ConcurrentWriterError" in err), err
    assert run_cli(*ingest_command(source.directory, table, dlq, 20)[3:]).returncode == 0
    assert_every_record_once(source, table, dlq)


# --- the fallback counts records as the fast path does ------------------------------------------


def write_tricky_sources(directory: Path) -> tuple[list[int], set[tuple[str, int]]]:
    """A CSV file (CRLF, quoted line ends, empty lines) and an NDJSON file (CRLF, blank and
    whitespace lines), each with bad records late in the file; returns the good ids and the bad
    (file, line) pairs."""
    directory.mkdir(parents=True, exist_ok=True)
    good: list[int] = []
    bad: set[tuple[str, int]] = set()
    csv_lines = ["id,name"]
    for k in range(300):
        if k % 40 == 7:
            csv_lines.append("")  # an empty line: not a record
        if k in (151, 152, 280):
            bad.add(("a.csv", len(csv_lines) + 1))
            csv_lines.append(f"x{k},bad" if k != 152 else f"{k},too,many")
            continue
        good.append(k)
        if k % 5 == 0:
            csv_lines.extend([f'{k},"two', f'lines, {k}"'])  # one record over two lines
        else:
            csv_lines.append(f"{k},v{k}")
    (directory / "a.csv").write_bytes(("\r\n".join(csv_lines) + "\r\n").encode())
    nd_lines: list[str] = []
    for k in range(300, 600):
        if k % 30 == 0:
            nd_lines.append(" \t")  # blank: not a record
        if k in (450, 451, 590):
            bad.add(("b.ndjson", len(nd_lines) + 1))
            nd_lines.append(f'{{"id": {k}, ' if k != 451 else f'{{"id": {k}}}{{"id": {k}}}')
            continue
        good.append(k)
        nd_lines.append(json.dumps({"id": k, "name": f"v{k}"}))
    (directory / "b.ndjson").write_bytes(("\r\n".join(nd_lines) + "\r\n").encode())
    return good, bad


def test_killed_mid_file_before_and_after_a_bad_block_reruns_resume_on_the_same_records(tmp_path: Path) -> None:
    """Small blocks make the fast reader commit part of each file before it meets a bad block; the
    kills land before, inside and after the part the fallback reads. Positions must mean the same
    records whichever reader reached them, or a rerun would skip or repeat records."""
    good, bad = write_tricky_sources(tmp_path / "src")
    source = MixedSource(directory=tmp_path / "src", files=2, good_ids=good, bad={k: ("", 0) for k in bad})
    table, dlq = str(tmp_path / "lake"), str(tmp_path / "bad")
    limit = ["--max-record-bytes", "128"]
    kills = 0
    for batch_rows, crash_at in [(7, "after_commit:9"), (11, "after_commit:12"), (5, "after_commit:31"), (13, "after_commit:21")]:
        command = ingest_command(source.directory, table, dlq, batch_rows, *limit)
        done = subprocess.run(command, env={"LAKESINK_CRASH_AT": crash_at}, capture_output=True, text=True, timeout=240)
        assert done.returncode == -signal.SIGKILL, done.stderr
        kills += 1
    final = run_cli(*ingest_command(source.directory, table, dlq, 9, *limit)[3:])
    assert final.returncode == 0, final.stderr
    print(f"{kills} kills; {len(good)} good + {len(bad)} quarantined")
    assert_every_record_once(source, table, dlq)
    names = {row["id"]: row["name"] for row in DeltaTable(table).to_pyarrow_table().to_pylist()}
    assert names[5] == "two\r\nlines, 5" and names[301] == "v301"


def test_values_only_pyarrow_refuses_are_found_among_many_good_records(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "0.ndjson").write_text('{"id": -1, "n": "seed"}\n')  # the table's id is int64 from here on
    lines = [json.dumps({"id": k, "n": "x"}) for k in range(20_000)]
    lines[7_000] = json.dumps({"id": 2**63, "n": "x"})  # an int to Python, too big for int64: only pyarrow knows
    lines[13_000] = json.dumps({"id": "thirteen", "n": "x"})
    (src / "a.ndjson").write_text("\n".join(lines) + "\n")
    (src / "b.csv").write_text("id,n\n0x1F,hex\n+1,plus\n 2 ,spaces\nNA,null\nthree,word\n")
    table, dlq = str(tmp_path / "lake"), str(tmp_path / "bad")
    report = lakesink.ingest(str(src), table, app_id=APP_ID, bad_records=dlq)
    refused = [(Path(str(r["source_file"])).name, r["line"], r["reason"]) for r in dead_letters(dlq)]
    assert refused == [
        ("a.ndjson", 7_001, f"field 'id' = {2**63} is not int64 as the table requires"),
        ("a.ndjson", 13_001, "field 'id' = 'thirteen' is not int64 as the table requires"),
        ("b.csv", 3, "column 'id' = '+1' is not int64 as the table requires"),
        ("b.csv", 6, "column 'id' = 'three' is not int64 as the table requires"),
    ]
    assert (report.rows_written, report.rows_quarantined) == (1 + 19_998 + 3, 4)
    csv_ids = DeltaTable(table).to_pyarrow_table().filter(~pc.field("n").isin(["x", "seed"])).sort_by("n").to_pylist()
    assert [(r["n"], r["id"]) for r in csv_ids] == [("hex", 31), ("null", None), ("spaces", 2)]


def test_a_bad_records_path_holding_another_table_is_a_config_error(source: MixedSource, tmp_path: Path) -> None:
    other = str(tmp_path / "other")
    with lakesink.Sink(other, app_id="someone") as sink:
        sink.write([{"x": 1}], position=1)
    with pytest.raises(lakesink.ConfigError, match="is not a dead-letter table"):
        lakesink.ingest(str(source.directory), str(tmp_path / "lake"), app_id=APP_ID, bad_records=other)
    assert not table_exists(str(tmp_path / "lake"), None)
