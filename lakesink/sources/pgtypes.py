"""PostgreSQL column types as Arrow types, and PostgreSQL's text values as Arrow arrays, in bulk.

pgoutput sends each value as its type's output text. A column's values are converted together:
one Arrow array of strings, then one vectorised cast, so the cost per row stays small. A cast that
fails is bisected to the first value it fails on, which is then named in the error.

The text must be PostgreSQL's defaults for the replication session: DateStyle ISO,
bytea_output hex, extra_float_digits ≥ 1 (PostgreSQL 12+ default: floats print exactly) and a
UTF8 database. Anything else makes a conversion fail with BadRecord (never a wrong value), except
extra_float_digits < 1, which PostgreSQL itself rounds before sending.

Types not mapped below (enums, domains, arrays, interval, inet, money, timetz, ...) stay strings
carrying PostgreSQL's text form. Delta holds dates and timestamps in years 1 to 9999 only, and
decimals of at most 38 digits: values beyond those are refused, never clamped or rounded.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from lakesink.errors import BadRecord, InternalError

# Built-in type OIDs (pg_type.dat); stable across PostgreSQL versions.
BOOL: Final = 16
BYTEA: Final = 17
CHAR: Final = 18
NAME: Final = 19
INT8: Final = 20
INT2: Final = 21
INT4: Final = 23
TEXT: Final = 25
OID: Final = 26
JSON: Final = 114
FLOAT4: Final = 700
FLOAT8: Final = 701
BPCHAR: Final = 1042
VARCHAR: Final = 1043
DATE: Final = 1082
TIME: Final = 1083
TIMESTAMP: Final = 1114
TIMESTAMPTZ: Final = 1184
NUMERIC: Final = 1700
UUID: Final = 2950
JSONB: Final = 3802

MAX_DECIMAL_PRECISION: Final = 38
UNCONSTRAINED_NUMERIC: Final = pa.decimal128(38, 18)
"""Where unconstrained numeric (and numeric wider than 38 digits) goes: 20 integer and 18 fraction digits."""

_SIMPLE_TYPES: Final[dict[int, pa.DataType]] = {
    BOOL: pa.bool_(),
    INT2: pa.int16(),
    INT4: pa.int32(),
    INT8: pa.int64(),
    OID: pa.int64(),
    FLOAT4: pa.float32(),
    FLOAT8: pa.float64(),
    BYTEA: pa.binary(),
    DATE: pa.date32(),
    TIMESTAMP: pa.timestamp("us"),
    TIMESTAMPTZ: pa.timestamp("us", tz="UTC"),
}


def numeric_precision_scale(type_modifier: int) -> tuple[int, int]:
    """The decimal128 (precision, scale) that holds every value of numeric with this typmod exactly.

    numeric(p, s) with p ≤ 38 maps to (p, s); PostgreSQL 15's negative scale numeric(p, -k) to
    (p + k, 0) and scale above precision numeric(p, s > p) to (s, s). Unconstrained numeric
    (typmod -1) and anything wider than 38 digits map to (38, 18), whose values may not fit.
    """
    if type_modifier < 4:  # -1: no typmod (VARHDRSZ = 4 is added to every valid one)
        return 38, 18
    packed = type_modifier - 4
    precision = (packed >> 16) & 0xFFFF
    # Scale is an 11-bit signed field since PostgreSQL 15 (negative scales); earlier it was
    # 0..precision, which this reads the same way.
    scale = ((packed & 0x7FF) ^ 0x400) - 0x400
    if scale < 0:
        precision, scale = precision - scale, 0
    elif scale > precision:
        precision = scale
    if precision > MAX_DECIMAL_PRECISION:
        return 38, 18
    return precision, scale


def arrow_type(type_oid: int, type_modifier: int) -> pa.DataType:
    """The Arrow type a column of PostgreSQL type `type_oid` (with `type_modifier`, -1 if none) is stored as.

    Unmapped types are pa.string() holding PostgreSQL's text. Never raises.
    """
    simple = _SIMPLE_TYPES.get(type_oid)
    if simple is not None:
        return simple
    if type_oid == NUMERIC:
        return pa.decimal128(*numeric_precision_scale(type_modifier))
    return pa.string()


def to_arrow_array(values: Sequence[str | None], type_oid: int, type_modifier: int, *, column: str, table: str) -> pa.Array:
    """PostgreSQL output text of one column (None for NULL) as an array of `arrow_type(type_oid, type_modifier)`.

    Raises BadRecord naming table, column and the first value that has no exact Arrow value
    (numeric NaN/Infinity or too many digits, infinite/BC/out-of-range dates and timestamps, time
    24:00:00), with the fix. Raises InternalError for UNCHANGED or another value that is not text
    (the caller must replace UNCHANGED first; bytes are read as UTF-8 text).
    """
    try:
        strings = pa.array(values, type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        bad = next((v for v in values if v is not None and not isinstance(v, str)), None)
        raise InternalError(
            f"{table}.{column}: to_arrow_array was given {bad!r} ({type(bad).__name__}); it takes PostgreSQL text or None "
            "only (UNCHANGED must be replaced by the row's current value first)"
        ) from exc
    return convert_strings(strings, type_oid, type_modifier, column=column, table=table)


def convert_strings(strings: pa.Array, type_oid: int, type_modifier: int, *, column: str, table: str) -> pa.Array:
    """Like `to_arrow_array`, for PostgreSQL text already in an Arrow string array (e.g. read from COPY ... CSV).

    Takes a string, large_string or string_view Array or ChunkedArray. Raises BadRecord as
    `to_arrow_array` does, and InternalError for an array that does not hold strings.
    """
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    if strings.type != pa.string():
        if not (pa.types.is_large_string(strings.type) or pa.types.is_string_view(strings.type)):
            raise InternalError(f"{table}.{column}: convert_strings was given an array of {strings.type}; it takes strings")
        strings = strings.cast(pa.string())
    convert = _CONVERTERS.get(type_oid)
    if convert is None:
        return strings
    return convert(strings, arrow_type(type_oid, type_modifier), _Column(table, column, type_oid))


# --- conversions ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Column:
    table: str
    column: str
    type_oid: int

    def refuse(self, value: str, why: str, fix: str) -> BadRecord:
        shown = value if len(value) <= 80 else f"{value[:80]}..."  # a numeric may have 100k digits
        return BadRecord(f"table {self.table!r} column {self.column!r}: value {shown!r} {why}. Fix: {fix}.")


_Converter = Callable[[pa.Array, pa.DataType, _Column], pa.Array]
_ARROW_ERRORS: Final = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)
_YEAR_FIX: Final = (
    "Delta dates and timestamps hold years 1 to 9999 only: replace the value in PostgreSQL (e.g. with NULL), "
    "or keep the row out of the publication with a row filter (CREATE PUBLICATION ... WHERE)"
)
_DATESTYLE_FIX: Final = "lakesink reads PostgreSQL's ISO output: make sure the replication session has DateStyle=ISO"
_BYTEA_FIX: Final = "set bytea_output=hex (the default) for the replication session"
_MIN_TIMESTAMP_US: Final = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
_MAX_TIMESTAMP_US: Final = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
_UNIX_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# PostgreSQL prints an offset with seconds for zones whose historical (LMT) offset had them,
# e.g. Europe/Amsterdam before 1937: `1900-01-01 00:00:00+00:19:32`. Arrow cannot parse that.
_OFFSET_WITH_SECONDS: Final = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{1,6})?[+-]\d\d:\d\d:\d\d")
_FIVE_DIGIT_YEAR: Final = re.compile(r"\d{5,}-")


def _fails(convert: Callable[[pa.Array], pa.Array], strings: pa.Array) -> bool:
    try:
        convert(strings)
    except _ARROW_ERRORS:
        return True
    return False


def _first_failing(strings: pa.Array, convert: Callable[[pa.Array], pa.Array]) -> str:
    """The first value `convert` fails on, found by bisection (the casts are element-wise)."""
    lo, hi = 0, len(strings)  # strings[lo:hi] holds a value convert fails on
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _fails(convert, strings.slice(lo, mid - lo)):
            hi = mid
        else:
            lo = mid
    value = strings[lo].as_py() if hi > lo else None
    if value is None or not _fails(convert, strings.slice(lo, 1)):
        raise InternalError(f"a conversion to Arrow failed on the whole array but on no single value ({len(strings)} values)")
    return str(value)


def _cast(target: pa.DataType) -> Callable[[pa.Array], pa.Array]:
    def cast(strings: pa.Array) -> pa.Array:
        return pc.cast(strings, target)

    return cast


def _cast_or_refuse(strings: pa.Array, target: pa.DataType, explain: Callable[[str], BadRecord]) -> pa.Array:
    convert = _cast(target)
    try:
        return convert(strings)
    except _ARROW_ERRORS:
        raise explain(_first_failing(strings, convert)) from None


def _plain(strings: pa.Array, target: pa.DataType, where: _Column) -> pa.Array:
    """Integers and floats: PostgreSQL's text always parses (NaN and ±Infinity included), so a failure is a wrong type."""

    def explain(value: str) -> BadRecord:
        return where.refuse(value, f"is not PostgreSQL text of a {target} (type OID {where.type_oid})", _DATESTYLE_FIX)

    return _cast_or_refuse(strings, target, explain)


def _bool(strings: pa.Array, target: pa.DataType, where: _Column) -> pa.Array:
    # Arrow's string-to-bool cast does not take PostgreSQL's 't'/'f'.
    true = pc.equal(strings, "t")
    if not _all_true(pc.or_(true, pc.equal(strings, "f"))):
        bad = next(v for v in strings.to_pylist() if v not in (None, "t", "f"))
        raise where.refuse(bad, "is not PostgreSQL boolean text ('t' or 'f')", "report this: a bool column sent other text")
    return true


def _numeric(strings: pa.Array, target: pa.DataType, where: _Column) -> pa.Array:
    # Arrow's string-to-decimal cast is exact within the type's digits but silently wraps around
    # beyond them (pyarrow 26: '1' * 22 cast to decimal128(38, 18) gives 90264010348295720720.87...,
    # a 1000-digit string gives a negative number). So every value's digits are checked first, by
    # one regex over the array; trailing fraction zeros (unconstrained numeric keeps the input's
    # display scale: '1.50000') are dropped first where that check fails.
    pattern = _numeric_pattern(target.precision, target.scale)
    checked = strings
    fits = pc.match_substring_regex(checked, pattern)
    if not _all_true(fits):
        checked = pc.replace_substring_regex(strings, _TRAILING_FRACTION_ZEROS, r"\1")
        fits = pc.match_substring_regex(checked, pattern)
        if not _all_true(fits):
            raise _explain_numeric(strings[pc.index(fits, False).as_py()].as_py(), target, where)
    try:
        return pc.cast(checked, target)
    except _ARROW_ERRORS:
        raise _explain_numeric(_first_failing(checked, _cast(target)), target, where) from None


_TRAILING_FRACTION_ZEROS: Final = r"(\.\d*?)0+$"  # '1.2300' -> '1.23', '1.000' -> '1.' (which Arrow reads as 1)


@functools.cache
def _numeric_pattern(precision: int, scale: int) -> str:
    """A regex matching PostgreSQL's numeric text with at most precision - scale integer and scale fraction digits."""
    integer_digits = precision - scale
    integer = f"(0|[1-9]\\d{{0,{integer_digits - 1}}})" if integer_digits > 0 else "0"
    return f"^-?{integer}(\\.\\d{{0,{scale}}})?$"


def _all_true(mask: pa.Array) -> bool:
    """Every non-null value of a boolean array is true (an empty or all-null array counts)."""
    return bool(pc.all(mask, min_count=0).as_py())


def _explain_numeric(value: str, target: pa.DataType, where: _Column) -> BadRecord:
    fix = (
        f"declare the column numeric(p,s) with p ≤ 38 (ALTER TABLE {where.table} ALTER COLUMN {where.column} TYPE "
        "numeric(p,s)), so PostgreSQL itself keeps every value within a decimal that Delta can hold"
    )
    if value in ("NaN", "Infinity", "-Infinity"):
        return where.refuse(
            value,
            f"has no decimal value (Arrow {target})",
            f"replace it (e.g. with NULL) and keep it out, e.g. with CHECK ({where.column} NOT IN ('NaN', "
            "'Infinity', '-Infinity'))",
        )
    integer, _, fraction = value.lstrip("-").partition(".")
    integer = integer.lstrip("0")
    fraction = fraction.rstrip("0")
    integer_digits = target.precision - target.scale
    if len(fraction) > target.scale:
        why = f"has {len(fraction)} digits after the point and {target} holds {target.scale} (lakesink never rounds)"
    elif len(integer) > integer_digits:
        why = f"has {len(integer)} digits before the point and {target} holds {integer_digits}"
    else:
        why = f"is not PostgreSQL numeric text that fits {target}"
    return where.refuse(value, why, fix)


def _explain_datetime(where: _Column, kind: str) -> Callable[[str], BadRecord]:
    def explain(value: str) -> BadRecord:
        if value in ("infinity", "-infinity"):
            return where.refuse(value, f"is an infinite {kind}, which Delta cannot hold", _YEAR_FIX)
        if value.endswith(" BC"):
            return where.refuse(value, f"is a {kind} before the year 1 (BC)", _YEAR_FIX)
        if _FIVE_DIGIT_YEAR.match(value):
            return where.refuse(value, f"is a {kind} outside the years 1 to 9999", _YEAR_FIX)
        return where.refuse(value, f"is not PostgreSQL's ISO text of a {kind}", _DATESTYLE_FIX)

    return explain


def _date(strings: pa.Array, target: pa.DataType, where: _Column) -> pa.Array:
    return _cast_or_refuse(strings, target, _explain_datetime(where, "date"))


def _timestamp(strings: pa.Array, target: pa.DataType, where: _Column) -> pa.Array:
    return _cast_or_refuse(strings, target, _explain_datetime(where, "timestamp"))


def _timestamptz(strings: pa.Array, target: pa.DataType, where: _Column) -> pa.Array:
    # Arrow parses ISO offsets `+00`, `+05:30`, `-08` and converts to UTC; offsets with seconds
    # (rare: historical local mean time) go through Python, whose fromisoformat parses them.
    explain = _explain_datetime(where, "timestamp with time zone")
    convert = _cast(target)
    try:
        result = convert(strings)
    except _ARROW_ERRORS:
        bad = _first_failing(strings, convert)
        if not _OFFSET_WITH_SECONDS.fullmatch(bad):
            raise explain(bad) from None
        result = _timestamptz_in_python(strings, target, explain)
    # In range as written, a value can still leave years 1..9999 once moved to UTC.
    micros = result.cast(pa.int64())
    low, high = (scalar.as_py() for scalar in pc.min_max(micros).values())
    if low is not None and (low < _MIN_TIMESTAMP_US or high > _MAX_TIMESTAMP_US):
        index = pc.index(micros, low if low < _MIN_TIMESTAMP_US else high).as_py()
        raise where.refuse(strings[index].as_py(), "is outside the years 1 to 9999 once converted to UTC", _YEAR_FIX)
    return result


def _timestamptz_in_python(strings: pa.Array, target: pa.DataType, explain: Callable[[str], BadRecord]) -> pa.Array:
    micros: list[int | None] = []
    one = timedelta(microseconds=1)
    for value in strings.to_pylist():
        if value is None:
            micros.append(None)
            continue
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise explain(value) from None
        if moment.tzinfo is None:
            raise explain(value)
        micros.append((moment - _UNIX_EPOCH) // one)
    return pa.array(micros, pa.int64()).cast(target)


def _bytea(strings: pa.Array, target: pa.DataType, where: _Column) -> pa.Array:
    # Arrow has no hex decoding; bytes.fromhex runs at C speed per value.
    decoded: list[bytes | None] = []
    for value in strings.to_pylist():
        if value is None:
            decoded.append(None)
            continue
        if not value.startswith("\\x"):
            raise where.refuse(value, "is not bytea hex text (\\x...)", _BYTEA_FIX)
        try:
            decoded.append(bytes.fromhex(value[2:]))
        except ValueError:
            raise where.refuse(value, "is not valid bytea hex text", _BYTEA_FIX) from None
    return pa.array(decoded, target)


_CONVERTERS: Final[dict[int, _Converter]] = {
    BOOL: _bool,
    INT2: _plain,
    INT4: _plain,
    INT8: _plain,
    OID: _plain,
    FLOAT4: _plain,
    FLOAT8: _plain,
    NUMERIC: _numeric,
    BYTEA: _bytea,
    DATE: _date,
    TIMESTAMP: _timestamp,
    TIMESTAMPTZ: _timestamptz,
}
