"""The dead-letter table: records that could not be read, each kept exactly once with where and why.

It is a Delta table of its own, written through a Sink under the ingest's app id, so its `txn`
says how far it holds the source's bad records: every bad record before its committed position
is in it, once. An ingest writes a batch's bad records here *before* it commits the batch's good
rows, at the same position:

- killed between the two commits, the rerun cuts the same batch again (it starts from the good
  table's position), finds the dead-letter table already at that position, and skips it;
- a rerun with another batch size, or a concurrent copy of the job, may cut batches that end
  elsewhere: only bad records at or after the dead-letter table's own position are written, and
  the write commits only if that position has not moved since (`previous`), so none is written
  twice and none is left out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import pyarrow as pa

from lakesink.errors import ConfigError, SchemaMismatch
from lakesink.sink import Sink
from lakesink.sources.files import FilePosition, Rejected
from lakesink.write.schema import fit

DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("app_id", pa.string()),
        pa.field("source_file", pa.string()),
        pa.field("line", pa.int64()),
        pa.field("byte_offset", pa.int64()),
        pa.field("position", pa.int64()),
        pa.field("reason", pa.string()),
        pa.field("raw", pa.string()),
    ]
)
"""One row per bad record: the ingest's app id, the file, its 1-based line and byte offset, the
position of the batch it was committed with, why it was refused, and its text."""


class Quarantine:
    """Writes bad records to the dead-letter table at `table_uri`, each exactly once."""

    def __init__(
        self,
        table_uri: str,
        *,
        app_id: str,
        storage_options: dict[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sink = Sink(table_uri, app_id=app_id, storage_options=storage_options, clock=clock)
        self.uri = self._sink.uri
        self.app_id = app_id
        handle = self._sink.handle
        if handle is not None:
            # Checked before the ingest writes anything, not at its first bad record.
            try:
                fit(DEAD_LETTER_SCHEMA.empty_table(), handle.arrow_schema(), evolve=False)
            except SchemaMismatch as exc:
                raise self._not_dead_letter(exc) from exc

    def __enter__(self) -> Quarantine:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sink.close()

    def write(self, rejected: Sequence[Rejected], *, position: int) -> int:
        """Commit, at `position`, the records of `rejected` the table does not hold yet; return how many.

        `rejected` are the bad records of a batch that ends at `position`.

        Raises:
            ConfigError: the table at the path is not a dead-letter table.
            ConcurrentWriterError, CommitOutcomeUnknown, StorageUnavailable: see lakesink.errors.
        """
        while True:
            committed = self._sink.committed_position()
            if committed is not None and committed >= position:
                return 0
            todo = [r for r in rejected if committed is None or _record_position(r) >= committed]
            if not todo:
                return 0
            try:
                result = self._sink.write(
                    dead_letter_rows(todo, app_id=self.app_id, position=position), position=position, previous=committed
                )
            except SchemaMismatch as exc:
                raise self._not_dead_letter(exc) from exc
            if result.status == "stale":
                continue  # a concurrent copy of the job quarantined part of them: look again
            return result.rows if result.committed else 0

    def _not_dead_letter(self, exc: SchemaMismatch) -> ConfigError:
        return ConfigError(
            f"{self.uri} is not a dead-letter table ({exc}): pass bad_records=PATH with a new path, or one an "
            "earlier run with bad_records created",
            options=("bad_records",),
        )


def dead_letter_rows(rejected: Sequence[Rejected], *, app_id: str, position: int) -> pa.Table:
    """The dead-letter table's rows for `rejected`, committed at `position`."""
    return pa.table(
        {
            "app_id": [app_id] * len(rejected),
            "source_file": [r.source_file for r in rejected],
            "line": [r.line for r in rejected],
            "byte_offset": [r.byte_offset for r in rejected],
            "position": [position] * len(rejected),
            "reason": [r.reason for r in rejected],
            "raw": [r.raw for r in rejected],
        },
        schema=DEAD_LETTER_SCHEMA,
    )


def _record_position(record: Rejected) -> int:
    """The position just before the record: a committed position at or below it does not cover it."""
    return FilePosition(record.file_index, record.record).encode()
