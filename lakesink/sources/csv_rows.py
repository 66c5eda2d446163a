"""CSV: a header line, then one record per row (a quoted value may hold line ends).

Fast path: pyarrow's streaming reader, typed by the table's schema. Slow path, from the first row
the fast path refused to the end of the file: Python's csv module finds the rows (and each row's
line, byte offset and text), pyarrow types them in groups exactly as the fast path does.

Both count records alike: rows after the header, empty lines skipped, a quoted line end inside
its row (RFC 4180, which pyarrow and the csv module both follow). So a position reached by
the fast reader means the same records when the slow path resumes from it.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from lakesink.errors import BadRecord
from lakesink.sources.records import Chunk, Rejected, SchemaNow, SourceFile, find_refused, no_columns

_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)
# Quoted values may hold line ends: without this, pyarrow cuts blocks inside them and fails.
_PARSE_OPTIONS = pacsv.ParseOptions(newlines_in_values=True)
_GROUP_RECORDS = 10_000
# Every integer pyarrow's CSV reader takes matches (it also takes hex, and trims spaces); a
# value that does not cannot be an integer to it.
_INTEGER = re.compile(r"\s*[-+]?(?:0[xX][0-9a-fA-F]+|[0-9]+)\s*")
_NULL_VALUES = frozenset(pacsv.ConvertOptions().null_values)
_GROUP_BYTES = 8 << 20


class _Refused(Exception):
    """The fast path read a block that quarantining must look at record by record."""


@dataclass(frozen=True, slots=True)
class _Row:
    record: int
    line: int
    offset: int
    text: str
    fields: list[str]


@dataclass(frozen=True, slots=True)
class CsvReader:
    """Reads one CSV file as chunks of typed records."""

    file_index: int
    file: SourceFile
    location: str
    max_record_bytes: int
    quarantine: bool
    evolve: bool

    def chunks(self, open_stream: Callable[[], pa.NativeFile], schema_now: SchemaNow) -> Iterator[Chunk]:
        """Every record of the file; the caller marks the last chunk.

        Raises:
            BadRecord: a record longer than max_record_bytes; or, unless quarantining, the first
                row with the wrong number of fields or a value that does not fit the table.
        """
        record = 0
        schema = schema_now()
        try:
            with open_stream() as stream:
                reader = pacsv.open_csv(
                    stream,
                    read_options=pacsv.ReadOptions(block_size=self.max_record_bytes),
                    parse_options=_PARSE_OPTIONS,
                    convert_options=_convert_options(schema),
                )
                for batch in reader:
                    table = pa.Table.from_batches([batch])
                    if not self._fits(table, schema):
                        raise _Refused
                    yield Chunk(self.file_index, self.file, table, record, record + table.num_rows, last=False)
                    record += table.num_rows
        except (*_ARROW_ERRORS, _Refused) as exc:
            if self.quarantine:
                yield from self._salvage(open_stream, record, schema_now)
                return
            self._raise_first_bad(open_stream, record, schema, exc)

    def _fits(self, table: pa.Table, schema: pa.Schema | None) -> bool:
        if not self.quarantine or schema is None or self.evolve:
            return True
        return set(table.column_names) <= set(schema.names)

    def _raise_first_bad(
        self, open_stream: Callable[[], pa.NativeFile], start: int, schema: pa.Schema | None, exc: Exception
    ) -> None:
        for chunk in self._salvage(open_stream, start, lambda: schema):
            if chunk.rejected:
                raise chunk.rejected[0].error() from exc
        if "Empty" in str(exc):
            return  # a file of empty lines holds no records
        raise BadRecord(f"{self.location}: {exc}. Fix the file, then rerun; nothing was committed from its batch.") from exc

    def _salvage(self, open_stream: Callable[[], pa.NativeFile], start: int, schema_now: SchemaNow) -> Iterator[Chunk]:
        """Records from `start` on, a group at a time, the bad ones set aside."""
        with open_stream() as stream:
            rows = self._rows(stream)
            header = next(rows, None)
            if header is None:
                return
            group: list[_Row] = []
            size = 0
            for row in rows:
                if row.record < start:
                    continue
                group.append(row)
                size += len(row.text)
                if len(group) >= _GROUP_RECORDS or size >= _GROUP_BYTES:
                    yield self._group(header, group, schema_now())
                    group, size = [], 0
            if group:
                yield self._group(header, group, schema_now())

    def _rows(self, stream: pa.NativeFile) -> Iterator[_Row]:
        """The header, then every record, each with its first line, byte offset and text."""
        lines = _Lines(stream)
        record = -1  # the header is not a record
        # The csv module refuses fields over its (process-wide) limit, 128 KiB by default.
        csv.field_size_limit(max(csv.field_size_limit(), self.max_record_bytes))
        reader = csv.reader(lines)
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                line, offset, _ = lines.take()
                raise BadRecord(f"{self.location}:{line}: not readable as CSV ({exc}; record at byte offset {offset})") from exc
            line, offset, text = lines.take()
            if not fields:
                continue  # an empty line
            if len(text.encode("utf-8", errors="surrogateescape")) > self.max_record_bytes:
                raise BadRecord(
                    f"{self.location}:{line}: the record at byte offset {offset} is longer than the record size "
                    f"limit of {self.max_record_bytes} bytes (the reader's block size). Raise it: "
                    "max_record_bytes=BYTES. Nothing was committed from its batch.",
                    options=("max_record_bytes",),
                )
            yield _Row(record, line, offset, text, fields)
            record += 1

    def _group(self, header: _Row, rows: list[_Row], schema: pa.Schema | None) -> Chunk:
        names = header.fields
        candidates: list[_Row] = []
        rejected: list[Rejected] = []
        unknown = [n for n in names if schema is not None and schema.get_field_index(n) < 0]
        for row in rows:
            problem = _row_problem(row, names)
            if problem is None and unknown and self.quarantine and not self.evolve:
                problem = (
                    f"column(s) {', '.join(repr(n) for n in unknown)} are not in the table; "
                    "pass --evolve-schema (API: evolve_schema=True) to add them"
                )
            if problem is None:
                candidates.append(row)
            else:
                rejected.append(self._reject(row, problem))
        table, refused = _type_rows(header, candidates, schema)
        rejected.extend(self._reject(row, problem) for row, problem in refused)
        rejected.sort(key=lambda r: r.record)
        refused_records = {r.record for r in rejected}
        good = tuple(row.record for row in candidates if row.record not in refused_records)
        return Chunk(
            self.file_index,
            self.file,
            table if table is not None else no_columns(),
            rows[0].record,
            rows[-1].record + 1,
            last=False,
            rejected=tuple(rejected),
            good=good if rejected else None,
        )

    def _reject(self, row: _Row, reason: str) -> Rejected:
        return Rejected(
            source_file=self.location,
            file_index=self.file_index,
            record=row.record,
            line=row.line,
            byte_offset=row.offset,
            reason=reason,
            raw=row.text.rstrip("\r\n").encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace"),
        )


class _Lines:
    """The file's lines for csv.reader, remembering where the record being read began."""

    def __init__(self, stream: pa.NativeFile) -> None:
        # newline="" keeps each line's end as it is, as the csv module needs; surrogateescape keeps
        # bytes that are not UTF-8, so byte offsets stay exact and such a row can be refused by name.
        self._text = io.TextIOWrapper(
            io.BufferedReader(_ReadableStream(stream)), encoding="utf-8", errors="surrogateescape", newline=""
        )
        self._line = 0
        self._offset = 0
        self._taken: list[str] = []
        self._start = (1, 0)

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        text = self._text.readline()
        if not text:
            raise StopIteration
        if not self._taken:
            self._start = (self._line + 1, self._offset)
        self._taken.append(text)
        self._line += 1
        self._offset += len(text.encode("utf-8", errors="surrogateescape"))
        return text

    def take(self) -> tuple[int, int, str]:
        """(first line, byte offset, text) of the row csv.reader just returned."""
        text = "".join(self._taken)
        self._taken = []
        return self._start[0], self._start[1], text


class _ReadableStream(io.RawIOBase):
    """A pyarrow input stream as a Python binary stream."""

    def __init__(self, stream: pa.NativeFile) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _convert_options(schema: pa.Schema | None) -> pacsv.ConvertOptions:
    if schema is None:
        return pacsv.ConvertOptions()
    return pacsv.ConvertOptions(column_types={f.name: f.type for f in schema})


def _row_problem(row: _Row, names: list[str]) -> str | None:
    try:
        row.text.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if len(row.fields) != len(names):
        return f"{len(row.fields)} fields where the header has {len(names)}"
    return None


def _read_rows(header: _Row, rows: list[_Row], schema: pa.Schema | None) -> pa.Table:
    text = "".join(r.text if r.text.endswith(("\n", "\r")) else r.text + "\n" for r in [header, *rows])
    data = text.encode("utf-8", errors="surrogateescape")
    return pacsv.read_csv(
        pa.py_buffer(data),
        read_options=pacsv.ReadOptions(use_threads=False, block_size=len(data) + 1),
        parse_options=_PARSE_OPTIONS,
        convert_options=_convert_options(schema),
    )


def _type_rows(header: _Row, rows: list[_Row], schema: pa.Schema | None) -> tuple[pa.Table | None, list[tuple[_Row, str]]]:
    """The rows typed as the fast path types them, and those that do not fit.

    Integer columns are checked in Python first (cheap: a whole file after a type change costs no
    pyarrow read per row); then pyarrow reads the rest all at once, and if it refuses, the rows it
    refuses alone are found by halving.
    """
    refused: list[tuple[_Row, str]] = []
    integers = [
        (i, name, schema.field(name).type)
        for i, name in enumerate(header.fields)
        if schema is not None and schema.get_field_index(name) >= 0 and pa.types.is_integer(schema.field(name).type)
    ]
    kept: list[_Row] = []
    for row in rows:
        wrong = next(((name, t, row.fields[i]) for i, name, t in integers if not _may_be_integer(row.fields[i])), None)
        if wrong is None:
            kept.append(row)
        else:
            refused.append((row, f"column {wrong[0]!r} = {wrong[2]!r} is not {wrong[1]} as the table requires"))
    if not kept:
        return None, refused
    try:
        return _read_rows(header, kept, schema), refused
    except _ARROW_ERRORS:
        pass
    alone = find_refused(kept, lambda some: _read_rows(header, list(some), schema))
    refused.extend((row, _value_problem(header.fields, row.fields, schema, exc)) for row, exc in alone)
    bad = {id(row) for row, _ in alone}
    kept = [row for row in kept if id(row) not in bad]
    return (_read_rows(header, kept, schema) if kept else None), refused


def _may_be_integer(value: str) -> bool:
    """False only where pyarrow surely refuses `value` for an integer column (not a number, not a null marker)."""
    return value in _NULL_VALUES or _INTEGER.fullmatch(value) is not None


def _value_problem(names: list[str], values: list[str], schema: pa.Schema | None, exc: Exception) -> str:
    """Which column does not fit, in words; pyarrow's message when no single column is to blame."""
    types = {f.name: f.type for f in schema} if schema is not None else {}
    for name, value in zip(names, values, strict=True):
        if name not in types:
            continue
        buffer = io.StringIO()
        csv.writer(buffer).writerows([[name], [value]])
        try:
            pacsv.read_csv(
                pa.py_buffer(buffer.getvalue().encode()),
                convert_options=pacsv.ConvertOptions(column_types={name: types[name]}),
            )
        except _ARROW_ERRORS:
            return f"column {name!r} = {value!r} is not {types[name]} as the table requires"
    return f"cannot be typed ({str(exc).splitlines()[0]})"
