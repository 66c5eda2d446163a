"""Create-only writes and plain reads of Delta log entries (`_delta_log/<version>.json`).

A Delta commit is the creation of the next log entry: whoever creates version v first has
committed it, and every other writer's create of v must fail. lakesink writes its append commits
through this seam instead of through delta-rs (whose commit LISTs the log and re-reads every live
file's stats): a commit made here is one create-only PUT, whatever the length of the history.
Only lakesink.commit uses it (`make lint` checks it).

* Local disk: the entry is written to a temporary file, fsynced, and hard-linked to its name;
  `link` fails when the name exists, so two writers cannot both create it. (A filesystem without
  hard links: ConditionalPutUnsupported, and delta-rs commits instead.)
* S3 (and stores that speak its conditional PUT: moto, MinIO, LocalStack): `PutObject` with
  `If-None-Match: *` answers 412 when the key exists. boto3 re-sends a PUT whose answer was lost;
  that is safe here, because a re-sent create of an entry that landed is refused (412) and the
  caller reads the entry back to recognise its own commit.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Any, Protocol
from urllib.parse import urlparse

from lakesink.config import parse_duration
from lakesink.errors import ConfigError, LakesinkError, StorageUnavailable
from lakesink.layout import LOG_DIR, log_entry_name, log_entry_temp_name
from lakesink.storage.objects import fsync_path
from lakesink.storage.options import StorageOptions, redact
from lakesink.storage.uri import is_remote


class ConditionalPutUnsupported(LakesinkError):
    """The store does not do create-only PUTs; nothing was written. Commit through delta-rs instead."""


class LogStore(Protocol):
    """Where log entries are created and read; injectable, so tests can make it fail."""

    def create(self, version: int, body: bytes) -> bool:
        """Create entry `version` with `body`: True if this call created it, False if it exists.

        Raises:
            StorageUnavailable: no answer; the entry may or may not have been created.
            ConditionalPutUnsupported: the store cannot refuse an existing name; nothing was written.
            ConfigError: the store refused the credentials, or the bucket does not exist.
        """
        ...

    def read(self, version: int) -> bytes | None:
        """Entry `version`, or None if there is none.

        Raises:
            StorageUnavailable: the store did not answer.
        """
        ...


class LocalLogStore:
    """Log entries of a table on local disk."""

    def __init__(self, table_dir: str) -> None:
        self._dir = os.path.join(table_dir, LOG_DIR)

    def __repr__(self) -> str:
        return f"LocalLogStore({self._dir!r})"

    def create(self, version: int, body: bytes) -> bool:
        final = os.path.join(self._dir, log_entry_name(version))
        tmp = os.path.join(self._dir, log_entry_temp_name())
        try:
            with open(tmp, "xb") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(tmp, final)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno in _NO_HARD_LINKS:
                    raise ConditionalPutUnsupported(f"{self._dir}: the filesystem has no hard links ({exc})") from None
                raise
            fsync_path(self._dir)
            return True
        except OSError as exc:
            raise StorageUnavailable(f"could not write log entry {final}: {exc}. Check the disk, then rerun.") from exc
        finally:
            with contextlib.suppress(OSError):
                os.remove(tmp)

    def read(self, version: int) -> bytes | None:
        path = os.path.join(self._dir, log_entry_name(version))
        try:
            with open(path, "rb") as entry:
                return entry.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageUnavailable(f"could not read log entry {path}: {exc}. Check the disk, then rerun.") from exc


# What link(2) answers on a filesystem without hard links (FAT, some FUSE and network mounts).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV})


class S3LogStore:
    """Log entries of a table on S3, created with a conditional PUT (boto3: pyarrow has none)."""

    def __init__(self, table_uri: str, options: StorageOptions) -> None:
        parsed = urlparse(table_uri)
        self._bucket = parsed.netloc
        prefix = parsed.path.strip("/")
        self._prefix = f"{prefix}/{LOG_DIR}/" if prefix else f"{LOG_DIR}/"
        self._options = options
        self._client = _s3_client(options)

    def __repr__(self) -> str:
        return f"S3LogStore(s3://{self._bucket}/{self._prefix}, storage_options={self._options!r})"

    def _key(self, version: int) -> str:
        return f"{self._prefix}{log_entry_name(version)}"

    def create(self, version: int, body: bytes) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key(version)
        try:
            self._client.put_object(Bucket=self._bucket, Key=key, Body=body, IfNoneMatch="*")
        except ClientError as exc:
            status, code = _status(exc)
            if status == 412 or code == "PreconditionFailed":
                return False
            if status == 409 or code == "ConditionalRequestConflict":
                return False  # another create of this key is in flight: the caller reads what is there
            if status == 501 or code == "NotImplemented":
                raise ConditionalPutUnsupported(f"s3://{self._bucket}/{key}: the store does not support If-None-Match") from None
            raise self._error("PUT", key, exc) from None
        except BotoCoreError as exc:
            raise self._error("PUT", key, exc) from None
        return True

    def read(self, version: int) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key(version)
        try:
            answer = self._client.get_object(Bucket=self._bucket, Key=key)
            return bytes(answer["Body"].read())
        except ClientError as exc:
            status, code = _status(exc)
            if status == 404 and code != "NoSuchBucket":
                return None
            raise self._error("GET", key, exc) from None
        except BotoCoreError as exc:
            raise self._error("GET", key, exc) from None

    def _error(self, method: str, key: str, exc: Exception) -> LakesinkError:
        """One line naming the request and the answer; botocore's text carries no secret, but is scrubbed anyway."""
        from botocore.exceptions import ClientError

        target = f"{method} s3://{self._bucket}/{key}"
        if isinstance(exc, ClientError):
            status, code = _status(exc)
            message = exc.response.get("Error", {}).get("Message", "")
            retries = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
            answer = redact(f"{status} {code}" + (f" ({message})" if message else ""), self._options)
            if code == "NoSuchBucket":
                return ConfigError(f"{target}: the bucket does not exist. Create it, or fix the table URI.")
            if code in _CREDENTIAL_CODES or status == 403:
                return ConfigError(f"{target}: the store refused the credentials ({answer}). Check AWS_* settings.")
            return StorageUnavailable(
                f"{target}: {answer}, after {retries} retries. The store is unreachable or failing: check the endpoint, rerun."
            )
        return StorageUnavailable(
            f"{target}: {redact(str(exc), self._options)}. The store is unreachable or failing: check the endpoint, rerun."
        )


_CREDENTIAL_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidClientTokenId"}
)


def _status(exc: Any) -> tuple[int, str]:
    response = exc.response
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)), str(response.get("Error", {}).get("Code", ""))


def _s3_client(options: StorageOptions) -> Any:
    """A boto3 S3 client with the endpoint, credentials, timeouts and retry budget delta-rs and pyarrow get."""
    import boto3
    from botocore.config import Config

    values = {k.upper(): v for k, v in options.values.items()}
    retry = options.retry_settings()
    endpoint = values.get("AWS_ENDPOINT_URL") or values.get("AWS_ENDPOINT")
    config: dict[str, Any] = {
        "region_name": values.get("AWS_REGION", "us-east-1"),
        "connect_timeout": parse_duration(retry["CONNECT_TIMEOUT"], what="CONNECT_TIMEOUT"),
        "read_timeout": parse_duration(retry["TIMEOUT"], what="TIMEOUT"),
        "retries": {"mode": "standard", "total_max_attempts": int(retry["MAX_RETRIES"]) + 1},
    }
    if endpoint and values.get("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "").lower() != "true":
        config["s3"] = {"addressing_style": "path"}  # as delta-rs and pyarrow address a custom endpoint
    credentials: dict[str, str] = {}
    if values.get("AWS_ACCESS_KEY_ID"):
        credentials["aws_access_key_id"] = values["AWS_ACCESS_KEY_ID"]
        credentials["aws_secret_access_key"] = values.get("AWS_SECRET_ACCESS_KEY", "")
        if values.get("AWS_SESSION_TOKEN"):
            credentials["aws_session_token"] = values["AWS_SESSION_TOKEN"]
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint or None, config=Config(**config), **credentials)


# Options under which delta-rs coordinates commits some other way than a conditional PUT, which
# every writer of the table must then share: lakesink leaves those tables' commits to delta-rs.
_OTHER_COMMIT_COORDINATION = ("AWS_S3_LOCKING_PROVIDER", "DYNAMO_LOCK_TABLE_NAME", "AWS_S3_ALLOW_UNSAFE_RENAME")


def open_log_store(table_uri: str, options: StorageOptions) -> LogStore | None:
    """The log store of a table, or None when its commits must go through delta-rs."""
    if not is_remote(table_uri):
        return LocalLogStore(table_uri)
    values = {k.upper(): v for k, v in options.values.items()}
    if any(values.get(key) for key in _OTHER_COMMIT_COORDINATION):
        return None
    if values.get("CONDITIONAL_PUT", "etag").lower() not in ("etag", ""):
        return None
    return S3LogStore(table_uri, options)
