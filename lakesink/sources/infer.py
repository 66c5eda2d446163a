"""Column types for a new table when nothing declares them: inferred from a bounded sample across
the files, not from the first block alone.

Without it, a first file whose `amount` values happen to be whole numbers makes the table int64
and a later `5.5` fails the run; JSON dates become timestamps and zoned timestamps lose their zone.
The sample (up to `max_records` records or `max_bytes` of source, from the resume point on, across
files) is read with the readers' own inference, the types it gives are unified (integers and
floats: double, if some value has a fraction and every integer stays exact as a double;
a type and null: the type; anything else that disagrees: the first type, so the
values that do not fit it are bad records as before), and text columns
are classified by their values: ISO dates `2026-11-01` become `date`; timestamps with `Z` or an
offset (`2026-11-01T12:00:00+02:00`) become `timestamp` (UTC instants); timestamps without zone
`timestamp_ntz`. Parquet files carry their own types and are only unified.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from lakesink.sources.files import FilePosition, FileSource
from lakesink.sources.records import Chunk

DEFAULT_SAMPLE_RECORDS = 20_000
DEFAULT_SAMPLE_BYTES = 16 << 20

_DATE = r"\d{4}-\d{2}-\d{2}"
_TIME = r"[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?"
_ZONED = re.compile(rf"^{_DATE}{_TIME}(Z|[+-]\d{{2}}:?\d{{2}})$")
_NAIVE = re.compile(rf"^{_DATE}{_TIME}$")
_DATE_ONLY = re.compile(rf"^{_DATE}$")


def infer_schema(
    source: FileSource,
    start: FilePosition,
    *,
    max_records: int = DEFAULT_SAMPLE_RECORDS,
    max_bytes: int = DEFAULT_SAMPLE_BYTES,
) -> pa.Schema | None:
    """The schema a new table gets for `source` read from `start` (None: the sample holds no column).

    Raises:
        BadRecord: a record of the sample cannot be read at all (the run would fail on it too).
    """
    tables = list(_sample(source, start, max_records=max_records, max_bytes=max_bytes))
    if not tables:
        return None
    schema = _unify(tables)
    text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_timestamp(f.type)]
    if not text:
        return schema
    # The readers read temporal-looking text their own way: read the sample again with those
    # columns as text, and decide from the values.
    as_text = pa.schema([f.with_type(pa.string()) if f.name in text else f for f in schema])
    raw = list(_sample(source, start, max_records=max_records, max_bytes=max_bytes, schema=as_text))
    kinds = {name: _kind_of_text([t.column(name) for t in raw if name in t.column_names]) for name in text}
    return pa.schema([f.with_type(kinds[f.name] or f.type) if f.name in kinds else f for f in schema])


def _sample(
    source: FileSource, start: FilePosition, *, max_records: int, max_bytes: int, schema: pa.Schema | None = None
) -> Iterator[pa.Table]:
    records = 0
    taken = 0
    chunks: Iterator[Chunk] = source.chunks(start, schema=schema, quarantine=True, evolve=True)
    try:
        for chunk in chunks:
            if chunk.table.num_columns:
                yield chunk.table
            records += chunk.records
            taken += chunk.table.nbytes
            if records >= max_records or taken >= max_bytes:
                return
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


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
    matched = pc.match_substring_regex(column.drop_null(), pattern.pattern)
    return bool(pc.all(matched).as_py())
