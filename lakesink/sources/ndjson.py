"""NDJSON: one JSON object per line, read in blocks cut at line ends.

lakesink cuts the blocks itself rather than letting pyarrow's streaming reader do it, for three
reasons: a block's first line and byte offset are known, so a bad record is named exactly; the
record size limit is checked here, with a message that says how to raise it (pyarrow only says
"straddling object"); and each block's record count is checked against its non-blank lines, so
a record is always one line. pyarrow alone also accepts `{..}{..}` on one line or an object spread
over lines; were those read as records, a position reached by the fast reader would not mean the
same records as one reached by the per-line fallback.

Fast path: the whole block through pyarrow. Slow path (only for a block the fast path refused):
each line through Python's json, then pyarrow for the types, so the good records are typed
exactly as the fast path types them.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.json as pajson

from lakesink.errors import BadRecord
from lakesink.sources.records import Chunk, Rejected, SchemaNow, SourceFile, find_refused, no_columns

# pyarrow parses a block in parallel sub-blocks of this size; a longer line makes it fail with
# "straddling object", and the block is then parsed again as one sub-block.
_PARSE_BLOCK_BYTES = 1 << 20
_READ_BYTES = 8 << 20
_JSON_SPACE = b" \t\r"
# Whitespace-only lines: the first line (when it ends), and every later one that ends.
_BLANK_FIRST_LINE = re.compile(rb"[ \t\r]*\n")
_BLANK_LINE = re.compile(rb"\n[ \t\r]*(?=\n)")
# A line after the first that starts with a space or is empty: a block without one (the usual
# case) has no blank line after its first, so the exact count above is not needed. Looked for
# with pyarrow's RE2 (a DFA: several times faster than `re` over a block).
_LINE_STARTS_BLANK = r"\n[ \t\r\n]"
_NOT_SPACE = re.compile(rb"[^ \t\r\n]")
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)
_COUNT_PIECE = 256 << 10
_RE2_FROM_BYTES = 256 << 10
try:  # pyarrow imports numpy when it is installed; lakesink does not require it
    import numpy as _np
except ImportError:  # pragma: no cover - numpy is installed wherever the tests run
    _np = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Block:
    """Whole lines of a file: `data` starts on line `line` (1-based), at byte `offset`, and holds `newlines` line ends.

    `records` is its non-blank lines (`count_records`). `data` is the block's own buffer (read
    into, never copied, never changed once yielded).
    """

    data: bytearray
    line: int
    offset: int
    newlines: int
    records: int

    @classmethod
    def of(cls, data: bytearray, line: int, offset: int, newlines: int) -> Block:
        return cls(data, line, offset, newlines, count_records(data, newlines))


@dataclass(frozen=True, slots=True)
class NdjsonReader:
    """Reads one NDJSON file as chunks of typed records."""

    file_index: int
    file: SourceFile
    location: str  # for messages and the dead-letter table
    max_record_bytes: int
    quarantine: bool  # keep bad records in the chunk instead of raising
    evolve: bool

    def chunks(self, stream: pa.NativeFile, schema_now: SchemaNow) -> Iterator[Chunk]:
        """Every record of the file, a chunk per block; the caller marks the last one.

        (FileSource reads the blocks ahead on a thread of their own and hands them to `parse`.)

        Raises:
            BadRecord: a record longer than max_record_bytes; or, unless quarantining, the first
                record that is not a JSON object or does not fit the table's schema.
        """
        return self.parse(self.blocks(stream), schema_now)

    def parse(self, blocks: Iterable[Block], schema_now: SchemaNow) -> Iterator[Chunk]:
        """The chunks of the file's blocks (`blocks(stream)`, read in turn or ahead), as `chunks` says."""
        record = 0
        for block in blocks:
            if block.records == 0 and _NOT_SPACE.search(block.data) is None:
                continue  # blank lines are not records
            schema = schema_now()
            table = _parse_fast(block.data, schema)
            lines = block.records
            if table is not None and table.num_rows == lines and self._fits(table, schema):
                yield Chunk(self.file_index, self.file, table, record, record + lines, last=False)
            else:
                yield self._salvage(block, record, schema)
            record += lines

    def parse_together(self, files: Sequence[Sequence[Block]], schema: pa.Schema | None) -> pa.Table | None:
        """The records of several whole small files (each file's blocks) in one pyarrow parse, or
        None when the fast path refuses them (each file is then parsed on its own, to name the bad
        record). A parse has a fixed cost (~0.5 ms) that a 20 KB file would pay once per file.

        The caller slices the table by each file's `records`: a file's records are its non-blank
        lines, and one that does not end with a line end gets one, so no line runs into the next file.
        """
        pieces: list[bytes | bytearray] = []
        for blocks in files:
            for block in blocks:
                pieces.append(block.data)
            if blocks and not blocks[-1].data.endswith(b"\n"):
                pieces.append(b"\n")
        table = _parse_fast(bytearray().join(pieces), schema)
        expected = sum(block.records for blocks in files for block in blocks)
        if table is None or table.num_rows != expected or not self._fits(table, schema):
            return None
        return table

    def _fits(self, table: pa.Table, schema: pa.Schema | None) -> bool:
        # When quarantining, a record with a column the table lacks is a bad record, found by the
        # slow path; otherwise schema.fit names the column for the whole run.
        if not self.quarantine or schema is None or self.evolve:
            return True
        return set(table.column_names) <= set(schema.names)

    def blocks(self, stream: pa.NativeFile) -> Iterator[Block]:
        """The file in blocks cut after the last line end of each read; a line over the limit raises.

        A read goes straight into the next block's buffer, after the line the last read cut, so a
        block's bytes are copied once (by the read) and the cut line once more. A line longer than
        a read is read in pieces apart, which are copied into its block once it ends.
        """
        limit = self.max_record_bytes
        read_size = min(limit, _READ_BYTES)
        carry: list[memoryview] = []  # the line the last read(s) cut, not in a block yet
        carried = 0
        line, offset = 1, 0
        while True:
            start = carried if carried <= read_size else 0
            # No bigger than the rest of the file as listed (+1 to see its end): a new buffer is
            # zeroed, and a small file should not pay for a whole read's worth.
            left = self.file.size - offset - carried
            buffer = bytearray(start + (min(read_size, left + 1) if left > 0 else min(read_size, 1 << 16)))
            if start:
                at = 0
                for piece in carry:
                    buffer[at : at + len(piece)] = piece
                    at += len(piece)
            size = stream.readinto(memoryview(buffer)[start:])
            if not size:
                if carried:
                    data = bytearray().join(carry)
                    yield Block.of(data, line, offset, count_newlines(data, 0, len(data)))
                return
            filled = start + size
            newline = buffer.find(b"\n", start, filled)
            if newline < 0:
                # Only the line carried over from the last read can outgrow the limit: a line
                # wholly inside one read is at most read_size <= limit bytes.
                if carried + size > limit:
                    raise self._too_long(line, offset)
                piece = memoryview(buffer)[:filled]
                carry = [*carry, piece] if not start else [piece]
                carried += size
                continue
            if carried + newline - start > limit:
                raise self._too_long(line, offset)
            cut = buffer.rfind(b"\n", newline, filled) + 1
            tail = memoryview(buffer[cut:filled])  # a copy: `buffer` is cut short next
            if start or not carried:
                del buffer[cut:]  # shrinks in place, no copy
                block = buffer
            else:
                block = bytearray().join([*carry, memoryview(buffer)[:cut]])
            newlines = count_newlines(buffer, newline, cut)  # the carried line has none
            yield Block.of(block, line, offset, newlines)
            line += newlines
            offset += len(block)
            carry, carried = [tail], filled - cut

    def _too_long(self, line: int, offset: int) -> BadRecord:
        return BadRecord(
            f"{self.location}:{line}: the record at byte offset {offset} is longer than the record size limit "
            f"of {self.max_record_bytes} bytes (the reader's block size). If it is one record, raise the limit: "
            "max_record_bytes=BYTES; if it is several, the line ends are missing. Nothing was committed from its batch.",
            options=("max_record_bytes",),
        )

    def _salvage(self, block: Block, first: int, schema: pa.Schema | None) -> Chunk:
        """The slow path: each line on its own, so that one bad record does not take its block with it."""
        candidates: list[_Line] = []
        rejected: list[Rejected] = []
        record, line, offset = first, block.line, block.offset
        for raw in bytes(block.data).split(b"\n"):
            if raw.strip(_JSON_SPACE):
                problem, value = _parse_line(raw)
                if problem is None and self.quarantine and schema is not None and not self.evolve:
                    problem = _unknown_fields(value, schema)
                if problem is None:
                    candidates.append(_Line(record, line, offset, raw, value))
                else:
                    rejected.append(self._reject(record, line, offset, raw, problem))
                record += 1
            line += 1
            offset += len(raw) + 1
        typed, refused = _type_lines(candidates, schema)  # pyarrow's types: the fast path's
        rejected.extend(self._reject(c.record, c.line, c.offset, c.raw, problem) for c, problem in refused)
        rejected.sort(key=lambda r: r.record)
        if rejected and not self.quarantine:
            raise rejected[0].error()
        refused_records = {r.record for r in rejected}
        good = tuple(c.record for c in candidates if c.record not in refused_records)
        return Chunk(
            self.file_index,
            self.file,
            typed if typed is not None else no_columns(),
            first,
            record,
            last=False,
            rejected=tuple(rejected),
            good=good if rejected else None,
        )

    def _reject(self, record: int, line: int, offset: int, raw: bytes, reason: str) -> Rejected:
        return Rejected(
            source_file=self.location,
            file_index=self.file_index,
            record=record,
            line=line,
            byte_offset=offset,
            reason=reason,
            raw=raw.rstrip(b"\r").decode("utf-8", errors="replace"),
        )


@dataclass(frozen=True, slots=True)
class _Line:
    record: int
    line: int
    offset: int
    raw: bytes
    value: dict[str, object]


def count_records(data: bytearray, newlines: int) -> int:
    """Non-blank lines: the records the block must hold if every record is one line.

    `newlines` is data.count(b"\\n"), which the caller has already. Copies nothing. A blank line
    is empty or starts with a space, so when no line does (the usual block: one RE2 search), the
    blank lines need no exact count.
    """
    tail = data.rfind(b"\n") + 1  # where the last line begins; it has no line end if not empty
    lines = newlines + (1 if tail < len(data) else 0)
    if data and data[0] not in _JSON_SPACE + b"\n" and not _matches(data, _LINE_STARTS_BLANK):
        return lines  # no line after the first starts with a space or is empty; the first neither
    blank = len(_BLANK_LINE.findall(data))
    if _BLANK_FIRST_LINE.match(data):
        blank += 1
    if tail < len(data) and _NOT_SPACE.search(data, tail) is None:
        blank += 1  # a last line without a line end, of spaces only
    return lines - blank


def count_newlines(data: bytearray, start: int, stop: int) -> int:
    """data.count(b"\\n", start, stop), with numpy when there is numpy: 3x faster, and mostly without the GIL.

    In pieces of 256 KiB: numpy's comparison result then stays in the CPU's cache, and is not a
    new 8 MiB allocation (and its page faults) per block.
    """
    if _np is None or stop - start < _COUNT_PIECE:
        return data.count(b"\n", start, stop)
    view = _np.frombuffer(data, _np.uint8, stop - start, start)
    return sum(int(_np.count_nonzero(view[at : at + _COUNT_PIECE] == 10)) for at in range(0, stop - start, _COUNT_PIECE))


def _matches(data: bytearray, pattern: str) -> bool:
    """Whether RE2 finds `pattern` in `data` (read in place, as one binary value); Python's `re` for
    a small block, where building the Arrow value costs more than the search (a 20 KB file)."""
    if len(data) < _RE2_FROM_BYTES:
        return re.search(pattern.encode(), data) is not None
    import pyarrow.compute as pc

    # Not pa.array([0, n]): converting a Python list makes pyarrow import pandas (0.2 s) to ask
    # whether it is a pandas object.
    offsets = pa.py_buffer(struct.pack("=qq", 0, len(data)))
    value = pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, pa.py_buffer(data)])
    return bool(pc.match_substring_regex(value, pattern)[0].as_py())


def _parse_fast(data: bytearray, schema: pa.Schema | None) -> pa.Table | None:
    """The block through pyarrow, or None if pyarrow refuses it (the slow path then says why)."""
    options = _parse_options(schema)
    for block_size in (_PARSE_BLOCK_BYTES, len(data) + 1):
        try:
            table = pajson.read_json(
                pa.py_buffer(data), read_options=pajson.ReadOptions(block_size=block_size), parse_options=options
            )
            return _dates_and_times(table, schema)
        except _ARROW_ERRORS:
            if len(data) < _PARSE_BLOCK_BYTES:
                return None
    return None


def _parse_options(schema: pa.Schema | None) -> pajson.ParseOptions:
    if schema is None:
        return pajson.ParseOptions()
    return pajson.ParseOptions(explicit_schema=_as_read(schema), unexpected_field_behavior="infer")


def _as_read(schema: pa.Schema) -> pa.Schema:
    """The schema pyarrow's JSON parser reads with: dates and timestamps as text (`_dates_and_times`)."""
    return pa.schema([f.with_type(pa.string()) if _is_temporal(f.type) else f for f in schema])


def _is_temporal(t: pa.DataType) -> bool:
    return pa.types.is_date(t) or pa.types.is_timestamp(t)


def _dates_and_times(table: pa.Table, schema: pa.Schema | None) -> pa.Table:
    """`table` with its date and timestamp columns (read as text) converted to the schema's types.

    pyarrow's JSON parser reads no date, and reads `2026-11-01T12:00:00+02:00` as a timestamp
    without zone, dropping the offset; Arrow's cast from text takes ISO 8601 dates, and timestamps
    with `Z` or an offset as UTC instants (and refuses an offset where the column has no zone).

    Raises:
        pyarrow.ArrowInvalid: a value that is not such a date or time (the slow path finds its record).
    """
    import pyarrow.compute as pc

    if schema is None:
        return table
    for field in schema:
        if _is_temporal(field.type) and table.schema.get_field_index(field.name) >= 0:
            index = table.schema.get_field_index(field.name)
            column = table.column(index)
            if pa.types.is_string(column.type) or pa.types.is_null(column.type):
                table = table.set_column(index, field.name, pc.cast(column, field.type))
    return table


def _parse_line(raw: bytes) -> tuple[str | None, dict[str, object]]:
    try:
        value = json.loads(raw)
    except UnicodeDecodeError:
        return "not valid UTF-8", {}
    except ValueError as exc:
        return f"not valid JSON ({exc.args[0] if exc.args else exc}; NDJSON holds one object per line)", {}
    if not isinstance(value, dict):
        return f"a JSON {type(value).__name__}, not an object", {}
    return None, value


def _unknown_fields(value: dict[str, object], schema: pa.Schema) -> str | None:
    extra = [name for name in value if schema.get_field_index(name) < 0]
    if not extra:
        return None
    names = ", ".join(repr(n) for n in extra)
    return f"field(s) {names} are not in the table; pass --evolve-schema (API: evolve_schema=True) to add them"


def _read_lines(lines: list[bytes], schema: pa.Schema | None) -> pa.Table:
    table = pajson.read_json(
        pa.py_buffer(b"\n".join(lines)),
        read_options=pajson.ReadOptions(use_threads=False, block_size=sum(len(x) + 1 for x in lines) + 1),
        parse_options=_parse_options(schema),
    )
    return _dates_and_times(table, schema)


def _type_lines(candidates: list[_Line], schema: pa.Schema | None) -> tuple[pa.Table | None, list[tuple[_Line, str]]]:
    """The candidates typed as the fast path types them, and those whose values do not fit.

    A table column's type is the table's; a column the table does not have yet takes the type of
    its first non-null value. Values whose JSON kind cannot fit are refused in Python (cheap);
    the rest go through pyarrow all at once (the usual bad block has only syntax errors), and if
    pyarrow still refuses, the records it refuses alone are found by halving.
    """
    refused: list[tuple[_Line, str]] = []
    kinds: dict[str, pa.DataType] = {}
    kept: list[_Line] = []
    for candidate in candidates:
        problem = _kind_problem(candidate.value, schema, kinds)
        if problem is None:
            kept.append(candidate)
        else:
            refused.append((candidate, problem))
    if not kept:
        return None, refused
    try:
        return _read_lines([c.raw for c in kept], schema), refused
    except _ARROW_ERRORS:
        pass
    if schema is not None:
        alone = find_refused(kept, lambda lines: _read_lines([c.raw for c in lines], schema))
        refused.extend((c, _type_problem(c.value, schema, schema, exc)) for c, exc in alone)
        bad = {id(c) for c, _ in alone}
        kept = [c for c in kept if id(c) not in bad]
        if not kept:
            return None, refused
        try:
            return _read_lines([c.raw for c in kept], schema), refused
        except _ARROW_ERRORS:
            pass  # new columns whose types clash between records: one by one below
    typed, more = _type_one_by_one(kept, schema)
    return typed, refused + more


def _type_one_by_one(candidates: list[_Line], schema: pa.Schema | None) -> tuple[pa.Table | None, list[tuple[_Line, str]]]:
    """The last resort (slow: a pyarrow read per record), against a schema that grows as it goes."""
    fields: dict[str, pa.Field] = {f.name: f for f in schema} if schema is not None else {}
    good: list[_Line] = []
    refused: list[tuple[_Line, str]] = []
    for candidate in candidates:
        known = pa.schema(list(fields.values())) if fields else None
        try:
            one = _read_lines([candidate.raw], known)
        except _ARROW_ERRORS as exc:
            refused.append((candidate, _type_problem(candidate.value, known, schema, exc)))
            continue
        for field in one.schema:
            if field.name not in fields and not pa.types.is_null(field.type):
                fields[field.name] = field
        good.append(candidate)
    if not good:
        return None, refused
    return _read_lines([c.raw for c in good], pa.schema(list(fields.values())) if fields else None), refused


def _json_kind(value: object) -> pa.DataType | None:
    """The type pyarrow infers for a JSON value's kind (None for null: it fits anything)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    if isinstance(value, str):
        return pa.string()
    if isinstance(value, list):
        return pa.list_(pa.null())
    return pa.struct([])


def _kind_fits(kind: pa.DataType, target: pa.DataType) -> bool:
    """False only where pyarrow's JSON reader surely refuses a value of `kind` for `target`."""
    if pa.types.is_integer(target):
        return pa.types.is_integer(kind)
    if pa.types.is_floating(target):
        return pa.types.is_integer(kind) or pa.types.is_floating(kind)
    if pa.types.is_string(target) or pa.types.is_large_string(target) or _is_temporal(target):
        return pa.types.is_string(kind)
    if pa.types.is_boolean(target):
        return pa.types.is_boolean(kind)
    if pa.types.is_list(target) or pa.types.is_large_list(target):
        return pa.types.is_list(kind)
    if pa.types.is_struct(target):
        return pa.types.is_struct(kind)
    return True  # decimals, binary, ...: pyarrow decides


def _kind_problem(value: dict[str, object], schema: pa.Schema | None, kinds: dict[str, pa.DataType]) -> str | None:
    """Why a field's JSON kind cannot fit the table's type (or, for a new column, earlier records')."""
    for name, field_value in value.items():
        kind = _json_kind(field_value)
        if kind is None:
            continue
        if schema is not None and (index := schema.get_field_index(name)) >= 0:
            target = schema.field(index).type
            if not _kind_fits(kind, target):
                return f"field {name!r} = {field_value!r} is not {target} as the table requires"
            continue
        first = kinds.setdefault(name, kind)
        if pa.types.is_floating(first) and pa.types.is_integer(kind):
            continue
        if pa.types.is_integer(first) and pa.types.is_floating(kind):
            kinds[name] = kind  # pyarrow reads a column of ints and floats as double
            continue
        if first.id != kind.id:
            return f"field {name!r} = {field_value!r} is not {first} as earlier records have"
    return None


def _type_problem(value: dict[str, object], known: pa.Schema | None, table: pa.Schema | None, exc: Exception) -> str:
    """Which field does not fit, in words; pyarrow's message when no single field is to blame."""
    for field in known or []:
        if field.name in value:
            try:
                _read_lines([json.dumps({field.name: value[field.name]}).encode()], pa.schema([field]))
            except _ARROW_ERRORS:
                whose = "the table requires" if table is not None and field.name in table.names else "earlier records have"
                return f"field {field.name!r} = {value[field.name]!r} is not {field.type} as {whose}"
    return f"cannot be typed ({str(exc).splitlines()[0]})"
