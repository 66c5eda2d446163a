"""The generative round trip: draw an Arrow schema, rows and writes; write them; read them back with
every reader; check rows, statistics, data skipping, time travel and checkpoints.

`check_table` returns the problems it finds as lines (empty: none), so the same checks serve the
test (lakesink's tables: no problem allowed) and `tools/round_trip_report.py` (the same data
written by `deltalake.write_deltalake`, to see where delta-rs itself is wrong).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import strategies as st

ROW_ID = "rid"
_WIDE = decimal.Context(prec=80)  # scaleb rounds to the context precision (28 digits by default)
UTC = dt.UTC


# -- what is drawn --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    values: Callable[[], st.SearchStrategy[Any]]
    partitionable: bool = False


@dataclass
class Case:
    """A table to write: its partition columns and a sequence of batches (later ones may add columns)."""

    partition_by: list[str]
    batches: list[pa.Table] = field(default_factory=list)

    def describe(self) -> str:
        return f"partition_by={self.partition_by}, batches={[b.schema for b in self.batches]}"


_NAMES = ["a", "b.c", "my col", "Ü", "x+y", "n_1", "s", "v", "Wert", "z9"]
_AWKWARD = st.sampled_from(["", " ", "a/b", "..", "%", "%20", "ü", "=", "#?&", "a b", "NULL", "null", "\\", "x" * 60])
_TEXT = st.one_of(st.text(max_size=12), st.text(alphabet="ab€\U0001f600 ", min_size=30, max_size=80), _AWKWARD)
_YEARS_DATE = st.dates(min_value=dt.date(1, 1, 1), max_value=dt.date(9999, 12, 31))
_NAIVE = st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59))
_NAIVE_NS = st.datetimes(min_value=dt.datetime(1700, 1, 1), max_value=dt.datetime(2250, 1, 1))


def _floats(width: int) -> st.SearchStrategy[float]:
    """Mostly finite values, often NaN or -0.0, sometimes an infinity (which leaves no bounds anyway)."""
    finite = st.floats(width=width, allow_nan=False, allow_infinity=False)  # type: ignore[arg-type]
    special = st.sampled_from([math.nan, -0.0])
    return st.one_of(*[finite] * 6, special, special, st.sampled_from([math.inf, -math.inf]))


def _int(bits: int, signed: bool = True) -> Callable[[], st.SearchStrategy[Any]]:
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, min(2**bits - 1, 2**63 - 1))
    return lambda: st.integers(low, high)


def _timestamp(unit: str, tz: str | None) -> Column:
    base = _NAIVE_NS if unit == "ns" else _NAIVE
    if unit == "s":
        base = base.map(lambda d: d.replace(microsecond=0))
    elif unit == "ms":
        base = base.map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))
    values = base if tz is None else base.map(lambda d: d.replace(tzinfo=UTC))
    return Column("", pa.timestamp(unit, tz=tz), lambda: values, partitionable=True)


def _decimal(precision: int, scale: int) -> Column:
    digits = st.integers(-(10**precision - 1), 10**precision - 1)
    return Column("", pa.decimal128(precision, scale), lambda: digits.map(lambda i: decimal.Decimal(i).scaleb(-scale, _WIDE)))


COLUMNS: list[Column] = [
    Column("", pa.int8(), _int(8), partitionable=True),
    Column("", pa.int16(), _int(16)),
    Column("", pa.int32(), _int(32), partitionable=True),
    Column("", pa.int64(), _int(64), partitionable=True),
    Column("", pa.uint8(), _int(8, signed=False)),
    Column("", pa.uint32(), _int(32, signed=False)),
    Column("", pa.uint64(), _int(64, signed=False)),
    Column("", pa.float32(), lambda: _floats(32)),
    Column("", pa.float64(), lambda: _floats(64)),
    _decimal(10, 2),
    _decimal(38, 0),
    _decimal(5, 5),
    Column("", pa.string(), lambda: _TEXT, partitionable=True),
    Column("", pa.large_string(), lambda: _TEXT),
    Column("", pa.binary(), lambda: st.binary(max_size=20)),
    Column("", pa.bool_(), st.booleans, partitionable=True),
    Column("", pa.date32(), lambda: _YEARS_DATE, partitionable=True),
    _timestamp("s", None),
    _timestamp("ms", "UTC"),
    _timestamp("us", None),
    _timestamp("us", "Asia/Kolkata"),
    _timestamp("ns", None),
    Column(
        "",
        pa.struct([("a", pa.int64()), ("b.c", pa.string())]),
        lambda: st.fixed_dictionaries({"a": st.none() | st.integers(-(2**63), 2**63 - 1), "b.c": st.none() | _TEXT}),
    ),
    Column("", pa.list_(pa.int64()), lambda: st.lists(st.none() | st.integers(-100, 100), max_size=4)),
    Column(
        "",
        pa.map_(pa.string(), pa.int64()),
        lambda: st.dictionaries(st.text(max_size=5), st.none() | st.integers(-5, 5), max_size=3).map(lambda d: list(d.items())),
    ),
    Column("", pa.dictionary(pa.int32(), pa.string()), lambda: st.sampled_from(["red", "green", "ü"])),
    Column("", pa.null(), st.none),
]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A table: 1-4 columns (plus the row id), 0-2 partition columns, 1-3 batches of 0-12 rows; a
    later batch may bring a new column (schema evolution)."""
    names = draw(st.lists(st.sampled_from(_NAMES), min_size=1, max_size=4, unique_by=str.lower))
    kinds = [draw(st.sampled_from(COLUMNS)) for _ in names]
    columns = [Column(n, k.type, k.values, k.partitionable) for n, k in zip(names, kinds, strict=True)]
    candidates = [c.name for c in columns if c.partitionable]
    wanted = draw(st.sampled_from([0, 1, 1, 2]))  # most tables here are partitioned: that is where names and values bite
    partition_by = (
        draw(st.lists(st.sampled_from(candidates), min_size=wanted, max_size=wanted, unique=True))
        if candidates and len(set(candidates)) >= wanted
        else []
    )
    if partition_by and len(partition_by) == len(columns):
        partition_by = partition_by[:-1]  # the row id is a data column, but keep one drawn column unpartitioned too
    case = Case(partition_by=partition_by)
    next_id = 0
    for number in range(draw(st.integers(1, 3))):
        if number and draw(st.booleans()):
            extra = draw(st.sampled_from(COLUMNS))
            fresh = [n for n in ("added", "added2") if n not in [c.name for c in columns]]
            if fresh:
                columns.append(Column(fresh[0], extra.type, extra.values))
        rows = draw(st.integers(0, 12))
        data: dict[str, pa.Array] = {ROW_ID: pa.array(range(next_id, next_id + rows), pa.int64())}
        for column in columns:
            awkward = column.name in partition_by and pa.types.is_string(column.type)
            values = draw(st.lists(st.none() | (_AWKWARD if awkward else column.values()), min_size=rows, max_size=rows))
            data[column.name] = _array(values, column.type)
        next_id += rows
        case.batches.append(pa.table(data))
    return case


def _array(values: list[Any], t: pa.DataType) -> pa.Array:
    if pa.types.is_dictionary(t):
        return pa.array(values, pa.string()).dictionary_encode()
    if pa.types.is_timestamp(t) and t.tz is not None:
        return pa.array(values, pa.timestamp(t.unit, tz="UTC")).cast(t)
    return pa.array(values, t)


# -- what a reader must return --------------------------------------------------------------------


def normalize(value: Any, t: pa.DataType) -> Any:
    """One comparable form of a value, whichever reader returned it (the Delta type decides)."""
    if value is None:
        return None
    if pa.types.is_struct(t):
        return tuple((f.name, normalize(value.get(f.name) if isinstance(value, dict) else None, f.type)) for f in t)
    if pa.types.is_map(t):
        items = (
            value.items() if isinstance(value, dict) else [(k["key"], k["value"]) if isinstance(k, dict) else k for k in value]
        )
        return tuple(sorted(((normalize(k, t.key_type), normalize(v, t.item_type)) for k, v in items), key=repr))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return tuple(normalize(v, t.value_type) for v in value)
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else (value if value != 0 else 0.0)
    if hasattr(value, "to_pydatetime"):
        value = value.to_pydatetime()
    if isinstance(value, dt.datetime):
        return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo is not None else value
    if isinstance(value, decimal.Decimal):
        return value.normalize() if value != 0 else decimal.Decimal(0)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return value


def expected_type(t: pa.DataType) -> pa.DataType:
    """The type the table stores for `t` (README, "Types"): what normalization compares as."""
    if pa.types.is_dictionary(t):
        return t.value_type
    if pa.types.is_null(t):
        return pa.string()
    return t


def expected_rows(case: Case, upto: int) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The columns, and the rows the table must hold after batch `upto` (0-based): missing columns
    null, float32 values as float32, an empty partition value null."""
    names: list[str] = []
    types: dict[str, pa.DataType] = {}
    for batch in case.batches[: upto + 1]:
        for f in batch.schema:
            if f.name not in types:
                names.append(f.name)
                types[f.name] = expected_type(f.type)
    rows = []
    for batch in case.batches[: upto + 1]:
        columns = {
            name: batch.column(name).to_pylist() if name in batch.column_names else [None] * batch.num_rows for name in names
        }
        for i in range(batch.num_rows):
            row = []
            for name in names:
                value = columns[name][i]
                if name in case.partition_by and value == "":
                    value = None
                row.append(normalize(value, types[name]))
            rows.append(tuple(row))
    return names, sorted(rows, key=repr)


# -- the checks -----------------------------------------------------------------------------------


def reader_rows(
    uri: str, names: Sequence[str], types: dict[str, pa.DataType], *, version: int | None = None
) -> dict[str, list[tuple[Any, ...]]]:
    """The table's rows (sorted) as each reader returns them."""
    import duckdb
    import duckdb_extensions
    import polars as pl
    from deltalake import DeltaTable

    out: dict[str, list[tuple[Any, ...]]] = {}

    def rows_of(dicts: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted((tuple(normalize(d.get(n), types[n]) for n in names) for d in dicts), key=repr)

    out["delta-rs"] = rows_of(pa.table(DeltaTable(uri, version=version).to_pyarrow_table()).to_pylist())
    out["polars"] = rows_of(pl.read_delta(uri, version=version).to_dicts())
    if version is None:
        con = duckdb.connect()
        try:
            duckdb_extensions.import_extension("delta", con=con)
            result = con.execute("SELECT * FROM delta_scan(?)", [uri])
            columns = [d[0] for d in result.description]
            out["duckdb"] = rows_of([dict(zip(columns, r, strict=True)) for r in result.fetchall()])
        finally:
            con.close()
    return out


def check_rows(uri: str, case: Case, *, upto: int, version: int | None = None, what: str = "") -> list[str]:
    names, expected = expected_rows(case, upto)
    types = {f.name: expected_type(f.type) for b in case.batches for f in b.schema}
    problems = []
    try:
        found = reader_rows(uri, names, types, version=version)
    except Exception as exc:  # noqa: BLE001 - a reader failing is what is reported
        return [f"{what}: a reader failed: {type(exc).__name__}: {str(exc)[:300]}"]
    for reader, rows in found.items():
        if rows != expected:
            missing = [r for r in expected if r not in rows][:3]
            extra = [r for r in rows if r not in expected][:3]
            problems.append(
                f"{what}{reader}: {len(rows)} rows, expected {len(expected)}; e.g. missing {missing}, unexpected {extra}"
            )
    return problems


def log_adds(uri: str) -> list[dict[str, Any]]:
    """The add actions of the current snapshot, as the log's JSON entries hold them (no checkpoint read)."""
    live: dict[str, dict[str, Any]] = {}
    for entry in sorted((Path(uri) / "_delta_log").glob("*.json")):
        for line in entry.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                live[action["add"]["path"]] = action["add"]
            elif "remove" in action:
                live.pop(action["remove"]["path"], None)
    return list(live.values())


def check_stats(uri: str) -> list[str]:
    """Every add's statistics against the Parquet file it names: numRecords and nullCount exact,
    every value within [min, max], no bounds for a float column holding NaN."""
    from urllib.parse import unquote

    problems = []
    for add in log_adds(uri):
        path = Path(uri) / unquote(add["path"])
        table = pq.read_table(path)
        stats = json.loads(add.get("stats") or "{}")
        if stats.get("numRecords") is not None and stats["numRecords"] != table.num_rows:
            problems.append(f"{add['path']}: numRecords {stats['numRecords']}, the file holds {table.num_rows}")
        for leaf, column in _leaves(table):
            nulls = _get(stats.get("nullCount", {}), leaf)
            if isinstance(nulls, int) and nulls != column.null_count:
                problems.append(f"{add['path']}: nullCount of {'.'.join(leaf)} is {nulls}, the file holds {column.null_count}")
            low, high = _get(stats.get("minValues", {}), leaf), _get(stats.get("maxValues", {}), leaf)
            if low is None and high is None:
                continue
            values = [v for v in column.to_pylist() if v is not None]
            if pa.types.is_floating(column.type) and any(math.isnan(v) for v in values):
                problems.append(f"{add['path']}: {'.'.join(leaf)} holds NaN but has bounds [{low}, {high}]")
                continue
            comparable = [_stat_form(v) for v in values]
            low, high = _typed(low, column.type), _typed(high, column.type)
            if low is not None and any(v < low for v in comparable):
                problems.append(f"{add['path']}: min of {'.'.join(leaf)} is {low!r}, above {min(comparable)!r}")
            if high is not None and any(v > high for v in comparable):
                problems.append(f"{add['path']}: max of {'.'.join(leaf)} is {high!r}, below {max(comparable)!r}")
    return problems


def _leaves(table: pa.Table) -> list[tuple[tuple[str, ...], pa.ChunkedArray]]:
    found = []

    def visit(path: tuple[str, ...], column: pa.ChunkedArray) -> None:
        if pa.types.is_struct(column.type):
            for f, child in zip(column.type, column.flatten(), strict=True):
                visit((*path, f.name), child)
        elif not pa.types.is_nested(column.type):
            found.append((path, column))

    for f, column in zip(table.schema, table.columns, strict=True):
        visit((f.name,), column)
    return found


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        if not isinstance(tree, dict):
            return None
        tree = tree.get(name)
    return tree


def _stat_form(value: Any) -> Any:
    """A file's value in the form its statistic is compared in."""
    if hasattr(value, "to_pydatetime"):
        value = value.to_pydatetime()
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def _typed(stat: Any, t: pa.DataType) -> Any:
    """A statistic from the log (JSON) as a value of the column's type: timestamps and dates are
    logged as text (`2026-12-01 10:00:00.000`, `...Z`), decimals as numbers."""
    if stat is None or not isinstance(stat, str | int | float):
        return stat
    if pa.types.is_timestamp(t):
        parsed = dt.datetime.fromisoformat(str(stat))
        return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo is not None else parsed
    if pa.types.is_date32(t) or pa.types.is_date64(t):
        return dt.date.fromisoformat(str(stat))
    if pa.types.is_decimal(t):
        return decimal.Decimal(str(stat))
    return stat


def check_skipping(uri: str, case: Case) -> list[str]:
    """For a column with bounds: a filtered query returns exactly the rows the unfiltered one does
    once filtered in Python (data skipping never drops a row), in DuckDB and in delta-rs.

    Not in DuckDB for a column whose name holds a dot: its delta extension (delta-kernel) reads
    such a name in a predicate as a nested path and fails ("Predicate references unknown column").
    """
    import duckdb
    import duckdb_extensions
    from deltalake import DeltaTable, QueryBuilder

    last = case.batches[-1]
    candidates = [
        f
        for f in last.schema
        if f.name != ROW_ID
        and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_date32(f.type))
        and last.column(f.name).null_count < last.num_rows
    ]
    if not candidates:
        return []
    column = candidates[0]
    values = sorted(v for v in last.column(column.name).to_pylist() if v is not None and not _is_nan(v))
    if not values:
        return []
    threshold = values[len(values) // 2]
    quoted = '"' + column.name.replace('"', '""') + '"'
    problems = []
    if "." not in column.name:
        con = duckdb.connect()
        try:
            duckdb_extensions.import_extension("delta", con=con)
            sql = f"SELECT {ROW_ID} FROM delta_scan(?) WHERE {quoted} >= ?"
            filtered = sorted(r[0] for r in con.execute(sql, [uri, threshold]).fetchall())
            whole = con.execute(f"SELECT {ROW_ID}, {quoted} >= ? FROM delta_scan(?)", [threshold, uri]).fetchall()
            if filtered != sorted(r for r, keep in whole if keep):
                problems.append(f"duckdb: {column.name} >= {threshold!r} returned {filtered}, not every matching row")
        finally:
            con.close()
    query = QueryBuilder().register("t", DeltaTable(uri))
    literal = f"DATE '{threshold.isoformat()}'" if isinstance(threshold, dt.date) else repr(threshold)
    got = pa.table(query.execute(f"SELECT {ROW_ID} FROM t WHERE {quoted} >= {literal}").read_all()).column(ROW_ID)
    every = pa.table(query.execute(f"SELECT {ROW_ID}, {quoted} >= {literal} AS keep FROM t").read_all()).to_pylist()
    if sorted(got.to_pylist()) != sorted(r[ROW_ID] for r in every if r["keep"]):
        problems.append(f"delta-rs: {column.name} >= {literal} returned {sorted(got.to_pylist())}, not every matching row")
    return problems


def _is_nan(value: Any) -> bool:
    """NaN or an infinity: not a threshold SQL can spell."""
    return isinstance(value, float) and not math.isfinite(value)
