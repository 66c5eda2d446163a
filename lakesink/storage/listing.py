"""Listing locations: what a table location or a file source holds, hidden names left out."""

from __future__ import annotations

import glob as globlib
import os
from collections.abc import Iterator

import pyarrow.fs as pafs

from lakesink.layout import is_hidden
from lakesink.storage.objects import ObjectInfo, s3_filesystem, storage_error
from lakesink.storage.options import StorageOptions
from lakesink.storage.uri import is_remote, s3_root


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
        return [n for n in names if not is_hidden(n)][:limit]
    base = s3_root(uri)
    try:
        infos = s3_filesystem(options).get_file_info(pafs.FileSelector(base, recursive=False, allow_not_found=True))
    except OSError as exc:
        raise storage_error("list", base, exc) from exc
    names = sorted(i.path.rsplit("/", 1)[-1] for i in infos)
    return [n for n in names if not is_hidden(n)][:limit]


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
    return root, [r for r in rel if not is_hidden(r)]


def _glob_root(pattern: str) -> str:
    parts: list[str] = []
    for part in pattern.split(os.sep):
        if any(ch in part for ch in "*?["):
            break
        parts.append(part)
    root = os.sep.join(parts) or os.sep
    return root if os.path.isdir(root) else os.path.dirname(root)


def iter_hidden_filtered(infos: list[ObjectInfo]) -> Iterator[ObjectInfo]:
    """Objects whose path has no hidden (`.`/`_`) component, as Spark and Delta skip them."""
    return (i for i in infos if not is_hidden(i.path))
