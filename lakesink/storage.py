"""Where tables and sources live: URIs, storage options, redaction, and the object-store seam.

Local paths need nothing. `s3://` URIs take their settings from the standard AWS environment
variables, overridden by explicit options; the same options feed delta-rs (the log) and pyarrow
(the staged Parquet files and file sources), so both talk to the same endpoint with the same
timeouts and retry budget (`RETRY_DEFAULTS`): a store that stops answering fails a run with a
TransientError after a bounded time, never hangs it.
"""

from __future__ import annotations

import contextlib
import errno
import glob as globlib
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from lakesink.errors import ConfigError, LakesinkError, StorageUnavailable

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
        "MAX_RETRIES",
        "RETRY_TIMEOUT",
        "BACKOFF_CONFIG.INIT_BACKOFF",
        "BACKOFF_CONFIG.MAX_BACKOFF",
        "BACKOFF_CONFIG.BASE",
    }
)

# Timeouts and retries for every request to an object store, unless the options say otherwise.
# delta-rs's object_store alone would retry a request up to 10 times for up to 3 minutes, and
# lakesink's commit loop retries whole operations on top of that. These keep one unanswered
# delta-rs request to about a minute and a half (retry_timeout, plus the attempt under way) and a
# pyarrow one to MAX_RETRIES + 1 stalls of TIMEOUT, so a black-holed store ends a run with exit 75
# in minutes (worst case, a commit whose outcome must be read back: ~10). Bursts of 5xx (SlowDown,
# InternalError) and resets are absorbed by the retries, with exponential backoff and jitter.
RETRY_DEFAULTS: Mapping[str, str] = {
    "CONNECT_TIMEOUT": "5s",  # to open a connection (both clients)
    "TIMEOUT": "30s",  # delta-rs: a whole request; pyarrow: a request that stalls (no byte moves)
    "MAX_RETRIES": "5",  # retries of a failed request (pyarrow: MAX_RETRIES + 1 attempts)
    "RETRY_TIMEOUT": "60s",  # delta-rs: no new retry after this long since the first attempt
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|secs|m|min|mins)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "secs": 1.0, "m": 60.0, "min": 60.0, "mins": 60.0}
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
        """The options as delta-rs takes them, with lakesink's timeout and retry defaults.

        Those keys are passed in lower case: delta-rs reads its retry config (`max_retries`,
        `retry_timeout`, `backoff_config.*`) in lower case only and ignores any other spelling.

        Raises:
            ConfigError: a timeout or retry option that is not a duration / count.
        """
        delta = dict(self.values)
        for key, value in self.retry_settings().items():
            for given in [k for k in delta if k.upper() == key]:
                del delta[given]
            delta[key.lower()] = value
        return delta

    def retry_settings(self) -> dict[str, str]:
        """`RETRY_DEFAULTS` overridden by the options (keys upper-case), each checked.

        Raises:
            ConfigError: a timeout that is not a duration ("30s", "500ms", "2m", or seconds) or a
                retry count that is not a non-negative integer.
        """
        given = {k.upper(): v for k, v in self.values.items()}
        settings = {key: given.get(key, default) for key, default in RETRY_DEFAULTS.items()}
        settings.update({k: v for k, v in given.items() if k.startswith("BACKOFF_CONFIG.")})
        for key in ("CONNECT_TIMEOUT", "TIMEOUT", "RETRY_TIMEOUT"):
            seconds = parse_seconds(settings[key], key=key)
            settings[key] = f"{round(seconds * 1000)}ms"  # the one form both parsers agree on
        if not settings["MAX_RETRIES"].strip().isdigit():
            raise ConfigError(f"storage option MAX_RETRIES={settings['MAX_RETRIES']!r} must be a whole number >= 0")
        settings["MAX_RETRIES"] = str(int(settings["MAX_RETRIES"]))
        return settings

    def secrets(self) -> list[str]:
        """Every value that must never be printed."""
        return [v for k, v in self.values.items() if k.upper() not in _PUBLIC_OPTION_KEYS and v]

    def redacted(self) -> dict[str, str]:
        return {k: (v if k.upper() in _PUBLIC_OPTION_KEYS else REDACTED) for k, v in self.values.items()}

    def __repr__(self) -> str:
        return f"StorageOptions({self.redacted()!r})"

    __str__ = __repr__


def parse_seconds(value: str, *, key: str) -> float:
    """Seconds in a duration option: "30s", "500ms", "2m", or a bare number of seconds.

    Raises:
        ConfigError: anything else, or zero.
    """
    match = _DURATION.match(str(value))
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(f"storage option {key}={value!r} must be a positive duration such as 30s, 500ms or 2m")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]


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

    def open_output(self, path: str) -> AbstractContextManager[pa.NativeFile]: ...

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
        target = f"{full}.{os.getpid()}.tmp" if local else full
        try:
            if local:
                self._fs.create_dir(full.rsplit("/", 1)[0], recursive=True)
            out = self._fs.open_output_stream(target, compression=None)
        except OSError as exc:
            raise _storage_error("write", full, exc) from exc
        try:
            try:
                yield out
                out.close()
                if local:
                    fsync_path(target)
                    os.replace(target, full)
            except OSError as exc:
                raise _storage_error("write", full, exc) from exc
        except BaseException:
            if local:
                with contextlib.suppress(OSError):
                    out.close()
                with contextlib.suppress(OSError):
                    os.remove(target)
            raise

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


def _storage_error(op: str, path: str, exc: OSError) -> LakesinkError:
    """TransientError for what a rerun may get past (timeouts, resets, 5xx, a full disk), else terminal."""
    text = str(exc)
    if any(code in text for code in _CREDENTIAL_ERRORS):
        return ConfigError(f"could not {op} {path}: the store refused the credentials ({text}). Check AWS_* settings.")
    if "NO_SUCH_BUCKET" in text:
        return ConfigError(f"could not {op} {path}: the bucket does not exist. Create it, or fix the URI.")
    if exc.errno == errno.ENOSPC:
        # Transient by lakesink's rule: nothing was committed and the same command, rerun once
        # there is space, continues exactly once; no input or setting has to change.
        return StorageUnavailable(f"could not {op} {path}: no space left on device. Free space on that disk, then rerun.")
    return StorageUnavailable(f"could not {op} {path}: {exc}. The store is unreachable or failing: check the endpoint, rerun.")


def visible_entries(uri: str, options: StorageOptions, *, limit: int) -> list[str]:
    """Up to `limit` names directly under `uri` that do not start with `_` or `.` (which Delta and
    Spark readers skip: `_delta_log`, `_lakesink`, ...). Empty for a missing location.

    Raises:
        StorageUnavailable: the store did not answer.
    """
    if not is_remote(uri):
        try:
            names = sorted(os.listdir(uri))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [n for n in names if not _is_hidden(n)][:limit]
    parsed = urlparse(uri)
    base = f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
    try:
        infos = s3_filesystem(options).get_file_info(pafs.FileSelector(base, recursive=False, allow_not_found=True))
    except OSError as exc:
        raise _storage_error("list", base, exc) from exc
    names = sorted(i.path.rsplit("/", 1)[-1] for i in infos)
    return [n for n in names if not _is_hidden(n)][:limit]


def open_store(uri: str, options: StorageOptions) -> ArrowObjectStore:
    """An object store rooted at `uri` (a normalized table or source URI)."""
    if not is_remote(uri):
        return ArrowObjectStore(pafs.LocalFileSystem(), uri)
    parsed = urlparse(uri)
    return ArrowObjectStore(s3_filesystem(options), f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/"))


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
        "connect_timeout": parse_seconds(retry["CONNECT_TIMEOUT"], key="CONNECT_TIMEOUT"),
        "request_timeout": parse_seconds(retry["TIMEOUT"], key="TIMEOUT"),
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=int(retry["MAX_RETRIES"]) + 1),
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
