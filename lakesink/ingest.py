"""Ingest a file source into a table: batch the records, write each batch once, resume from `txn`."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from urllib.parse import unquote

import pyarrow as pa

from lakesink.errors import ConfigError, SchemaMismatch, TableError
from lakesink.quarantine import Quarantine
from lakesink.schema import fit
from lakesink.sink import Sink
from lakesink.sources.files import DEFAULT_MAX_RECORD_BYTES, Chunk, FilePosition, FileSource, Format, Rejected
from lakesink.stage import _app_slug
from lakesink.status import txn_versions
from lakesink.storage import StorageOptions, normalize_table_uri

LEDGER_DIR = "_lakesink/ledger"
log = logging.getLogger(__name__)


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
    """What one `ingest` run did. `rows_written` and `rows_quarantined` count rows this run committed itself."""

    source: str
    table_uri: str
    app_id: str
    files_total: int
    files_read: int
    rows_written: int
    rows_quarantined: int
    bad_records_uri: str | None
    commits: int
    skipped_batches: int
    start_position: int | None
    end_position: int | None
    table_version: int | None
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        quarantined = (
            f" ({self.rows_quarantined} bad records quarantined in {self.bad_records_uri})" if self.bad_records_uri else ""
        )
        return (
            f"{self.rows_written} rows{quarantined} from {self.files_read} of {self.files_total} files in {self.commits} commits "
            f"({self.skipped_batches} batches already committed) in {self.seconds:.1f}s; "
            f"position {self.end_position}, table version {self.table_version}"
        )


def ledger_path(app_id: str, position: int) -> str:
    return f"{LEDGER_DIR}/{_app_slug(app_id)}/{position:020d}.json"


TXN_RETENTION = "delta.setTransactionRetentionDuration"


def refuse_if_txn_expired(sink: Sink) -> None:
    """Called when the table holds no `txn` for the sink's app id: is that a first run, or an expired txn?

    A table that sets `delta.setTransactionRetentionDuration` lets readers drop every `txn` whose
    lastUpdated is older than that (delta-rs hides it when it loads the snapshot, and a checkpoint
    then leaves it out for good). A job paused longer than that would find no position and ingest
    its source again from the start: every record twice. So on such a table a missing `txn` is
    trusted only when nothing shows this app id committed before: no `txn` for it in the log
    itself, and no data file it staged in the snapshot.

    Raises:
        TableError: the app id has committed to this table, but its `txn` expired.
    """
    handle = sink.handle
    if handle is None:
        return
    retention = handle.table.metadata().configuration.get(TXN_RETENTION)
    if not retention:
        return
    slug = _app_slug(sink.app_id)
    in_log = txn_versions(sink.store, up_to=handle.version()).get(sink.app_id)
    staged = re.compile(rf"(?:^|/)part-(\d{{20}})-\d{{5}}-{re.escape(slug)}-[0-9a-f]+\.snappy\.parquet$")
    paths = pa.table(handle.table.get_add_actions(flatten=True)).column("path").to_pylist()
    positions = [int(m.group(1)) for m in (staged.search(unquote(p)) for p in paths) if m]
    if in_log is None and not positions:
        return  # a first run (or one whose every earlier attempt failed before its first commit)
    evidence = (
        f"the log still holds txn version {in_log} for it" if in_log is not None
        else f"the table holds {len(positions)} data file(s) it committed, up to position {max(positions)}"
    )
    raise TableError(
        f"the txn for app id {sink.app_id!r} expired: {sink.uri} sets {TXN_RETENTION}={retention!r}, and {evidence} "
        f"(ledgers under {LEDGER_DIR}/{slug}/), but no txn a reader keeps. Ingesting from the start would write "
        f"every record again, so nothing was written. Set {TXN_RETENTION} longer than the longest pause between runs, "
        "or unset it, then rerun: the txn comes back unless a checkpoint has dropped it since; if it does not, "
        "ingest into a new table."
    )


def ingest(
    source: str,
    table_uri: str,
    *,
    app_id: str,
    format: Format | None = None,
    batch_rows: int = 100_000,
    partition_by: Sequence[str] | None = None,
    evolve_schema: bool = False,
    bad_records: str | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    storage_options: dict[str, str] | None = None,
    on_progress: Callable[[IngestProgress], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> IngestReport:
    """Write every record of the files at `source` into `table_uri` exactly once.

    Rerunning after a crash continues after the last commit; rerunning after success adds nothing.

    `bad_records` (a local path or s3 URI of a Delta table, the dead-letter table) turns bad records
    from errors into rows of that table: an NDJSON or CSV record that cannot be parsed or does not
    fit the table's schema is quarantined there, exactly once (see lakesink.quarantine), and its
    batch's good rows are committed. Every record then ends up in one of the two tables.

    `max_record_bytes` is the longest NDJSON line or CSV row read; a longer one stops the run.

    Raises:
        BadRecord: a malformed record (names file and line) without `bad_records`, or a record
            longer than `max_record_bytes`; nothing from its batch is committed.
        SourceContractViolation: an ingested file changed, vanished, or a new one sorts before it.
        SchemaMismatch, ConfigError, TransientError: see lakesink.errors.
    """
    started = time.monotonic()
    options = StorageOptions.resolve(storage_options)
    files = FileSource(source, format=format, storage_options=options, max_record_bytes=max_record_bytes)
    if bad_records is not None and normalize_table_uri(bad_records) == normalize_table_uri(table_uri):
        raise ConfigError("bad_records must be another table than the one ingested into (e.g. TABLE_bad)")
    with ExitStack() as stack:
        sink = stack.enter_context(
            Sink(
                table_uri,
                app_id=app_id,
                storage_options=dict(options.values),
                partition_by=partition_by,
                evolve_schema=evolve_schema,
                clock=clock,
            )
        )
        quarantine = None
        if bad_records is not None:
            quarantine = stack.enter_context(
                Quarantine(bad_records, app_id=app_id, storage_options=dict(options.values), clock=clock)
            )
        run = _Run(files, sink, quarantine, batch_rows=max(1, batch_rows), on_progress=on_progress)
        start_position = sink.committed_position()
        total = sum(f.size for f in files.files)
        log.info("ingest %s into %s as %r: %d files, %d bytes", source, sink.uri, app_id, len(files.files), total)
        start = run.resume_point()
        run.drive(start)
        handle = sink.handle
        log.info(
            "ingest done: %d rows in %d commits, %d batches already committed, %d rows quarantined",
            run.rows_written, run.commits, run.skipped, run.rows_quarantined,
        )  # fmt: skip
        return IngestReport(
            source=source,
            table_uri=sink.uri,
            app_id=app_id,
            files_total=len(files.files),
            files_read=run.files_read,
            rows_written=run.rows_written,
            rows_quarantined=run.rows_quarantined,
            bad_records_uri=quarantine.uri if quarantine is not None else None,
            commits=run.commits,
            skipped_batches=run.skipped,
            start_position=start_position,
            end_position=sink.committed_position(),
            table_version=handle.version() if handle else None,
            seconds=round(time.monotonic() - started, 3),
        )


@dataclass(frozen=True, slots=True)
class _Batch:
    """The records after the last batch up to `end`: the good ones as rows, the bad ones set aside.

    `rows` is None while no record was good and the table does not exist yet: there is no schema
    to create it with, so only the bad records are written (and the table's position waits).
    """

    end: FilePosition
    rows: pa.Table | None
    rejected: tuple[Rejected, ...]
    files: list[int]


class _Run:
    """One ingest run's state: batching chunks into positioned writes."""

    def __init__(
        self,
        files: FileSource,
        sink: Sink,
        quarantine: Quarantine | None,
        *,
        batch_rows: int,
        on_progress: Callable[[IngestProgress], None] | None,
    ) -> None:
        self.files = files
        self.sink = sink
        self.quarantine = quarantine
        self.batch_rows = batch_rows
        self.on_progress = on_progress
        self.rows_written = 0
        self.rows_quarantined = 0
        self.commits = 0
        self.skipped = 0
        self.files_read = 0
        self._bytes_total = sum(f.size for f in files.files)

    def resume_point(self) -> FilePosition:
        committed = self.sink.committed_position()
        if committed is None:
            refuse_if_txn_expired(self.sink)
            log.info("resume point: the start (nothing committed for %r yet)", self.sink.app_id)
            return FilePosition(0, 0)
        position = FilePosition.decode(committed)
        try:
            ledger = self.sink.store.read_bytes(ledger_path(self.sink.app_id, committed))
        except FileNotFoundError:
            ledger = None
        self.files.verify(position, ledger)
        log.info(
            "resume point: position %d (%s), after checking the ingested files against %s",
            committed, position, "the ledger" if ledger is not None else "the source alone (no ledger)",
        )  # fmt: skip
        return position

    def drive(self, start: FilePosition) -> None:
        while True:
            jumped_to = self._write_from(start)
            if jumped_to is None:
                return
            start = jumped_to  # a concurrent copy of the job got ahead: continue after it

    def _write_from(self, start: FilePosition) -> FilePosition | None:
        previous = self.sink.committed_position()
        for batch in self._batches(start):
            position = batch.end.encode()
            if self.quarantine is not None and batch.rejected:
                # Before the good rows: once the table holds `position`, nothing reads this batch
                # again, so its bad records must already be safe (lakesink.quarantine).
                self.rows_quarantined += self.quarantine.write(batch.rejected, position=position)
            if batch.rows is None:
                self._report(batch.end)
                continue
            committed = self.sink.committed_position()
            if committed is None or committed < position:
                self.sink.store.write_bytes(
                    ledger_path(self.sink.app_id, position),
                    self.files.ledger(app_id=self.sink.app_id, end=batch.end, batch_files=batch.files),
                )
            # The batch holds exactly the records after `previous`: it must not land on top of a
            # position another copy of this job committed in the middle of it.
            result = self.sink.write(batch.rows, position=position, previous=previous)
            if result.committed:
                self.commits += 1
                self.rows_written += result.rows
            elif result.status == "skipped" and result.committed_position == position:
                self.skipped += 1
            else:
                self.skipped += 1
                log.info("position %d of %r: %s (%s); resuming", position, self.sink.app_id, result.status, result.reason)
                return self.resume_point()  # another copy got elsewhere: continue after its commit
            previous = position
            self._report(batch.end)
        return None

    def _report(self, end: FilePosition) -> None:
        self.files_read = max(self.files_read, end.covered_files())
        if self.on_progress is not None:
            done = sum(f.size for f in self.files.files[: end.file_index])
            self.on_progress(IngestProgress(done, self._bytes_total, self.rows_written, self.commits, end.encode()))

    def _batches(self, start: FilePosition) -> Iterator[_Batch]:
        """Each batch of up to batch_rows records (good and bad), in order.

        A batch may span files; its end position is where its last record lies, or the start of
        the next file when it ends exactly at the end of one.
        """
        first_schema: pa.Schema | None = None

        def table_schema() -> pa.Schema | None:
            # The table's schema as the run changes it (created, evolved), so later files are
            # read with the table's types, not with types guessed from their own first block.
            handle = self.sink.handle
            return handle.arrow_schema() if handle is not None else first_schema

        pending: list[Chunk] = []
        pending_records = 0
        touched: list[int] = []
        chunks = self.files.chunks(start, schema=table_schema, evolve=self.sink._evolve, quarantine=self.quarantine is not None)
        for chunk in chunks:
            chunk = self._fit(chunk, table_schema())
            if first_schema is None and chunk.table.num_columns:
                first_schema = chunk.table.schema
            if not touched or touched[-1] != chunk.file_index:
                touched.append(chunk.file_index)
            cursor = chunk.row_start
            while chunk.row_end - cursor >= self.batch_rows - pending_records:
                stop = cursor + self.batch_rows - pending_records
                pending.append(chunk.between(cursor, stop))
                file_done = chunk.last and stop == chunk.row_end
                end = FilePosition(chunk.file_index + 1, 0) if file_done else FilePosition(chunk.file_index, stop)
                yield _batch(end, pending, touched, table_schema())
                pending, pending_records = [], 0
                touched = [] if file_done else [chunk.file_index]
                cursor = stop
            if cursor < chunk.row_end:
                pending.append(chunk.between(cursor, chunk.row_end))
                pending_records += chunk.row_end - cursor
        schema = table_schema()
        if touched and (schema is not None or any(p.rejected for p in pending)):
            # The tail: a partial batch, or empty files after the last full batch.
            yield _batch(FilePosition(touched[-1] + 1, 0), pending, touched, schema)

    def _fit(self, chunk: Chunk, schema: pa.Schema | None) -> Chunk:
        """The chunk with its good rows cast to the table's schema."""
        if chunk.table.num_columns == 0:
            if chunk.table.num_rows == 0 or schema is None:
                return chunk
            # Records that are empty objects: rows of nulls, so every record is accounted for.
            chunk = replace(chunk, table=pa.table({schema.names[0]: pa.nulls(chunk.table.num_rows)}))
        try:
            fitted = fit(chunk.table, schema, evolve=self.sink._evolve)
        except SchemaMismatch as exc:
            raise SchemaMismatch(
                f"{self.files.location(chunk.file)} (records {chunk.row_start + 1}..{chunk.row_end}): {exc}"
            ) from exc
        return replace(chunk, table=fitted.table)


def _batch(end: FilePosition, pending: list[Chunk], touched: list[int], schema: pa.Schema | None) -> _Batch:
    tables = [p.table for p in pending if p.table.num_columns]
    rejected = tuple(r for p in pending for r in p.rejected)
    if tables:
        rows: pa.Table | None = _concat(tables)
    else:
        rows = schema.empty_table() if schema is not None else None
    return _Batch(end=end, rows=rows, rejected=rejected, files=list(touched))


def _concat(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
