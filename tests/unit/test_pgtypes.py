"""PostgreSQL types as Arrow types, and PostgreSQL's output text converted exactly (or refused, naming the value)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from decimal import Decimal

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lakesink.errors import BadRecord, InternalError
from lakesink.sources import pgtypes
from lakesink.sources.pgoutput import UNCHANGED
from lakesink.sources.pgtypes import arrow_type, numeric_precision_scale, to_arrow_array

UTC = dt.UTC


def numeric_typmod(precision: int, scale: int) -> int:
    """PostgreSQL's make_numeric_typmod (PostgreSQL 15: scale is an 11-bit signed field)."""
    return ((precision << 16) | (scale & 0x7FF)) + 4


def convert(values: Sequence[str | None], type_oid: int, type_modifier: int = -1) -> list[object]:
    array = to_arrow_array(values, type_oid, type_modifier, column="col", table="public.things")
    assert array.type == arrow_type(type_oid, type_modifier)
    return list(array.to_pylist())


def refusal(values: Sequence[str | None], type_oid: int, type_modifier: int = -1) -> str:
    with pytest.raises(BadRecord) as caught:
        to_arrow_array(values, type_oid, type_modifier, column="col", table="public.things")
    message = str(caught.value)
    assert "'public.things'" in message and "'col'" in message and "Fix:" in message
    return message


@pytest.mark.parametrize(
    ("type_oid", "type_modifier", "expected"),
    [
        (pgtypes.BOOL, -1, pa.bool_()),
        (pgtypes.INT2, -1, pa.int16()),
        (pgtypes.INT4, -1, pa.int32()),
        (pgtypes.INT8, -1, pa.int64()),
        (pgtypes.OID, -1, pa.int64()),
        (pgtypes.FLOAT4, -1, pa.float32()),
        (pgtypes.FLOAT8, -1, pa.float64()),
        (pgtypes.NUMERIC, numeric_typmod(12, 3), pa.decimal128(12, 3)),
        (pgtypes.NUMERIC, numeric_typmod(38, 38), pa.decimal128(38, 38)),
        (pgtypes.NUMERIC, numeric_typmod(38, 0), pa.decimal128(38, 0)),
        (pgtypes.NUMERIC, numeric_typmod(39, 2), pa.decimal128(38, 18)),
        (pgtypes.NUMERIC, numeric_typmod(1000, 0), pa.decimal128(38, 18)),
        (pgtypes.NUMERIC, -1, pa.decimal128(38, 18)),
        (pgtypes.NUMERIC, numeric_typmod(5, -2), pa.decimal128(7, 0)),  # PostgreSQL 15: rounds to hundreds
        (pgtypes.NUMERIC, numeric_typmod(3, 5), pa.decimal128(5, 5)),  # PostgreSQL 15: |values| < 0.001
        (pgtypes.NUMERIC, numeric_typmod(37, -2), pa.decimal128(38, 18)),  # 39 integer digits
        (pgtypes.TEXT, -1, pa.string()),
        (pgtypes.VARCHAR, 24, pa.string()),
        (pgtypes.BPCHAR, 9, pa.string()),
        (pgtypes.NAME, -1, pa.string()),
        (pgtypes.CHAR, -1, pa.string()),
        (pgtypes.BYTEA, -1, pa.binary()),
        (pgtypes.DATE, -1, pa.date32()),
        (pgtypes.TIMESTAMP, -1, pa.timestamp("us")),
        (pgtypes.TIMESTAMP, 3, pa.timestamp("us")),
        (pgtypes.TIMESTAMPTZ, -1, pa.timestamp("us", tz="UTC")),
        (pgtypes.TIME, -1, pa.string()),  # Delta has no time type
        (pgtypes.UUID, -1, pa.string()),
        (pgtypes.JSON, -1, pa.string()),
        (pgtypes.JSONB, -1, pa.string()),
        (1186, -1, pa.string()),  # interval
        (869, -1, pa.string()),  # inet
        (1007, -1, pa.string()),  # int4[]
        (1266, -1, pa.string()),  # timetz
        (790, -1, pa.string()),  # money
        (16_400, -1, pa.string()),  # an enum or domain: a user type's OID
    ],
)
def test_arrow_type(type_oid: int, type_modifier: int, expected: pa.DataType) -> None:
    assert arrow_type(type_oid, type_modifier) == expected


def test_numeric_typmod_decoding() -> None:
    assert numeric_precision_scale(-1) == (38, 18)
    assert numeric_precision_scale(numeric_typmod(1, 0)) == (1, 0)
    assert numeric_precision_scale(numeric_typmod(12, 3)) == (12, 3)
    assert numeric_precision_scale(numeric_typmod(38, 18)) == (38, 18)
    assert numeric_precision_scale(numeric_typmod(10, -3)) == (13, 0)


def test_bool() -> None:
    assert convert(["t", "f", None], pgtypes.BOOL) == [True, False, None]
    assert "'yes'" in refusal(["t", "yes"], pgtypes.BOOL)


def test_integers_at_their_limits() -> None:
    assert convert(["-32768", "32767", "0", None], pgtypes.INT2) == [-32768, 32767, 0, None]
    assert convert(["-2147483648", "2147483647"], pgtypes.INT4) == [-(2**31), 2**31 - 1]
    assert convert(["-9223372036854775808", "9223372036854775807", None], pgtypes.INT8) == [-(2**63), 2**63 - 1, None]
    assert convert(["0", "4294967295"], pgtypes.OID) == [0, 2**32 - 1]


def test_integer_out_of_range_is_refused_naming_it() -> None:
    assert "'32768'" in refusal(["1", "32768"], pgtypes.INT2)
    assert "'9223372036854775808'" in refusal(["9223372036854775808"], pgtypes.INT8)


def test_float8_special_values_and_extremes() -> None:
    values = convert(["NaN", "Infinity", "-Infinity", "-0", "1e+308", "2.2250738585072014e-308", "0.1", None], pgtypes.FLOAT8)
    assert math.isnan(values[0])  # type: ignore[arg-type]
    assert values[1:] == [math.inf, -math.inf, -0.0, 1e308, 2.2250738585072014e-308, 0.1, None]
    assert math.copysign(1, values[3]) == -1  # type: ignore[arg-type]


def test_float4_parses_as_float32() -> None:
    values = convert(["NaN", "Infinity", "-Infinity", "3.4028235e+38", "1.1", "1e-45"], pgtypes.FLOAT4)
    assert math.isnan(values[0])  # type: ignore[arg-type]
    expected = pa.array([3.4028235e38, 1.1, 1e-45], pa.float32()).to_pylist()
    assert values[1:] == [math.inf, -math.inf, *expected]
    assert values[4] != 1.1  # float32's nearest value, not float64's


def test_numeric_constrained() -> None:
    typmod = numeric_typmod(12, 3)
    values = ["123456789.123", "-999999999.999", "0.000", "-0.001", None]
    assert convert(values, pgtypes.NUMERIC, typmod) == [
        Decimal("123456789.123"),
        Decimal("-999999999.999"),
        Decimal("0"),
        Decimal("-0.001"),
        None,
    ]


def test_numeric_at_38_digits() -> None:
    assert convert(["9" * 38, "-" + "9" * 38], pgtypes.NUMERIC, numeric_typmod(38, 0)) == [
        Decimal("9" * 38),
        Decimal("-" + "9" * 38),
    ]
    assert convert(["0." + "9" * 38], pgtypes.NUMERIC, numeric_typmod(38, 38)) == [Decimal("0." + "9" * 38)]


def test_numeric_unconstrained_fits_20_integer_and_18_fraction_digits() -> None:
    biggest = "9" * 20 + "." + "9" * 18
    values = convert([biggest, "-" + biggest, "1.5", "1.50000000000000000000000000", "0.000000000000000001"], pgtypes.NUMERIC)
    assert values == [Decimal(biggest), Decimal("-" + biggest), Decimal("1.5"), Decimal("1.5"), Decimal("1E-18")]


def test_numeric_with_too_many_fraction_digits_is_refused_never_rounded() -> None:
    message = refusal(["1", "0.1234567890123456789"], pgtypes.NUMERIC)
    assert "'0.1234567890123456789'" in message
    assert "19 digits after the point" in message and "never rounds" in message
    assert "numeric(p,s) with p ≤ 38" in message


def test_numeric_with_too_many_integer_digits_is_refused() -> None:
    message = refusal(["1" + "0" * 20], pgtypes.NUMERIC)
    assert "'100000000000000000000'" in message and "21 digits before the point" in message
    assert "numeric(p,s) with p ≤ 38" in message
    wide = numeric_typmod(50, 2)  # numeric(50,2): wider than Delta, so stored as decimal(38,18)
    assert "21 digits before the point" in refusal(["-" + "1" * 21 + ".5"], pgtypes.NUMERIC, wide)


@pytest.mark.parametrize(
    ("value", "precision", "scale"),
    [
        ("1" * 22, 38, 18),
        ("-" + "9" * 30 + ".5", 38, 18),
        ("9" * 39, 38, 0),
        ("1" + "0" * 40, 38, 0),
        ("0." + "1" * 39, 38, 38),
        ("1" * 1000, 38, 18),
        ("0." + "1" * 50, 12, 3),
        ("1" * 50, 12, 3),
    ],
)
def test_numeric_beyond_the_decimal_is_refused_not_wrapped_around(value: str, precision: int, scale: int) -> None:
    # pyarrow's own cast silently wraps these around (e.g. '1' * 22 -> 90264010348295720720.87...).
    typmod = numeric_typmod(precision, scale) if precision <= 38 and (precision, scale) != (38, 18) else -1
    assert arrow_type(pgtypes.NUMERIC, typmod) == pa.decimal128(precision, scale)
    assert "digits" in refusal(["1", value, "2"], pgtypes.NUMERIC, typmod)


def test_numeric_trailing_zeros_beyond_the_scale_are_exact() -> None:
    values = ["1.5" + "0" * 60, "-2." + "0" * 40, "0.000000000000000001" + "0" * 30, "100", "1.25"]
    assert convert(values, pgtypes.NUMERIC) == [Decimal("1.5"), Decimal(-2), Decimal("1E-18"), Decimal(100), Decimal("1.25")]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_numeric_nan_and_infinity_are_refused(value: str) -> None:
    message = refusal(["1.000", value], pgtypes.NUMERIC, numeric_typmod(12, 3))
    assert f"value {value!r} has no decimal value" in message


def test_numeric_refusal_names_the_first_bad_value_of_many() -> None:
    values: list[str | None] = [f"{i}.5" for i in range(10_000)]
    values[7777] = "NaN"
    values[9000] = "Infinity"
    assert "value 'NaN'" in refusal(values, pgtypes.NUMERIC)


def test_very_long_value_is_shortened_in_the_message() -> None:
    message = refusal(["1" * 1000], pgtypes.NUMERIC)
    assert "1" * 80 + "..." in message and "1" * 81 not in message


def test_text_types_pass_through() -> None:
    values = ["", "plain", "ünïcødé €", "padded   ", None, "x" * 100_000]
    for type_oid in (
        pgtypes.TEXT,
        pgtypes.VARCHAR,
        pgtypes.BPCHAR,
        pgtypes.NAME,
        pgtypes.CHAR,
        pgtypes.UUID,
        pgtypes.JSON,
        pgtypes.JSONB,
    ):
        assert convert(values, type_oid) == values


def test_unmapped_types_keep_postgres_text() -> None:
    assert convert(["{1,2,NULL}", None], 1007) == ["{1,2,NULL}", None]
    assert convert(["1 day 02:03:04"], 1186) == ["1 day 02:03:04"]
    assert convert(["happy"], 16_400) == ["happy"]


def test_bytea_hex() -> None:
    assert convert(["\\x", "\\x00ff10", "\\xDEADbeef", None], pgtypes.BYTEA) == [b"", b"\x00\xff\x10", b"\xde\xad\xbe\xef", None]


def test_bytea_escape_format_is_refused() -> None:
    assert "bytea_output=hex" in refusal(["\\x00", "abc\\000"], pgtypes.BYTEA)
    assert "bytea_output=hex" in refusal(["\\x0g"], pgtypes.BYTEA)


def test_dates() -> None:
    assert convert(["2024-02-29", "0001-01-01", "9999-12-31", "1970-01-01", None], pgtypes.DATE) == [
        dt.date(2024, 2, 29),
        dt.date(1, 1, 1),
        dt.date(9999, 12, 31),
        dt.date(1970, 1, 1),
        None,
    ]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("infinity", "infinite"),
        ("-infinity", "infinite"),
        ("0044-03-15 BC", "before the year 1"),
        ("0001-12-31 BC", "before the year 1"),
        ("10000-01-01", "outside the years 1 to 9999"),
        ("15/03/2024", "DateStyle=ISO"),
    ],
)
def test_dates_delta_cannot_hold_are_refused(value: str, why: str) -> None:
    message = refusal(["2024-01-01", value], pgtypes.DATE)
    assert f"value {value!r}" in message and why in message


def test_timestamps_with_and_without_fraction() -> None:
    values = ["2024-01-02 03:04:05", "2024-01-02 03:04:05.5", "2024-01-02 03:04:05.123456", "0001-01-01 00:00:00", None]
    assert convert([*values, "9999-12-31 23:59:59.999999"], pgtypes.TIMESTAMP) == [
        dt.datetime(2024, 1, 2, 3, 4, 5),
        dt.datetime(2024, 1, 2, 3, 4, 5, 500_000),
        dt.datetime(2024, 1, 2, 3, 4, 5, 123_456),
        dt.datetime(1, 1, 1),
        None,
        dt.datetime(9999, 12, 31, 23, 59, 59, 999_999),
    ]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("infinity", "infinite"),
        ("-infinity", "infinite"),
        ("0044-03-15 12:00:00 BC", "before the year 1"),
        ("10000-01-01 00:00:00", "outside the years 1 to 9999"),
        ("2024-01-02 03:04:05+00", "ISO text"),  # a timestamptz's text in a timestamp column
    ],
)
def test_timestamps_delta_cannot_hold_are_refused(value: str, why: str) -> None:
    message = refusal([value], pgtypes.TIMESTAMP)
    assert f"value {value!r}" in message and why in message


def test_timestamptz_offsets_are_converted_to_utc() -> None:
    values = [
        "2024-01-02 03:04:05+00",
        "2024-01-02 03:04:05.123456+05:30",
        "2024-01-02 03:04:05-08",
        "2024-07-01 12:00:00.5-02:30",  # Newfoundland summer time
        "2024-01-02 03:04:05+14",
        "0001-01-01 05:30:00+05:30",
        None,
    ]
    assert convert(values, pgtypes.TIMESTAMPTZ) == [
        dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        dt.datetime(2024, 1, 1, 21, 34, 5, 123_456, tzinfo=UTC),
        dt.datetime(2024, 1, 2, 11, 4, 5, tzinfo=UTC),
        dt.datetime(2024, 7, 1, 14, 30, 0, 500_000, tzinfo=UTC),
        dt.datetime(2024, 1, 1, 13, 4, 5, tzinfo=UTC),
        dt.datetime(1, 1, 1, 0, 0, tzinfo=UTC),
        None,
    ]


def test_timestamptz_offsets_with_seconds() -> None:
    # Local mean time: Europe/Amsterdam before 1937 printed as +00:19:32; Arrow cannot parse it.
    values = ["1900-01-01 00:19:32+00:19:32", "2024-01-02 03:04:05.25+05:30", "1800-06-01 12:00:00-04:56:02", None]
    assert convert(values, pgtypes.TIMESTAMPTZ) == [
        dt.datetime(1900, 1, 1, 0, 0, tzinfo=UTC),
        dt.datetime(2024, 1, 1, 21, 34, 5, 250_000, tzinfo=UTC),
        dt.datetime(1800, 6, 1, 16, 56, 2, tzinfo=UTC),
        None,
    ]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("infinity", "infinite"),
        ("-infinity", "infinite"),
        ("0044-03-15 12:00:00+00 BC", "before the year 1"),
        ("10000-01-01 00:00:00+00", "outside the years 1 to 9999"),
        ("0001-01-01 00:00:00+05:30", "once converted to UTC"),  # 0000-12-31 18:30 UTC
        ("9999-12-31 23:00:00-05", "once converted to UTC"),  # 10000-01-01 04:00 UTC
        ("0001-01-01 00:00:00+00:19:32", "once converted to UTC"),  # through the Python path
        ("2024-01-02 03:04:05", "ISO text"),  # no offset: a timestamp's text
    ],
)
def test_timestamptz_delta_cannot_hold_are_refused(value: str, why: str) -> None:
    message = refusal(["2024-01-02 03:04:05+00", value], pgtypes.TIMESTAMPTZ)
    assert f"value {value!r}" in message and why in message


def test_timestamptz_refusal_in_the_python_path() -> None:
    message = refusal(["1900-01-01 00:00:00+00:19:32", "infinity"], pgtypes.TIMESTAMPTZ)
    assert "value 'infinity'" in message and "infinite" in message


def test_time_stays_text_as_delta_has_no_time_type() -> None:
    assert convert(["00:00:00", "12:34:56.5", "24:00:00", None], pgtypes.TIME) == ["00:00:00", "12:34:56.5", "24:00:00", None]


def test_empty_and_all_null_columns() -> None:
    for type_oid in (pgtypes.BOOL, pgtypes.INT8, pgtypes.NUMERIC, pgtypes.BYTEA, pgtypes.TIME, pgtypes.TIMESTAMPTZ, pgtypes.TEXT):
        assert convert([], type_oid) == []
        assert convert([None, None], type_oid) == [None, None]


def test_unchanged_is_a_caller_bug() -> None:
    with pytest.raises(InternalError, match="UNCHANGED"):
        to_arrow_array(["1", UNCHANGED], pgtypes.INT8, -1, column="c", table="t")  # type: ignore[list-item]


@settings(max_examples=400, deadline=None)
@given(
    negative=st.booleans(),
    integer=st.text("0123456789", max_size=45),
    fraction=st.text("0123456789", max_size=45),
    trailing_zeros=st.integers(0, 40),
    shape=st.sampled_from([(12, 3), (38, 18), (38, 0), (38, 38), (5, 5), (1, 0), (20, 10)]),
)
def test_numeric_is_exact_or_refused(
    negative: bool, integer: str, fraction: str, trailing_zeros: int, shape: tuple[int, int]
) -> None:
    precision, scale = shape
    integer = integer.lstrip("0") or "0"  # PostgreSQL's form: no leading zeros, '0.5' not '.5'
    fraction += "0" * trailing_zeros
    value = ("-" if negative else "") + integer + (f".{fraction}" if fraction else "")
    exact = Decimal(value)
    fits = len(integer.lstrip("0")) <= precision - scale and len(fraction.rstrip("0")) <= scale
    typmod = -1 if shape == (38, 18) else numeric_typmod(precision, scale)
    try:
        result = to_arrow_array([value], pgtypes.NUMERIC, typmod, column="c", table="t").to_pylist()
    except BadRecord:
        assert not fits
    else:
        assert fits and result == [exact]


def test_convert_strings_takes_arrow_string_arrays() -> None:
    for strings in (
        pa.array(["1.5", None, "-2"], pa.string()),
        pa.array(["1.5", None, "-2"], pa.large_string()),
        pa.chunked_array([["1.5"], [None, "-2"]], pa.string()),
    ):
        converted = pgtypes.convert_strings(strings, pgtypes.NUMERIC, numeric_typmod(5, 1), column="c", table="t")
        assert converted.type == pa.decimal128(5, 1)
        assert converted.to_pylist() == [Decimal("1.5"), None, Decimal("-2")]
    assert (
        pgtypes.convert_strings(pa.array(["x"], pa.large_string()), pgtypes.TEXT, -1, column="c", table="t").type == pa.string()
    )
    with pytest.raises(InternalError, match="int64"):
        pgtypes.convert_strings(pa.array([1]), pgtypes.INT8, -1, column="c", table="t")
