"""Fit incoming Arrow data to a Delta table's schema, or say precisely why it does not fit.

delta-rs does not reject every mismatched append made through `create_write_transaction`, so the
check lives here: columns are matched by name, types may only widen losslessly, missing nullable
columns become nulls, and new columns are added only when the caller opts in.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from lakesink.errors import ConfigError, SchemaMismatch
from lakesink.write.convert import plain_type

_INT_ORDER = [pa.int8(), pa.int16(), pa.int32(), pa.int64()]
_UNSIGNED_TO_SIGNED = {
    pa.uint8(): pa.int16(),
    pa.uint16(): pa.int32(),
    pa.uint32(): pa.int64(),
    pa.uint64(): pa.int64(),
}


@dataclass(frozen=True, slots=True)
class Fitted:
    """Data cast to the table's column order and types, plus the columns the table must gain first."""

    table: pa.Table
    new_fields: tuple[pa.Field, ...]


def delta_type(t: pa.DataType) -> pa.DataType:
    """The Arrow type Delta stores for `t` (README, "Types"): plain strings and lists, signed ints,
    microsecond timestamps, decimal128, nullable nested fields.

    Raises:
        SchemaMismatch: Delta has no type for `t` (time, duration, interval, union, a decimal of
            more than 38 digits); the caller names the column.
    """
    t = plain_type(t)
    if isinstance(t, pa.ExtensionType):
        return delta_type(t.storage_type)
    if t in _UNSIGNED_TO_SIGNED:
        return _UNSIGNED_TO_SIGNED[t]
    if pa.types.is_null(t):
        # Delta has no null type: a column that is null everywhere so far is typed as string.
        return pa.string()
    if pa.types.is_timestamp(t):
        return pa.timestamp("us", tz="UTC" if t.tz else None)
    if pa.types.is_time(t) or pa.types.is_duration(t) or pa.types.is_interval(t) or pa.types.is_union(t):
        raise SchemaMismatch(f"Delta has no type for {t}: cast the column to a string or integer first")
    if pa.types.is_float16(t):
        return pa.float32()
    if pa.types.is_date64(t):
        return pa.date32()
    if pa.types.is_fixed_size_binary(t):
        return pa.binary()
    if pa.types.is_decimal(t):
        if t.precision > _MAX_DECIMAL_DIGITS:
            raise SchemaMismatch(
                f"Delta decimals have at most {_MAX_DECIMAL_DIGITS} digits, not {t.precision} ({t}): cast the column to "
                "a decimal of 38 digits or fewer, a double, or a string first"
            )
        return pa.decimal128(t.precision, t.scale)
    if pa.types.is_list(t) or pa.types.is_fixed_size_list(t):
        return pa.list_(pa.field("element", delta_type(t.value_type)))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(t.field(i).name, delta_type(t.field(i).type)) for i in range(t.num_fields)])
    if pa.types.is_map(t):
        return pa.map_(delta_type(t.key_type), pa.field("value", delta_type(t.item_type)))
    return t


_MAX_DECIMAL_DIGITS = 38


def delta_schema(schema: pa.Schema) -> pa.Schema:
    """The schema a new table gets for data of `schema`: every field nullable, nested ones too.

    Raises:
        SchemaMismatch: a column of a type Delta cannot store, naming it.
    """
    return pa.schema([pa.field(f.name, _delta_type_of(f), nullable=True) for f in schema])


def declared_schema(schema: pa.Schema) -> pa.Schema:
    """A declared (or inferred) schema as the table stores it: Delta's types, the declared nullability.

    Raises:
        SchemaMismatch: a column of a type Delta cannot store, naming it.
    """
    _reject_duplicate_names(schema)
    return pa.schema([pa.field(f.name, _delta_type_of(f), nullable=f.nullable) for f in schema])


def check_declared(declared: pa.Schema, table: pa.Schema, *, table_uri: str) -> None:
    """A declared schema must agree with the existing table's columns it names.

    Raises:
        ConfigError: a declared column the table holds with another type.
    """
    for field in declared:
        index = table.get_field_index(field.name)
        if index >= 0 and table.field(index).type != field.type:
            raise ConfigError(
                f"the declared schema says {field.name!r} is {field.type}, but {table_uri} holds it as "
                f"{table.field(index).type}: fix the schema=, or ingest into a new table",
                options=("schema",),
            )


def _delta_type_of(field: pa.Field) -> pa.DataType:
    try:
        return delta_type(field.type)
    except SchemaMismatch as exc:
        raise SchemaMismatch(f"column {field.name!r}: {exc}") from None


def fit(data: pa.Table, table_schema: pa.Schema | None, *, evolve: bool) -> Fitted:
    """Cast `data` to `table_schema` (or to a new table's schema when it is None).

    Raises:
        SchemaMismatch: a type conflict, a new column without `evolve`, a missing non-nullable
            column, or nulls in a non-nullable column; the message names the column and the fix.
    """
    _reject_duplicate_names(data.schema)
    if table_schema is None:
        target = delta_schema(data.schema)
        return Fitted(table=_in_range(_cast_columns(data, target)), new_fields=())
    table_fields = {f.name: f for f in table_schema}
    extra = [f for f in data.schema if f.name not in table_fields]
    if extra and not evolve:
        names = ", ".join(repr(f.name) for f in extra)
        raise SchemaMismatch(
            f"column(s) {names} are not in the table; to add them as nullable columns, "
            "pass evolve_schema=True, or drop them from the input",
            options=("evolve_schema",),
        )
    new_fields = tuple(pa.field(f.name, _delta_type_of(f), nullable=True) for f in extra)
    target = pa.schema(list(table_schema) + list(new_fields))
    if data.schema.equals(target) and all(f.nullable for f in target):
        # Read with the table's types already (the usual case for every chunk after the first):
        # nothing to cast, and no non-nullable column to check.
        return Fitted(table=_in_range(data.replace_schema_metadata(target.metadata)), new_fields=new_fields)
    columns = []
    for field in target:
        if field.name in data.column_names:
            columns.append(_cast_column(data.column(field.name), field))
        elif field.nullable:
            columns.append(pa.nulls(data.num_rows, type=field.type))
        else:
            raise SchemaMismatch(f"column {field.name!r} is required by the table (not nullable) but missing from the input")
    return Fitted(table=_in_range(pa.Table.from_arrays(columns, schema=target)), new_fields=new_fields)


# Delta's dates and timestamps run from year 1 to year 9999 (as Spark's do): in days and in
# microseconds since 1970-01-01.
_DAYS = (-719_162, 2_932_896)
_MICROS = (-62_135_596_800_000_000, 253_402_300_799_999_999)


def _in_range(table: pa.Table) -> pa.Table:
    """`table`, once every date and timestamp (top level and in structs) is within years 1..9999.

    Raises:
        SchemaMismatch: naming the column and its first value out of range.
    """
    import pyarrow.compute as pc

    for name, column in _temporal_columns(table.schema, table.columns, ""):
        low, high = (_DAYS if pa.types.is_date32(column.type) else _MICROS)
        as_int = column.cast(pa.int32() if pa.types.is_date32(column.type) else pa.int64())
        bounds = pc.min_max(as_int)
        lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
        if lo is not None and (lo < low or hi > high):
            raise SchemaMismatch(
                f"column {name!r} holds a {'date' if pa.types.is_date32(column.type) else 'timestamp'} outside the "
                "years 1 to 9999, which Delta readers cannot read: fix or drop those values (or store them as strings)"
            )
    return table


def _temporal_columns(
    schema: pa.Schema | pa.StructType, columns: list[pa.ChunkedArray], prefix: str
) -> list[tuple[str, pa.ChunkedArray]]:
    found = []
    for field, column in zip(schema, columns, strict=True):
        name = f"{prefix}{field.name}"
        if pa.types.is_date32(field.type) or pa.types.is_timestamp(field.type):
            found.append((name, column))
        elif pa.types.is_struct(field.type):
            found += _temporal_columns(field.type, column.flatten(), f"{name}.")  # children, parent nulls kept
    return found


def _reject_duplicate_names(schema: pa.Schema) -> None:
    seen: set[str] = set()
    for name in schema.names:
        if name.lower() in seen:
            raise SchemaMismatch(f"column {name!r} appears twice (Delta column names are case-insensitive)")
        seen.add(name.lower())


def _cast_columns(data: pa.Table, target: pa.Schema) -> pa.Table:
    return pa.Table.from_arrays([_cast_column(data.column(f.name), f) for f in target], schema=target)


def _cast_column(column: pa.ChunkedArray, field: pa.Field) -> pa.ChunkedArray:
    import pyarrow.compute as pc

    source = column.type
    if not field.nullable and column.null_count:
        raise SchemaMismatch(f"column {field.name!r} is not nullable in the table but has {column.null_count} null(s)")
    if source == field.type:
        return column
    if not _may_widen(source, field.type):
        raise SchemaMismatch(
            f"column {field.name!r} is {field.type} in the table but {source} in the input; "
            f"cast it to {field.type} before writing, or write it to a new column"
        )
    try:
        return pc.cast(column, field.type, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SchemaMismatch(f"column {field.name!r}: cannot convert {source} to {field.type} without loss ({exc})") from exc


def _may_widen(source: pa.DataType, target: pa.DataType) -> bool:
    """Casts that never change a value: the safe cast still checks each value (overflow, precision)."""
    if pa.types.is_null(source):
        return True
    plain = plain_type(source)
    if plain == target:
        return True
    if plain in _UNSIGNED_TO_SIGNED:
        return pa.types.is_integer(target) and pa.types.is_signed_integer(target)
    if pa.types.is_signed_integer(plain) and pa.types.is_signed_integer(target):
        return _INT_ORDER.index(plain) <= _INT_ORDER.index(target)
    if pa.types.is_integer(plain) and pa.types.is_float64(target):
        return True  # a value a double cannot hold exactly (beyond 2**53) is refused by the safe cast
    if pa.types.is_floating(plain) and pa.types.is_floating(target):
        return plain.bit_width <= target.bit_width
    if pa.types.is_timestamp(plain) and pa.types.is_timestamp(target):
        # Time zone aware and naive timestamps mean different things; only the unit may change.
        return (plain.tz is None) == (target.tz is None)
    if pa.types.is_date(plain) and pa.types.is_date(target):
        return True
    if pa.types.is_decimal(plain) and pa.types.is_decimal(target):
        return plain.scale == target.scale and plain.precision <= target.precision
    if pa.types.is_nested(plain) or pa.types.is_fixed_size_binary(plain) or pa.types.is_decimal(plain):
        # Same shape, plainer types (fixed-size to variable lists and binaries, large to plain
        # strings, decimal256 to decimal128): every value is kept, or the safe cast refuses it.
        try:
            return delta_type(plain) == target or _same_but_nullability(delta_type(plain), target)
        except SchemaMismatch:
            return False
    return False


def _same_but_nullability(a: pa.DataType, b: pa.DataType) -> bool:
    """Equal types but for the nullability of nested fields (a table another writer made may require values)."""
    if pa.types.is_struct(a) and pa.types.is_struct(b):
        return [f.name for f in a] == [f.name for f in b] and all(
            _same_but_nullability(x.type, y.type) for x, y in zip(a, b, strict=True)
        )
    if (pa.types.is_list(a) and pa.types.is_list(b)) or (pa.types.is_large_list(a) and pa.types.is_large_list(b)):
        return _same_but_nullability(a.value_type, b.value_type)
    if pa.types.is_map(a) and pa.types.is_map(b):
        return _same_but_nullability(a.key_type, b.key_type) and _same_but_nullability(a.item_type, b.item_type)
    return bool(a == b)
