"""A folder, glob or S3 prefix of immutable files, read in name order, as a positioned stream.

Position contract (resume needs only the Delta `txn` version):
    The files are sorted by path. A position packs (file_index, row): every record of
    files[0..file_index) and the first `row` records of files[file_index] are committed.
        position = file_index << 40 | row        (2**40 records per file, 2**23 files)
    When a batch ends exactly at the end of a file, the position is (file_index + 1, 0), so a
    finished source and a fresh file appended later both resume cleanly.

What the contract assumes, and checks: files already (partly) ingested never change, vanish or
gain a new neighbour sorting before them; new files sort after every committed one. Each commit
stages a ledger beside the table (`_lakesink/ledger/<app>/<position>.json`) holding a hash chain
over (path, size, mtime) of every file the position covers. On resume the chain is recomputed
from a fresh listing; any difference is a SourceContractViolation naming the file, never a silent
skip or duplicate.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from lakesink.errors import BadRecord, ConfigError, SourceContractViolation
from lakesink.storage import (
    ObjectInfo,
    ObjectStore,
    StorageOptions,
    expand_local_source,
    is_remote,
    iter_hidden_filtered,
    open_store,
)

Format = Literal["ndjson", "csv", "parquet"]
ROW_BITS = 40
_ROW_MASK = (1 << ROW_BITS) - 1
_MAX_FILES = 1 << (63 - ROW_BITS)
_EXTENSIONS: dict[str, Format] = {
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".json": "ndjson",
    ".csv": "csv",
    ".parquet": "parquet",
}
_READ_BLOCK_BYTES = 8 << 20


@dataclass(frozen=True, slots=True, order=True)
class FilePosition:
    """Progress through a sorted file list: all of files[0..file_index) plus `row` records of the next."""

    file_index: int
    row: int

    def encode(self) -> int:
        return (self.file_index << ROW_BITS) | self.row

    @classmethod
    def decode(cls, value: int) -> FilePosition:
        return cls(file_index=value >> ROW_BITS, row=value & _ROW_MASK)

    def covered_files(self) -> int:
        """How many files contributed records up to this position."""
        return self.file_index + (1 if self.row else 0)


@dataclass(frozen=True, slots=True)
class SourceFile:
    path: str
    size: int
    mtime_ns: int
    format: Format


@dataclass(frozen=True, slots=True)
class Chunk:
    """Records [row_start, row_end) of files[file_index]; `last` when the file ends with it."""

    file_index: int
    file: SourceFile
    table: pa.Table
    row_start: int
    last: bool

    @property
    def row_end(self) -> int:
        return self.row_start + self.table.num_rows


class FileSource:
    """The files under `uri` (local folder or glob, or `s3://bucket/prefix[/glob]`), listed once."""

    def __init__(
        self,
        uri: str,
        *,
        format: Format | None = None,
        storage_options: StorageOptions | None = None,
        store: ObjectStore | None = None,
    ) -> None:
        self.uri = uri
        options = storage_options or StorageOptions.resolve()
        if is_remote(uri):
            root, pattern = _split_remote_glob(uri)
            self.store: ObjectStore = store or open_store(root, options)
            infos = [
                i for i in iter_hidden_filtered(self.store.list_files("")) if pattern is None or fnmatch.fnmatch(i.path, pattern)
            ]
        else:
            root, rel = expand_local_source(uri)
            self.store = store or open_store(root, options)
            infos = [i for i in (self.store.info(p) for p in rel) if i is not None]
        if not infos:
            raise ConfigError(f"no files found at {uri}: check the path or glob (names starting with '.' or '_' are skipped)")
        self.files = [_source_file(i, format) for i in infos]
        if len(self.files) >= _MAX_FILES:
            raise ConfigError(f"{uri} holds {len(self.files)} files; a file source takes at most {_MAX_FILES - 1}")

    def __repr__(self) -> str:
        return f"FileSource({self.uri!r}, files={len(self.files)})"

    def chain(self, count: int) -> str:
        """The hash chain over (path, size, mtime) of files[0..count)."""
        digest = hashlib.sha256(b"lakesink-file-chain-v1")
        for f in self.files[:count]:
            digest.update(json.dumps([f.path, f.size, f.mtime_ns]).encode())
        return digest.hexdigest()

    def ledger(self, *, app_id: str, end: FilePosition, batch_files: Sequence[int]) -> bytes:
        """The ledger staged before committing `end`: enough to verify the source on resume."""
        body = {
            "app_id": app_id,
            "position": end.encode(),
            "file_index": end.file_index,
            "row": end.row,
            "covered_files": end.covered_files(),
            "chain": self.chain(end.covered_files()),
            "files": [{"index": i, **asdict(self.files[i])} for i in batch_files],
        }
        return json.dumps(body, indent=1, sort_keys=True).encode()

    def verify(self, committed: FilePosition, ledger: bytes | None) -> None:
        """Check that the files behind `committed` are exactly those the ledger recorded.

        Raises:
            SourceContractViolation: a covered file changed, vanished, or a new one sorts before it.
        """
        covered = committed.covered_files()
        if ledger is None:
            raise SourceContractViolation(
                f"the table holds position {committed.encode()} for this app id but no source ledger for it: "
                "was the app id written by another program? Use a new --app-id (and table) for this source."
            )
        recorded = json.loads(ledger)
        if covered > len(self.files):
            raise SourceContractViolation(
                f"the committed position covers {covered} files but {self.uri} now lists {len(self.files)}: "
                "ingested files were removed. Restore them, or ingest into a new table."
            )
        if recorded["chain"] == self.chain(covered):
            return
        for entry in recorded["files"]:
            now = self.files[entry["index"]]
            if now.path != entry["path"]:
                raise SourceContractViolation(
                    f"file #{entry['index']} was {entry['path']!r} when committed and is now {now.path!r}: "
                    "a file was added or removed before it. New files must sort after every ingested one "
                    "(e.g. name them by time); restore the listing or ingest into a new table."
                )
            if (now.size, now.mtime_ns) != (entry["size"], entry["mtime_ns"]):
                raise SourceContractViolation(
                    f"{now.path!r} changed after it was ingested (size {entry['size']} -> {now.size}, "
                    "or modification time): files are treated as immutable. Write changes as new files."
                )
        first = recorded["files"][0]["path"] if recorded["files"] else "the last committed file"
        raise SourceContractViolation(
            f"a file at or before {first!r} changed, vanished or a new one sorts before it since it was "
            "ingested: files are treated as immutable and new files must sort after ingested ones."
        )

    def chunks(self, start: FilePosition, *, schema: pa.Schema | None) -> Iterator[Chunk]:
        """Records from `start` on, in order, in chunks of the reader's block size.

        `schema` (the table's, when it exists) types CSV and NDJSON columns, so every file is read
        with the table's types rather than types guessed from its own first block.

        Raises:
            BadRecord: a record cannot be parsed or typed; names the file and line (or row).
        """
        for index in range(start.file_index, len(self.files)):
            skip = start.row if index == start.file_index else 0
            yield from self._file_chunks(index, skip, schema)

    def _file_chunks(self, index: int, skip: int, schema: pa.Schema | None) -> Iterator[Chunk]:
        file = self.files[index]
        row = 0
        pending: pa.Table | None = None
        for batch in self._read(file, schema):
            n = batch.num_rows
            if row + n <= skip:
                row += n
                continue
            table = pa.Table.from_batches([batch])
            if row < skip:
                table = table.slice(skip - row)
                row = skip
            if pending is not None:
                yield Chunk(index, file, pending, row - pending.num_rows, last=False)
            pending = table
            row += table.num_rows
        if skip > row:
            raise SourceContractViolation(f"{file.path!r} has {row} records but {skip} were committed: it changed after ingest")
        if pending is None:
            pending = pa.table({})
        yield Chunk(index, file, pending, row - pending.num_rows, last=True)

    def _read(self, file: SourceFile, schema: pa.Schema | None) -> Iterator[pa.RecordBatch]:
        if file.size == 0:
            return
        try:
            with self.store.open_input(file.path) as stream:
                if file.format == "parquet":
                    yield from pq.ParquetFile(stream).iter_batches(batch_size=64 * 1024)
                elif file.format == "csv":
                    yield from pacsv.open_csv(
                        stream, read_options=pacsv.ReadOptions(block_size=_READ_BLOCK_BYTES), convert_options=_csv_types(schema)
                    )
                else:
                    yield from pajson.open_json(
                        stream,
                        read_options=pajson.ReadOptions(block_size=_READ_BLOCK_BYTES),
                        parse_options=pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer")
                        if schema is not None
                        else None,
                    )
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            if file.format != "parquet" and "Empty" in str(exc) and not self.store.read_bytes(file.path).strip():
                return  # a file of blank lines holds no records
            raise self._bad_record(file, exc, schema) from exc

    def _bad_record(self, file: SourceFile, exc: Exception, schema: pa.Schema | None) -> BadRecord:
        where = f"{self.uri.rstrip('/')}/{file.path}" if not file.path.startswith("/") else file.path
        if file.format == "ndjson":
            located = _locate_bad_json_line(self.store, file, schema)
            if located:
                line, problem = located
                return BadRecord(
                    f"{where}:{line}: {problem}. Fix or remove that line, then rerun; nothing was committed from it."
                )
        if file.format == "csv":
            located = _locate_bad_csv_line(self.store, file, schema)
            if located:
                line, problem = located
                return BadRecord(f"{where}:{line}: {problem}. Fix that line, then rerun; nothing was committed from it.")
        return BadRecord(f"{where}: {exc}. Fix the file, then rerun; nothing was committed from it.")


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
                f"cannot tell the format of {info.path!r} from its extension: pass --format ndjson|csv|parquet or narrow the glob"
            )
        format = detected
    return SourceFile(path=info.path, size=info.size, mtime_ns=info.mtime_ns, format=format)


def _csv_types(schema: pa.Schema | None) -> pacsv.ConvertOptions:
    if schema is None:
        return pacsv.ConvertOptions()
    return pacsv.ConvertOptions(column_types={f.name: f.type for f in schema})


def _locate_bad_json_line(store: ObjectStore, file: SourceFile, schema: pa.Schema | None) -> tuple[int, str] | None:
    """The first line that is not a JSON object or does not fit `schema` (slow path: errors only)."""
    with store.open_input(file.path) as stream:
        for number, raw in enumerate(_lines(stream), start=1):
            text = raw.strip()
            if not text:
                continue
            try:
                record = json.loads(text)
            except ValueError as exc:
                return number, f"not valid JSON ({exc.args[0] if exc.args else exc})"
            if not isinstance(record, dict):
                return number, f"a JSON {type(record).__name__}, not an object"
            if schema is not None:
                for field in schema:
                    if field.name in record:
                        try:
                            pa.array([record[field.name]], type=field.type)
                        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
                            value = record[field.name]
                            return number, f"field {field.name!r} = {value!r} is not {field.type} as the table requires"
    return None


def _locate_bad_csv_line(store: ObjectStore, file: SourceFile, schema: pa.Schema | None) -> tuple[int, str] | None:
    """The first CSV line with the wrong number of fields or a value that does not fit `schema`."""
    import csv

    with store.open_input(file.path) as stream:
        reader = csv.reader(io.TextIOWrapper(io.BufferedReader(_ReadableStream(stream)), encoding="utf-8", newline=""))
        header = next(reader, None)
        if header is None:
            return None
        types = {f.name: f.type for f in schema} if schema is not None else {}
        for row in reader:
            if len(row) != len(header):
                return reader.line_num, f"{len(row)} fields where the header has {len(header)}"
            for name, value in zip(header, row, strict=True):
                if name in types and value != "":
                    try:
                        pa.array([value]).cast(types[name])
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                        return reader.line_num, f"column {name!r} = {value!r} is not {types[name]} as the table requires"
    return None


class _ReadableStream(io.RawIOBase):
    """A pyarrow input stream as a Python binary stream, for the csv module."""

    def __init__(self, stream: pa.NativeFile) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _lines(stream: pa.NativeFile) -> Iterator[bytes]:
    buffered = b""
    while True:
        block = stream.read(1 << 20)
        if not block:
            break
        buffered += block
        *complete, buffered = buffered.split(b"\n")
        yield from complete
    if buffered:
        yield buffered
