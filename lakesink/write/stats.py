"""Delta file statistics from a Parquet footer: no second pass over the data."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lakesink.errors import InternalError

# Longer strings are left without min/max: a truncated max would be smaller than the real one and
# let a reader wrongly skip the file.
_MAX_STAT_STRING = 32


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
                raise InternalError(f"the Parquet writer kept no null count for {name!r}")
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
