"""Turn what a caller hands `Sink.write` into one Arrow table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from lakesink.errors import BadRecord, ConfigError


def to_arrow(data: Any) -> pa.Table:
    """An Arrow table from a pyarrow Table/RecordBatch, a polars or pandas DataFrame, or a list of dicts.

    Raises:
        ConfigError: the type is none of those.
        BadRecord: a list of dicts whose values Arrow cannot type (names the first bad row).
    """
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    module = type(data).__module__.split(".", 1)[0]
    if module == "polars":
        return _from_polars(data)
    if module == "pandas":
        return pa.Table.from_pandas(data, preserve_index=False)
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        return _from_rows(data)
    if hasattr(data, "__arrow_c_stream__"):
        return pa.table(data)
    raise ConfigError(
        f"cannot write a {type(data).__name__}: pass a pyarrow Table or RecordBatch, "
        "a polars or pandas DataFrame, or a list of dicts"
    )


def _from_polars(frame: Any) -> pa.Table:
    table = frame.to_arrow()
    # Polars hands out view and large types; Delta readers expect the plain ones.
    return pa.table(table).cast(_plain_schema(table.schema))


def _plain_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([field.with_type(plain_type(field.type)) for field in schema])


def plain_type(t: pa.DataType) -> pa.DataType:
    """The type with string/binary views and large variants replaced by their plain forms."""
    if pa.types.is_string_view(t) or pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_binary_view(t) or pa.types.is_large_binary(t):
        return pa.binary()
    if pa.types.is_large_list(t) or pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return pa.list_(t.value_field.with_type(plain_type(t.value_type)))
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(plain_type(t.value_type)))
    if pa.types.is_struct(t):
        return pa.struct([t.field(i).with_type(plain_type(t.field(i).type)) for i in range(t.num_fields)])
    if pa.types.is_map(t):
        return pa.map_(t.key_field.with_type(plain_type(t.key_type)), t.item_field.with_type(plain_type(t.item_type)))
    if pa.types.is_dictionary(t):
        return plain_type(t.value_type)
    return t


def _from_rows(rows: Sequence[Any]) -> pa.Table:
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise BadRecord(f"row {index} is a {type(row).__name__}, not a dict: pass a list of dicts")
    try:
        return pa.Table.from_pylist(list(rows))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise BadRecord(f"{_first_bad_row(rows)}: {exc}. Make every row's values of one type per key.") from exc


def _first_bad_row(rows: Sequence[Any]) -> str:
    # Arrow's message names the type clash but not the row; find it by growing the prefix.
    lo, hi = 1, len(rows)
    while lo < hi:
        mid = (lo + hi) // 2
        try:
            pa.Table.from_pylist(list(rows[:mid]))
            lo = mid + 1
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            hi = mid
    return f"row {lo - 1}"
