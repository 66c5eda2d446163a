"""What a file reader hands on: records as Arrow, and the records it refused, each with its place.

A record's index within its file is the unit positions count (see lakesink.sources.files): the
fast readers and the per-record fallback must agree on it, so a position means the same records
whichever path read them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal, TypeVar

import pyarrow as pa

from lakesink.errors import BadRecord

Format = Literal["ndjson", "csv", "parquet"]

T = TypeVar("T")
ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)

SchemaNow = Callable[[], "pa.Schema | None"]
"""The table's schema as of now (None before the table exists); it grows during a run that evolves it."""


@dataclass(frozen=True, slots=True)
class SourceFile:
    path: str
    size: int
    mtime_ns: int
    format: Format


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that could not be parsed or typed: where it is, why, and its text."""

    source_file: str  # the file's full path or URI
    file_index: int
    record: int  # index within its file, counted as positions count (from 0)
    line: int  # 1-based line the record starts on
    byte_offset: int  # of the record's first byte in its file
    reason: str
    raw: str

    def error(self) -> BadRecord:
        """The error a run without a dead-letter table stops with."""
        return BadRecord(
            f"{self.source_file}:{self.line}: {self.reason} (record at byte offset {self.byte_offset}). "
            "Fix or remove that line, then rerun; nothing was committed from its batch. Or pass "
            "bad_records=PATH to quarantine bad records in a Delta table and commit the rest.",
            options=("bad_records",),
        )


@dataclass(frozen=True, slots=True)
class Chunk:
    """Records [row_start, row_end) of files[file_index]; `last` when the file ends with it.

    `table` holds the good records in order (no columns when there are none). `rejected` are the
    records of the range that could not be read; when there are any, `good` gives the record index
    of each table row, since rows and records no longer line up.
    """

    file_index: int
    file: SourceFile
    table: pa.Table
    row_start: int
    row_end: int
    last: bool
    rejected: tuple[Rejected, ...] = ()
    good: tuple[int, ...] | None = None

    @property
    def records(self) -> int:
        return self.row_end - self.row_start

    def between(self, start: int, stop: int) -> Chunk:
        """Records [start, stop) of this chunk (record indexes within the file)."""
        if (start, stop) == (self.row_start, self.row_end):
            return self
        if self.good is None:
            lo, hi = start - self.row_start, stop - self.row_start
            good = None
        else:
            lo, hi = bisect_left(self.good, start), bisect_left(self.good, stop)
            good = self.good[lo:hi]
        table = self.table.slice(lo, hi - lo) if self.table.num_columns else self.table
        rejected = tuple(r for r in self.rejected if start <= r.record < stop)
        return replace(
            self,
            table=table,
            row_start=start,
            row_end=stop,
            last=self.last and stop == self.row_end,
            rejected=rejected,
            good=good,
        )


def no_columns() -> pa.Table:
    """The table of a range that holds no good records."""
    return pa.table({})


def find_refused(items: Sequence[T], read: Callable[[Sequence[T]], object]) -> list[tuple[T, Exception]]:
    """The items `read` refuses on their own, found by halving the ones it refuses together.

    A pyarrow read costs a few hundred microseconds however small, so reading each record alone
    would make a block of 100,000 records take most of a minute; halving takes about
    2 * bad * log2(n) reads.
    """
    try:
        read(items)
    except ARROW_ERRORS as exc:
        if len(items) == 1:
            return [(items[0], exc)]
        middle = len(items) // 2
        return find_refused(items[:middle], read) + find_refused(items[middle:], read)
    return []
