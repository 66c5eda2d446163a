"""Table and source locations: a local path (the default) or `s3://bucket/prefix`."""

from __future__ import annotations

import os
from urllib.parse import urlparse

from lakesink.errors import ConfigError


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


def s3_root(uri: str) -> str:
    """`bucket/prefix` of an `s3://bucket/prefix` URI, as pyarrow's S3 filesystem names it."""
    parsed = urlparse(uri)
    return f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
