"""A folder, glob or S3 prefix of immutable files, read in name order, as a positioned stream.

Position contract (resume needs only the Delta `txn` version):
    The files are sorted by path. A position packs (file_index, row): every record of
    files[0..file_index) and the first `row` records of files[file_index] are committed.
        position = file_index << 40 | row        (2**40 records per file, 2**23 files)
    When a batch ends exactly at the end of a file, the position is (file_index + 1, 0), so a
    finished source and a fresh file appended later both resume cleanly.
    A record is what `row` counts: a non-blank line of NDJSON (one object per line), a row after
    the header of CSV (empty lines skipped, quoted line ends allowed), a row of Parquet. The fast
    readers and the per-record fallback count alike, so a record's index within its file is the
    same whichever path read it; a record that cannot be read still counts, whether it fails the
    run or is quarantined (`Chunk.rejected`).

Shards (`ingest --shard I/N`): N processes may split one source between them. Shard I of N is
the files for which `shard_of(path, N) == I`, where `path` is the file's path relative to the source
root (the folder, the part of a glob before its first wildcard, or the S3 prefix): a hash of the
name alone, so every machine computes the same split, a file never moves between shards, and a new
file joins one shard without disturbing the others. A shard is read in path order like a whole
source, and its positions count its own files: the contract below holds for each shard.

What the contract assumes, and checks: files already (partly) ingested never change, vanish or
gain a new neighbour sorting before them; new files sort after every committed one. Each commit
stages a ledger beside the table (lakesink.layout.ledger_path) holding a hash chain
over (path, size, mtime) of every file the position covers. On resume the chain is recomputed
from a fresh listing; any difference is a SourceContractViolation naming the file, never a silent
skip or duplicate.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq

from lakesink.config import DEFAULT_MAX_RECORD_BYTES, Shard, positive_int
from lakesink.errors import BadRecord, ConfigError, InternalError, SourceContractViolation
from lakesink.sources.csv_rows import CsvReader
from lakesink.sources.ledger import ledger_body, verify_ledger
from lakesink.sources.ndjson import Block, NdjsonReader
from lakesink.sources.positions import ROW_BITS, FilePosition
from lakesink.sources.records import Chunk, Format, Rejected, SchemaNow, SourceFile, no_columns
from lakesink.storage.listing import expand_local_source, iter_hidden_filtered
from lakesink.storage.objects import ObjectInfo, ObjectStore, open_store
from lakesink.storage.options import StorageOptions
from lakesink.storage.uri import is_remote

__all__ = ["Chunk", "FilePosition", "FileSource", "Format", "Rejected", "SourceFile", "shard_of"]

_MAX_FILES = 1 << (63 - ROW_BITS)
# NDJSON files up to this size are parsed together, up to _SMALL_RUN_BYTES and _SMALL_RUN_FILES at a
# time (FileSource._small_files_chunks; benchmarks/README.md, "sizes.py", has the figures).
_SMALL_FILE_BYTES = 1 << 20
_SMALL_RUN_START_BYTES = 256 << 10
_SMALL_RUN_BYTES = 8 << 20
_SMALL_RUN_FILES = 2048
_SMALL_READERS = 8
_SMALL_AHEAD_START_BYTES = 64 << 10
_SMALL_AHEAD_BYTES = 16 << 20
_EXTENSIONS: dict[str, Format] = {
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".json": "ndjson",
    ".csv": "csv",
    ".parquet": "parquet",
}


def shard_of(path: str, count: int) -> int:
    """The shard (0 .. count-1) that file `path` (relative to the source root, `/`-separated)
    belongs to: the first 8 bytes of the SHA-256 of its UTF-8 bytes, as a big-endian unsigned
    int, modulo `count`. Fixed forever: it decides which process ingests a file, and a changed
    hash would hand ingested files to shards whose positions do not cover them."""
    return int.from_bytes(hashlib.sha256(path.encode("utf-8")).digest()[:8], "big") % count


class FileSource:
    """The files under `uri` (local folder or glob, or `s3://bucket/prefix[/glob]`), listed once;
    or one shard of them (`sharded`)."""

    def __init__(
        self,
        uri: str,
        *,
        format: Format | None = None,
        storage_options: StorageOptions | None = None,
        store: ObjectStore | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        positive_int(max_record_bytes, what="max_record_bytes", unit="bytes")
        self.uri = uri
        self.max_record_bytes = max_record_bytes
        options = storage_options or StorageOptions.resolve()
        if is_remote(uri):
            root, pattern = _split_remote_glob(uri)
            self._root = root
            self.store: ObjectStore = store or open_store(root, options)
            infos = [
                i for i in iter_hidden_filtered(self.store.list_files("")) if pattern is None or fnmatch.fnmatch(i.path, pattern)
            ]
        else:
            root, rel = expand_local_source(uri)
            self._root = root
            self.store = store or open_store(root, options)
            infos = [i for i in (self.store.info(p) for p in rel) if i is not None]
        if not infos:
            raise ConfigError(f"no files found at {uri}: check the path or glob (names starting with '.' or '_' are skipped)")
        self.files = [_source_file(i, format) for i in infos]
        self.shard: Shard | None = None
        if len(self.files) >= _MAX_FILES:
            raise ConfigError(f"{uri} holds {len(self.files)} files; a file source takes at most {_MAX_FILES - 1}")

    def __repr__(self) -> str:
        shard = f", shard={self.shard}" if self.shard is not None else ""
        return f"FileSource({self.uri!r}, files={len(self.files)}{shard})"

    def sharded(self, shard: Shard) -> FileSource:
        """Shard `shard.index` of `shard.count` of this listing: its files for which `shard_of` is the
        index, in path order (possibly none). Positions and ledgers then count these files only."""
        if self.shard is not None:
            raise ConfigError(f"{self.uri} is shard {self.shard} already")
        clone = copy.copy(self)
        clone.files = [f for f in self.files if shard_of(f.path, shard.count) == shard.index]
        clone.shard = shard
        return clone

    def first(self, count: int) -> FileSource:
        """The same source with only its first `count` files (in name order): what a watch run may read
        while later files are still being written."""
        clone = copy.copy(self)
        clone.files = self.files[:count]
        return clone

    def reading_at_most(self, max_record_bytes: int) -> FileSource:
        """The same listing, read in blocks of at most `max_record_bytes` (a cheap sample of each file)."""
        clone = copy.copy(self)
        clone.max_record_bytes = positive_int(max_record_bytes, what="max_record_bytes", unit="bytes")
        return clone

    def ledger(self, *, app_id: str, end: FilePosition, batch_files: Sequence[int]) -> bytes:
        """The ledger staged before committing `end` (lakesink.sources.ledger)."""
        return ledger_body(self.files, app_id=app_id, end=end, batch_files=batch_files)

    def verify(self, committed: FilePosition, ledger: bytes | None) -> None:
        """Check the files behind `committed` against its ledger (lakesink.sources.ledger.verify_ledger).

        Raises:
            SourceContractViolation: a covered file changed, vanished, or a new one sorts before it.
        """
        verify_ledger(self.files, uri=self.uri, committed=committed, ledger=ledger)

    def location(self, file: SourceFile) -> str:
        """The file's full path or URI, as messages and the dead-letter table name it."""
        return file.path if file.path.startswith("/") else f"{self._root.rstrip('/')}/{file.path}"

    def chunks(
        self, start: FilePosition, *, schema: SchemaNow | pa.Schema | None, evolve: bool = False, quarantine: bool = False
    ) -> Iterator[Chunk]:
        """Records from `start` on, in order, in chunks of about the reader's block size.

        `schema` (the table's, when it exists; a callable when it can change during the run) types
        CSV and NDJSON columns, so every file is read with the table's types rather than types
        guessed from its own first block. With `quarantine`, a record that cannot be parsed or
        typed (including, unless `evolve`, one with a column the table lacks) is set aside in its
        chunk's `rejected` instead of failing the run.

        Raises:
            BadRecord: a record cannot be parsed or typed (unless quarantining), or is longer than
                max_record_bytes; names the file and line.
        """
        schema_now: SchemaNow = schema if callable(schema) else (lambda: schema)
        with ThreadPoolExecutor(1, thread_name_prefix="lakesink-read-ahead") as executor:
            ahead = _NdjsonAhead(self, start.file_index, executor, evolve=evolve, quarantine=quarantine)
            small = _SmallReads(self, start.file_index)
            try:
                index = start.file_index
                # Runs grow from a few files: a reader that stops early (a schema sample) parses little.
                run_bytes = _SMALL_RUN_START_BYTES
                while index < len(self.files):
                    skip = start.row if index == start.file_index else 0
                    # A file resumed inside (skip) is read alone: a run of one.
                    count = self._small_run(index, run_bytes if not skip else 0)
                    if count:
                        run_bytes = min(run_bytes * 4, _SMALL_RUN_BYTES)
                        yield from self._small_files_chunks(
                            index, count, skip, small, ahead, schema_now, evolve=evolve, quarantine=quarantine
                        )
                    else:
                        yield from self._file_chunks(index, skip, schema_now, ahead, evolve=evolve, quarantine=quarantine)
                    index += max(count, 1)
            finally:
                ahead.stop()
                small.stop()

    def is_small(self, file: SourceFile) -> bool:
        """An NDJSON file read whole, several at once, and parsed together with its neighbours."""
        return file.format == "ndjson" and 0 < file.size <= _SMALL_FILE_BYTES

    def _file_chunks(
        self, index: int, skip: int, schema_now: SchemaNow, ahead: _NdjsonAhead, blocks: list[Block] | None = None, *,
        evolve: bool, quarantine: bool, whole: bool = True,
    ) -> Iterator[Chunk]:
        """The chunks of files[index] from record `skip` on, the last marked as such (`whole`: the
        blocks are the whole file; otherwise a read error follows them and no chunk is the last)."""
        file = self.files[index]
        records = 0
        pending: Chunk | None = None
        for chunk in self._read(index, schema_now, ahead, blocks, evolve=evolve, quarantine=quarantine):
            records = chunk.row_end
            if chunk.row_end <= skip:
                continue
            if chunk.row_start < skip:
                chunk = chunk.between(skip, chunk.row_end)
            if pending is not None:
                yield pending
            pending = chunk
        if not whole:
            if pending is not None:
                yield pending
            return
        if skip > records:
            raise SourceContractViolation(
                f"{file.path!r} has {records} records but {skip} were committed: it changed after ingest"
            )
        if pending is None:
            pending = Chunk(index, file, no_columns(), records, records, last=False)
        yield replace(pending, last=True)

    def _small_run(self, first: int, limit: int) -> int:
        """How many small files from files[first] on are parsed together (at least one, then up to
        `limit` bytes and _SMALL_RUN_FILES in all): 0 when files[first] is not a small one."""
        count, total = 0, 0
        for file in self.files[first : first + _SMALL_RUN_FILES]:
            if not self.is_small(file) or (count and total + file.size > limit):
                break
            count, total = count + 1, total + file.size
        return count

    def _small_files_chunks(
        self, first: int, count: int, skip: int, small: _SmallReads, ahead: _NdjsonAhead, schema_now: SchemaNow, *,
        evolve: bool, quarantine: bool,
    ) -> Iterator[Chunk]:
        """Whole small NDJSON files (the first from record `skip` on), parsed together, as a chunk per
        file (slices of one table); files the fast path refuses together, or a file resumed inside,
        go through `_file_chunks` one by one. A read's error is raised after every record before it."""
        blocks: list[list[Block]] = []
        failed: tuple[int, list[Block], Exception] | None = None
        for index in range(first, first + count):
            read, error = small.get(index)
            if error is not None:
                failed = (index, read, error)
                break
            blocks.append(read)
        schema = schema_now()
        table = None
        # Without a schema (a new table's sample) each file keeps its own inferred types (lakesink.sources.infer).
        if blocks and schema is not None and not skip:
            file = self.files[first]
            reader = NdjsonReader(first, file, self.location(file), self.max_record_bytes, quarantine=quarantine, evolve=evolve)
            table = reader.parse_together(blocks, schema)
        offset = 0
        for index, file_blocks in enumerate(blocks, start=first):
            if table is None:
                yield from self._file_chunks(
                    index, skip if index == first else 0, schema_now, ahead, file_blocks, evolve=evolve, quarantine=quarantine
                )
                continue
            records = sum(block.records for block in file_blocks)
            part = table.slice(offset, records) if records else no_columns()
            offset += records
            yield Chunk(index, self.files[index], part, 0, records, last=True)
        if failed is not None:
            index, read, error = failed
            yield from self._file_chunks(
                index, skip if index == first else 0, schema_now, ahead, read, evolve=evolve, quarantine=quarantine,
                whole=False,
            )  # fmt: skip
            raise error

    def _read(
        self, index: int, schema_now: SchemaNow, ahead: _NdjsonAhead, blocks: list[Block] | None, *, evolve: bool,
        quarantine: bool,
    ) -> Iterator[Chunk]:
        file = self.files[index]
        if file.size == 0:
            return
        location = self.location(file)
        if file.format == "ndjson":
            ndjson = NdjsonReader(index, file, location, self.max_record_bytes, quarantine=quarantine, evolve=evolve)
            yield from ndjson.parse(blocks if blocks is not None else ahead.blocks(index), schema_now)
        elif file.format == "csv":
            rows = CsvReader(index, file, location, self.max_record_bytes, quarantine=quarantine, evolve=evolve)
            yield from rows.chunks(lambda: self.store.open_input(file.path), schema_now)
        else:
            yield from self._read_parquet(index, file)

    def _read_parquet(self, index: int, file: SourceFile) -> Iterator[Chunk]:
        record = 0
        try:
            with self.store.open_input(file.path) as stream:
                for batch in pq.ParquetFile(stream).iter_batches(batch_size=64 * 1024):
                    yield Chunk(index, file, pa.Table.from_batches([batch]), record, record + batch.num_rows, last=False)
                    record += batch.num_rows
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise BadRecord(
                f"{self.location(file)}: not a readable Parquet file ({exc}). Fix or remove the file, then rerun; "
                "nothing was committed from its batch."
            ) from exc


class _NdjsonAhead:
    """The blocks of the NDJSON files from files[first] on, read one block ahead on `executor`'s thread.

    The read-ahead runs on across file ends: the next file is opened and its first block read
    while the last block of the one before is parsed. A read's error (the file cannot be opened,
    a line over the limit) is raised where its block would have come, so after every chunk of the
    files before it. Files are opened and closed on that thread; after `stop`, none is open.
    """

    def __init__(self, source: FileSource, first: int, executor: Executor, *, evolve: bool, quarantine: bool) -> None:
        self._reads = self._read_all(source, first, evolve=evolve, quarantine=quarantine)
        self._executor = executor
        self._pending: Future[tuple[int, Block | None] | None] | None = None

    @staticmethod
    def _read_all(
        source: FileSource, first: int, *, evolve: bool, quarantine: bool
    ) -> Generator[tuple[int, Block | None], None, None]:
        """(index, block) for each block of each NDJSON file in turn, and (index, None) at its end."""
        for index in range(first, len(source.files)):
            file = source.files[index]
            if file.format != "ndjson" or file.size == 0 or source.is_small(file):
                continue  # small files are _SmallReads'.
            reader = NdjsonReader(
                index, file, source.location(file), source.max_record_bytes, quarantine=quarantine, evolve=evolve
            )
            with source.store.open_input(file.path) as stream:
                for block in reader.blocks(stream):
                    yield index, block
            yield index, None

    def blocks(self, index: int) -> Iterator[Block]:
        """The blocks of files[index], which must be the next NDJSON file not read yet."""
        while True:
            if self._pending is None:
                self._pending = self._executor.submit(next, self._reads, None)
            item = self._pending.result()
            # The next block is read (or the next file opened) while the caller works on this one.
            self._pending = self._executor.submit(next, self._reads, None) if item is not None else None
            if item is None or item[0] != index:
                raise InternalError(f"NDJSON read ahead out of order (file #{index}, got {item and item[0]})")
            if item[1] is None:
                return
            yield item[1]

    def stop(self) -> None:
        """Wait for the read under way, then close the file being read, if any."""
        if self._pending is not None and not self._pending.cancel():
            wait([self._pending])
        self._pending = None
        self._reads.close()


class _SmallReads:
    """Small NDJSON files read whole, _SMALL_READERS at a time and up to _SMALL_AHEAD_BYTES ahead of
    the one asked for: on S3 a 20 KB file is one round trip, which reading them one after the
    other would wait for in turn. A read's error is raised where that file's blocks are asked for."""

    def __init__(self, source: FileSource, first: int) -> None:
        self._source = source
        self._next = first  # the first file not submitted yet
        self._reads: dict[int, Future[tuple[list[Block], Exception | None]]] = {}
        self._executor: ThreadPoolExecutor | None = None
        # Grows as files are asked for: a schema sample reads a few files, a run thousands.
        self._ahead_limit = _SMALL_AHEAD_START_BYTES
        self._ahead = 0  # bytes submitted and not asked for yet

    def get(self, index: int) -> tuple[list[Block], Exception | None]:
        """The blocks of files[index], a small file at or after the last one asked for, up to the
        error that ended its read (a line over the limit, the file gone), if one did."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(_SMALL_READERS, thread_name_prefix="lakesink-read-small")
        files = self._source.files
        self._next = max(self._next, index)
        self._ahead_limit = min(self._ahead_limit * 2, _SMALL_AHEAD_BYTES)
        while self._next < len(files) and (self._next == index or self._ahead < self._ahead_limit):
            file = files[self._next]
            if self._source.is_small(file):
                self._reads[self._next] = self._executor.submit(self._read, self._next)
                self._ahead += file.size
            self._next += 1
        future = self._reads.pop(index)
        self._ahead -= files[index].size
        return future.result()

    def _read(self, index: int) -> tuple[list[Block], Exception | None]:
        source, file = self._source, self._source.files[index]
        reader = NdjsonReader(index, file, source.location(file), source.max_record_bytes, quarantine=False, evolve=False)
        blocks: list[Block] = []
        try:
            for block in reader.blocks(pa.BufferReader(source.store.read_bytes(file.path))):
                blocks.append(block)
        except Exception as exc:  # noqa: BLE001 - handed to the reader thread, raised there in order
            return blocks, exc
        return blocks, None

    def stop(self) -> None:
        """Drop the reads not asked for; wait for those under way."""
        for future in self._reads.values():
            future.cancel()
        self._reads.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)


def _split_remote_glob(uri: str) -> tuple[str, str | None]:
    head, _, tail = uri.rpartition("/")
    if any(ch in tail for ch in "*?["):
        return head, tail
    return uri.rstrip("/"), None


def _source_file(info: ObjectInfo, format: Format | None) -> SourceFile:
    if format is None:
        suffix = "." + info.path.rsplit(".", 1)[-1].lower() if "." in info.path else ""
        detected = _EXTENSIONS.get(suffix)
        if detected is None:
            raise ConfigError(
                f"cannot tell the format of {info.path!r} from its extension: pass format=ndjson|csv|parquet or narrow the glob",
                options=("format",),
            )
        format = detected
    return SourceFile(path=info.path, size=info.size, mtime_ns=info.mtime_ns, format=format)
