"""lakesink.config: one parser per unit, and config values that refuse what they cannot mean."""

from __future__ import annotations

import pyarrow as pa
import pytest

from lakesink.config import CommitInterval, WriteConfig, parse_duration, parse_size, positive_int
from lakesink.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "size"), [("128MB", 128 << 20), ("1GB", 1 << 30), ("64 KiB", 64 << 10), ("65536", 65536), ("1.5kb", 1536)]
)
def test_sizes_read_in_powers_of_1024(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "-1MB", "12 apples", "1TB"])
def test_a_size_that_cannot_be_read_names_what_it_is_for(text: str) -> None:
    with pytest.raises(ConfigError, match="--in-flight"):
        parse_size(text, what="--in-flight")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("500ms", 0.5), ("2m", 120.0), ("1h30m", 5400.0), ("7d", 604800.0), ("1w", 604800.0), ("45", 45.0)],
)
def test_durations_read_every_unit_lakesink_accepts(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_zero_is_a_duration_only_where_allowed() -> None:
    assert parse_duration("0s", allow_zero=True) == 0
    with pytest.raises(ConfigError, match="TIMEOUT='0s' must be a positive duration"):
        parse_duration("0s", what="TIMEOUT")
    with pytest.raises(ConfigError, match="must be a duration"):
        parse_duration("soon", allow_zero=True)


@pytest.mark.parametrize("value", [0, -3, 1.5, True, "4", None])
def test_positive_int_refuses_anything_but_a_positive_int(value: object) -> None:
    with pytest.raises(ConfigError, match=r"write_threads must be a positive int \(threads\)"):
        positive_int(value, what="write_threads", unit="threads")


def test_a_commit_interval_sets_each_kind_of_limit_once() -> None:
    assert CommitInterval.parse("1GB,60s") == CommitInterval(rows=None, bytes=1 << 30, seconds=60.0)
    with pytest.raises(ConfigError, match="sets bytes twice"):
        CommitInterval.parse("1GB,512MB")
    with pytest.raises(ConfigError, match="cannot read '100'"):
        CommitInterval.parse("100")  # a limit names its unit


def test_write_config_checks_its_values_and_bounds_row_groups_by_the_budget() -> None:
    assert WriteConfig(in_flight_bytes=64 << 20).row_group_bytes == 16 << 20
    assert WriteConfig().row_group_bytes == 64 << 20
    with pytest.raises(ConfigError, match="in_flight_bytes"):
        WriteConfig(in_flight_bytes=0)
    with pytest.raises(ConfigError, match="interval must be a CommitInterval"):
        WriteConfig(interval="1GB")  # type: ignore[arg-type]


def test_a_declared_schema_reads_sql_types_nesting_and_not_null() -> None:
    from lakesink.config import parse_schema

    schema = parse_schema(
        "id BIGINT NOT NULL, `a b` DECIMAL(10,2), tags ARRAY<STRING>, s STRUCT<x: INT, y: DATE>, m MAP<STRING, DOUBLE>"
    )
    assert schema == pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("a b", pa.decimal128(10, 2)),
            pa.field("tags", pa.list_(pa.string())),
            pa.field("s", pa.struct([("x", pa.int32()), ("y", pa.date32())])),
            pa.field("m", pa.map_(pa.string(), pa.float64())),
        ]
    )
    assert parse_schema("at TIMESTAMP, local TIMESTAMP_NTZ").types == [pa.timestamp("us", tz="UTC"), pa.timestamp("us")]


def test_a_declared_schema_may_be_a_delta_schemas_json() -> None:
    from lakesink.config import parse_schema

    text = (
        '{"type":"struct","fields":[{"name":"id","type":"long","nullable":false},'
        '{"name":"l","type":{"type":"array","elementType":"string"}}]}'
    )
    assert parse_schema(text) == pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("l", pa.list_(pa.string()))])


@pytest.mark.parametrize(
    ("text", "match"), [("id FOO", "unknown type 'foo'"), ("id BIGINT day DATE", "expected ','"), ("", "declares no column")]
)
def test_a_schema_that_cannot_be_read_says_where(text: str, match: str) -> None:
    from lakesink.config import parse_schema

    with pytest.raises(ConfigError, match=match):
        parse_schema(text)


def test_a_watch_reads_only_the_files_complete_at_two_polls_in_a_row_up_to_the_first_that_is_not() -> None:
    from lakesink.ingest.watch import complete_prefix

    before = {"a": (10, 1), "b": (5, 1), "c": (7, 1)}
    assert complete_prefix([("a", 10, 1), ("b", 5, 1), ("c", 7, 1)], before) == 3
    assert complete_prefix([("a", 10, 1), ("b", 6, 2), ("c", 7, 1)], before) == 1  # b grew: c waits behind it
    assert complete_prefix([("a", 10, 1), ("b", 5, 1), ("c", 7, 1), ("d", 1, 1)], before) == 3  # d is new
    assert complete_prefix([("a", 10, 1)], {}) == 0
