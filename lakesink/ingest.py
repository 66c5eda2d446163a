"""Ingest a file source into a table: batch the records, write each batch once, resume from `txn`."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from urllib.parse import unquote

import pyarrow as pa

from lakesink.crashpoints import crash_point
from lakesink.errors import ConfigError, SchemaMismatch, TableError
from lakesink.file_writer import DEFAULT_ROW_GROUP_BYTES, DEFAULT_TARGET_FILE_BYTES, GroupFiles
from lakesink.malloc import keep_block_buffers
from lakesink.pipeline import Emitter, Pipeline
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
class CommitInterval:
    """When `ingest` commits: once a commit group holds `rows` records, `bytes` of rows, or has been
    open `seconds`, whichever comes first (None: no limit of that kind).

    Records count good and bad ones, as positions do. Bytes are the rows' size decoded in memory
    (Arrow), so they mean the same for every source format. Bigger commits cost less per row (a
    commit is a few log requests); smaller ones make rows visible sooner and leave less to redo
    after a crash.
    """

    rows: int | None = None
    bytes: int | None = 1 << 30
    seconds: float | None = 60.0

    def __post_init__(self) -> None:
        for name in ("rows", "bytes", "seconds"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ConfigError(f"CommitInterval.{name} must be a positive number or None, not {value!r}")
        if self.rows is None and self.bytes is None and self.seconds is None:
            raise ConfigError("CommitInterval needs a limit (rows, bytes or seconds); without one a run commits only at its end")

    @classmethod
    def parse(cls, spec: str) -> CommitInterval:
        """`500000rows`, `512MB`, `30s`, or several joined by commas (`1GB,60s`): the limits to set.

        Sizes take B, KB, MB, GB (powers of 1024: KiB, MiB, GiB are accepted too); times s, m, h.
        """
        limits: dict[str, float | int | None] = {"rows": None, "bytes": None, "seconds": None}
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            match = _INTERVAL_PART.fullmatch(part.lower())
            if match is None:
                raise ConfigError(f"cannot read {part!r} in commit interval {spec!r}: use e.g. 500000rows, 512MB, 30s or 1GB,60s")
            number, unit = float(match.group(1)), match.group(2)
            if unit in ("rows", "records"):
                limits["rows"] = int(number)
            elif unit in _SECONDS:
                limits["seconds"] = number * _SECONDS[unit]
            else:
                limits["bytes"] = int(number * _BYTES[unit])
        return cls(rows=int(limits["rows"]) if limits["rows"] else None, bytes=int(limits["bytes"]) if limits["bytes"] else None,
                   seconds=limits["seconds"])  # fmt: skip


_BYTES = {"b": 1, "kb": 1 << 10, "kib": 1 << 10, "mb": 1 << 20, "mib": 1 << 20, "gb": 1 << 30, "gib": 1 << 30}
_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_INTERVAL_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(rows|records|b|kb|kib|mb|mib|gb|gib|s|m|h)")


def parse_size(text: str) -> int:
    """`128MB`, `1GB`, `65536` (bytes) as bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib)?", text.strip().lower())
    if match is None:
        raise ConfigError(f"cannot read size {text!r}: use e.g. 128MB, 1GB or a number of bytes")
    return int(float(match.group(1)) * _BYTES[match.group(2) or "b"])


# Two encoders: the Parquet encoding of one row group overlaps the next, and the backlog left when
# the reader finishes is shared. On the NDJSON benchmark (2 cores) 2 threads took 4.1 s where
# 1 took 4.4 s (medians of 4), for about 90 MiB more peak memory.
DEFAULT_WRITE_THREADS = min(2, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class WriteConfig:
    """How `ingest` writes: commit sizes, file sizes, and the memory and threads it may use.

    Peak memory is about `in_flight_bytes` (rows read and not yet written) plus a row group
    being gathered (`row_group_bytes`) plus the reader's block and pyarrow's buffers: it does not
    grow with the input.
    """

    interval: CommitInterval = CommitInterval()
    target_file_bytes: int = DEFAULT_TARGET_FILE_BYTES
    in_flight_bytes: int = 256 << 20
    write_threads: int = field(default_factory=lambda: DEFAULT_WRITE_THREADS)

    def __post_init__(self) -> None:
        for name in ("target_file_bytes", "in_flight_bytes", "write_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, not {value!r}")

    @property
    def row_group_bytes(self) -> int:
        # Big row groups read well; a quarter of the budget lets several be in flight at once.
        return max(1, min(DEFAULT_ROW_GROUP_BYTES, self.in_flight_bytes // 4))


@dataclass(frozen=True, slots=True)
class IngestProgress:
    """Sent after every commit and twice a second in between: how far the run is.

    `bytes_done` counts the source files read to their end, of `bytes_total`; `records_read` the
    records read so far (some not committed yet); `rows_written` and `commits` what is committed;
    `position` the source position read up to.
    """

    bytes_done: int
    bytes_total: int
    rows_written: int
    commits: int
    position: int | None
    records_read: int = 0


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
    files_written: int
    bytes_written: int
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
        else f"the table holds {len(positions)} data file(s) it committed (named by positions up to {max(positions)})"
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
    batch_rows: int | None = None,
    commit_interval: CommitInterval | None = None,
    write: WriteConfig | None = None,
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

    Commits: each covers the records read since the last one, up to `commit_interval` (default:
    1 GiB of rows or 60 s); `batch_rows` is a shorthand that sets its `rows` limit. Reading,
    Parquet encoding and uploading overlap (lakesink.pipeline); `write` sets file sizes (~128 MiB),
    the memory in flight and the writer threads. The first call tunes glibc's malloc for the
    process (lakesink.malloc says how and why).

    Raises:
        BadRecord: a malformed record (names file and line) without `bad_records`, or a record
            longer than `max_record_bytes`; nothing from its batch is committed.
        SourceContractViolation: an ingested file changed, vanished, or a new one sorts before it.
        SchemaMismatch, ConfigError, TransientError: see lakesink.errors.
    """
    started = time.monotonic()
    keep_block_buffers()
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
        interval = commit_interval or CommitInterval()
        if batch_rows is not None:
            if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
                raise ConfigError(f"batch_rows must be a positive int (records per commit), not {batch_rows!r}")
            interval = replace(interval, rows=batch_rows)
        config = replace(write or WriteConfig(), interval=interval)
        run = _Run(files, sink, quarantine, config=config, on_progress=on_progress)
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
            files_written=run.files_written,
            bytes_written=run.bytes_written,
            skipped_batches=run.skipped,
            start_position=start_position,
            end_position=sink.committed_position(),
            table_version=handle.version() if handle else None,
            seconds=round(time.monotonic() - started, 3),
        )


@dataclass(frozen=True, slots=True)
class _Group:
    """A commit group as the reader sealed it: the records after the last group up to `end`.

    `schema` is the table's schema as the group's rows were fitted to it (None while no record was
    good and the table does not exist yet: there is nothing to create it with, so only the bad
    records are written and the table's position waits). `rejected` are its bad records.
    """

    end: FilePosition
    schema: pa.Schema | None
    rejected: tuple[Rejected, ...]
    files: list[int]


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
    ) -> None:
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
        partition_by = handle.partition_columns() if handle is not None else list(self.sink.partition_by)
        first = previous if previous is not None else -1

        def new_group(group_start: int) -> GroupFiles:
            return GroupFiles(
                self.sink.store,
                app_id=self.sink.app_id,
                start_position=group_start,
                partition_by=partition_by,
                target_bytes=self.config.target_file_bytes,
                row_group_bytes=self.config.row_group_bytes,
            )

        pipeline: Pipeline[_Group] = Pipeline(
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
                    # again, so its bad records must already be safe (lakesink.quarantine).
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

    def _report(self, end: FilePosition) -> None:
        self.files_read = max(self.files_read, end.covered_files())
        if self.on_progress is not None:
            done = sum(f.size for f in self.files.files[: end.file_index])
            self.on_progress(
                IngestProgress(done, self._bytes_total, self.rows_written, self.commits, end.encode(), self._records_read)
            )

    def _produce(self, start: FilePosition, schema: pa.Schema | None, first: int, emit: Emitter[_Group]) -> None:
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
                created = self.sink.ensure_table(schema).arrow_schema()
                if created != schema:
                    raise SchemaMismatch(
                        f"another writer created {self.sink.uri} with the schema {created} while this run read the "
                        f"source as {schema}; nothing was written: rerun to read it with the table's schema"
                    )

        cutter = _GroupCutter(
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
                cutter.seal(_end_of(chunk, stop), schema, next_file=chunk.last and stop == chunk.row_end)
                cursor = stop
            if cursor < chunk.row_end:
                cutter.add(chunk.between(cursor, chunk.row_end))
                if cutter.over(interval):
                    cutter.seal(_end_of(chunk, chunk.row_end), schema, next_file=chunk.last)
            self._read_upto = _end_of(chunk, chunk.row_end)
            self._records_read += chunk.records
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
                f"{self.files.location(chunk.file)} (records {chunk.row_start + 1}..{chunk.row_end}): {exc}"
            ) from exc
        return replace(chunk, table=fitted.table)


def _end_of(chunk: Chunk, stop: int) -> FilePosition:
    return FilePosition(chunk.file_index + 1, 0) if chunk.last and stop == chunk.row_end else FilePosition(chunk.file_index, stop)


class _GroupCutter:
    """The open commit group, on the reader thread: buffers rows into row groups and sends them on."""

    def __init__(self, *, start: int, row_group_bytes: int, emit: Emitter[_Group], before_first_file: Callable[[], None]) -> None:
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
        self.emit.seal(_Group(end=end, schema=schema, rejected=tuple(self.rejected), files=list(self.touched)))
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
