"""Kafka messages as Arrow: one JSON object per message value, typed like the NDJSON file source.

The values of a partition's messages are joined with line ends and read by the NDJSON reader
(lakesink.sources.ndjson) as if they were the lines of a file: its fast path (pyarrow, one call per
block of up to 8 MiB), its per-record salvage when pyarrow refuses a block, its count check (a block
must give one record per line, so `{..}{..}` in one value cannot pass as two records), and its
handling of the table's dates and times. Line `i` of the joined text is message `i`, so the NDJSON
reader's record numbers name messages, and a refused record is reported by topic/partition@offset.

That holds only if every value is exactly one non-blank line, so values are screened first (a few
C-speed passes over the batch; a Python loop only for a batch that fails them):
- a null value (a tombstone), an empty or whitespace-only value, and a value longer than
  `max_record_bytes` are refused before parsing;
- a value holding a raw line end is parsed on its own with Python's json (strict), and if it is one
  JSON object its line ends become spaces: in valid JSON a raw line end can only be whitespace, so
  the record is unchanged. (A raw line end inside a string is invalid JSON; json refuses it.)
"""

from __future__ import annotations

import json
from array import array
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import TypeVar

import pyarrow as pa

from lakesink.errors import BadRecord, ConfigError, InternalError
from lakesink.sources.infer import DEFAULT_SAMPLE_RECORDS, schema_of_sample
from lakesink.sources.ndjson import Block, NdjsonReader, count_newlines, count_records
from lakesink.sources.records import Chunk, SourceFile, no_columns

__all__ = ["METADATA_COLUMNS", "Decoded", "Fetched", "KafkaPartition", "KafkaRejected", "decode"]

# Requested metadata column -> (column name, Arrow type).
METADATA_COLUMNS: dict[str, tuple[str, pa.DataType]] = {
    "key": ("kafka_key", pa.string()),
    "topic": ("kafka_topic", pa.string()),
    "partition": ("kafka_partition", pa.int32()),
    "offset": ("kafka_offset", pa.int64()),
    "timestamp": ("kafka_timestamp", pa.timestamp("ms", tz="UTC")),
}
_BLOCK_BYTES = 8 << 20  # the NDJSON reader's block size: pyarrow parses a block in 1 MiB pieces in parallel
_RAW_CHARS = 64 << 10  # of a refused value too long to be a record, kept in its dead-letter row
_JSON_WHITESPACE = b" \t\r\n"
_SAMPLE_BYTES = 1 << 20  # a batch larger than this is sampled in five places for a new table's schema
_SPREAD_RECORDS = 500
T = TypeVar("T")


@dataclass(frozen=True, slots=True, order=True)
class KafkaPartition:
    """One partition of one topic; `key` ("topic/partition") is how positions and app ids name it."""

    topic: str
    partition: int

    @property
    def key(self) -> str:
        return f"{self.topic}/{self.partition}"

    @classmethod
    def parse(cls, key: str) -> KafkaPartition:
        """The partition a `key` names ("orders/3"; a topic name never holds a slash).

        Raises:
            ConfigError: not "topic/partition".
        """
        topic, _, number = key.rpartition("/")
        if not topic or not number.isdigit():
            raise ConfigError(f"{key!r} does not name a Kafka partition: expected TOPIC/PARTITION, e.g. orders/3")
        return cls(topic, int(number))

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True, slots=True)
class Fetched:
    """Messages of one partition, in offset order, from one poll.

    Offsets are not dense (transaction markers, compacted topics): they only grow. `keys` and
    `timestamps` (ms since the epoch, None where the broker has none) are collected only when the
    metadata columns ask for them. `nbytes` is the size of the values and keys.
    """

    partition: KafkaPartition
    offsets: list[int]
    values: list[bytes | None]
    keys: list[bytes | None] | None = None
    timestamps: list[int | None] | None = None
    nbytes: int = 0

    @property
    def first_offset(self) -> int:
        return self.offsets[0]

    @property
    def last_offset(self) -> int:
        return self.offsets[-1]

    def __len__(self) -> int:
        return len(self.offsets)


@dataclass(frozen=True, slots=True)
class KafkaRejected:
    """A message that is not one JSON object, or does not fit the table: where it is, why, its text."""

    partition: KafkaPartition
    offset: int
    reason: str
    raw: str  # the value as text (invalid UTF-8 replaced; a value over the size limit cut short)
    options: tuple[str, ...] = field(default=(), compare=False)  # API options the reason names

    def error(self) -> BadRecord:
        """The error a run without a dead-letter table stops with."""
        return BadRecord(
            f"{self.partition.key}@{self.offset}: {self.reason}. Nothing was committed from its batch. "
            "Fix the producer (one JSON object per message), or pass bad_records=PATH to quarantine bad "
            "messages in a Delta table and commit the rest.",
            options=(*self.options, "bad_records"),
        )


@dataclass(frozen=True, slots=True)
class Decoded:
    """The messages of one partition as Arrow: `table` holds the good ones in offset order (with the
    requested metadata columns; no columns when none is good), `rejected` the rest, by offset.

    `last_offset` is the position the batch reaches for the partition (a rejected message counts:
    it is quarantined or stops the run). `messages` = rows + rejected.
    """

    partition: KafkaPartition
    table: pa.Table
    rejected: tuple[KafkaRejected, ...]
    first_offset: int
    last_offset: int
    messages: int


def decode(
    fetched: Sequence[Fetched],
    *,
    schema: pa.Schema | None,
    columns: tuple[str, ...] = (),
    quarantine: bool,
    max_record_bytes: int,
    evolve: bool = False,
) -> Decoded:
    """All messages of one partition (several polls' Fetched, in order) as Arrow.

    `schema` is the table's (None before the table exists: pyarrow infers the types, the first block
    deciding the later blocks' types for the columns it has). Values are typed to it as the NDJSON file
    source types them: dates and timestamps from ISO 8601 text; a value that cannot hold the column's
    type is a bad record. With `quarantine` and without `evolve`, a field the table lacks is a bad
    record too (otherwise it is kept, and the sink's schema rules decide). `columns` names the
    metadata columns (keys of METADATA_COLUMNS) to add, as kafka_key, kafka_topic, ...

    Raises:
        BadRecord: unless `quarantine`, the first message (by offset) that is not one JSON object
            of at most `max_record_bytes` bytes, or does not fit `schema`.
        ConfigError: a record holds a field named like a requested metadata column.
        InternalError: `fetched` is empty or mixes partitions.
    """
    if not fetched:
        raise InternalError("decode() needs at least one Fetched")
    partition = fetched[0].partition
    if any(f.partition != partition for f in fetched):
        raise InternalError(f"decode() got messages of several partitions: {sorted({f.partition.key for f in fetched})}")
    offsets, values = _joined([f.offsets for f in fetched]), _joined([f.values for f in fetched])
    lines = _Lines.of(values, max_record_bytes)
    rejected: dict[int, KafkaRejected] = {}  # by message index
    for index, (reason, options) in lines.refused.items():
        rejected[index] = KafkaRejected(partition, offsets[index], reason, _raw(values[index]), options)
    chunks: list[Chunk] = []
    if lines.blocks:
        meta_names = {METADATA_COLUMNS[c][0] for c in columns}
        if schema is None:
            schema = _inferred(lines.blocks, max_record_bytes)
            for name in meta_names & set(schema.names if schema is not None else ()):
                raise _collision(partition, name)
        parse_schema = pa.schema([f for f in schema if f.name not in meta_names]) if schema is not None else None
        reader = NdjsonReader(
            file_index=0,
            file=SourceFile(partition.key, 0, 0, "ndjson"),
            location=partition.key,
            max_record_bytes=max_record_bytes,
            quarantine=True,  # every refusal comes back; the first one is raised below, named by offset
            evolve=evolve or not quarantine,  # as the file source: only a quarantining run refuses new fields
        )
        grown = _GrowingSchema(parse_schema)
        for chunk in reader.parse(lines.blocks, grown.now):
            grown.saw(chunk.table)
            chunks.append(chunk)
        for chunk in chunks:
            for refused in chunk.rejected:
                index = lines.message(refused.record)
                reason = refused.reason.replace("; NDJSON holds one object per line", "; a message holds one JSON object")
                rejected[index] = KafkaRejected(partition, offsets[index], reason, refused.raw)
    ordered = tuple(rejected[i] for i in sorted(rejected))
    if ordered and not quarantine:
        raise ordered[0].error()
    table = _good_rows(chunks)
    if columns and table.num_columns:
        good = _good_indexes(chunks, lines)
        table = _with_metadata(table, columns, partition, fetched, offsets, good)
    return Decoded(partition, table, ordered, offsets[0], offsets[-1], len(offsets))


def _joined(parts: list[list[T]]) -> list[T]:
    if len(parts) == 1:
        return parts[0]
    return [item for part in parts for item in part]


@dataclass(frozen=True, slots=True)
class _Lines:
    """The values that can be records as the lines of NDJSON blocks, and why the others cannot.

    `messages` maps a line (a record, counted over all blocks) to its message index; None when
    every value is a line, the usual case.
    """

    blocks: list[Block]
    messages: list[int] | None
    refused: dict[int, tuple[str, tuple[str, ...]]]  # message index -> (reason, API options it names)

    @classmethod
    def of(cls, values: list[bytes | None], max_record_bytes: int) -> _Lines:
        """Values in blocks of about _BLOCK_BYTES. A block's values are joined and checked at C speed
        (no None, none empty or too long, as many line ends and non-blank lines as values); only a
        block that fails is screened value by value."""
        try:
            lengths = list(map(len, values))  # type: ignore[arg-type]  # a None makes it raise
        except TypeError:
            lengths = [len(v) if v is not None else -1 for v in values]
        blocks: list[Block] = []
        messages: list[int] | None = None
        refused: dict[int, tuple[str, tuple[str, ...]]] = {}
        records = 0
        for first, stop in _cuts(lengths):
            part = values[first:stop]
            data: bytearray | None = None
            sizes = lengths[first:stop]
            if min(sizes) > 0 and max(sizes) <= max_record_bytes:
                data = bytearray(b"\n").join(part)  # type: ignore[arg-type]
                newlines = count_newlines(data, 0, len(data))
                if newlines != stop - first - 1 or count_records(data, newlines) != stop - first:
                    data = None
            if data is not None:
                if messages is not None:
                    messages.extend(range(first, stop))
            else:
                if messages is None:
                    messages = list(range(records))
                kept, pieces = _screened(part, first, max_record_bytes, refused)
                messages.extend(kept)
                data = bytearray(b"\n").join(pieces)
                newlines = len(pieces) - 1
            if data:
                blocks.append(Block.of(data, records + 1, 0, newlines))
                records += newlines + 1
        return cls(blocks, messages, refused)

    def message(self, record: int) -> int:
        return self.messages[record] if self.messages is not None else record


def _cuts(lengths: list[int]) -> Iterator[tuple[int, int]]:
    """[first, stop) message ranges of about _BLOCK_BYTES each."""
    ends = list(accumulate(map(abs, lengths)))  # a None's length is -1
    first = 0
    while first < len(lengths):
        stop = bisect_right(ends, ends[first] + _BLOCK_BYTES, first + 1)
        yield first, max(stop, first + 1)
        first = max(stop, first + 1)


def _screened(
    values: list[bytes | None], first: int, max_record_bytes: int, refused: dict[int, tuple[str, tuple[str, ...]]]
) -> tuple[list[int], list[bytes]]:
    """The message indexes and values (line ends made spaces) of the values that can be lines; why
    the others cannot, into `refused`."""
    kept: list[int] = []
    pieces: list[bytes] = []
    for index, value in enumerate(values, first):
        if value is None:
            refused[index] = ("a null value (a tombstone), not a JSON object", ())
        elif len(value) > max_record_bytes:
            refused[index] = (
                f"the value is {len(value)} bytes, longer than the record size limit of {max_record_bytes} bytes; "
                "if it is one record, raise the limit: max_record_bytes=BYTES",
                ("max_record_bytes",),
            )
        elif not value.strip(_JSON_WHITESPACE):
            refused[index] = ("an empty value, not a JSON object", ())
        elif b"\n" in value and (problem := _one_object(value)) is not None:
            refused[index] = (problem, ())
        else:
            kept.append(index)
            pieces.append(value.replace(b"\n", b" ") if b"\n" in value else value)
    return kept, pieces


def _one_object(value: bytes) -> str | None:
    """Why `value` is not exactly one JSON object (None: it is one)."""
    try:
        parsed = json.loads(value)
    except UnicodeDecodeError:
        return "not valid UTF-8"
    except ValueError as exc:
        return f"not valid JSON ({exc.args[0] if exc.args else exc}; a message holds one JSON object)"
    if not isinstance(parsed, dict):
        return f"a JSON {type(parsed).__name__}, not an object"
    return None


def _raw(value: bytes | None) -> str:
    if value is None:
        return ""
    text = value[:_RAW_CHARS].decode("utf-8", errors="replace")
    return text if len(value) <= _RAW_CHARS else f"{text}... ({len(value)} bytes)"


def _inferred(blocks: list[Block], max_record_bytes: int) -> pa.Schema | None:
    """A new table's schema, inferred as the file source infers it (lakesink.sources.infer) from a
    sample of the lines: the first DEFAULT_SAMPLE_RECORDS, and a few hundred from each of four
    places spread over the rest."""
    pieces = [_lines_from(blocks[0].data, 0, DEFAULT_SAMPLE_RECORDS)]
    total = sum(len(b.data) for b in blocks)
    if total > _SAMPLE_BYTES:
        for k in range(1, 5):
            at = total * k // 5
            for block in blocks:
                if at < len(block.data):
                    start = block.data.find(b"\n", at) + 1
                    if start > (len(pieces[0]) if block is blocks[0] else 0):
                        pieces.append(_lines_from(block.data, start, _SPREAD_RECORDS))
                    break
                at -= len(block.data)
    sample = bytearray(b"\n").join(pieces)
    reader = NdjsonReader(0, SourceFile("sample", 0, 0, "ndjson"), "sample", max_record_bytes, quarantine=True, evolve=True)

    def read(schema: pa.Schema | None) -> list[tuple[pa.Table, str]]:
        block = Block.of(sample, 1, 0, sample.count(b"\n"))
        return [(c.table, "ndjson") for c in reader.parse([block], lambda: schema) if c.table.num_columns]

    return schema_of_sample(read)


def _lines_from(lines: bytearray, start: int, count: int) -> bytearray:
    """Up to `count` lines of `lines` from byte `start` (the start of a line), without the last line end."""
    end = start
    for _ in range(count):
        end = lines.find(b"\n", end) + 1
        if end == 0:
            return lines[start:]
    return lines[start : end - 1]


@dataclass(slots=True)
class _GrowingSchema:
    """The schema each block is read with: the given one plus the new columns earlier blocks gave,
    so that every block types a column alike (a column none has seen is still inferred)."""

    schema: pa.Schema | None

    def now(self) -> pa.Schema | None:
        return self.schema

    def saw(self, table: pa.Table) -> None:
        if not table.num_columns:
            return
        known = set(self.schema.names) if self.schema is not None else set()
        new = [f for f in table.schema if f.name not in known and not pa.types.is_null(f.type)]
        if new:
            self.schema = pa.schema([*(self.schema or []), *new])


def _good_rows(chunks: list[Chunk]) -> pa.Table:
    tables = [c.table for c in chunks if c.table.num_columns]
    if not tables:
        return no_columns()
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:  # cannot happen: later blocks are read with earlier types
        raise InternalError(f"the blocks of one Kafka batch decoded to different types: {exc}") from exc


def _good_indexes(chunks: list[Chunk], lines: _Lines) -> list[int] | None:
    """The message index of each table row (None: every message is a row)."""
    if lines.messages is None and not any(c.rejected for c in chunks):
        return None
    good: list[int] = []
    for chunk in chunks:
        records = chunk.good if chunk.good is not None else range(chunk.row_start, chunk.row_end)
        good.extend(lines.message(r) for r in records)
    return good


def _with_metadata(
    table: pa.Table,
    columns: tuple[str, ...],
    partition: KafkaPartition,
    fetched: Sequence[Fetched],
    offsets: list[int],
    good: list[int] | None,
) -> pa.Table:
    def pick(items: list[T]) -> list[T]:
        return items if good is None else [items[i] for i in good]

    rows = table.num_rows
    for column in columns:
        name, kind = METADATA_COLUMNS[column]
        if name in table.column_names:
            raise _collision(partition, name)
        if column == "offset":
            values: pa.Array = _int_array(pa.int64(), "q", pick(offsets))
        elif column == "partition":
            values = _int_array(pa.int32(), "i", [partition.partition] * rows)
        elif column == "topic":
            values = _same_text(partition.topic, rows)
        elif column == "timestamp":
            stamps = _joined([_collected(f.timestamps, "timestamp") for f in fetched])
            values = pa.array(pick(stamps), kind)
        else:
            keys = _joined([_collected(f.keys, "key") for f in fetched])
            values = _text(pick(keys))
        table = table.append_column(pa.field(name, kind), values)
    return table


def _collision(partition: KafkaPartition, name: str) -> ConfigError:
    column = next(c for c, (n, _) in METADATA_COLUMNS.items() if n == name)
    return ConfigError(
        f"{partition.key}: records hold a field named {name!r}, which the metadata column {column!r} would "
        f"overwrite; leave {column!r} out of the requested columns, or rename the field"
    )


def _collected(items: list[T] | None, what: str) -> list[T]:
    if items is None:
        raise InternalError(f"the metadata column {what!r} was asked of decode() but not of the source's poll()")
    return items


def _int_array(kind: pa.DataType, code: str, items: list[int]) -> pa.Array:
    # From a buffer: a list through pa.array() makes pyarrow import pandas to ask whether it is one.
    return pa.Array.from_buffers(kind, len(items), [None, pa.py_buffer(array(code, items))])


def _same_text(text: str, rows: int) -> pa.Array:
    data = text.encode()
    ends = array("i", range(0, (rows + 1) * len(data), len(data))) if data else array("i", [0] * (rows + 1))
    return pa.Array.from_buffers(pa.string(), rows, [None, pa.py_buffer(ends), pa.py_buffer(data * rows)])


def _text(keys: list[bytes | None]) -> pa.Array:
    """Keys as text; a key that is not UTF-8 gets U+FFFD for its bad bytes (the column is text)."""
    binary = pa.array(keys, pa.binary())
    try:
        return binary.cast(pa.string())
    except pa.ArrowInvalid:
        return pa.array([k.decode("utf-8", errors="replace") if k is not None else None for k in keys], pa.string())
