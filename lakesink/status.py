"""What a table holds: version, files, rows, and every app id's committed position."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lakesink.errors import TableError
from lakesink.storage import ObjectStore, StorageOptions, normalize_table_uri, open_store
from lakesink.table import TableHandle


@dataclass(frozen=True, slots=True)
class TableStatus:
    table_uri: str
    table_version: int
    files: int
    rows: int
    bytes: int
    partition_columns: list[str]
    columns: dict[str, str]
    positions: dict[str, int]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def table_status(table_uri: str, *, storage_options: dict[str, str] | None = None) -> TableStatus:
    """Read the table's current snapshot and its `txn` actions.

    Raises:
        TableError: there is no Delta table at `table_uri`.
    """
    uri = normalize_table_uri(table_uri)
    options = StorageOptions.resolve(storage_options)
    handle = TableHandle.open(uri, options)
    if handle is None:
        raise TableError(f"no Delta table at {uri}: check the path (and --storage-option / AWS_* settings for S3)")
    adds = pa.table(handle.table.get_add_actions(flatten=True))
    rows = int(pc.sum(adds.column("num_records")).as_py() or 0) if adds.num_rows and "num_records" in adds.column_names else 0
    size = int(pc.sum(adds.column("size_bytes")).as_py() or 0) if adds.num_rows else 0
    schema = handle.arrow_schema()
    return TableStatus(
        table_uri=uri,
        table_version=handle.version(),
        files=adds.num_rows,
        rows=rows,
        bytes=size,
        partition_columns=handle.partition_columns(),
        columns={f.name: str(f.type) for f in schema},
        positions=txn_versions(open_store(uri, options), up_to=handle.version()),
    )


def txn_versions(store: ObjectStore, *, up_to: int) -> dict[str, int]:
    """Every app id's `txn` version, read from the last checkpoint and the commits after it.

    delta-rs answers `transaction_version(app_id)` only for a known app id; status must list them all.
    """
    positions: dict[str, int] = {}
    start = 0
    try:
        pointer = json.loads(store.read_bytes("_delta_log/_last_checkpoint"))
    except FileNotFoundError:
        pointer = None
    if pointer is not None and int(pointer["version"]) <= up_to:
        start = int(pointer["version"]) + 1
        for path in _checkpoint_files(int(pointer["version"]), pointer.get("parts")):
            with store.open_input(path) as stream:
                txn = pq.read_table(stream, columns=["txn"]).column("txn")
            for item in txn.to_pylist():
                if item:
                    positions[item["appId"]] = int(item["version"])
    for version in range(start, up_to + 1):
        try:
            body = store.read_bytes(f"_delta_log/{version:020d}.json")
        except FileNotFoundError:
            continue
        for line in body.splitlines():
            if b'"txn"' in line:
                action = json.loads(line).get("txn")
                if action:
                    positions[action["appId"]] = int(action["version"])
    return dict(sorted(positions.items()))


def _checkpoint_files(version: int, parts: int | None) -> list[str]:
    if not parts:
        return [f"_delta_log/{version:020d}.checkpoint.parquet"]
    return [f"_delta_log/{version:020d}.checkpoint.{i:010d}.{parts:010d}.parquet" for i in range(1, parts + 1)]
