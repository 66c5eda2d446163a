"""What a table holds: version, files, rows, and every app id's committed position (decoded for file
sources, with the lag behind the source when it is given; a shard's against its own files)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import pyarrow.compute as pc

from lakesink.delta.log_reader import txn_actions
from lakesink.delta.table import TableHandle
from lakesink.display import dataclass_html
from lakesink.layout import ledger_path, parse_shard_app_id
from lakesink.sources.files import FileSource, shard_of
from lakesink.sources.positions import FilePosition
from lakesink.sources.records import SourceFile
from lakesink.storage.objects import ObjectStore, open_store
from lakesink.storage.options import StorageOptions
from lakesink.storage.uri import normalize_table_uri


@dataclass(frozen=True, slots=True)
class AppStatus:
    """One app id's committed position. For a file source (a ledger was committed with it): the file
    index and record it stands at and the last file read; with the source given, what is left to
    ingest (`lag_files`, `lag_bytes`: the files not fully ingested yet, and their size).

    For a shard of a file source (`<job>/shard-I-of-N`), `shard` is "I/N" and `job` the job's app
    id: the file index counts the shard's own files, and the lag is behind those."""

    app_id: str
    position: int
    last_commit: str | None  # ISO 8601, UTC, from the txn's lastUpdated
    file_index: int | None = None
    record: int | None = None
    last_file: str | None = None
    lag_files: int | None = None
    lag_bytes: int | None = None
    shard: str | None = None
    job: str | None = None

    def row_text(self) -> str:
        return str(self.record) if self.record is not None else "?"


@dataclass(frozen=True, slots=True)
class TableStatus:
    """A table's snapshot in figures, and `positions`: every app id's committed position (`txn`)."""

    table_uri: str
    table_version: int
    files: int
    rows: int
    bytes: int
    partition_columns: list[str]
    columns: dict[str, str]
    positions: dict[str, int]
    apps: list[AppStatus] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def _repr_html_(self) -> str:
        return dataclass_html(self)


def table_status(
    table_uri: str, *, storage_options: dict[str, str] | None = None, source: str | None = None
) -> TableStatus:
    """Read the table's current snapshot and its `txn` actions; with `source` (the file source its
    jobs ingest), each file-source app id's lag behind it.

    Raises:
        TableError: there is no Delta table at `table_uri`.
        ConfigError: `source` lists no file.
    """
    uri = normalize_table_uri(table_uri)
    options = StorageOptions.resolve(storage_options)
    handle = TableHandle.open_existing(uri, options)
    adds = handle.add_actions()
    rows = int(pc.sum(adds.column("num_records")).as_py() or 0) if adds.num_rows and "num_records" in adds.column_names else 0
    size = int(pc.sum(adds.column("size_bytes")).as_py() or 0) if adds.num_rows else 0
    schema = handle.arrow_schema()
    store = open_store(uri, options)
    txns = txn_actions(store, up_to=handle.version())
    listing = FileSource(source, storage_options=options).files if source is not None else None
    apps = [_app_status(store, app, position, updated, listing) for app, (position, updated) in txns.items()]
    return TableStatus(
        table_uri=uri,
        table_version=handle.version(),
        files=adds.num_rows,
        rows=rows,
        bytes=size,
        partition_columns=handle.partition_columns(),
        columns={f.name: str(f.type) for f in schema},
        positions={app: position for app, (position, _) in txns.items()},
        apps=apps,
    )


def _app_status(store: ObjectStore, app: str, position: int, updated: int | None, listing: list[SourceFile] | None) -> AppStatus:
    when = datetime.fromtimestamp(updated / 1000, UTC).isoformat(timespec="seconds") if updated else None
    try:
        ledger = json.loads(store.read_bytes(ledger_path(app, position)))
    except (FileNotFoundError, ValueError):
        return AppStatus(app, position, when)  # not a file source (or its ledger is gone)
    at = FilePosition.decode(position)
    read = [f for f in ledger.get("files", []) if f.get("index", -1) <= at.file_index]
    last_file = max(read, key=lambda f: f["index"])["path"] if read else None
    sharded = parse_shard_app_id(app)
    if sharded is not None and listing is not None:
        _, index, count = sharded
        listing = [f for f in listing if shard_of(f.path, count) == index]  # positions count the shard's files
    lag_files = lag_bytes = None
    if listing is not None:
        left = listing[at.file_index :]
        lag_files, lag_bytes = len(left), sum(f.size for f in left)
    shard, job = (f"{sharded[1]}/{sharded[2]}", sharded[0]) if sharded is not None else (None, None)
    return AppStatus(app, position, when, at.file_index, at.row, last_file, lag_files, lag_bytes, shard, job)
