"""Partition columns: which types Delta partitions by, how values are serialized, rows split by partition."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from lakesink.errors import SchemaMismatch
from lakesink.layout import PartitionValues, partition_directory


def split_by_partition(data: pa.Table, partition_by: Sequence[str]) -> list[tuple[PartitionValues, pa.Table]]:
    """`data` split into one table per partition (partition columns dropped), in partition order.

    Raises:
        SchemaMismatch: a partition column is missing or of a type Delta cannot partition by, or a
            value is too long for a directory name (naming the column and the value).
    """
    if not partition_by:
        return [((), data)]
    check_partition_columns(data.schema, partition_by)
    rest = [c for c in data.column_names if c not in partition_by]
    indexed = data.select(list(partition_by)).append_column("__row", pa.array(range(data.num_rows), pa.int64()))
    groups = indexed.group_by(list(partition_by), use_threads=False).aggregate([("__row", "list")])
    out: dict[PartitionValues, list[pa.Table]] = {}
    for i in range(groups.num_rows):
        values = tuple((name, partition_value(groups.column(name)[i].as_py())) for name in partition_by)
        _check_directory_length(values)
        # "" and null are one partition: the protocol reads an empty partition value as null.
        out.setdefault(values, []).append(data.select(rest).take(groups.column("__row_list")[i].values))
    merged = [(values, tables[0] if len(tables) == 1 else pa.concat_tables(tables)) for values, tables in out.items()]
    merged.sort(key=lambda item: [(v is None, v or "") for _, v in item[0]])
    return merged


def check_partition_columns(schema: pa.Schema, partition_by: Sequence[str]) -> None:
    """Raise SchemaMismatch unless every partition column exists and has a partitionable type, and
    at least one column is not a partition column (a data file with no column is no valid file)."""
    for name in partition_by:
        if name not in schema.names:
            raise SchemaMismatch(f"partition column {name!r} is not in the data (columns: {', '.join(schema.names)})")
        t = schema.field(name).type
        kinds = (pa.types.is_string, pa.types.is_integer, pa.types.is_date32, pa.types.is_boolean, pa.types.is_timestamp)
        if not any(kind(t) for kind in kinds):
            raise SchemaMismatch(
                f"cannot partition by column {name!r} of type {t}: use a string, integer, date, timestamp or boolean column"
            )
    if partition_by and set(schema.names) <= set(partition_by):
        raise SchemaMismatch(
            f"every column ({', '.join(schema.names)}) is a partition column: a Delta data file needs at least one "
            "column that is not. Partition by fewer columns, or add a data column."
        )


def partition_value(value: Any) -> str | None:
    """A partition value as the Delta protocol serializes it in `partitionValues`.

    An empty string is null: the protocol reads `""` as a null partition value, so lakesink writes
    null rather than a value readers would disagree about (README, "Partitions").
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        # Not strftime: its %Y does not pad years before 1000 on every platform.
        return f"{value.year:04d}-{value.month:02d}-{value.day:02d} {value:%H:%M:%S}.{value.microsecond:06d}"
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


# The longest name most filesystems take (ext4, xfs, APFS, NTFS: 255 bytes); S3 keys take 1024
# bytes in all, and a table must stay copyable to local disk.
_MAX_NAME_BYTES = 255


def _check_directory_length(values: PartitionValues) -> None:
    for name, value in values:
        directory = partition_directory(((name, value),))
        if len(directory.encode()) > _MAX_NAME_BYTES:
            shown = value if value is None or len(value) <= 40 else value[:40] + "..."
            raise SchemaMismatch(
                f"the value {shown!r} of partition column {name!r} makes a directory name of {len(directory.encode())} "
                f"bytes, more than the {_MAX_NAME_BYTES} a file name may have: partition by a shorter column (or a "
                "prefix or hash of this one)"
            )
