"""Positions and the commit decision: what a file position encodes, and when a write commits, skips or is stale."""

from __future__ import annotations

import pytest

from lakesink.commit import ANY_PREVIOUS, settled
from lakesink.sources.files import FilePosition


class AtVersion:
    """What `settled` reads of a table: its version."""

    def __init__(self, version: int) -> None:
        self._version = version

    def version(self) -> int:
        return self._version


@pytest.mark.parametrize("position", [FilePosition(0, 0), FilePosition(3, 17), FilePosition((1 << 23) - 1, (1 << 40) - 1)])
def test_a_file_position_round_trips_through_its_int64(position: FilePosition) -> None:
    assert FilePosition.decode(position.encode()) == position
    assert 0 <= position.encode() < 2**63


def test_file_positions_order_as_their_codes_do() -> None:
    a, b, c = FilePosition(1, 5), FilePosition(1, 6), FilePosition(2, 0)
    assert a < b < c and a.encode() < b.encode() < c.encode()
    assert (a.covered_files(), c.covered_files()) == (2, 2)


def test_a_position_at_or_below_the_committed_one_is_skipped_and_says_why() -> None:
    handle = AtVersion(9)
    same = settled(handle, "job", 5, 5, ANY_PREVIOUS)  # type: ignore[arg-type]
    lower = settled(handle, "job", 4, 5, ANY_PREVIOUS)  # type: ignore[arg-type]
    raced = settled(handle, "job", 5, 5, ANY_PREVIOUS, raced=True)  # type: ignore[arg-type]
    assert same is not None and (same.status, same.reason, same.table_version) == ("skipped", "already committed", 9)
    assert lower is not None and (lower.status, lower.reason) == ("skipped", "lower than the committed position 5")
    assert raced is not None and raced.reason == "committed by a concurrent writer"


def test_a_batch_continuing_from_another_position_is_stale_and_anything_else_commits() -> None:
    handle = AtVersion(3)
    stale = settled(handle, "job", 9, 6, 4)  # type: ignore[arg-type]
    assert stale is not None and (stale.status, stale.committed_position) == ("stale", 6)
    assert settled(handle, "job", 9, 6, 6) is None  # type: ignore[arg-type]
    assert settled(handle, "job", 9, None, None) is None  # type: ignore[arg-type]
    assert settled(handle, "job", 9, 6, ANY_PREVIOUS) is None  # type: ignore[arg-type]
