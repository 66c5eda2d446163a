"""Column types for a new table when nothing declares them: inferred from a bounded sample across
the files, not from the first block alone.

Without it, a first file whose `amount` values happen to be whole numbers makes the table int64
and a later `5.5` fails the run; JSON dates become timestamps and zoned timestamps lose their zone.
The sample (the first records from the resume point on, and the first block of a few later files)
is read with the readers' own inference, the types it gives are unified (integers and
floats: double, if some value has a fraction and every integer stays exact as a double;
a type and null: the type; anything else that disagrees: the first type, so the
values that do not fit it are bad records as before), and text columns
are classified by their values: ISO dates `2026-11-01` become `date`; timestamps with `Z` or an
offset (`2026-11-01T12:00:00+02:00`) become `timestamp` (UTC instants); timestamps without zone
`timestamp_ntz`. Parquet files carry their own types and are only unified.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pyarrow as pa

from lakesink.errors import BadRecord
from lakesink.sources.files import FilePosition, FileSource
from lakesink.sources.records import Chunk

DEFAULT_SAMPLE_RECORDS = 2_000
_SAMPLE_BLOCK_BYTES = 256 << 10
_SPREAD_FILES = 4

_DATE = r"\d{4}-\d{2}-\d{2}"
_TIME = r"[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?"
_ZONED = re.compile(rf"^{_DATE}{_TIME}(Z|[+-]\d{{2}}:?\d{{2}})$")
_NAIVE = re.compile(rf"^{_DATE}{_TIME}$")
_DATE_ONLY = re.compile(rf"^{_DATE}$")


def infer_schema(source: FileSource, start: FilePosition, *, max_records: int = DEFAULT_SAMPLE_RECORDS) -> pa.Schema | None:
    """The schema a new table gets for `source` read from `start` (None: the sample holds no column).

    The sample: the records from `start` on, up to `max_records`, and the first block of up to
    four later files spread over the listing, all read in blocks of 256 KiB (a line longer than
    that ends its file's part of the sample).
    """
    sampler = source.reading_at_most(min(source.max_record_bytes, _SAMPLE_BLOCK_BYTES))
    return schema_of_sample(lambda schema: list(_sample(sampler, start, max_records=max_records, schema=schema)))


def schema_of_sample(read: Callable[[pa.Schema | None], list[tuple[pa.Table, str]]]) -> pa.Schema | None:
    """The schema the sample `read` gives (None: no column), by the rules of the module docstring.

    `read(schema)` reads the sample's records with `schema` (None: the readers' own inference) as
    (table, format) pairs: once with None, and again with the columns that may hold dates or times
    as text, when there are any. (The file source's sample, or the Kafka source's first messages.)
    """
    parts = read(None)
    if not parts:
        return None
    schema = _unify([table for table, _ in parts])
    # Columns of text files that may hold dates or times: decide from the text itself (the readers
    # type it their own way). A column a Parquet file holds as text stays text.
    stored_as_text = {f.name for table, fmt in parts if fmt == "parquet" for f in table.schema if pa.types.is_string(f.type)}
    text = [
        f.name
        for f in schema
        if (pa.types.is_string(f.type) or pa.types.is_timestamp(f.type))
        and f.name not in stored_as_text
        and any(fmt != "parquet" and f.name in table.column_names for table, fmt in parts)
    ]
    if not text:
        return schema
    as_text = pa.schema([f.with_type(pa.string()) if f.name in text else f for f in schema])
    raw = [table for table, fmt in read(as_text) if fmt != "parquet"]
    kinds = {name: _kind_of_text([t.column(name) for t in raw if name in t.column_names]) for name in text}
    return pa.schema([f.with_type(kinds[f.name] or f.type) if f.name in kinds else f for f in schema])


def _sample(
    source: FileSource, start: FilePosition, *, max_records: int, schema: pa.Schema | None
) -> Iterator[tuple[pa.Table, str]]:
    """(table, format) of the sampled chunks: the head from `start`, then one chunk of a few later files."""
    records = 0
    last_file = start.file_index
    for chunk in _chunks(source, start, schema):
        if chunk.table.num_columns:
            yield chunk.table, chunk.file.format
        records += chunk.records
        last_file = chunk.file_index
        if records >= max_records:
            break
    later = list(range(last_file + 1, len(source.files)))
    picks = len(later) if len(later) <= _SPREAD_FILES else _SPREAD_FILES
    spread = sorted({later[round(i * (len(later) - 1) / max(1, picks - 1))] for i in range(picks)})  # the last included
    for index in spread:
        for chunk in _chunks(source, FilePosition(index, 0), schema):
            if chunk.table.num_columns:
                yield chunk.table, chunk.file.format
            break


def _chunks(source: FileSource, start: FilePosition, schema: pa.Schema | None) -> Iterator[Chunk]:
    """The chunks from `start`, ending quietly at a record the sample's small blocks cannot hold."""
    chunks = source.chunks(start, schema=schema, quarantine=True, evolve=True)
    try:
        yield from chunks
    except BadRecord:
        return
    finally:
        chunks.close()  # type: ignore[attr-defined]


def _unify(tables: list[pa.Table]) -> pa.Schema:
    fields: dict[str, pa.DataType] = {}
    for table in tables:
        for field in table.schema:
            fields[field.name] = _wider(fields[field.name], field.type) if field.name in fields else field.type
    integral = {f.name for t in tables for f in t.schema if pa.types.is_integer(f.type)}
    for name, kind in fields.items():
        if pa.types.is_floating(kind) and name in integral and not _fractions_fit(tables, name):
            fields[name] = pa.int64()  # whole numbers (some too big for pyarrow's int64 guess): keep them exact
    return pa.schema([pa.field(name, t) for name, t in fields.items()])


def _fractions_fit(tables: list[pa.Table], name: str) -> bool:
    """Whether a column of integers and floats may be double: some value has a fraction, and every
    integer is one a double holds exactly (|n| <= 2**53), so no value changes."""
    import pyarrow.compute as pc

    fraction = False
    for table in tables:
        if name not in table.column_names:
            continue
        column = table.column(name)
        if pa.types.is_integer(column.type):
            bounds = pc.min_max(column)
            low, high = bounds["min"].as_py(), bounds["max"].as_py()
            if low is not None and max(abs(low), abs(high)) > 2**53:
                return False
        elif pa.types.is_floating(column.type) and not fraction:
            finite = pc.filter(column, pc.is_finite(column))
            fraction = bool(len(finite)) and bool(pc.any(pc.not_equal(finite, pc.floor(finite))).as_py())
    return fraction


def _wider(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """One type for values of `a` (seen first) and of `b`: numbers widen, null gives way; any other
    disagreement keeps the first type, so the values that do not fit it stay bad records."""
    if a == b or pa.types.is_null(b):
        return a
    if pa.types.is_null(a):
        return b
    if _numeric(a) and _numeric(b):
        return pa.int64() if pa.types.is_integer(a) and pa.types.is_integer(b) else pa.float64()
    return a


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _kind_of_text(columns: list[pa.ChunkedArray]) -> pa.DataType | None:
    """date, timestamp (UTC) or timestamp_ntz if every value of a text column is one; else None."""
    values = [c for c in columns if pa.types.is_string(c.type) and c.null_count < len(c)]
    if not values:
        return None
    for pattern, kind in ((_DATE_ONLY, pa.date32()), (_ZONED, pa.timestamp("us", tz="UTC")), (_NAIVE, pa.timestamp("us"))):
        if all(_all_match(column, pattern) for column in values):
            return kind
    return None


def _all_match(column: pa.ChunkedArray, pattern: re.Pattern[str]) -> bool:
    import pyarrow.compute as pc

    matched = pc.match_substring_regex(column.drop_null(), pattern.pattern)
    return bool(pc.all(matched).as_py())
