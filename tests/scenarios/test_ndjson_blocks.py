"""The NDJSON reader's blocks: blank lines, CRLF, line ends at read boundaries, record counts and positions.

Read through FileSource (no table), so what is checked is what ingest gets: each chunk's record
range, its rows, and the records it rejects with their line and byte offset.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from itertools import pairwise
from pathlib import Path

import pytest

import lakesink
from lakesink.sources import ndjson
from lakesink.sources.files import Chunk, FilePosition, FileSource


def read(src: Path, *, quarantine: bool = False, max_record_bytes: int = 8 << 20, start: int = 0) -> list[Chunk]:
    return list(
        FileSource(str(src), max_record_bytes=max_record_bytes).chunks(FilePosition(0, start), schema=None, quarantine=quarantine)
    )


def ids(chunks: list[Chunk]) -> list[int]:
    return [i for c in chunks if c.table.num_columns for i in c.table.column("id").to_pylist()]


def assert_contiguous(chunks: list[Chunk], start: int, end: int) -> None:
    """Chunks cover records [start, end) of the file, in order, with no gap or overlap."""
    assert chunks[0].row_start == start and chunks[-1].row_end == end and chunks[-1].last
    for before, after in pairwise(chunks):
        assert before.row_end == after.row_start


def record(i: int) -> bytes:
    return json.dumps({"id": i, "name": f"n{i}"}).encode()


@pytest.mark.parametrize("max_record_bytes", [8 << 20, 64, 40])
def test_whitespace_only_lines_are_not_records_wherever_they_are(tmp_path: Path, max_record_bytes: int) -> None:
    # Blank lines: empty, spaces, tabs, a lone CR, several in a row, first in the file, and a last
    # line of spaces without a line end; small limits put them at block starts and ends too.
    lines = [b"  ", record(0), b"", b"", b"\t \t", record(1), b" \r", record(2), b"\r", b"", record(3), b"   "]
    (tmp_path / "a.ndjson").write_bytes(b"\n".join(lines))
    chunks = read(tmp_path, max_record_bytes=max_record_bytes)
    assert ids(chunks) == [0, 1, 2, 3]
    assert_contiguous(chunks, 0, 4)
    assert not any(c.rejected for c in chunks)


def test_a_record_after_blank_lines_is_named_by_its_own_line_and_offset(tmp_path: Path) -> None:
    # The blank lines start with a space (so the reader counts them exactly): the bad record is
    # still record 2, on line 6, at its own byte offset.
    data = record(0) + b"\n \n\t\n" + record(1) + b"\n\n" + b"not json\n" + record(3) + b"\n"
    (tmp_path / "a.ndjson").write_bytes(data)
    chunks = read(tmp_path, quarantine=True)
    assert_contiguous(chunks, 0, 4)
    rejected = [r for c in chunks for r in c.rejected]
    assert [(r.record, r.line, r.byte_offset, r.raw) for r in rejected] == [(2, 6, data.index(b"not json"), "not json")]
    assert ids(chunks) == [0, 1, 3]
    with pytest.raises(lakesink.BadRecord, match=rf"a\.ndjson:6: not valid JSON .*record at byte offset {data.index(b'not')}\)"):
        read(tmp_path)


def test_crlf_lines_are_read_without_their_cr_and_blank_crlf_lines_are_skipped(tmp_path: Path) -> None:
    lines = [record(0), b"", record(1), b" ", record(2), b"\t", b"", record(3)]
    (tmp_path / "a.ndjson").write_bytes(b"\r\n".join(lines) + b"\r\n")
    chunks = read(tmp_path)
    assert ids(chunks) == [0, 1, 2, 3]
    assert [n for c in chunks for n in c.table.column("name").to_pylist()] == ["n0", "n1", "n2", "n3"]
    assert_contiguous(chunks, 0, 4)


def test_crlf_file_with_small_blocks_counts_every_record_once(tmp_path: Path) -> None:
    lines = [b"" if i % 7 == 3 else record(i) for i in range(60)]
    (tmp_path / "a.ndjson").write_bytes(b"\r\n".join(lines) + b"\r\n")
    chunks = read(tmp_path, max_record_bytes=100)
    expected = [i for i in range(60) if i % 7 != 3]
    assert ids(chunks) == expected
    assert_contiguous(chunks, 0, len(expected))
    assert len(chunks) > 5  # many blocks: blank CRLF lines met at block edges too


def test_two_objects_on_one_line_are_one_bad_record_not_two_records(tmp_path: Path) -> None:
    data = record(0) + b"\n" + record(1) + record(2) + b"\n" + record(3) + b"\n"
    (tmp_path / "a.ndjson").write_bytes(data)
    chunks = read(tmp_path, quarantine=True)
    assert_contiguous(chunks, 0, 3)  # three lines, three records
    [bad] = [r for c in chunks for r in c.rejected]
    assert (bad.record, bad.line, bad.byte_offset) == (1, 2, len(record(0)) + 1)
    assert bad.reason.startswith("not valid JSON (Extra data")
    assert ids(chunks) == [0, 3]
    with pytest.raises(lakesink.BadRecord, match=r"a\.ndjson:2: not valid JSON \(Extra data"):
        read(tmp_path)


def test_a_blank_line_does_not_hide_two_objects_on_another_line(tmp_path: Path) -> None:
    # pyarrow reads 3 objects; the block has 3 lines but only 2 non-blank: the counts differ, so
    # the block goes through the per-line reader, which refuses the line of two objects.
    data = record(0) + record(1) + b"\n\n" + record(2) + b"\n"
    (tmp_path / "a.ndjson").write_bytes(data)
    chunks = read(tmp_path, quarantine=True)
    assert_contiguous(chunks, 0, 2)
    assert [(r.record, r.line) for c in chunks for r in c.rejected] == [(0, 1)]
    assert ids(chunks) == [2]


def test_an_object_spread_over_lines_is_a_bad_record_per_line(tmp_path: Path) -> None:
    data = record(0) + b'\n{"id": 1,\n "name": "x"}\n' + record(3) + b"\n"
    (tmp_path / "a.ndjson").write_bytes(data)
    chunks = read(tmp_path, quarantine=True)
    assert_contiguous(chunks, 0, 4)
    assert [(r.record, r.line, r.raw) for c in chunks for r in c.rejected] == [
        (1, 2, '{"id": 1,'),
        (2, 3, ' "name": "x"}'),
    ]
    assert ids(chunks) == [0, 3]


def test_records_across_the_8_mib_read_boundary_are_read_whole_and_once(tmp_path: Path) -> None:
    # ~9 MiB of records with a blank line of spaces here and there: the first read ends mid-record.
    lines = []
    for i in range(90_000):
        lines.append(json.dumps({"id": i, "name": "x" * (50 + i % 100)}).encode())
        if i % 10_000 == 5:
            lines.append(b"  ")
    data = b"\n".join(lines) + b"\n"
    assert len(data) > 8 << 20 and data[(8 << 20) - 1 : (8 << 20) + 1] != b"\n"
    (tmp_path / "a.ndjson").write_bytes(data)
    chunks = read(tmp_path)
    assert len(chunks) == 2
    assert ids(chunks) == list(range(90_000))
    assert_contiguous(chunks, 0, 90_000)
    straddling = chunks[1].row_start  # the first record of the second block began in the first read
    assert [len(n) for n in chunks[1].table.column("name").to_pylist()[:1]] == [50 + straddling % 100]
    resumed = read(tmp_path, start=straddling)
    assert ids(resumed) == list(range(straddling, 90_000))


def test_a_line_longer_than_a_read_is_put_together_from_its_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Reads of 16 bytes under a limit of 200: a 150-byte record spans ten reads.
    monkeypatch.setattr(ndjson, "_READ_BYTES", 16)
    long = json.dumps({"id": 1, "name": "y" * 120}).encode()
    data = record(0) + b"\n" + long + b"\n \n" + record(2) + b"\n" + long.replace(b'"id": 1', b'"id": 3')
    (tmp_path / "a.ndjson").write_bytes(data)
    chunks = read(tmp_path, max_record_bytes=200)
    assert ids(chunks) == [0, 1, 2, 3]
    assert_contiguous(chunks, 0, 4)
    assert chunks[-1].table.column("name").to_pylist()[-1] == "y" * 120


def test_a_record_over_the_limit_is_named_by_line_and_offset(tmp_path: Path) -> None:
    data = record(0) + b"\n\n" + record(1) + b"\n" + b'{"id": 2, "name": "' + b"z" * 100 + b'"}\n' + record(3) + b"\n"
    (tmp_path / "a.ndjson").write_bytes(data)
    offset = data.index(b'{"id": 2')
    with pytest.raises(lakesink.BadRecord) as raised:
        read(tmp_path, max_record_bytes=64)
    assert str(raised.value) == (
        f"{tmp_path / 'a.ndjson'}:4: the record at byte offset {offset} is longer than the record size limit "
        "of 64 bytes (the reader's block size). If it is one record, raise the limit: max_record_bytes=BYTES; "
        "if it is several, the line ends are missing. Nothing was committed from its batch."
    )
    assert ids(read(tmp_path, max_record_bytes=128)) == [0, 1, 2, 3]


def test_a_file_of_blank_lines_has_no_records(tmp_path: Path) -> None:
    (tmp_path / "a.ndjson").write_bytes(b" \n\n\t\r\n" * 50 + b"  ")
    chunks = read(tmp_path, max_record_bytes=32)
    assert [(c.row_start, c.row_end, c.last, c.table.num_rows) for c in chunks] == [(0, 0, True, 0)]


def test_count_records_fast_check_agrees_with_the_exact_count() -> None:
    # The usual block skips the exact blank-line count; each case here must still count right.
    cases = {
        b"": 0,
        b"{}\n": 1,
        b"{}": 1,
        b"{}\n{}": 2,
        b"{}\n\n{}\n": 2,
        b"{}\n\n\n{}\n": 2,
        b"\n{}\n": 1,
        b"\n\n{}\n": 1,
        b" \n{}\n": 1,
        b"{}\n \n": 1,
        b"{}\n  ": 1,
        b"{}\r\n\r\n{}\r\n": 2,
        b"{}\r\n \r\n": 1,
        b"{}\n\t{}\n": 2,  # an indented record is still a record
        b"\t": 0,
        b"  {}": 1,
    }
    for data, records in cases.items():
        block = bytearray(data)
        assert ndjson.count_records(block, data.count(b"\n")) == records, data


def test_count_newlines_agrees_with_bytes_count() -> None:
    data = bytearray(b"".join(record(i) + (b"\r\n" if i % 7 == 0 else b"\n") for i in range(20_000)))
    assert len(data) > 4 << 16
    for start, stop in [(0, len(data)), (0, 10), (5, len(data) - 3), (1 << 16, 3 << 16), (len(data), len(data))]:
        assert ndjson.count_newlines(data, start, stop) == data.count(b"\n", start, stop)


def blocky_file(tmp_path: Path) -> bytes:
    """Records, blank lines, CRLF and bad lines, over many small blocks."""
    lines = []
    for i in range(400):
        lines.append(record(i) + (b"\r" if i % 11 == 0 else b""))
        if i % 37 == 3:
            lines.append(b"  " if i % 2 else b"")
        if i % 53 == 7:
            lines.append(b"not json")
    data = b"\n".join(lines) + b"\n"
    (tmp_path / "a.ndjson").write_bytes(data)
    return data


@pytest.mark.parametrize("max_record_bytes", [64, 100, 4096])
def test_reading_ahead_gives_the_chunks_reading_in_turn_gives(tmp_path: Path, max_record_bytes: int) -> None:
    blocky_file(tmp_path)
    source = FileSource(str(tmp_path), max_record_bytes=max_record_bytes)
    file = source.files[0]
    reader = ndjson.NdjsonReader(0, file, source.location(file), max_record_bytes, quarantine=True, evolve=False)

    def summary(chunks: list[Chunk]) -> list[tuple[int, int, list[int], list[tuple[int, int, int]]]]:
        return [
            (
                c.row_start,
                c.row_end,
                c.table.column("id").to_pylist() if c.table.num_columns else [],
                [(r.record, r.line, r.byte_offset) for r in c.rejected],
            )
            for c in chunks
        ]

    with source.store.open_input(file.path) as stream:
        in_turn = list(reader.chunks(stream, lambda: None))
    ahead = read(tmp_path, quarantine=True, max_record_bytes=max_record_bytes)
    assert summary(ahead) == summary(in_turn)
    assert len(ahead) >= 3 and sum(len(c.rejected) for c in ahead) == 8
    assert_contiguous(ahead, 0, 408)


def test_a_reader_closed_halfway_leaves_no_read_running(tmp_path: Path) -> None:
    blocky_file(tmp_path)
    chunks = FileSource(str(tmp_path), max_record_bytes=64).chunks(FilePosition(0, 0), schema=None, quarantine=True)
    first = next(chunks)
    assert first.row_start == 0
    chunks.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("lakesink-read-ahead")]


def test_a_line_over_the_limit_found_ahead_fails_after_the_records_before_it(tmp_path: Path) -> None:
    lines = [record(i) for i in range(100)] + [b'{"id": 100, "name": "' + b"z" * 100 + b'"}'] + [record(101)]
    data = b"\n".join(lines) + b"\n"
    (tmp_path / "a.ndjson").write_bytes(data)
    source = FileSource(str(tmp_path), max_record_bytes=64)
    file = source.files[0]
    reader = ndjson.NdjsonReader(0, file, source.location(file), 64, quarantine=False, evolve=False)
    got: list[Chunk] = []
    with source.store.open_input(file.path) as stream, pytest.raises(lakesink.BadRecord) as in_turn:
        for chunk in reader.chunks(stream, lambda: None):
            got.append(chunk)
    assert ids(got) == list(range(100))
    got = []
    with pytest.raises(lakesink.BadRecord) as ahead:
        for chunk in source.chunks(FilePosition(0, 0), schema=None):
            got.append(chunk)
    assert str(ahead.value) == str(in_turn.value)
    offset = data.index(b'{"id": 100')
    assert f":101: the record at byte offset {offset} is longer" in str(ahead.value)
    # FileSource holds a file's chunk back until it knows whether it is the last: one fewer.
    assert ids(got) == list(range(got[-1].row_end)) and got[-1].row_end > 80
    assert not [t for t in threading.enumerate() if t.name.startswith("lakesink-read-ahead")]


def test_files_are_read_ahead_across_file_ends_in_order(tmp_path: Path) -> None:
    # Many files, large and small, empty, blank-only and CSV between them; read from the middle
    # of one (a resume), every record comes once, in order, from its own file.
    expected: list[tuple[int, int]] = []
    sizes = [0, 1, 300, 5, 0, 2, 120, 1]
    for n, size in enumerate(sizes):
        name = tmp_path / f"f{n:02d}.ndjson"
        name.write_bytes(b"".join(record(1000 * n + i) + b"\n" for i in range(size)) + (b"  \n" if n == 3 else b""))
    (tmp_path / "f04b.csv").write_text("id,name\n7,x\n")
    source = FileSource(str(tmp_path), max_record_bytes=64)
    assert [f.format for f in source.files].count("csv") == 1
    for start in (FilePosition(0, 0), FilePosition(2, 150)):
        chunks = list(source.chunks(start, schema=None))
        got = [(c.file_index, i) for c in chunks if c.table.num_columns for i in c.table.column("id").to_pylist()]
        expected = []
        for index, file in enumerate(source.files):
            if index < start.file_index:
                continue
            skip = start.row if index == start.file_index else 0
            if file.format == "csv":
                expected.append((index, 7))
            else:
                n = int(file.path[1:3])
                expected += [(index, 1000 * n + i) for i in range(skip, sizes[n])]
        assert got == expected
        assert [c.file_index for c in chunks if c.last] == list(range(start.file_index, len(source.files)))


def test_a_file_that_cannot_be_opened_fails_after_every_chunk_of_the_files_before_it(tmp_path: Path) -> None:
    for n in range(3):
        (tmp_path / f"f{n}.ndjson").write_bytes(b"".join(record(10 * n + i) + b"\n" for i in range(5)))
    source = FileSource(str(tmp_path), max_record_bytes=64)
    (tmp_path / "f1.ndjson").unlink()  # listed, then gone
    got: list[Chunk] = []
    with pytest.raises(Exception):  # noqa: B017 - whatever the store raises for a missing file
        for chunk in source.chunks(FilePosition(0, 0), schema=None):
            got.append(chunk)
    assert ids(got) == list(range(5)) and got[-1].last
    assert not [t for t in threading.enumerate() if t.name.startswith("lakesink-read-ahead")]


def test_counting_blank_lines_does_not_import_pandas() -> None:
    # pa.array() of a Python list imports pandas (~0.2 s) to ask whether it is a pandas object.
    code = (
        "import sys\nfrom lakesink.sources import ndjson\n"
        "assert ndjson.count_records(bytearray(b'{}\\n \\n{}\\n'), 3) == 2\n"
        "assert ndjson.count_records(bytearray(b'{}\\n{}\\n'), 2) == 2\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- many small files, parsed together ----------------------------------------------------------------


def _small_files(folder: Path, count: int, *, bad: int | None = None) -> list[int]:
    """`count` small files: some without a last line end, some with blank lines, one of blanks only."""
    expected = []
    for n in range(count):
        ids_here = [] if n == 7 else [100 * n + i for i in range(n % 4 + 1)]
        lines = [record(i) for i in ids_here]
        if n % 5 == 2:
            lines.insert(len(lines) // 2, b"   ")
        if n == 7:
            lines = [b"", b"  "]
        if n == bad:
            lines.insert(1, b'{"id": oops}')
        body = b"\n".join(lines) + (b"" if n % 3 == 0 else b"\n")
        (folder / f"f{n:04d}.ndjson").write_bytes(body)
        expected += ids_here
    return expected


def test_small_files_parsed_together_give_the_chunks_each_file_alone_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """60 files of a few records (blank lines, missing last line ends, one file of blanks only): one
    chunk per file, ending it, with exactly the records reading each file alone gives; and a resume
    in the middle of one of them."""
    expected = _small_files(tmp_path, 60)
    schema = FileSource(str(tmp_path)).chunks(FilePosition(0, 0), schema=None).__next__().table.schema
    together = list(FileSource(str(tmp_path)).chunks(FilePosition(0, 0), schema=schema))
    monkeypatch.setattr("lakesink.sources.files._SMALL_FILE_BYTES", 0)  # every file on its own
    alone = list(FileSource(str(tmp_path)).chunks(FilePosition(0, 0), schema=schema))
    assert ids(together) == ids(alone) == expected
    # Every file ends with a chunk marked last, at the same record count (alone, a last line
    # without a line end is a block, so a chunk, of its own).
    assert {c.file_index: c.row_end for c in together if c.last} == {c.file_index: c.row_end for c in alone if c.last}
    assert len({c.file_index for c in together if c.last}) == 60
    monkeypatch.undo()
    resumed = list(FileSource(str(tmp_path)).chunks(FilePosition(13, 1), schema=schema))
    assert ids(resumed) == expected[expected.index(1301) :]


def test_a_bad_record_in_a_run_of_small_files_is_named_after_the_records_of_the_files_before_it(tmp_path: Path) -> None:
    expected = _small_files(tmp_path, 40, bad=30)
    schema = FileSource(str(tmp_path)).chunks(FilePosition(0, 0), schema=None).__next__().table.schema
    got: list[Chunk] = []
    with pytest.raises(lakesink.BadRecord) as error:
        for chunk in FileSource(str(tmp_path)).chunks(FilePosition(0, 0), schema=schema):
            got.append(chunk)
    assert "f0030.ndjson:2" in str(error.value)
    assert ids(got)[: expected.index(3000)] == expected[: expected.index(3000)]
    assert max(c.file_index for c in got if c.last) == 29
