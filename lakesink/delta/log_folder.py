"""Listing and reading a table's `_delta_log` (log entries, `_last_checkpoint`), whoever commits to it.

lakesink.delta.snapshot reads the log through this; lakesink.delta.log_store adds the create-only
writes of log entries on top of it (only lakesink.commit uses those).

* Local disk: a directory listing and plain reads.
* S3: boto3 (pyarrow can neither LIST from a key on nor GET without a HEAD first): a LIST with
  StartAfter, so a refresh of a long log is one short LIST, and one GET per object.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from lakesink.errors import StorageUnavailable
from lakesink.layout import LOG_DIR, log_entry_name
from lakesink.storage.options import StorageOptions
from lakesink.storage.s3 import get_or_none, list_after, s3_client
from lakesink.storage.uri import is_remote


class LocalLogFolder:
    """The `_delta_log` of a table on local disk."""

    def __init__(self, table_dir: str) -> None:
        self._dir = os.path.join(table_dir, LOG_DIR)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._dir!r})"

    def names_after(self, version: int) -> list[str]:
        """The names in `_delta_log` that sort after log entry `version`'s (-1: all), in order."""
        first = log_entry_name(version) if version >= 0 else ""
        try:
            return sorted(name for name in os.listdir(self._dir) if name > first)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageUnavailable(f"could not list {self._dir}: {exc}. Check the disk, then rerun.") from exc

    def read_file(self, name: str) -> bytes | None:
        """The file `name` in `_delta_log` (a log entry, `_last_checkpoint`), or None if there is none."""
        path = os.path.join(self._dir, name)
        try:
            with open(path, "rb") as entry:
                return entry.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageUnavailable(f"could not read {path}: {exc}. Check the disk, then rerun.") from exc

    def read(self, version: int) -> bytes | None:
        """Log entry `version`, or None if there is none."""
        return self.read_file(log_entry_name(version))


class S3LogFolder:
    """The `_delta_log` of a table on S3."""

    def __init__(self, table_uri: str, options: StorageOptions) -> None:
        parsed = urlparse(table_uri)
        self._bucket = parsed.netloc
        prefix = parsed.path.strip("/")
        self._prefix = f"{prefix}/{LOG_DIR}/" if prefix else f"{LOG_DIR}/"
        self._options = options
        self._client = s3_client(options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(s3://{self._bucket}/{self._prefix}, storage_options={self._options!r})"

    def _key(self, version: int) -> str:
        return f"{self._prefix}{log_entry_name(version)}"

    def names_after(self, version: int) -> list[str]:
        """The names in `_delta_log` that sort after log entry `version`'s (-1: all), in order: one LIST."""
        start = self._key(version) if version >= 0 else self._prefix
        keys = list_after(self._client, self._bucket, self._prefix, start, self._options)
        return [key[len(self._prefix) :] for key in keys if "/" not in key[len(self._prefix) :]]

    def read_file(self, name: str) -> bytes | None:
        """The file `name` in `_delta_log` (a log entry, `_last_checkpoint`), or None if there is none."""
        return get_or_none(self._client, self._bucket, f"{self._prefix}{name}", self._options)

    def read(self, version: int) -> bytes | None:
        """Log entry `version`, or None if there is none."""
        return get_or_none(self._client, self._bucket, self._key(version), self._options)


def open_log_folder(table_uri: str, options: StorageOptions) -> LocalLogFolder | S3LogFolder:
    """The table's `_delta_log` to list and read."""
    return LocalLogFolder(table_uri) if not is_remote(table_uri) else S3LogFolder(table_uri, options)
