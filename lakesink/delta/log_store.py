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
from typing import Protocol

from lakesink.delta.log_folder import LocalLogFolder, S3LogFolder
from lakesink.errors import LakesinkError, StorageUnavailable
from lakesink.layout import log_entry_name, log_entry_temp_name
from lakesink.storage.objects import fsync_path
from lakesink.storage.options import StorageOptions
from lakesink.storage.s3 import put_if_absent
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


class LocalLogStore(LocalLogFolder):
    """Log entries of a table on local disk."""

    def create(self, version: int, body: bytes) -> bool:
        final = os.path.join(self._dir, log_entry_name(version))
        tmp = os.path.join(self._dir, log_entry_temp_name())
        try:
            if version == 0:
                os.makedirs(self._dir, exist_ok=True)  # a new table: its folder may not exist yet
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


# What link(2) answers on a filesystem without hard links (FAT, some FUSE and network mounts).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV})


class S3LogStore(S3LogFolder):
    """Log entries of a table on S3, created with a conditional PUT (boto3: pyarrow has none)."""

    def create(self, version: int, body: bytes) -> bool:
        key = self._key(version)
        created = put_if_absent(self._client, self._bucket, key, body, self._options)
        if created is None:
            raise ConditionalPutUnsupported(f"s3://{self._bucket}/{key}: the store does not support If-None-Match")
        return created


# Options under which delta-rs coordinates commits some other way than a conditional PUT, which
# every writer of the table must then share: lakesink leaves those tables' commits to delta-rs.
_OTHER_COMMIT_COORDINATION = ("AWS_S3_LOCKING_PROVIDER", "DYNAMO_LOCK_TABLE_NAME", "AWS_S3_ALLOW_UNSAFE_RENAME")


def open_log_store(table_uri: str, options: StorageOptions) -> LocalLogStore | S3LogStore | None:
    """The log store of a table, or None when its commits must go through delta-rs."""
    if not is_remote(table_uri):
        return LocalLogStore(table_uri)
    values = {k.upper(): v for k, v in options.values.items()}
    if any(values.get(key) for key in _OTHER_COMMIT_COORDINATION):
        return None
    if values.get("CONDITIONAL_PUT", "etag").lower() not in ("etag", ""):
        return None
    return S3LogStore(table_uri, options)
