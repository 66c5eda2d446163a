"""Ingest a file source into a table: batch the records, write each batch once, resume from `txn`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import pyarrow as pa

from lakesink.errors import SchemaMismatch
from lakesink.schema import fit
from lakesink.sink import Sink
from lakesink.sources.files import Chunk, FilePosition, FileSource, Format
from lakesink.stage import _app_slug
from lakesink.storage import StorageOptions

LEDGER_DIR = "_lakesink/ledger"


@dataclass(frozen=True, slots=True)
class IngestProgress:
    """Sent after every batch: how far the run is (bytes of source files done, of the total)."""

    bytes_done: int
    bytes_total: int
    rows_written: int
    commits: int
    position: int | None


@dataclass(frozen=True, slots=True)
class IngestReport:
    """What one `ingest` run did. `rows_written` counts rows this run committed itself."""

    source: str
    table_uri: str
    app_id: str
    files_total: int
    files_read: int
    rows_written: int
    commits: int
    skipped_batches: int
    start_position: int | None
    end_position: int | None
    table_version: int | None
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.rows_written} rows from {self.files_read} of {self.files_total} files in {self.commits} commits "
            f"({self.skipped_batches} batches already committed) in {self.seconds:.1f}s; "
            f"position {self.end_position}, table version {self.table_version}"
        )


def ledger_path(app_id: str, position: int) -> str:
    return f"{LEDGER_DIR}/{_app_slug(app_id)}/{position:020d}.json"


def ingest(
    source: str,
    table_uri: str,
    *,
    app_id: str,
    format: Format | None = None,
    batch_rows: int = 100_000,
    partition_by: Sequence[str] | None = None,
    evolve_schema: bool = False,
    storage_options: dict[str, str] | None = None,
    on_progress: Callable[[IngestProgress], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> IngestReport:
    """Write every record of the files at `source` into `table_uri` exactly once.

    Rerunning after a crash continues after the last commit; rerunning after success adds nothing.

    Raises:
        BadRecord: a malformed record (names file and line); nothing from its batch is committed.
        SourceContractViolation: an ingested file changed, vanished, or a new one sorts before it.
        SchemaMismatch, ConfigError, TransientError: see lakesink.errors.
    """
    started = time.monotonic()
    options = StorageOptions.resolve(storage_options)
    files = FileSource(source, format=format, storage_options=options)
    with Sink(
        table_uri,
        app_id=app_id,
        storage_options=dict(options.values),
        partition_by=partition_by,
        evolve_schema=evolve_schema,
        clock=clock,
    ) as sink:
        run = _Run(files, sink, batch_rows=max(1, batch_rows), on_progress=on_progress)
        start_position = sink.committed_position()
        start = run.resume_point()
        run.drive(start)
        handle = sink.handle
        return IngestReport(
            source=source,
            table_uri=sink.uri,
            app_id=app_id,
            files_total=len(files.files),
            files_read=run.files_read,
            rows_written=run.rows_written,
            commits=run.commits,
            skipped_batches=run.skipped,
            start_position=start_position,
            end_position=sink.committed_position(),
            table_version=handle.version() if handle else None,
            seconds=round(time.monotonic() - started, 3),
        )


class _Run:
    """One ingest run's state: batching chunks into positioned writes."""

    def __init__(
        self, files: FileSource, sink: Sink, *, batch_rows: int, on_progress: Callable[[IngestProgress], None] | None
    ) -> None:
        self.files = files
        self.sink = sink
        self.batch_rows = batch_rows
        self.on_progress = on_progress
        self.rows_written = 0
        self.commits = 0
        self.skipped = 0
        self.files_read = 0
        self._bytes_total = sum(f.size for f in files.files)

    def resume_point(self) -> FilePosition:
        committed = self.sink.committed_position()
        if committed is None:
            return FilePosition(0, 0)
        position = FilePosition.decode(committed)
        try:
            ledger = self.sink.store.read_bytes(ledger_path(self.sink.app_id, committed))
        except FileNotFoundError:
            ledger = None
        self.files.verify(position, ledger)
        return position

    def drive(self, start: FilePosition) -> None:
        while True:
            jumped_to = self._write_from(start)
            if jumped_to is None:
                return
            start = jumped_to  # a concurrent copy of the job got ahead: continue after it

    def _write_from(self, start: FilePosition) -> FilePosition | None:
        previous = self.sink.committed_position()
        for end, table, batch_files in self._batches(start):
            committed = self.sink.committed_position()
            position = end.encode()
            if committed is None or committed < position:
                self.sink.store.write_bytes(
                    ledger_path(self.sink.app_id, position),
                    self.files.ledger(app_id=self.sink.app_id, end=end, batch_files=batch_files),
                )
            # The batch holds exactly the records after `previous`: it must not land on top of a
            # position another copy of this job committed in the middle of it.
            result = self.sink.write(table, position=position, previous=previous)
            if result.committed:
                self.commits += 1
                self.rows_written += result.rows
            elif result.status == "skipped" and result.committed_position == position:
                self.skipped += 1
            else:
                self.skipped += 1
                return self.resume_point()  # another copy got elsewhere: continue after its commit
            previous = position
            self._report(end)
        return None

    def _report(self, end: FilePosition) -> None:
        self.files_read = max(self.files_read, end.covered_files())
        if self.on_progress is not None:
            done = sum(f.size for f in self.files.files[: end.file_index])
            self.on_progress(IngestProgress(done, self._bytes_total, self.rows_written, self.commits, end.encode()))

    def _batches(self, start: FilePosition) -> Iterator[tuple[FilePosition, pa.Table, list[int]]]:
        """(end position, rows, indexes of files touched) for each batch of up to batch_rows rows.

        A batch may span files; its end position is where its last record lies, or the start of
        the next file when it ends exactly at the end of one.
        """
        handle = self.sink.handle
        schema = handle.arrow_schema() if handle is not None else None
        pending: list[pa.Table] = []
        pending_rows = 0
        touched: list[int] = []
        for chunk in self.files.chunks(start, schema=schema):
            table = self._fit(chunk, schema)
            if table is not None and schema is None:
                schema = table.schema
            if not touched or touched[-1] != chunk.file_index:
                touched.append(chunk.file_index)
            offset = 0
            rows = table.num_rows if table is not None else 0
            while table is not None and rows - offset >= self.batch_rows - pending_rows:
                take = self.batch_rows - pending_rows
                pending.append(table.slice(offset, take))
                offset += take
                file_done = chunk.last and offset == rows
                end = (
                    FilePosition(chunk.file_index + 1, 0)
                    if file_done
                    else FilePosition(chunk.file_index, chunk.row_start + offset)
                )
                yield end, _concat(pending), touched
                pending, pending_rows = [], 0
                touched = [] if file_done else [chunk.file_index]
            if table is not None and offset < rows:
                pending.append(table.slice(offset))
                pending_rows += rows - offset
        if touched and schema is not None:
            # The tail: a partial batch, or empty files after the last full batch.
            yield FilePosition(touched[-1] + 1, 0), _concat(pending) if pending else schema.empty_table(), touched

    def _fit(self, chunk: Chunk, schema: pa.Schema | None) -> pa.Table | None:
        if chunk.table.num_columns == 0:
            return None
        try:
            fitted = fit(chunk.table, schema, evolve=self.sink._evolve)
        except SchemaMismatch as exc:
            raise SchemaMismatch(f"{chunk.file.path} (records {chunk.row_start + 1}..{chunk.row_end}): {exc}") from exc
        return fitted.table


def _concat(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
