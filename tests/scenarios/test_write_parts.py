"""Several source partitions in one commit (`Sink.write_parts`): one `txn` per partition, each part
decided on the snapshot the commit is made on, and never a row twice.

The replay model: P partitions of a source whose offsets are not dense (as in Kafka, where
transaction markers and compaction leave gaps); a consumer that keeps forgetting where it was
re-sends any subset of partitions, from any position it once knew (current or stale), up to any
later offset. Whatever it sends, the table ends with every record once, and each partition's
position is its last offset.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lakesink import ConfigError, Part, Sink, TableError
from lakesink.layout import part_app_id
from tests.support.checks import assert_exactly_once, log_operations, read_ids_deltalake
from tests.support.fault_proxy import FaultProxy
from tests.support.moto_server import MotoServer

APP_ID = "orders-job"
PARTITIONS = 4
# Offsets of partition p: every third number, shifted per partition (never position + 1).
OFFSETS = {p: [3 * i + p for i in range(40)] for p in range(PARTITIONS)}


def record_id(partition: int, offset: int) -> int:
    return partition * 1_000_000 + offset


def rows_between(partition: int, after: int | None, upto: int) -> pa.Table:
    """The records of `partition` after offset `after` (None: from the start) up to `upto`."""
    offsets = [o for o in OFFSETS[partition] if (after is None or o > after) and o <= upto]
    return pa.table(
        {
            "id": pa.array([record_id(partition, o) for o in offsets], pa.int64()),
            "partition": pa.array([partition] * len(offsets), pa.int32()),
        }
    )


def part(partition: int, after: int | None, upto: int) -> Part:
    return Part(f"topic/{partition}", rows_between(partition, after, upto), position=upto, previous=after)


def every_id() -> list[int]:
    return [record_id(p, o) for p in range(PARTITIONS) for o in OFFSETS[p]]


@pytest.fixture
def uri(tmp_path: Path) -> Iterator[str]:
    yield str(tmp_path / "table")


def test_parts_commit_together_in_one_version_with_a_txn_each(table_uri: str, storage_options: dict[str, str]) -> None:
    with Sink(table_uri, app_id=APP_ID, storage_options=storage_options) as sink:
        result = sink.write_parts([part(0, None, 30), part(1, None, 31), part(2, None, 2)])
        assert result.commits == 1 and result.table_version == 1
        assert [(r.app_id, r.status, r.position, r.rows) for r in result.parts] == [
            (part_app_id(APP_ID, "topic/0"), "committed", 30, 11),
            (part_app_id(APP_ID, "topic/1"), "committed", 31, 11),
            (part_app_id(APP_ID, "topic/2"), "committed", 2, 1),
        ]
        assert result.rows == 23 and result.files == 1
        assert sink.committed_parts() == {"topic/0": 30, "topic/1": 31, "topic/2": 2}
        assert sink.committed_position(part="topic/1") == 31
        assert sink.committed_position() is None  # the job's own app id holds no position
    with Sink(table_uri, app_id=APP_ID, storage_options=storage_options) as reopened:
        assert reopened.committed_parts() == {"topic/0": 30, "topic/1": 31, "topic/2": 2}
    assert log_operations(table_uri, storage_options) == ["CREATE TABLE", "WRITE"]
    expected = [record_id(0, o) for o in OFFSETS[0] if o <= 30] + [record_id(1, o) for o in OFFSETS[1] if o <= 31] + [2000002]
    assert_exactly_once(table_uri, storage_options, expected)


def test_a_part_already_committed_contributes_nothing_and_the_others_commit(uri: str) -> None:
    with Sink(uri, app_id=APP_ID) as sink:
        sink.write_parts([part(0, None, 30), part(1, None, 31)])
        # Partition 0 re-delivered whole (a rebalance), partition 1 continued, partition 3 new.
        result = sink.write_parts([part(0, None, 30), part(1, 31, 61), part(3, None, 9)])
        assert [r.status for r in result.parts] == ["skipped", "committed", "committed"]
        assert result.parts[0].rows == 0 and result.rows == 10 + 3
        assert result.commits == 1 and result.table_version == 2
        # Everything again: nothing to commit, no version.
        again = sink.write_parts([part(0, None, 30), part(1, 31, 61), part(3, None, 9)])
        assert [r.status for r in again.parts] == ["skipped"] * 3 and again.commits == 0
        assert again.table_version == 2
    expected = [record_id(0, o) for o in OFFSETS[0] if o <= 30] + [record_id(1, o) for o in OFFSETS[1] if o <= 61]
    assert_exactly_once(uri, {}, expected + [record_id(3, o) for o in OFFSETS[3] if o <= 9])


def test_a_part_whose_partition_moved_inside_it_is_stale_and_left_out(uri: str) -> None:
    with Sink(uri, app_id=APP_ID) as sink:
        sink.write_parts([part(0, None, 30), part(1, None, 31)])
        # A zombie's batch for partition 0 continues from 15, but the table holds it up to 30: its
        # rows 18..45 overlap what is committed, so it is stale (re-read from 30), never committed.
        result = sink.write_parts([part(0, 15, 45), part(1, 31, 49)])
        assert [r.status for r in result.parts] == ["stale", "committed"]
        assert result.parts[0].committed_position == 30
        assert sink.committed_parts() == {"topic/0": 30, "topic/1": 49}
    assert_exactly_once(
        uri, {}, [record_id(0, o) for o in OFFSETS[0] if o <= 30] + [record_id(1, o) for o in OFFSETS[1] if o <= 49]
    )


def test_parts_with_no_rows_commit_their_positions_and_no_table_means_a_clear_error(uri: str) -> None:
    with Sink(uri, app_id=APP_ID) as sink:
        with pytest.raises(TableError):
            sink.write_parts([Part("topic/0", pa.table({"id": pa.array([], pa.int64())}), position=3)])
        sink.write_parts([part(0, None, 30)])
        empty = pa.table({"id": pa.array([], pa.int64()), "partition": pa.array([], pa.int32())})
        result = sink.write_parts([Part("topic/0", empty, position=33, previous=30), Part("topic/1", empty, position=4)])
        assert [r.status for r in result.parts] == ["committed", "committed"] and result.files == 0
        assert sink.committed_parts() == {"topic/0": 33, "topic/1": 4}
        with pytest.raises(ConfigError, match="distinct"):
            sink.write_parts([part(2, None, 2), part(2, None, 5)])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_any_replay_of_any_subset_from_any_known_position_writes_every_record_once(tmp_path: Path, seed: int) -> None:
    """A consumer sends batches of random partition subsets, each from a position it once knew
    (the current one or a stale one) to a random later offset; then catches every partition up
    from the table's position. Every record is in the table once; positions are the last offsets."""
    rng = random.Random(seed)
    uri = str(tmp_path / f"table-{seed}")
    known: dict[int, list[int | None]] = {p: [None] for p in range(PARTITIONS)}  # positions the consumer saw
    with Sink(uri, app_id=APP_ID) as sink:
        for _ in range(12):
            chosen = rng.sample(range(PARTITIONS), rng.randint(1, PARTITIONS))
            parts = []
            for p in chosen:
                after = rng.choice(known[p])
                later = [o for o in OFFSETS[p] if after is None or o > after]
                if not later:
                    continue
                upto = rng.choice(later[: rng.randint(1, len(later))])
                parts.append(part(p, after, upto))
            if not parts:
                continue
            result = sink.write_parts(parts)
            for r in result.parts:
                p = int(r.app_id.rsplit("/", 1)[1])
                if r.committed_position is not None:
                    known[p].append(r.committed_position)
        for p in range(PARTITIONS):
            committed = sink.committed_position(part=f"topic/{p}")
            if committed != OFFSETS[p][-1]:
                assert sink.write_parts([part(p, committed, OFFSETS[p][-1])]).committed
        assert sink.committed_parts() == {f"topic/{p}": OFFSETS[p][-1] for p in range(PARTITIONS)}
    ids = read_ids_deltalake(uri)
    assert sorted(ids) == sorted(every_id()), f"seed {seed}: lost or duplicated records"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_writers_racing_over_the_same_partitions_write_each_record_once(
    where: str, tmp_path: Path, s3_bucket: str, s3_options: dict[str, str]
) -> None:
    """Two copies of one consumer (a zombie and the new owner) send the same partitions in
    different batch sizes at the same time, each continuing from what it last saw committed:
    every batch either commits or comes back stale or skipped, and the table has every record once."""
    uri, options = (str(tmp_path / "table"), {}) if where == "local" else (f"s3://{s3_bucket}/table", s3_options)
    with Sink(uri, app_id=APP_ID, storage_options=options) as first:
        first.write_parts([part(p, None, OFFSETS[p][0]) for p in range(PARTITIONS)])
    errors: list[BaseException] = []

    def consume(step: int) -> None:
        try:
            with Sink(uri, app_id=APP_ID, storage_options=options) as sink:
                while True:
                    sink.refresh()
                    parts = []
                    for p in range(PARTITIONS):
                        committed = sink.committed_position(part=f"topic/{p}")
                        later = [o for o in OFFSETS[p] if committed is None or o > committed]
                        if later:
                            parts.append(part(p, committed, later[min(step, len(later)) - 1]))
                    if not parts:
                        return
                    sink.write_parts(parts)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(step,)) for step in (3, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors, errors
    assert_exactly_once(uri, options, every_id())


def test_a_lost_answer_to_a_commit_of_several_parts_is_resolved_as_ours(
    moto_server: MotoServer, s3_bucket: str, s3_options: dict[str, str]
) -> None:
    """The PUT of the log entry lands and its answer is cut: the write still reports every part
    committed (its write id is in the entry), and a retry of the same parts is skipped."""
    uri = f"s3://{s3_bucket}/table"
    with FaultProxy(moto_server.endpoint) as proxy:
        options = {**s3_options, "AWS_ENDPOINT_URL": proxy.endpoint}
        with Sink(uri, app_id=APP_ID, storage_options=options) as sink:
            sink.write_parts([part(0, None, 0), part(1, None, 1)])
            proxy.drop_response_after_apply(how="reset")
            result = sink.write_parts([part(0, 0, 30), part(1, 1, 31)])
            assert not proxy.armed(), "the fault never fired"
            assert [r.status for r in result.parts] == ["committed", "committed"]
            retry = sink.write_parts([part(0, 0, 30), part(1, 1, 31)])
            assert [r.status for r in retry.parts] == ["skipped", "skipped"]
    assert log_operations(uri, s3_options) == ["CREATE TABLE", "WRITE", "WRITE"]
    assert_exactly_once(
        uri, s3_options, [record_id(0, o) for o in OFFSETS[0] if o <= 30] + [record_id(1, o) for o in OFFSETS[1] if o <= 31]
    )
