"""A source that re-delivers overlapping ranges, at the Sink API: never a duplicate, never a loss.

Positions are record offsets: a batch holding records [start, end) is written with `position=end`
and `previous=start` (None for a batch from the first record), as lakesink/sink.py documents for
batches that continue a position. The source re-sends ranges already committed, wholly or partly,
and ranges that start past the committed position; a restarted writer opens a new Sink. Hypothesis
draws the batch boundaries and the re-delivery pattern; the table is local.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lakesink import Sink
from tests.support.checks import assert_exactly_once, count_ids, read_ids_deltalake

APP_ID = "source-partition-0"


def records(start: int, end: int) -> pa.Table:
    ids = list(range(start, end))
    return pa.table({"id": pa.array(ids, pa.int64()), "name": pa.array([f"record-{i}" for i in ids], pa.string())})


deliveries = st.lists(
    st.tuples(st.integers(0, 29), st.integers(1, 12), st.booleans()),  # (start, length, restart the writer first)
    min_size=1,
    max_size=12,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(total=st.integers(1, 30), sent=deliveries, tail=st.integers(1, 8))
def test_redelivered_overlapping_ranges_never_duplicate_or_lose_a_record(
    total: int, sent: list[tuple[int, int, bool]], tail: int
) -> None:
    """Each write commits exactly when the batch starts at the committed position ("committed"),
    is "skipped" when it ends at or before it, and is "stale" (nothing written) when it overlaps
    it partly or starts past it; after every write the table holds exactly the records before the
    committed position. Resuming from there to the end leaves every record exactly once."""
    with tempfile.TemporaryDirectory() as scratch:
        uri = str(Path(scratch) / "table")
        sink = Sink(uri, app_id=APP_ID)
        committed: int | None = None
        history: list[str] = []
        try:
            for start, length, restart in sent:
                start = min(start, total - 1)
                end = min(start + length, total)
                if restart:
                    sink.close()
                    sink = Sink(uri, app_id=APP_ID)
                result = sink.write(records(start, end), position=end, previous=start or None)
                history.append(f"[{start},{end})->{result.status}")
                if committed is not None and committed >= end:
                    assert result.status == "skipped", history
                elif (committed or 0) == start:
                    assert result.status == "committed", history
                    committed = end
                else:
                    assert result.status == "stale", history
                    assert result.committed_position == committed, history
                if committed is not None:
                    count = count_ids("deltalake", read_ids_deltalake(uri), range(committed))
                    assert count.exact, f"{history}: {count.describe()}"
            while (committed or 0) < total:  # the writer re-reads from the committed position
                start = committed or 0
                end = min(start + tail, total)
                result = sink.write(records(start, end), position=end, previous=start or None)
                history.append(f"[{start},{end})->{result.status}")
                assert result.status == "committed", history
                committed = end
            assert sink.committed_position() == total
        finally:
            sink.close()
        assert_exactly_once(uri, {}, range(total))
