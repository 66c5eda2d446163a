"""Reading the Delta log directly: which data files any log entry names, and every app id's `txn`.

delta-rs answers for one snapshot and one known app id; garbage collection must know every file
*any* version still readable from the log references, and status every app id, so they read the
log's files themselves.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from lakesink.errors import TableError
from lakesink.layout import LAST_CHECKPOINT, checkpoint_paths, log_entry_path, log_entry_version
from lakesink.storage.objects import ObjectInfo, ObjectStore
from lakesink.storage.uri import is_remote

_FILE_ACTIONS = ("add", "remove")
_READERS = 8


def store_path(log_path: str, table_uri: str) -> str | None:
    """The path relative to the table root (as the store lists it) of a path in an add/remove action.

    The protocol stores paths as URIs: relative ones are percent-encoded once more than the object
    key (`day=a%2Fb` is logged as `day=a%252Fb`). An absolute URI inside the table root is made
    relative; one outside it (a shallow clone's source) is None.
    """
    if "://" not in log_path and not log_path.startswith("/"):
        return unquote(log_path)
    parsed = urlparse(log_path)
    if is_remote(table_uri):
        root = urlparse(table_uri)
        if parsed.scheme not in ("s3", "s3a") or parsed.netloc != root.netloc:
            return None
        key, prefix = unquote(parsed.path).lstrip("/"), root.path.strip("/")
    elif parsed.scheme in ("file", ""):
        key, prefix = unquote(parsed.path), table_uri
    else:
        return None
    if not prefix:
        return key
    return key[len(prefix) + 1 :] if key.startswith(prefix.rstrip("/") + "/") else None


def paths_named_in_log(store: ObjectStore, log_files: Iterable[ObjectInfo], *, table_uri: str) -> set[str]:
    """Every data file an `add` or `remove` action in `log_files` names, as store paths.

    Reads JSON commits (and any other JSON under the log: compacted logs, V2 checkpoints, delta-rs
    commit temp files) and Parquet checkpoints (classic, multi-part and sidecars). A `remove` counts
    too: a file removed by a later commit is still read by time travel to the versions before it;
    removing it is VACUUM's job, once it is past the table's retention.

    Raises:
        TableError: a JSON commit cannot be parsed (gc must not guess what it references).
        StorageUnavailable: the store did not answer.
    """
    readable = [f for f in log_files if f.path.endswith(".parquet") or ".json" in f.path.rsplit("/", 1)[-1]]
    found: set[str] = set()
    with ThreadPoolExecutor(max_workers=_READERS) as pool:
        for named in pool.map(lambda info: _paths_in(store, info.path), readable):
            for raw in named:
                found.add(raw)  # as written, too: a writer that forgot to encode still protects its file
                path = store_path(raw, table_uri)
                if path is not None:
                    found.add(path)
    return found


def _paths_in(store: ObjectStore, path: str) -> list[str]:
    try:
        if path.endswith(".parquet"):
            return _paths_in_checkpoint(store, path)
        body = store.read_bytes(path)
    except FileNotFoundError:
        return []  # expired-log cleanup removed it after the listing: no version needs it any more
    strict = log_entry_version(path) is not None
    named = []
    for line in body.splitlines():
        if not any(f'"{kind}"'.encode() in line for kind in _FILE_ACTIONS):
            continue
        try:
            action = json.loads(line)
        except ValueError as exc:
            if strict:
                raise TableError(f"cannot parse {path} ({exc}): the log is damaged; gc will not guess what it names") from exc
            continue  # a torn temp file of a commit in flight: the real commit is read when it lands
        for kind in _FILE_ACTIONS:
            entry = action.get(kind)
            if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                named.append(entry["path"])
    return named


def _paths_in_checkpoint(store: ObjectStore, path: str) -> list[str]:
    with store.open_input(path) as stream:
        parquet = pq.ParquetFile(stream)
        names = parquet.schema_arrow.names
        named: list[str] = []
        for kind in _FILE_ACTIONS:
            if kind not in names:
                continue
            # Only the nested path column is read: a checkpoint's stats can be most of its bytes.
            column = parquet.read(columns=[f"{kind}.path"], use_threads=False).column(0)
            if pa.types.is_struct(column.type):  # ParquetFile.read keeps the nesting; read_table does not
                import pyarrow.compute as pc  # 20 ms to import: only gc and status read checkpoints

                column = pc.struct_field(column, "path")
            named.extend(p for p in column.to_pylist() if p)
    return named


def txn_versions(store: ObjectStore, *, up_to: int) -> dict[str, int]:
    """Every app id's `txn` version at version `up_to`, read from the last checkpoint and the entries after it."""
    return {app: version for app, (version, _) in txn_actions(store, up_to=up_to).items()}


def txn_actions(store: ObjectStore, *, up_to: int) -> dict[str, tuple[int, int | None]]:
    """Every app id's `txn` at version `up_to`: (version, lastUpdated in ms since the epoch, if recorded)."""
    positions: dict[str, tuple[int, int | None]] = {}
    start = 0
    try:
        pointer = json.loads(store.read_bytes(LAST_CHECKPOINT))
    except FileNotFoundError:
        pointer = None
    if pointer is not None and int(pointer["version"]) <= up_to:
        start = int(pointer["version"]) + 1
        for path in checkpoint_paths(int(pointer["version"]), pointer.get("parts")):
            with store.open_input(path) as stream:
                txn = pq.read_table(stream, columns=["txn"]).column("txn")
            for item in txn.to_pylist():
                if item:
                    positions[item["appId"]] = (int(item["version"]), item.get("lastUpdated"))
    for version in range(start, up_to + 1):
        try:
            body = store.read_bytes(log_entry_path(version))
        except FileNotFoundError:
            continue
        for line in body.splitlines():
            if b'"txn"' in line:
                action = json.loads(line).get("txn")
                if action:
                    positions[action["appId"]] = (int(action["version"]), action.get("lastUpdated"))
    return dict(sorted(positions.items()))
