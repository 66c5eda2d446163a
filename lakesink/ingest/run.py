"""Ingest a file source into a table: batch the records, write each batch once, resume from `txn`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import replace

import pyarrow as pa

from lakesink.config import DEFAULT_MAX_RECORD_BYTES, CommitInterval, Shard, WriteConfig, positive_int
from lakesink.crashpoints import crash_point
from lakesink.errors import ConfigError, SchemaMismatch
from lakesink.ingest.cutter import Group, GroupCutter, end_of
from lakesink.ingest.malloc import keep_block_buffers
from lakesink.ingest.pipeline import Emitter, Pipeline
from lakesink.ingest.quarantine import Quarantine
from lakesink.ingest.report import IngestProgress, IngestReport
from lakesink.ingest.resume import refuse_if_txn_expired
from lakesink.ingest.shards import check_shard_layout
from lakesink.layout import ledger_path, shard_app_id
from lakesink.sink import Sink
from lakesink.sources.files import Chunk, FilePosition, FileSource, Format
from lakesink.sources.infer import infer_schema
from lakesink.storage.options import StorageOptions
from lakesink.storage.uri import normalize_table_uri
from lakesink.write.file_writer import GroupFiles
from lakesink.write.schema import check_declared, declared_schema, fit
from lakesink.write.stats import DEFAULT_STATS_COLUMNS, StatsColumns

log = logging.getLogger(__name__)


def ingest(
    source: str,
    table_uri: str,
    *,
    app_id: str,
    format: Format | None = None,
    batch_rows: int | None = None,
    commit_interval: CommitInterval | None = None,
    write: WriteConfig | None = None,
    partition_by: Sequence[str] | None = None,
    evolve_schema: bool = False,
    bad_records: str | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    schema: pa.Schema | None = None,
    storage_options: dict[str, str] | None = None,
    shard: Shard | tuple[int, int] | str | None = None,
    on_progress: Callable[[IngestProgress], None] | None = None,
    clock: Callable[[], float] = time.time,
    stop: threading.Event | None = None,
) -> IngestReport:
    """Write every record of the files at `source` into `table_uri` exactly once.

    Rerunning after a crash continues after the last commit; rerunning after success adds nothing.

    `bad_records` (a local path or s3 URI of a Delta table, the dead-letter table) turns bad records
    from errors into rows of that table: an NDJSON or CSV record that cannot be parsed or does not
    fit the table's schema is quarantined there, exactly once (see lakesink.ingest.quarantine), and its
    batch's good rows are committed. Every record then ends up in one of the two tables.

    `max_record_bytes` is the longest NDJSON line or CSV row read; a longer one stops the run.

    `schema` declares the columns of a new table (lakesink.config.parse_schema reads it from text):
    every format is read into it, and columns it does not declare follow the `evolve_schema` rules.
    Without it, a new table's types are inferred from a bounded sample across the files
    (lakesink.sources.infer). For an existing table it must agree with the table's columns.

    Commits: each covers the records read since the last one, up to `write.interval` (default:
    1 GiB of rows or 60 s); `commit_interval` sets it too, and `batch_rows` its `rows` limit (a
    shorthand); an option that would override another one given is a ConfigError. Reading,
    Parquet encoding and uploading overlap (lakesink.ingest.pipeline); `write` sets file sizes
    (~128 MiB), the memory in flight and the writer threads. The first call tunes glibc's malloc
    for the process (lakesink.ingest.malloc says how and why).

    `stop` (set from a signal handler, say) ends the run early at a commit boundary: the records
    read so far are committed, and a rerun continues after them.

    `shard=(I, N)` (or "I/N") ingests only shard I of N of the source: the files whose path
    relative to the source root hashes to I (lakesink.sources.files.shard_of), committed under
    their own app id, `<app_id>/shard-I-of-N` (lakesink.layout.shard_app_id). N processes given
    the same `source`, `table_uri` and `app_id` and the shards 0..N-1 ingest every file once, on
    any number of machines; each resumes from its own position. A table holding positions of
    `app_id` under another split (another N, or none) is refused (lakesink.ingest.shards).

    Raises:
        BadRecord: a malformed record (names file and line) without `bad_records`, or a record
            longer than `max_record_bytes`; nothing from its batch is committed.
        SourceContractViolation: an ingested file changed, vanished, or a new one sorts before it.
        ConfigError: two options that set the same limit, or a bad value; a table holding this
            job's positions under another split into shards.
        SchemaMismatch, TransientError: see lakesink.errors.
    """
    _write_config(write, commit_interval, batch_rows)  # a bad option fails before anything is listed or read
    split = Shard.of(shard) if shard is not None else None
    options = StorageOptions.resolve(storage_options)
    files = FileSource(source, format=format, storage_options=options, max_record_bytes=max_record_bytes)
    if split is not None:
        files = files.sharded(split)
    return ingest_files(
        files, table_uri, app_id=app_id, batch_rows=batch_rows, commit_interval=commit_interval, write=write,
        partition_by=partition_by, evolve_schema=evolve_schema, bad_records=bad_records, schema=schema,
        storage_options=options, on_progress=on_progress, clock=clock, stop=stop,
    )  # fmt: skip


def ingest_files(
    files: FileSource,
    table_uri: str,
    *,
    app_id: str,
    batch_rows: int | None = None,
    commit_interval: CommitInterval | None = None,
    write: WriteConfig | None = None,
    partition_by: Sequence[str] | None = None,
    evolve_schema: bool = False,
    bad_records: str | None = None,
    schema: pa.Schema | None = None,
    storage_options: StorageOptions,
    on_progress: Callable[[IngestProgress], None] | None = None,
    clock: Callable[[], float] = time.time,
    stop: threading.Event | None = None,
) -> IngestReport:
    """`ingest` of a source listed already (a watch run lists it itself, and reads a prefix of it);
    of `files.shard` only, under that shard's app id, when the listing is one shard of the source."""
    config = _write_config(write, commit_interval, batch_rows)
    started = time.monotonic()
    keep_block_buffers()
    options = storage_options
    source = files.uri
    job_app_id = app_id
    if files.shard is not None:  # from here on, `app_id` is the one the table's txn holds: the shard's
        app_id = shard_app_id(job_app_id, files.shard.index, files.shard.count)
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
        check_shard_layout(sink, app_id=job_app_id, shard=files.shard)
        quarantine = None
        if bad_records is not None:
            quarantine = stack.enter_context(
                Quarantine(bad_records, app_id=app_id, storage_options=dict(options.values), clock=clock)
            )
        declared = declared_schema(schema) if schema is not None else None
        run = _Run(files, sink, quarantine, config=config, on_progress=on_progress, declared=declared, stop=stop)
        start_position = sink.committed_position()
        total = sum(f.size for f in files.files)
        log.info("ingest %s into %s as %r: %d files, %d bytes", source, sink.uri, app_id, len(files.files), total)
        start = run.resume_point()
        run.drive(start)
        handle = sink.handle
        log.info(
            "ingest done: %d rows in %d commits, %d batches already committed, %d rows quarantined",
            run.rows_written, run.commits, run.skipped, run.rows_quarantined,
            extra={"app_id": app_id, "table": sink.uri, "rows": run.rows_written, "commits": run.commits,
                   "bytes": run.bytes_written, "position": sink.committed_position(),
                   "seconds": round(time.monotonic() - started, 3)},
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
            files_written=run.files_written,
            bytes_written=run.bytes_written,
            skipped_batches=run.skipped,
            start_position=start_position,
            end_position=sink.committed_position(),
            table_version=handle.version() if handle else None,
            seconds=round(time.monotonic() - started, 3),
        )


def _write_config(write: WriteConfig | None, commit_interval: CommitInterval | None, batch_rows: int | None) -> WriteConfig:
    """One WriteConfig from the three ways to give the commit interval; never one silently over another."""
    config = write or WriteConfig()
    if commit_interval is not None:
        if write is not None and write.interval != CommitInterval():
            raise ConfigError("the commit interval is given twice (commit_interval and write.interval): give it once")
        config = replace(config, interval=commit_interval)
    if batch_rows is not None:
        positive_int(batch_rows, what="batch_rows", unit="records per commit")
        if config.interval.rows is not None:
            raise ConfigError(
                f"batch_rows={batch_rows} and a commit interval of {config.interval.rows} rows both set the records "
                "per commit: give one"
            )
        config = replace(config, interval=replace(config.interval, rows=batch_rows))
    return config


class _Run:
    """One ingest run's state: the reader cuts commit groups, the pipeline writes them, this commits them."""

    def __init__(
        self,
        files: FileSource,
        sink: Sink,
        quarantine: Quarantine | None,
        *,
        config: WriteConfig,
        on_progress: Callable[[IngestProgress], None] | None,
        declared: pa.Schema | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.declared = declared
        self.stop = stop
        self.files = files
        self.sink = sink
        self.quarantine = quarantine
        self.config = config
        self.on_progress = on_progress
        self.rows_written = 0
        self.rows_quarantined = 0
        self.commits = 0
        self.skipped = 0
        self.files_read = 0
        self.files_written = 0
        self.bytes_written = 0
        self._bytes_total = sum(f.size for f in files.files)
        self._read_upto = FilePosition(0, 0)  # set by the reader thread, read for progress
        self._records_read = 0  # likewise

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
        handle = self.sink.handle
        schema = handle.arrow_schema() if handle is not None else None
        if schema is not None and self.declared is not None:
            check_declared(self.declared, schema, table_uri=self.sink.uri)
        elif schema is None:
            schema = self.declared or self._infer(start)
        partition_by = handle.partition_columns() if handle is not None else list(self.sink.partition_by)
        # A table this run creates sets no statistics properties: the defaults hold for it.
        stats = StatsColumns.of_table(handle.configuration()) if handle is not None else DEFAULT_STATS_COLUMNS
        first = previous if previous is not None else -1

        def new_group(group_start: int) -> GroupFiles:
            return GroupFiles(
                self.sink.store,
                app_id=self.sink.app_id,
                start_position=group_start,
                partition_by=partition_by,
                target_bytes=self.config.target_file_bytes,
                row_group_bytes=self.config.row_group_bytes,
                stats=stats,
            )

        pipeline: Pipeline[Group] = Pipeline(
            lambda emit: self._produce(start, schema, first, emit),
            new_group,
            encoders=self.config.write_threads,
            in_flight_bytes=self.config.in_flight_bytes,
        )
        with pipeline:
            for sealed in pipeline.sealed(on_idle=lambda: self._report(self._read_upto)):
                group = sealed.info
                position = group.end.encode()
                if self.quarantine is not None and group.rejected:
                    # Before the good rows: once the table holds `position`, nothing reads this group
                    # again, so its bad records must already be safe (lakesink.ingest.quarantine).
                    self.rows_quarantined += self.quarantine.write(group.rejected, position=position)
                if group.schema is None:
                    self._report(group.end)
                    continue
                committed = self.sink.committed_position()
                if committed is None or committed < position:
                    self.sink.store.write_bytes(
                        ledger_path(self.sink.app_id, position),
                        self.files.ledger(app_id=self.sink.app_id, end=group.end, batch_files=group.files),
                    )
                crash_point("after_stage")
                # The group holds exactly the records after `previous`: it must not land on top of a
                # position another copy of this job committed in the middle of it.
                result = self.sink.commit_files(sealed.files, position=position, previous=previous, schema=group.schema)
                if result.committed:
                    self.commits += 1
                    self.rows_written += result.rows
                    self.files_written += len(sealed.files)
                    self.bytes_written += sum(f.size for f in sealed.files)
                elif result.status == "skipped" and result.committed_position == position:
                    self.skipped += 1
                else:
                    self.skipped += 1
                    log.info("position %d of %r: %s (%s); resuming", position, self.sink.app_id, result.status, result.reason)
                    return self.resume_point()  # another copy got elsewhere: continue after its commit
                previous = position
                self._report(group.end)
        return None

    def _infer(self, start: FilePosition) -> pa.Schema | None:
        inferred = infer_schema(self.files, start)
        if inferred is None:
            return None
        schema = declared_schema(inferred)
        log.info("schema inferred from a sample of %s: %s", self.files.uri, ", ".join(f"{f.name} {f.type}" for f in schema))
        return schema

    def _report(self, end: FilePosition) -> None:
        self.files_read = max(self.files_read, end.covered_files())
        if self.on_progress is not None:
            done = sum(f.size for f in self.files.files[: end.file_index])
            self.on_progress(
                IngestProgress(done, self._bytes_total, self.rows_written, self.commits, end.encode(), self._records_read)
            )

    def _produce(self, start: FilePosition, schema: pa.Schema | None, first: int, emit: Emitter[Group]) -> None:
        """The reader thread: records from `start` on, fitted, cut into commit groups and sent on.

        A group ends after `interval.rows` records (good and bad: positions count both), or at the
        end of the chunk that brings it to `interval.bytes` of rows or `interval.seconds`. Its end
        position is where its last record lies, or the start of the next file when it ends exactly
        at the end of one. Rows are sent in row groups of about `row_group_bytes`.
        """
        interval = self.config.interval
        row_limit = interval.rows or 2**62
        def before_first_file() -> None:
            # The table must exist before its first data file does (Sink.ensure_table says why).
            # Only this thread touches the table until the first group is sealed, so it may create it.
            if self.sink.handle is None and schema is not None:
                self.sink.ensure_table(schema, must_match=True)

        cutter = GroupCutter(
            start=first, row_group_bytes=self.config.row_group_bytes, emit=emit, before_first_file=before_first_file
        )

        def table_schema() -> pa.Schema | None:
            # The table's schema as this run makes it (created, evolved), so later files are read
            # with the table's types, not with types guessed from their own first block.
            return schema

        quarantine = self.quarantine is not None
        chunks = self.files.chunks(start, schema=table_schema, evolve=self.sink.evolve_schema, quarantine=quarantine)
        for chunk in chunks:
            chunk = self._fit(chunk, schema)
            if chunk.table.num_columns and chunk.table.schema != schema:
                schema = chunk.table.schema  # the first rows, or new columns (evolution)
            cutter.touch(chunk.file_index)
            cursor = chunk.row_start
            while chunk.row_end - cursor >= row_limit - cutter.records:
                stop = cursor + row_limit - cutter.records
                cutter.add(chunk.between(cursor, stop))
                cutter.seal(end_of(chunk, stop), schema, next_file=chunk.last and stop == chunk.row_end)
                cursor = stop
            if cursor < chunk.row_end:
                cutter.add(chunk.between(cursor, chunk.row_end))
                if cutter.over(interval):
                    cutter.seal(end_of(chunk, chunk.row_end), schema, next_file=chunk.last)
            self._read_upto = end_of(chunk, chunk.row_end)
            self._records_read += chunk.records
            if self.stop is not None and self.stop.is_set():
                if cutter.records:  # stop here: commit what was read, at a position inside the file
                    cutter.seal(end_of(chunk, chunk.row_end), schema, next_file=chunk.last)
                log.info("stopping at %s as asked; the rest is read by the next run", end_of(chunk, chunk.row_end))
                return
        if cutter.touched and (schema is not None or cutter.rejected):
            # The tail: a partial group, or empty files after the last full group.
            cutter.seal(FilePosition(cutter.touched[-1] + 1, 0), schema, next_file=True)

    def _fit(self, chunk: Chunk, schema: pa.Schema | None) -> Chunk:
        """The chunk with its good rows cast to the table's schema."""
        if chunk.table.num_columns == 0:
            if chunk.table.num_rows == 0 or schema is None:
                return chunk
            # Records that are empty objects: rows of nulls, so every record is accounted for.
            chunk = replace(chunk, table=pa.table({schema.names[0]: pa.nulls(chunk.table.num_rows)}))
        try:
            fitted = fit(chunk.table, schema, evolve=self.sink.evolve_schema)
        except SchemaMismatch as exc:
            raise SchemaMismatch(
                f"{self.files.location(chunk.file)} (records {chunk.row_start + 1}..{chunk.row_end}): {exc}", options=exc.options
            ) from exc
        return replace(chunk, table=fitted.table)
