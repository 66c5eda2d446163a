"""What a writer needs of a Delta table, read from the log itself: the version, the protocol, the
metadata and every app id's `txn`, each log object read once.

An appending writer needs none of the file actions. delta-rs's open reads every JSON entry after
the checkpoint twice, and `transaction_version` reads them a third time: about 30 requests on S3
before a run's first commit (benchmarks/README.md, "Log requests"). Here: `_last_checkpoint`, one
LIST from the checkpoint on, the checkpoint's protocol/metaData/txn columns, and each entry after
it once (in parallel); a refresh is one LIST from the known version on plus the new entries.

Only classic checkpoints (one file or multi-part) and JSON entries are read. Anything else (a V2
checkpoint, entries missing after the checkpoint) is `LogNotReadHere`, and the caller asks
delta-rs instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from lakesink.errors import TableError
from lakesink.layout import LAST_CHECKPOINT, checkpoint_paths, checkpoint_version, log_entry_version
from lakesink.storage.objects import ObjectStore

_READERS = 8  # entries read at once (S3 GETs are latency-bound)
_ACTIONS = (b'"protocol"', b'"metaData"', b'"txn"')


class LogFolder(Protocol):
    """The table's `_delta_log`, listed and read (lakesink.delta.log_store.open_log_folder)."""

    def names_after(self, version: int) -> list[str]: ...

    def read(self, version: int) -> bytes | None: ...

    def read_file(self, name: str) -> bytes | None: ...


class LogNotReadHere(TableError):
    """The log holds something this reader leaves to delta-rs (caught by lakesink.delta.table)."""


@dataclass(frozen=True, slots=True)
class ProtocolAction:
    min_reader_version: int
    min_writer_version: int
    reader_features: tuple[str, ...] | None
    writer_features: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class MetadataAction:
    table_id: str
    schema_string: str
    partition_columns: tuple[str, ...]
    configuration: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LogSnapshot:
    """The table at `version`, as far as a writer is concerned."""

    version: int
    protocol: ProtocolAction
    metadata: MetadataAction
    txns: Mapping[str, int]  # appId -> the version of its latest `txn`

    def advanced(self, version: int, txns: Mapping[str, int]) -> LogSnapshot:
        """The snapshot after an entry that sets only `txns` (and adds files)."""
        return LogSnapshot(version, self.protocol, self.metadata, {**self.txns, **txns})


def read_snapshot(
    folder: LogFolder, store: ObjectStore, *, after: LogSnapshot | None = None, up_to: int | None = None
) -> LogSnapshot | None:
    """The snapshot at the latest version (or at `up_to`), read on from `after` if given; None when
    there is no log at all.

    Raises:
        LogNotReadHere: the log needs delta-rs's reader (V2 checkpoint, entries cleaned up under us).
        TableError: the log is damaged (an entry that is not JSON, no protocol or metaData).
        StorageUnavailable: the store did not answer.
    """
    state = _State.of(after) if after is not None else _from_checkpoint(folder, store)
    if up_to is not None and state.version > up_to:
        raise LogNotReadHere(f"version {up_to} is older than the checkpoint at {state.version}")
    names = folder.names_after(state.version)
    newest = _newest_checkpoint(names) if after is None else None
    if newest is not None and newest[0] > state.version and (up_to is None or newest[0] <= up_to):
        state = _read_checkpoint(store, *newest)  # newer than the pointer says (or there is none)
    entries = [v for v in (log_entry_version(name) for name in names) if v is not None and v > state.version]
    if up_to is not None:
        entries = [v for v in entries if v <= up_to]
    if entries and entries != list(range(state.version + 1, state.version + 1 + len(entries))):
        raise LogNotReadHere(f"log entries after version {state.version} are not contiguous ({entries[:3]}...)")
    with ThreadPoolExecutor(max_workers=min(_READERS, max(1, len(entries)))) as pool:
        bodies = list(pool.map(folder.read, entries)) if len(entries) > 1 else [folder.read(v) for v in entries]
    for version, body in zip(entries, bodies, strict=True):
        if body is None:
            raise LogNotReadHere(f"log entry {version} was listed but is gone (cleaned up meanwhile)")
        state.apply(_actions(body, version=version), version)
    if state.version < 0:
        return None
    if state.protocol is None or state.metadata is None:
        raise TableError(
            f"the Delta log is not one lakesink can read: up to version {state.version} it has no protocol or "
            "metaData; it is damaged"
        )
    return LogSnapshot(state.version, state.protocol, state.metadata, dict(state.txns))


def snapshot_at_zero(body: bytes) -> LogSnapshot:
    """The snapshot of a table whose log is entry 0 alone (`body`), as its creator wrote it.

    Raises:
        TableError: the entry is damaged.
    """
    state = _State()
    state.apply(_actions(body, version=0), 0)
    if state.protocol is None or state.metadata is None:
        raise TableError("the Delta log is not one lakesink can read: log entry 0 has no protocol or metaData")
    return LogSnapshot(0, state.protocol, state.metadata, dict(state.txns))


@dataclass
class _State:
    version: int = -1
    protocol: ProtocolAction | None = None
    metadata: MetadataAction | None = None
    txns: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, snapshot: LogSnapshot) -> _State:
        return cls(snapshot.version, snapshot.protocol, snapshot.metadata, dict(snapshot.txns))

    def apply(self, actions: Iterable[tuple[str, dict[str, Any]]], version: int) -> None:
        for kind, action in actions:
            if kind == "txn":
                self.txns[str(action["appId"])] = int(action["version"])
            elif kind == "protocol":
                self.protocol = _protocol(action)
            elif kind == "metaData":
                self.metadata = _metadata(action)
        self.version = version


def _from_checkpoint(folder: LogFolder, store: ObjectStore) -> _State:
    raw = folder.read_file(LAST_CHECKPOINT.rsplit("/", 1)[-1])
    if raw is None:
        return _State()
    try:
        pointer = json.loads(raw)
        version, parts = int(pointer["version"]), pointer.get("parts")
    except (ValueError, KeyError, TypeError) as exc:
        raise LogNotReadHere(f"the last-checkpoint pointer is not what this reader knows ({exc})") from exc
    if "v2Checkpoint" in pointer:
        raise LogNotReadHere("a V2 checkpoint")
    return _read_checkpoint(store, version, parts)


def _newest_checkpoint(names: list[str]) -> tuple[int, int | None] | None:
    """The newest complete classic checkpoint among `names` (a listing of the log): the protocol's
    `_last_checkpoint` is only a hint, and a reader that finds it stale or missing lists instead."""
    found: dict[tuple[int, int | None], int] = {}
    for name in names:
        parsed = checkpoint_version(name)
        if parsed is not None:
            found[parsed] = found.get(parsed, 0) + 1
    complete = [key for key, count in found.items() if count == (key[1] or 1)]
    return max(complete) if complete else None


def _read_checkpoint(store: ObjectStore, version: int, parts: int | None) -> _State:
    state = _State(version=version)
    for path in checkpoint_paths(version, parts):
        try:
            with store.open_input(path) as stream:
                parquet = pq.ParquetFile(stream)
                names = parquet.schema_arrow.names
                columns = [n for n in ("protocol", "metaData", "txn", "sidecar", "checkpointMetadata") if n in names]
                table = parquet.read(columns=columns, use_threads=False)
        except FileNotFoundError as exc:
            raise LogNotReadHere(f"checkpoint {path} is missing") from exc
        except pa.ArrowException as exc:  # not a Parquet file this reader can read: delta-rs decides
            raise LogNotReadHere(f"checkpoint {path}: {exc}") from exc
        for v2 in ("sidecar", "checkpointMetadata"):  # delta-rs writes an empty sidecar column in classic ones
            if v2 in table.column_names and table.column(v2).null_count < table.num_rows:
                raise LogNotReadHere("a V2 checkpoint")
        for kind in ("protocol", "metaData", "txn"):
            if kind in table.column_names:
                state.apply(((kind, row) for row in table.column(kind).to_pylist() if row), version)
    return state


def _actions(body: bytes, *, version: int) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for number, line in enumerate(body.splitlines(), 1):
        if not any(marker in line for marker in _ACTIONS):
            continue  # add, remove, commitInfo: nothing a writer's snapshot keeps
        try:
            action = json.loads(line)
        except ValueError as exc:
            raise TableError(
                f"the Delta log is not one lakesink can read: log entry {version} line {number} is not JSON ({exc}); "
                "it is damaged"
            ) from exc
        for kind in ("txn", "protocol", "metaData"):
            if isinstance(action, dict) and isinstance(action.get(kind), dict):
                found.append((kind, action[kind]))
    return found


def _protocol(action: Mapping[str, Any]) -> ProtocolAction:
    reader, writer = action.get("readerFeatures"), action.get("writerFeatures")
    return ProtocolAction(
        min_reader_version=int(action["minReaderVersion"]),
        min_writer_version=int(action["minWriterVersion"]),
        reader_features=tuple(reader) if reader is not None else None,
        writer_features=tuple(writer) if writer is not None else None,
    )


def _metadata(action: Mapping[str, Any]) -> MetadataAction:
    configuration = action.get("configuration") or {}
    if isinstance(configuration, list):  # a checkpoint's map column reads as (key, value) pairs
        configuration = dict(configuration)
    return MetadataAction(
        table_id=str(action.get("id", "")),
        schema_string=str(action["schemaString"]),
        partition_columns=tuple(action.get("partitionColumns") or ()),
        configuration={str(k): str(v) for k, v in configuration.items() if v is not None},
    )
