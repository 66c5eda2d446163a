"""The commit-group cutter, on the reader thread: rows into row groups, groups sealed at the commit interval."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from lakesink.config import CommitInterval
from lakesink.ingest.pipeline import Emitter
from lakesink.sources.files import Chunk, FilePosition, Rejected


@dataclass(frozen=True, slots=True)
class Group:
    """A commit group as the reader sealed it: the records after the last group up to `end`.

    `schema` is the table's schema as the group's rows were fitted to it (None while no record was
    good and the table does not exist yet: there is nothing to create it with, so only the bad
    records are written and the table's position waits). `rejected` are its bad records.
    """

    end: FilePosition
    schema: pa.Schema | None
    rejected: tuple[Rejected, ...]
    files: list[int]


def end_of(chunk: Chunk, stop: int) -> FilePosition:
    """Where a group ending at record `stop` of `chunk` ends: the start of the next file at a file's end."""
    return FilePosition(chunk.file_index + 1, 0) if chunk.last and stop == chunk.row_end else FilePosition(chunk.file_index, stop)


class GroupCutter:
    """The open commit group, on the reader thread: buffers rows into row groups and sends them on."""

    def __init__(self, *, start: int, row_group_bytes: int, emit: Emitter[Group], before_first_file: Callable[[], None]) -> None:
        self.start = start
        self._before_first_file: Callable[[], None] | None = before_first_file
        self.row_group_bytes = row_group_bytes
        self.emit = emit
        self.records = 0
        self.rows_bytes = 0
        self.rejected: list[Rejected] = []
        self.touched: list[int] = []
        self.started = time.monotonic()
        self._pending: list[pa.Table] = []
        self._pending_bytes = 0

    def touch(self, file_index: int) -> None:
        if not self.touched or self.touched[-1] != file_index:
            self.touched.append(file_index)

    def add(self, chunk: Chunk) -> None:
        self.records += chunk.records
        self.rejected.extend(chunk.rejected)
        if chunk.table.num_columns and chunk.table.num_rows:
            self._pending.append(chunk.table)
            self._pending_bytes += chunk.table.nbytes
            self.rows_bytes += chunk.table.nbytes
            if self._pending_bytes >= self.row_group_bytes:
                self._flush()

    def over(self, interval: CommitInterval) -> bool:
        return (interval.bytes is not None and self.rows_bytes >= interval.bytes) or (
            interval.seconds is not None and time.monotonic() - self.started >= interval.seconds
        )

    def seal(self, end: FilePosition, schema: pa.Schema | None, *, next_file: bool) -> None:
        self._flush()
        self.emit.seal(Group(end=end, schema=schema, rejected=tuple(self.rejected), files=list(self.touched)))
        self.start = end.encode()
        self.records = 0
        self.rows_bytes = 0
        self.rejected = []
        self.touched = [] if next_file else [end.file_index]
        self.started = time.monotonic()

    def _flush(self) -> None:
        if not self._pending:
            return
        if self._before_first_file is not None:
            self._before_first_file()
            self._before_first_file = None
        rows = _concat(self._pending)
        self._pending, self._pending_bytes = [], 0
        self.emit.rows(rows, group_start=self.start)


def _concat(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
