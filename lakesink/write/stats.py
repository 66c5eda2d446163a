"""Delta file statistics from a Parquet footer: no second pass over the data.

Statistics are keyed by the Delta column path, nested fields as nested JSON objects (as delta-rs
and Spark write them), never by the Parquet path string: a top-level column named `s.x` and the
field `x` of a struct `s` are two columns. Which columns get statistics follows the table's
`delta.dataSkippingStatsColumns`, else its `delta.dataSkippingNumIndexedCols` (default: the first
32 leaf columns of the data files' schema).

Readers skip a file when the statistics say no row can match, so every bound must hold for every
value: a column whose file holds NaN gets no min/max (NaN sorts above every number in Spark and
DuckDB, and Parquet footers leave it out of their bounds: float statistics come from the rows,
FloatColumns), nor does one whose bounds are missing, are not finite,
or would be truncated (strings over 32 characters), nor timestamps (the protocol keeps them in
milliseconds: a truncated max would be smaller than the real one).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lakesink.errors import InternalError

ColumnPath = tuple[str, ...]
"""A column's Delta path: ("s", "x") is field x of struct column s; ("s.x",) a column named "s.x"."""

# Longer strings are left without min/max: a truncated max would be smaller than the real one and
# let a reader wrongly skip the file.
_MAX_STAT_STRING = 32
_DEFAULT_INDEXED = 32


@dataclass(frozen=True, slots=True)
class StatsColumns:
    """Which leaf columns get statistics: the `named` ones (and fields of named structs) when the
    table lists them, else the first `num_indexed` leaves (-1: all)."""

    num_indexed: int = _DEFAULT_INDEXED
    named: frozenset[ColumnPath] | None = None

    @classmethod
    def of_table(cls, configuration: Mapping[str, str]) -> StatsColumns:
        """As the table's properties say (`delta.dataSkippingStatsColumns`, `delta.dataSkippingNumIndexedCols`)."""
        listed = configuration.get("delta.dataSkippingStatsColumns")
        if listed is not None and listed.strip():
            return cls(named=frozenset(_column_paths(listed)))
        raw = configuration.get("delta.dataSkippingNumIndexedCols")
        try:
            number = int(raw) if raw is not None else _DEFAULT_INDEXED
        except ValueError:
            number = _DEFAULT_INDEXED
        return cls(num_indexed=number if number >= -1 else _DEFAULT_INDEXED)

    def wants(self, path: ColumnPath, leaf: int) -> bool:
        if self.named is not None:
            return any(path[: len(named)] == named for named in self.named)
        return self.num_indexed < 0 or leaf < self.num_indexed


DEFAULT_STATS_COLUMNS = StatsColumns()
"""A table that sets neither property: the first 32 leaf columns."""


def _column_paths(listed: str) -> Iterator[ColumnPath]:
    """`a, s.x, \\`dotted.name\\`` as paths: dots split nested fields, backticks quote a name."""
    for item in _split_outside_backticks(listed, ","):
        parts = tuple(p.strip().strip("`") for p in _split_outside_backticks(item.strip(), "."))
        if all(parts):
            yield parts


def _split_outside_backticks(text: str, separator: str) -> list[str]:
    hidden = re.sub(r"`[^`]*`", lambda m: m[0].replace(separator, "\x00"), text)
    return [part.replace("\x00", separator) for part in hidden.split(separator)]


@dataclass
class FloatBounds:
    """Running statistics of one float column of a file: Parquet footers keep none for floats."""

    nulls: int = 0
    low: float | None = None
    high: float | None = None
    nan: bool = False


class FloatColumns:
    """Statistics of a file's float columns (top level and in structs), gathered from its rows as
    they are written. lakesink writes no Parquet statistics for floats: footers leave NaN out of
    their bounds, and readers that prune row groups by them (DuckDB) then drop rows holding NaN."""

    def __init__(self) -> None:
        self.columns: dict[ColumnPath, FloatBounds] = {}

    def add(self, rows: pa.Table) -> None:
        for field, column in zip(rows.schema, rows.columns, strict=True):
            self._visit((field.name,), column)

    def _visit(self, path: ColumnPath, column: pa.ChunkedArray) -> None:
        import pyarrow.compute as pc

        if pa.types.is_floating(column.type):
            bounds = self.columns.setdefault(path, FloatBounds())
            bounds.nulls += column.null_count
            if column.null_count == len(column):
                return
            if pc.any(pc.is_nan(column)).as_py():
                bounds.nan = True
            found = pc.min_max(column)  # NaN is left out unless every value is NaN
            low, high = found["min"].as_py(), found["max"].as_py()
            if low is not None and not math.isnan(low):
                bounds.low = low if bounds.low is None else min(bounds.low, low)
                bounds.high = high if bounds.high is None else max(bounds.high, high)
        elif pa.types.is_struct(column.type):
            for field, child in zip(column.type, column.flatten(), strict=True):  # parent nulls kept
                self._visit((*path, field.name), child)


def parquet_statistics_columns(schema: pa.Schema) -> list[str]:
    """The Parquet column paths to write statistics for: every leaf but floats (see FloatColumns).

    Parquet names a column by its dotted path, so a top-level `s.x` and a struct's `x` share one:
    such a path gets no statistics if either is a float.
    """
    floats: set[str] = set()
    others: set[str] = set()

    def walk(path: ColumnPath, t: pa.DataType) -> None:
        if pa.types.is_struct(t):
            for field in t:
                walk((*path, field.name), field.type)
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            walk((*path, "list", "element"), t.value_type)
        elif pa.types.is_map(t):
            walk((*path, "key_value", "key"), t.key_type)
            walk((*path, "key_value", "value"), t.item_type)
        else:
            (floats if pa.types.is_floating(t) else others).add(".".join(path))

    for field in schema:
        walk((field.name,), field.type)
    return sorted(others - floats)


def stats_from_parquet(
    metadata: pq.FileMetaData,
    schema: pa.Schema,
    *,
    floats: FloatColumns,
    columns: StatsColumns = DEFAULT_STATS_COLUMNS,
) -> str:
    """Delta file statistics (numRecords; nullCount, minValues, maxValues of the wanted leaf
    columns reached through structs) of a Parquet file written with `schema`.

    `floats` are the statistics of the file's float columns, gathered from its rows.

    Raises:
        InternalError: the Parquet writer kept no null count for a column.
    """
    leaves = dict(_stat_leaves(schema, columns))  # Parquet leaf index -> (path, type)
    null_count: dict[ColumnPath, int] = dict.fromkeys((path for path, _ in leaves.values()), 0)
    bounds: dict[ColumnPath, list[tuple[Any, Any]]] = {path: [] for path in null_count}
    unbounded: set[ColumnPath] = set()
    for path, kind in leaves.values():
        if pa.types.is_floating(kind):
            gathered = floats.columns.get(path, FloatBounds())
            null_count[path] = gathered.nulls
            if gathered.nan or gathered.low is None:
                unbounded.add(path)
            else:
                bounds[path].append((gathered.low, gathered.high))
    for r in range(metadata.num_row_groups):
        group = metadata.row_group(r)
        for index, (path, kind) in leaves.items():
            if pa.types.is_floating(kind):
                continue
            column = group.column(index)
            st = column.statistics
            nulls = st.null_count if st is not None and st.has_null_count else None
            if nulls is None:
                raise InternalError(f"the Parquet writer kept no null count for {'.'.join(path)!r}")
            null_count[path] += nulls
            if nulls == column.num_values or not _has_ordered_stats(kind):
                # All null in this row group (no bounds to merge), or a type whose bounds Delta
                # stats leave out: never ask for them (a timestamp's imports pandas, ~0.25 s).
                continue
            try:
                if st.has_min_max:
                    bounds[path].append((st.min, st.max))
                else:
                    unbounded.add(path)
            except (OverflowError, ValueError):
                unbounded.add(path)  # a value Python cannot hold (a date past 9999): no bounds
    rows = metadata.num_rows
    min_values: dict[str, Any] = {}
    max_values: dict[str, Any] = {}
    nulls_out: dict[str, Any] = {}
    for path, kind in leaves.values():
        _put(nulls_out, path, null_count[path])
        merged = bounds[path]
        if not merged or path in unbounded or null_count[path] == rows or not _has_ordered_stats(kind):
            continue
        low, high = _stat_value(min(lo for lo, _ in merged)), _stat_value(max(hi for _, hi in merged))
        if low is not None and high is not None:
            _put(min_values, path, low)
            _put(max_values, path, high)
    return json.dumps(
        {"numRecords": rows, "minValues": min_values, "maxValues": max_values, "nullCount": nulls_out},
        separators=(",", ":"),
    )


def _stat_leaves(schema: pa.Schema, columns: StatsColumns) -> Iterator[tuple[int, tuple[ColumnPath, pa.DataType]]]:
    """(Parquet leaf index, (Delta path, type)) of each leaf that gets statistics.

    Parquet numbers the leaves depth first; lists and maps take leaf numbers (and count towards
    `num_indexed`) but get no statistics, nor do the fields inside them.
    """
    counter = iter(range(1 << 30))

    def walk(path: ColumnPath, t: pa.DataType, in_collection: bool) -> Iterator[tuple[int, tuple[ColumnPath, pa.DataType]]]:
        if pa.types.is_struct(t):
            for field in t:
                yield from walk((*path, field.name), field.type, in_collection)
        elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            yield from walk(path, t.value_type, True)
        elif pa.types.is_map(t):
            yield from walk(path, t.key_type, True)
            yield from walk(path, t.item_type, True)
        else:
            leaf = next(counter)
            if not in_collection and columns.wants(path, leaf):
                yield leaf, (path, t)

    for field in schema:
        yield from walk((field.name,), field.type, False)


def _put(tree: dict[str, Any], path: ColumnPath, value: Any) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _has_ordered_stats(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_string(t) or pa.types.is_date32(t)


def _stat_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str) and len(value) > _MAX_STAT_STRING:
        return None
    if isinstance(value, dt.date):
        return value.isoformat()
    return value
