"""Stage a batch: Arrow rows → Parquet files on the store, with Delta stats, under deterministic names.

A file's name is derived from (app id, position, part, content digest). Re-staging the same batch
after a crash therefore overwrites the same object with the same bytes and never adds a copy, and a
zombie writer staging *different* rows for the same position can never overwrite a file that a
committed log entry already points to (its digest differs, so its name differs).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq

from lakesink.crashpoints import crash_point
from lakesink.errors import SchemaMismatch
from lakesink.storage import ObjectStore

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
# Longer strings are left without min/max: a truncated max would be smaller than the real one and
# let a reader wrongly skip the file.
_MAX_STAT_STRING = 32


@dataclass(frozen=True, slots=True)
class StagedFile:
    """A Parquet file written to the table root, described as its Delta `add` action needs."""

    path: str  # relative to the table root, as the store names it (delta-rs encodes it for the log)
    size: int
    partition_values: tuple[tuple[str, str | None], ...]
    stats: str
    num_records: int


def stage_batch(
    store: ObjectStore,
    data: pa.Table,
    *,
    app_id: str,
    position: int,
    partition_by: Sequence[str] = (),
) -> list[StagedFile]:
    """Write `data` (already fitted to the table schema) as one Parquet file per partition.

    Raises:
        SchemaMismatch: a partition column of a type Delta cannot partition by.
        StorageUnavailable: the store refused or timed out.
    """
    if data.num_rows == 0:
        return []  # the commit still records the position; an empty Parquet file would only cost reads
    staged = []
    for part, (values, rows) in enumerate(split_by_partition(data, partition_by)):
        if part == 1:
            crash_point("mid_stage")  # the first file is on the store, the rest are not
        body, metadata = _parquet_bytes(rows)
        digest = hashlib.sha256(body).hexdigest()[:16]
        directory = partition_directory(values)
        name = f"part-{position:020d}-{part:05d}-{_app_slug(app_id)}-{digest}.snappy.parquet"
        object_path = f"{directory}/{name}" if directory else name
        store.write_bytes(object_path, body)
        staged.append(
            StagedFile(
                path=object_path,
                size=len(body),
                partition_values=values,
                stats=stats_from_parquet(metadata, rows.schema),
                num_records=rows.num_rows,
            )
        )
    return staged


def partition_directory(values: tuple[tuple[str, str | None], ...]) -> str:
    """The Hive-style directory of a partition ("" for an unpartitioned table)."""
    return "/".join(f"{quote(k, safe='')}={_dir_value(v)}" for k, v in values)


def _app_slug(app_id: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", app_id)[:40]
    return f"{readable}-{hashlib.sha256(app_id.encode()).hexdigest()[:8]}"


def _dir_value(value: str | None) -> str:
    # Every character outside [A-Za-z0-9_.~-] is percent-encoded, as delta-rs does: '/', '..',
    # NUL and unicode in a value can never escape the partition directory.
    return HIVE_NULL if value is None else quote(value, safe="")


def _parquet_bytes(rows: pa.Table) -> tuple[bytes, pq.FileMetaData]:
    sink = pa.BufferOutputStream()
    writer = pq.ParquetWriter(sink, rows.schema, compression="snappy", write_statistics=True)
    writer.write_table(rows)
    writer.close()
    return sink.getvalue().to_pybytes(), writer.writer.metadata


def split_by_partition(data: pa.Table, partition_by: Sequence[str]) -> list[tuple[tuple[tuple[str, str | None], ...], pa.Table]]:
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


def stats_from_parquet(metadata: pq.FileMetaData, schema: pa.Schema) -> str:
    """Delta file statistics (numRecords, and nullCount/minValues/maxValues of flat columns) of a
    Parquet file, from the statistics its writer computed: no second pass over the data.

    A column gets min/max only when every row group that has values has them (the writer keeps
    none for a row group of NaNs only, or for values too long), when both are finite, and
    when its type has an order readers use (timestamps are left out: the protocol keeps them in
    milliseconds, and a truncated max would mislead readers' file skipping).
    """
    min_values: dict[str, Any] = {}
    max_values: dict[str, Any] = {}
    null_count: dict[str, int] = {}
    flat = {f.name: f.type for f in schema if not pa.types.is_nested(f.type)}
    for name in flat:
        null_count[name] = 0
    bounds: dict[str, list[tuple[Any, Any]]] = {name: [] for name in flat}
    unbounded: set[str] = set()
    for r in range(metadata.num_row_groups):
        group = metadata.row_group(r)
        for c in range(group.num_columns):
            column = group.column(c)
            name = column.path_in_schema
            if name not in flat:
                continue
            st = column.statistics
            nulls = st.null_count if st is not None and st.has_null_count else None
            if nulls is None:
                raise ValueError(f"the Parquet writer kept no null count for {name!r}")
            null_count[name] += nulls
            if nulls == column.num_values:
                continue  # all null in this row group: no bounds to merge
            if st is not None and st.has_min_max:
                bounds[name].append((st.min, st.max))
            else:
                unbounded.add(name)
    rows = metadata.num_rows
    for name, kind in flat.items():
        found = bounds[name]
        if not found or name in unbounded or null_count[name] == rows or not _has_ordered_stats(kind):
            continue
        low, high = _stat_value(min(lo for lo, _ in found)), _stat_value(max(hi for _, hi in found))
        if low is not None and high is not None:
            min_values[name], max_values[name] = low, high
    return json.dumps(
        {"numRecords": rows, "minValues": min_values, "maxValues": max_values, "nullCount": null_count},
        separators=(",", ":"),
    )


def _has_ordered_stats(t: pa.DataType) -> bool:
    # Timestamps are left out: the protocol keeps them in milliseconds, and a truncated max
    # would mislead readers' file skipping.
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_string(t) or pa.types.is_date32(t)


def _stat_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str) and len(value) > _MAX_STAT_STRING:
        return None
    if isinstance(value, dt.date):
        return value.isoformat()
    return value
