"""Verify a table: every file the current snapshot references is there, whole and readable; optionally,
no key value appears twice.

A file check costs one HEAD and one footer read per file (no data pages); the key check reads only
the key columns of the whole table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lakesink.delta.errors import translate
from lakesink.delta.log_reader import store_path
from lakesink.delta.table import TableHandle
from lakesink.errors import ConfigError
from lakesink.storage.objects import ObjectStore, open_store, table_filesystem
from lakesink.storage.options import StorageOptions
from lakesink.storage.uri import normalize_table_uri

ProblemKind = Literal["missing", "size", "unreadable", "row_count"]

_CHECKERS = 8
_FIXES: dict[str, str] = {
    "missing": "the log references an object that is gone: restore it from bucket versioning or a backup "
    "(same path, same bytes); until then every reader of the table fails",
    "size": "the object is not the one the log recorded (truncated or overwritten): restore the original bytes "
    "from bucket versioning or a backup",
    "unreadable": "the object is not a readable Parquet file: restore the original bytes from bucket versioning or a backup",
    "row_count": "the file holds a different number of rows than the log recorded: restore the original bytes "
    "from bucket versioning or a backup",
    "duplicates": "rows with the same key were committed more than once (e.g. the same data ingested under two app "
    "ids): delete the extra copies with your query engine, and give each source exactly one app id",
}


@dataclass(frozen=True, slots=True)
class FileProblem:
    """One referenced file that is not as the log describes it."""

    path: str
    kind: ProblemKind
    detail: str


@dataclass(frozen=True, slots=True)
class DuplicateKey:
    """A key value that occurs `count` times (column name → value)."""

    key: tuple[tuple[str, object], ...]
    count: int

    def describe(self) -> str:
        return ", ".join(f"{name}={value!r}" for name, value in self.key) + f" ({self.count}x)"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What `verify_table` found; `ok` is True when there is nothing to fix.

    `duplicate_keys` counts key values that occur more than once, `duplicate_rows` the rows beyond
    the first of each; `duplicate_sample` shows up to 10 of them, most repeated first. Without key
    columns, or when files are broken (the scan would fail), `keys_checked` is False.
    """

    table_uri: str
    table_version: int
    files_checked: int
    bytes_checked: int
    rows_checked: int
    external_files: int
    problems: tuple[FileProblem, ...]
    key_columns: tuple[str, ...]
    keys_checked: bool
    duplicate_keys: int
    duplicate_rows: int
    duplicate_sample: tuple[DuplicateKey, ...]

    @property
    def ok(self) -> bool:
        return not self.problems and self.duplicate_keys == 0

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["ok"] = self.ok
        out["duplicate_sample"] = [
            {"key": {name: _json_value(value) for name, value in d.key}, "count": d.count} for d in self.duplicate_sample
        ]
        return out

    def lines(self) -> list[str]:
        """The report as text: what is wrong with each file, the duplicates, and what to do."""
        out = [
            f"table       {self.table_uri} (version {self.table_version})",
            f"files       {self.files_checked} checked ({self.bytes_checked} bytes, {self.rows_checked} rows)"
            + (f", {self.external_files} outside the table root not checked" if self.external_files else ""),
        ]
        out += [f"PROBLEM     {p.kind}: {p.path}: {p.detail}" for p in self.problems]
        if self.key_columns:
            keys = ", ".join(self.key_columns)
            if not self.keys_checked:
                out.append(f"duplicates  not checked on ({keys}): fix the files above first")
            elif self.duplicate_keys:
                out.append(
                    f"PROBLEM     duplicates: {self.duplicate_keys} values of ({keys}) occur more than once "
                    f"({self.duplicate_rows} extra rows), e.g. " + "; ".join(d.describe() for d in self.duplicate_sample)
                )
            else:
                out.append(f"duplicates  none on ({keys})")
        if self.ok:
            out.append("ok          every referenced file is present, whole and readable")
            return out
        for kind in dict.fromkeys([p.kind for p in self.problems] + (["duplicates"] if self.duplicate_keys else [])):
            out.append(f"what to do  {kind}: {_FIXES[kind]}")
        return out


def verify_table(
    table_uri: str,
    *,
    key_columns: Sequence[str] = (),
    storage_options: dict[str, str] | None = None,
    store: ObjectStore | None = None,
    sample_size: int = 10,
) -> VerifyReport:
    """Check the current snapshot's files (present, the logged size, a readable Parquet footer with the
    logged row count) and, given `key_columns`, look for key values that occur more than once.

    Problems are reported, not raised: see `VerifyReport.ok`.

    Raises:
        TableError: there is no Delta table at `table_uri`.
        ConfigError: a key column is not in the table.
        StorageUnavailable: the store did not answer (rerun).
    """
    uri = normalize_table_uri(table_uri)
    options = StorageOptions.resolve(storage_options)
    handle = TableHandle.open_existing(uri, options)
    keys = tuple(key_columns)
    columns = handle.arrow_schema().names
    unknown = [k for k in keys if k not in columns]
    if unknown:
        raise ConfigError(f"key column(s) {', '.join(unknown)} not in the table (columns: {', '.join(columns)})")
    store = store or open_store(uri, options)

    adds = handle.add_actions()
    records = adds.column("num_records").to_pylist() if "num_records" in adds.column_names else [None] * adds.num_rows
    files = [
        (store_path(p, uri), p, int(size), n)
        for p, size, n in zip(adds.column("path").to_pylist(), adds.column("size_bytes").to_pylist(), records, strict=True)
    ]
    local = [(path, size, n) for path, _, size, n in files if path is not None]
    with ThreadPoolExecutor(max_workers=_CHECKERS) as pool:
        found = list(pool.map(lambda f: _check_file(store, *f), local))
    problems = tuple(p for p in found if p is not None)

    duplicates: tuple[int, int, tuple[DuplicateKey, ...]] = (0, 0, ())
    keys_checked = bool(keys) and not problems
    if keys_checked:
        duplicates = _duplicates(handle, keys, options, sample_size=sample_size)
    return VerifyReport(
        table_uri=uri,
        table_version=handle.version(),
        files_checked=len(local),
        bytes_checked=sum(size for _, size, _ in local),
        rows_checked=sum(int(n or 0) for _, _, n in local),
        external_files=len(files) - len(local),
        problems=problems,
        key_columns=keys,
        keys_checked=keys_checked,
        duplicate_keys=duplicates[0],
        duplicate_rows=duplicates[1],
        duplicate_sample=duplicates[2],
    )


def _check_file(store: ObjectStore, path: str, size: int, num_records: int | None) -> FileProblem | None:
    info = store.info(path)
    if info is None:
        return FileProblem(path, "missing", f"no such object (the log says {size} bytes)")
    if info.size != size:
        return FileProblem(path, "size", f"the object has {info.size} bytes, the log says {size}")
    try:
        with store.open_input(path) as stream:
            rows = pq.ParquetFile(stream).metadata.num_rows
    except FileNotFoundError:
        return FileProblem(path, "missing", f"no such object (the log says {size} bytes)")
    except pa.ArrowInvalid as exc:  # a torn or foreign file; I/O errors stay StorageUnavailable
        return FileProblem(path, "unreadable", f"not a readable Parquet file ({exc})")
    if num_records is not None and rows != num_records:
        return FileProblem(path, "row_count", f"the file holds {rows} rows, the log says {num_records}")
    return None


def _duplicates(
    handle: TableHandle, keys: tuple[str, ...], options: StorageOptions, *, sample_size: int
) -> tuple[int, int, tuple[DuplicateKey, ...]]:
    try:
        # Read through pyarrow's own filesystem, not delta-rs's default handler: with both in one
        # process, the interpreter aborted at exit ("terminate called ...") on S3 in a few runs of 30.
        dataset = handle.dataset(table_filesystem(handle.uri, options))
        data = dataset.to_table(columns=list(keys), use_threads=False)
    except (OSError, pa.ArrowException) as exc:
        raise translate(exc, options, doing=f"read the key columns of {handle.uri}") from exc
    counts = data.group_by(list(keys), use_threads=False).aggregate([([], "count_all")])
    repeated = counts.filter(pc.greater(counts.column("count_all"), 1))
    if repeated.num_rows == 0:
        return 0, 0, ()
    extra = int(pc.sum(repeated.column("count_all")).as_py()) - repeated.num_rows
    top = repeated.sort_by([("count_all", "descending"), *((k, "ascending") for k in keys)]).slice(0, sample_size)
    sample = tuple(
        DuplicateKey(key=tuple((k, row[k]) for k in keys), count=int(row["count_all"])) for row in top.to_pylist()
    )
    return repeated.num_rows, extra, sample


def _json_value(value: object) -> object:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)
