"""Where tables and sources live: URIs, storage options, redaction, and the object-store seam.

Local paths need nothing. `s3://` URIs take their settings from the standard AWS environment
variables, overridden by explicit options; the same options feed delta-rs (the log) and pyarrow
(the staged Parquet files and file sources), so both talk to the same endpoint.
"""

from __future__ import annotations

import glob as globlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from lakesink.errors import ConfigError, StorageUnavailable

# Options whose values may be shown; every other value is treated as a secret.
_PUBLIC_OPTION_KEYS = frozenset(
    {
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ALLOW_HTTP",
        "AWS_S3_ALLOW_UNSAFE_RENAME",
        "AWS_CONDITIONAL_PUT",
        "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
        "TIMEOUT",
        "CONNECT_TIMEOUT",
    }
)
_ENV_KEYS = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_ALLOW_HTTP",
)
REDACTED = "***"


def is_remote(uri: str) -> bool:
    """True for an object-store URI (`s3://...`), False for a local path."""
    return urlparse(uri).scheme in ("s3", "s3a")


def normalize_table_uri(uri: str) -> str:
    """An absolute local path, or the `s3://bucket/prefix` URI without a trailing slash."""
    if not uri:
        raise ConfigError("the table URI is empty: give a local path or s3://bucket/prefix")
    if is_remote(uri):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise ConfigError(f"{uri!r} names no bucket: use s3://bucket/prefix")
        return f"s3://{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
    if "://" in uri and not uri.startswith("file://"):
        raise ConfigError(f"unsupported URI scheme in {uri!r}: use a local path or s3://bucket/prefix")
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return os.path.abspath(os.path.expanduser(path))


@dataclass(frozen=True, slots=True)
class StorageOptions:
    """Options for the object store, with secrets hidden from `repr` and `str`.

    Keys follow delta-rs (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, ...).
    """

    values: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def resolve(cls, explicit: Mapping[str, str] | None = None, *, environ: Mapping[str, str] | None = None) -> StorageOptions:
        """Standard AWS environment variables, overridden by `explicit` (keys upper-cased)."""
        env = os.environ if environ is None else environ
        merged: dict[str, str] = {}
        for key in _ENV_KEYS:
            if env.get(key):
                merged[key] = env[key]
        if "AWS_REGION" not in merged and env.get("AWS_DEFAULT_REGION"):
            merged["AWS_REGION"] = env["AWS_DEFAULT_REGION"]
        for key, value in (explicit or {}).items():
            merged[key.upper()] = str(value)
        return cls(values=merged)

    def for_delta(self) -> dict[str, str]:
        """The options as delta-rs takes them."""
        return dict(self.values)

    def secrets(self) -> list[str]:
        """Every value that must never be printed."""
        return [v for k, v in self.values.items() if k.upper() not in _PUBLIC_OPTION_KEYS and v]

    def redacted(self) -> dict[str, str]:
        return {k: (v if k.upper() in _PUBLIC_OPTION_KEYS else REDACTED) for k, v in self.values.items()}

    def __repr__(self) -> str:
        return f"StorageOptions({self.redacted()!r})"

    __str__ = __repr__


def redact(text: str, options: StorageOptions | None) -> str:
    """`text` with every secret value of `options` (and any AWS-looking secret) replaced."""
    if options is not None:
        for secret in sorted(options.secrets(), key=len, reverse=True):
            if len(secret) >= 4:
                text = text.replace(secret, REDACTED)
    return re.sub(r"(?i)(secret[_-]?access[_-]?key|session[_-]?token)(\W+)\S+", r"\1\2" + REDACTED, text)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object: its path relative to the store's root, size in bytes and modification time."""

    path: str
    size: int
    mtime_ns: int


class ObjectStore(Protocol):
    """The I/O seam for staged files, ledgers and file sources. Paths are relative to a root."""

    def write_bytes(self, path: str, data: bytes) -> None: ...

    def read_bytes(self, path: str) -> bytes: ...

    def open_input(self, path: str) -> pa.NativeFile: ...

    def info(self, path: str) -> ObjectInfo | None: ...

    def list_files(self, prefix: str = "") -> list[ObjectInfo]: ...

    def delete(self, path: str) -> None: ...


class ArrowObjectStore:
    """An `ObjectStore` over a pyarrow filesystem (local disk or S3) rooted at a directory/prefix."""

    def __init__(self, filesystem: pafs.FileSystem, root: str) -> None:
        self._fs = filesystem
        self._root = root.rstrip("/")

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
            raise _storage_error("write", full, exc) from exc

    def read_bytes(self, path: str) -> bytes:
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
            raise _storage_error("read", full, exc) from exc

    def info(self, path: str) -> ObjectInfo | None:
        full = self._full(path)
        try:
            got = self._fs.get_file_info(full)
        except OSError as exc:
            raise _storage_error("stat", full, exc) from exc
        if got.type != pafs.FileType.File:
            return None
        return ObjectInfo(path=path, size=int(got.size or 0), mtime_ns=int(got.mtime_ns or 0))

    def list_files(self, prefix: str = "") -> list[ObjectInfo]:
        base = self._full(prefix)
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        try:
            infos = self._fs.get_file_info(selector)
        except OSError as exc:
            raise _storage_error("list", base, exc) from exc
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
            raise _storage_error("delete", full, exc) from exc


def _write_local_atomically(full: str, data: bytes) -> None:
    # A crash mid-write must never leave a torn file under the final name: readers and
    # re-staging both trust that a present file is whole.
    tmp = f"{full}.{os.getpid()}.tmp"
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, full)


def _storage_error(op: str, path: str, exc: OSError) -> StorageUnavailable:
    return StorageUnavailable(f"could not {op} {path}: {exc}. Check the endpoint and credentials, then rerun.")


def open_store(uri: str, options: StorageOptions) -> ArrowObjectStore:
    """An object store rooted at `uri` (a normalized table or source URI)."""
    if not is_remote(uri):
        return ArrowObjectStore(pafs.LocalFileSystem(), uri)
    parsed = urlparse(uri)
    return ArrowObjectStore(s3_filesystem(options), f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/"))


def s3_filesystem(options: StorageOptions) -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem configured from the same options delta-rs uses."""
    values = {k.upper(): v for k, v in options.values.items()}
    endpoint = values.get("AWS_ENDPOINT_URL") or values.get("AWS_ENDPOINT")
    kwargs: dict[str, object] = {
        "region": values.get("AWS_REGION", "us-east-1"),
        "connect_timeout": 10,
        "request_timeout": 60,
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


def expand_local_source(pattern: str) -> tuple[str, list[str]]:
    """For a local folder or glob: the root directory and the matching file paths relative to it."""
    path = os.path.abspath(os.path.expanduser(pattern))
    if os.path.isdir(path):
        found = [os.path.join(d, f) for d, _, files in os.walk(path) for f in files]
        root = path
    else:
        found = [p for p in globlib.glob(path, recursive=True) if os.path.isfile(p)]
        root = _glob_root(path)
    rel = sorted(os.path.relpath(p, root).replace(os.sep, "/") for p in found)
    return root, [r for r in rel if not _is_hidden(r)]


def _glob_root(pattern: str) -> str:
    parts: list[str] = []
    for part in pattern.split(os.sep):
        if any(ch in part for ch in "*?["):
            break
        parts.append(part)
    root = os.sep.join(parts) or os.sep
    return root if os.path.isdir(root) else os.path.dirname(root)


def _is_hidden(rel: str) -> bool:
    return any(part.startswith((".", "_")) for part in rel.split("/"))


def iter_hidden_filtered(infos: list[ObjectInfo]) -> Iterator[ObjectInfo]:
    """Objects whose path has no hidden (`.`/`_`) component, as Spark and Delta skip them."""
    return (i for i in infos if not _is_hidden(i.path))
