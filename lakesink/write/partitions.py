"""Partition columns: which types Delta partitions by, how values are serialized, rows split by partition."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from lakesink.errors import SchemaMismatch
from lakesink.layout import PartitionValues


def split_by_partition(data: pa.Table, partition_by: Sequence[str]) -> list[tuple[PartitionValues, pa.Table]]:
    """`data` split into one table per partition (partition columns dropped), in partition order."""
    if not partition_by:
        return [((), data)]
    check_partition_columns(data.schema, partition_by)
    rest = [c for c in data.column_names if c not in partition_by]
    indexed = data.select(list(partition_by)).append_column("__row", pa.array(range(data.num_rows), pa.int64()))
    groups = indexed.group_by(list(partition_by), use_threads=False).aggregate([("__row", "list")])
    out = []
    for i in range(groups.num_rows):
        values = tuple((name, partition_value(groups.column(name)[i].as_py())) for name in partition_by)
        rows = data.select(rest).take(groups.column("__row_list")[i].values)
        out.append((values, rows))
    out.sort(key=lambda item: [(v is None, v or "") for _, v in item[0]])
    return out


def check_partition_columns(schema: pa.Schema, partition_by: Sequence[str]) -> None:
    """Raise SchemaMismatch unless every partition column exists and has a partitionable type."""
    for name in partition_by:
        if name not in schema.names:
            raise SchemaMismatch(f"partition column {name!r} is not in the data (columns: {', '.join(schema.names)})")
        t = schema.field(name).type
        kinds = (pa.types.is_string, pa.types.is_integer, pa.types.is_date32, pa.types.is_boolean, pa.types.is_timestamp)
        if not any(kind(t) for kind in kinds):
            raise SchemaMismatch(
                f"cannot partition by column {name!r} of type {t}: use a string, integer, date, timestamp or boolean column"
            )


def partition_value(value: Any) -> str | None:
    """A partition value as the Delta protocol serializes it in `partitionValues`."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)
