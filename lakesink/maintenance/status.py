"""What a table holds: version, files, rows, and every app id's committed position."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pyarrow.compute as pc

from lakesink.delta.log_reader import txn_versions
from lakesink.delta.table import TableHandle
from lakesink.storage.objects import open_store
from lakesink.storage.options import StorageOptions
from lakesink.storage.uri import normalize_table_uri


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

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def table_status(table_uri: str, *, storage_options: dict[str, str] | None = None) -> TableStatus:
    """Read the table's current snapshot and its `txn` actions.

    Raises:
        TableError: there is no Delta table at `table_uri`.
    """
    uri = normalize_table_uri(table_uri)
    options = StorageOptions.resolve(storage_options)
    handle = TableHandle.open_existing(uri, options)
    adds = handle.add_actions()
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
