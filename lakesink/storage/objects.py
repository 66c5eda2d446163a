"""The object-store seam: whole objects and streams under a root, on local disk or S3 (pyarrow).

Local writes go to a temporary name, are fsynced and renamed, so a present file is always whole.
Errors are translated once, here: what a rerun may get past (timeouts, resets, 5xx, a full disk)
is StorageUnavailable, wrong credentials or a missing bucket a ConfigError.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from lakesink.config import parse_duration
from lakesink.errors import ConfigError, LakesinkError, StorageUnavailable
from lakesink.layout import temp_path
from lakesink.storage.options import StorageOptions
from lakesink.storage.s3 import put_if_absent, s3_client
from lakesink.storage.uri import is_remote, s3_root


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object: its path relative to the store's root, size in bytes and modification time."""

    path: str
    size: int
    mtime_ns: int


class ObjectStore(Protocol):
    """The I/O seam for staged files, ledgers and file sources. Paths are relative to a root."""

    def write_bytes(self, path: str, data: bytes) -> None: ...

    def create_bytes(self, path: str, data: bytes) -> bool:
        """Write `data` as `path` unless a whole object is there already: True if this call wrote it."""
        ...

    def read_bytes(self, path: str) -> bytes: ...

    def open_input(self, path: str) -> pa.NativeFile: ...

    def open_output(self, path: str) -> AbstractContextManager[pa.NativeFile]: ...

    def info(self, path: str) -> ObjectInfo | None: ...

    def list_files(self, prefix: str = "") -> list[ObjectInfo]: ...

    def delete(self, path: str) -> None: ...


class ArrowObjectStore:
    """An `ObjectStore` over a pyarrow filesystem (local disk or S3) rooted at a directory/prefix."""

    def __init__(self, filesystem: pafs.FileSystem, root: str, *, options: StorageOptions | None = None) -> None:
        self._fs = filesystem
        self._root = root.rstrip("/")
        # S3: creates go through boto3's conditional PUT (pyarrow has none); None once the store says it has none.
        self._options = options or StorageOptions()
        self._conditional: Any | None = None
        self._conditional_known = options is None or isinstance(filesystem, pafs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"ArrowObjectStore({type(self._fs).__name__}, root={self._root!r})"

    def _full(self, path: str) -> str:
        return f"{self._root}/{path}" if path else self._root

    def write_bytes(self, path: str, data: bytes) -> None:
        full = self._full(path)
        try:
            if isinstance(self._fs, pafs.LocalFileSystem):
                self._fs.create_dir(full.rsplit("/", 1)[0], recursive=True)
                _write_local_atomically(full, data)
                return
            with self._fs.open_output_stream(full, compression=None) as out:
                out.write(data)
        except OSError as exc:
            raise storage_error("write", full, exc) from exc

    def create_bytes(self, path: str, data: bytes) -> bool:
        """`data` as `path`, never over an existing whole object: True if this call wrote it.

        For files named by their content (lakesink.write.stage): one that is there holds these
        bytes already, and may be named by a committed log entry, which the protocol forbids to
        overwrite. S3: one conditional PUT (If-None-Match). Local disk, or a store without
        conditional PUT: a look first (stat or HEAD), then the usual whole-object write (two writers
        staging the same name at once write the same bytes, each replacing the object whole; an
        object of another size is a torn upload no commit can name, and is replaced).
        """
        if not self._conditional_known:
            self._conditional, self._conditional_known = s3_client(self._options), True
        if self._conditional is not None:
            bucket, _, prefix = self._root.partition("/")
            key = f"{prefix}/{path}" if prefix else path
            created = put_if_absent(self._conditional, bucket, key, data, self._options)
            if created is not None:
                return created
            self._conditional = None  # no If-None-Match on this store: look first, then write
        there = self.info(path)
        if there is not None and there.size == len(data):
            return False
        self.write_bytes(path, data)
        return True

    @contextlib.contextmanager
    def open_output(self, path: str) -> Iterator[pa.NativeFile]:
        """A stream that becomes the object `path` only if the block exits without an error.

        Local disk: a temporary file, fsynced and renamed into place. S3: pyarrow's upload stream,
        which sends large objects as a multipart upload of parts written in the background; the
        object appears when the upload completes. (pyarrow has no abort: after an error, S3 may
        get a truncated object under `path`. Staged names are never reused, so it is an orphan
        that no commit names, and `lakesink gc` deletes it.)
        """
        full = self._full(path)
        local = isinstance(self._fs, pafs.LocalFileSystem)
        target = temp_path(full, os.getpid(), threading.get_ident()) if local else full
        try:
            if local:
                self._fs.create_dir(full.rsplit("/", 1)[0], recursive=True)
            out = self._fs.open_output_stream(target, compression=None)
        except OSError as exc:
            raise storage_error("write", full, exc) from exc
        try:
            try:
                yield out
                out.close()
                if local:
                    fsync_path(target)
                    os.replace(target, full)
            except OSError as exc:
                raise storage_error("write", full, exc) from exc
        except BaseException:
            if local:
                with contextlib.suppress(OSError):
                    out.close()
                with contextlib.suppress(OSError):
                    os.remove(target)
            raise

    def read_bytes(self, path: str) -> bytes:
        if isinstance(self._fs, pafs.LocalFileSystem):
            full = self._full(path)
            try:  # a plain read: pyarrow's file object costs more than a small file's bytes
                with open(full, "rb") as local:
                    return local.read()
            except FileNotFoundError:
                raise
            except OSError as exc:
                raise storage_error("read", full, exc) from exc
        with self.open_input(path) as stream:
            return bytes(stream.read())

    def open_input(self, path: str) -> pa.NativeFile:
        full = self._full(path)
        try:
            # Random access, so Parquet footers can be read; CSV/JSON readers stream it.
            return self._fs.open_input_file(full)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise storage_error("read", full, exc) from exc

    def info(self, path: str) -> ObjectInfo | None:
        full = self._full(path)
        try:
            got = self._fs.get_file_info(full)
        except OSError as exc:
            raise storage_error("stat", full, exc) from exc
        if got.type != pafs.FileType.File:
            return None
        return ObjectInfo(path=path, size=int(got.size or 0), mtime_ns=int(got.mtime_ns or 0))

    def list_files(self, prefix: str = "") -> list[ObjectInfo]:
        base = self._full(prefix)
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        try:
            infos = self._fs.get_file_info(selector)
        except OSError as exc:
            raise storage_error("list", base, exc) from exc
        root_len = len(self._root) + 1 if self._root else 0
        return sorted(
            (
                ObjectInfo(path=i.path[root_len:], size=int(i.size or 0), mtime_ns=int(i.mtime_ns or 0))
                for i in infos
                if i.type == pafs.FileType.File
            ),
            key=lambda o: o.path,
        )

    def delete(self, path: str) -> None:
        full = self._full(path)
        try:
            self._fs.delete_file(full)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise storage_error("delete", full, exc) from exc


def _write_local_atomically(full: str, data: bytes) -> None:
    # A crash mid-write must never leave a torn file under the final name: readers and
    # re-staging both trust that a present file is whole.
    tmp = temp_path(full, os.getpid(), threading.get_ident())
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, full)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)  # a full disk keeps no half-written file (the space goes back)
        raise


def fsync_path(path: str) -> None:
    """fsync a file, or a directory (so that a rename or link into it survives a power cut)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# pyarrow's (AWS SDK's) names for answers no retry can change.
_CREDENTIAL_ERRORS = ("INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "ACCESS_DENIED", "INVALID_TOKEN", "EXPIRED_TOKEN")


def storage_error(op: str, path: str, exc: OSError) -> LakesinkError:
    """TransientError for what a rerun may get past (timeouts, resets, 5xx, a full disk), else terminal."""
    text = str(exc)
    if any(code in text for code in _CREDENTIAL_ERRORS):
        return ConfigError(f"could not {op} {path}: the store refused the credentials ({text}). Check AWS_* settings.")
    if "NO_SUCH_BUCKET" in text:
        return ConfigError(f"could not {op} {path}: the bucket does not exist. Create it, or fix the URI.")
    if exc.errno == errno.ENAMETOOLONG:
        return ConfigError(f"could not {op} {path}: a name in it is too long for the filesystem; it never will be. Shorten it.")
    if exc.errno == errno.ENOSPC:
        # Transient by lakesink's rule: nothing was committed and the same command, rerun once
        # there is space, continues exactly once; no input or setting has to change.
        return StorageUnavailable(f"could not {op} {path}: no space left on device. Free space on that disk, then rerun.")
    return StorageUnavailable(f"could not {op} {path}: {exc}. The store is unreachable or failing: check the endpoint, rerun.")


def open_store(uri: str, options: StorageOptions) -> ArrowObjectStore:
    """An object store rooted at `uri` (a normalized table or source URI)."""
    if not is_remote(uri):
        return ArrowObjectStore(pafs.LocalFileSystem(), uri)
    return ArrowObjectStore(s3_filesystem(options), s3_root(uri), options=options)


def s3_filesystem(options: StorageOptions) -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem configured from the same options delta-rs uses.

    Its timeouts and retries follow `StorageOptions.retry_settings`: the AWS SDK's standard retry
    strategy (exponential backoff with jitter) with MAX_RETRIES + 1 attempts, a connect timeout,
    and TIMEOUT as the request timeout (the SDK's is a stall timeout: a request fails when no byte
    moves for that long, so large uploads are not cut off).
    """
    values = {k.upper(): v for k, v in options.values.items()}
    endpoint = values.get("AWS_ENDPOINT_URL") or values.get("AWS_ENDPOINT")
    retry = options.retry_settings()
    kwargs: dict[str, object] = {
        "region": values.get("AWS_REGION", "us-east-1"),
        "connect_timeout": parse_duration(retry["CONNECT_TIMEOUT"], what="CONNECT_TIMEOUT"),
        "request_timeout": parse_duration(retry["TIMEOUT"], what="TIMEOUT"),
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=int(retry["MAX_RETRIES"]) + 1),
        # An upload starts at its first full part, not at open: an object smaller than a part (a
        # ledger, a small data file) is one PUT instead of three requests of a multipart upload.
        # Errors (a missing bucket) then surface at close, which every writer here checks.
        "allow_delayed_open": True,
    }
    if values.get("AWS_ACCESS_KEY_ID"):
        kwargs["access_key"] = values["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = values.get("AWS_SECRET_ACCESS_KEY", "")
        if values.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = values["AWS_SESSION_TOKEN"]
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs)




def table_filesystem(uri: str, options: StorageOptions) -> pafs.FileSystem:
    """The table root as a pyarrow filesystem (paths relative to the root), for reading a dataset."""
    if not is_remote(uri):
        return pafs.SubTreeFileSystem(uri, pafs.LocalFileSystem())
    return pafs.SubTreeFileSystem(s3_root(uri), s3_filesystem(options))
