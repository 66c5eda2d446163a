"""lakesink.layout: every name on the store is built and parsed in one place, and the two agree."""

from __future__ import annotations

import pytest

from lakesink import layout


def test_log_entry_names_are_twenty_digits_and_parse_back() -> None:
    assert layout.log_entry_path(7) == "_delta_log/00000000000000000007.json"
    assert layout.log_entry_version(layout.log_entry_path(7)) == 7
    assert layout.log_entry_version("s3://b/t/_delta_log/00000000000000000123.json") == 123


@pytest.mark.parametrize(
    "name",
    [
        "_delta_log/_last_checkpoint",
        "_delta_log/00000000000000000020.checkpoint.parquet",
        "_delta_log/_commit_ab.json.tmp",
        "x.json",
    ],
)
def test_names_that_are_not_log_entries_have_no_version(name: str) -> None:
    assert layout.log_entry_version(name) is None


def test_checkpoint_paths_name_one_file_or_every_part() -> None:
    assert layout.checkpoint_paths(20, None) == ["_delta_log/00000000000000000020.checkpoint.parquet"]
    assert layout.checkpoint_paths(20, 2) == [
        "_delta_log/00000000000000000020.checkpoint.0000000001.0000000002.parquet",
        "_delta_log/00000000000000000020.checkpoint.0000000002.0000000002.parquet",
    ]


def test_a_log_entry_being_written_is_hidden_from_delta_readers_and_never_reused() -> None:
    first, second = layout.log_entry_temp_name(), layout.log_entry_temp_name()
    assert first != second and first.startswith("_") and layout.log_entry_version(first) is None


def test_data_file_names_carry_the_position_and_app_and_are_found_again() -> None:
    values = (("day", "2026-12-01"), ("kind", None))
    path = layout.data_file_path(values, position=42, part=3, app_id="events/eu", tag="0123abcd")
    assert path.startswith("day=2026-12-01/kind=__HIVE_DEFAULT_PARTITION__/part-00000000000000000042-00003-events_eu-")
    assert path.endswith("-0123abcd.snappy.parquet") and layout.is_data_file(path)
    assert layout.data_file_positions([path, "other.parquet"], "events/eu") == [42]
    assert layout.data_file_positions([path], "events") == []  # another app id's slug differs


def test_a_streamed_group_starting_at_the_source_start_is_named_by_position_zero() -> None:
    assert "part-00000000000000000000-" in layout.data_file_path((), position=-1, part=0, app_id="a", tag="ff")


def test_app_slugs_are_path_safe_and_tell_similar_ids_apart() -> None:
    assert layout.app_slug("a/b") != layout.app_slug("a_b")
    assert "/" not in layout.app_slug("../../x") and len(layout.app_slug("x" * 500)) <= 49


@pytest.mark.parametrize(
    ("value", "directory"), [("a b", "p=a%20b"), ("../x", "p=..%2Fx"), ("", "p="), (None, "p=__HIVE_DEFAULT_PARTITION__")]
)
def test_partition_values_can_never_escape_their_directory(value: str | None, directory: str) -> None:
    assert layout.partition_directory((("p", value),)) == directory


def test_ledger_paths_parse_back_including_interrupted_writes() -> None:
    path = layout.ledger_path("job", 99)
    parsed = layout.parse_ledger_path(path)
    assert parsed == layout.LedgerName(slug=layout.app_slug("job"), position=99, temp=False)
    assert layout.parse_ledger_path(layout.temp_path(path, 1234, 140234)) == layout.LedgerName(parsed.slug, 99, temp=True)
    assert layout.parse_ledger_path("_lakesink/ledger/x/notes.txt") is None
    assert layout.parse_ledger_path("part-1.parquet") is None


def test_hidden_names_and_temporary_files() -> None:
    assert layout.is_hidden("_delta_log/x.json") and layout.is_hidden("a/.b/c") and not layout.is_hidden("day=1/f.parquet")
    assert layout.strip_temp(layout.temp_path("f.parquet", 77, 9)) == "f.parquet"
    assert layout.is_data_file("d=1/f.parquet.77.tmp") and not layout.is_data_file("_lakesink/ledger/x.parquet")
