"""Keyed writes (Sink.write(mode=Upsert | Dedup)): one MERGE per position, replays that change nothing,
deletes that older changes cannot undo, kept values, and the same-snapshot rule against a zombie."""

from __future__ import annotations

import random
from typing import Any

import pyarrow as pa
import pytest

from lakesink.config import Dedup, Upsert
from lakesink.errors import BadRecord, ConfigError
from lakesink.layout import tombstone_table_uri
from lakesink.sink import Sink
from tests.support.checks import query_duckdb, read_column_deltalake, table_exists

UPSERT = Upsert(key=("id",), order_by="_lsn", delete_flag="_deleted", keep_flags={"body": "_keep_body"})  # type: ignore[arg-type]


def changes(*rows: tuple[int, int, str | None, bool, bool]) -> pa.Table:
    """(id, lsn, body, deleted, keep body) per change."""
    ids, lsns, bodies, deleted, keep = zip(*rows, strict=True) if rows else ((), (), (), (), ())
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "_lsn": pa.array(lsns, pa.int64()),
            "body": pa.array(bodies, pa.string()),
            "_deleted": pa.array(deleted, pa.bool_()),
            "_keep_body": pa.array(keep, pa.bool_()),
        }
    )


def both_readers(uri: str, options: dict[str, str]) -> dict[int, tuple[int, str | None]]:
    """id -> (lsn, body), read by delta-rs and by DuckDB, which must agree (and hold each id once)."""
    by_delta = read_column_deltalake(uri, options, ["id", "_lsn", "body"])
    by_duck = query_duckdb(uri, "id, _lsn, body", options)
    assert sorted((r["id"], r["_lsn"], r["body"]) for r in by_delta) == sorted(by_duck)  # type: ignore[type-var]
    ids = [r["id"] for r in by_delta]
    assert len(ids) == len(set(ids)), "a key is held twice"
    return {int(r["id"]): (int(r["_lsn"]), r["body"]) for r in by_delta}  # type: ignore[call-overload]


def test_upsert_applies_last_change_per_key_and_hides_flags(table_uri: str, storage_options: dict[str, str]) -> None:
    with Sink(table_uri, app_id="cdc", storage_options=storage_options) as sink:
        first = sink.write(changes((1, 10, "a", False, False), (2, 10, "b", False, False), (1, 11, "a2", False, False)),
                           position=11, mode=UPSERT)  # fmt: skip
        assert first.status == "committed" and first.rows == 2
        sink.write(changes((2, 12, None, True, False), (3, 12, "c", False, False)), position=12, mode=UPSERT)
    assert both_readers(table_uri, storage_options) == {1: (11, "a2"), 3: (12, "c")}
    schema = read_column_deltalake(table_uri, storage_options, ["id", "_lsn", "body"])
    assert schema  # the flags are not columns of the table:
    with pytest.raises(Exception, match=r"_deleted|_keep_body"):
        read_column_deltalake(table_uri, storage_options, ["_deleted"])


def test_replayed_older_changes_never_flip_a_row_back_nor_resurrect_a_delete(tmp_path: Any) -> None:
    uri = str(tmp_path / "t")
    with Sink(uri, app_id="cdc") as sink:
        sink.write(changes((1, 10, "old", False, False), (2, 10, "doomed", False, False)), position=10, mode=UPSERT)
        sink.write(changes((1, 20, "new", False, False), (2, 20, None, True, False)), position=20, mode=UPSERT)
        # The same changes again at a position the txn has not seen (an overlap of snapshot and stream,
        # or a replay under a new position): row order decides, and nothing moves.
        replay = sink.write(changes((1, 10, "old", False, False), (2, 10, "doomed", False, False)), position=30, mode=UPSERT)
        assert replay.status == "committed"
        assert both_readers(uri, {}) == {1: (20, "new")}
        again = sink.write(changes((1, 20, "new", False, False), (2, 20, None, True, False)), position=31, mode=UPSERT)
        assert again.status == "committed"
        # A batch that changes no row still commits its position (delta-rs's MERGE alone would not).
        assert sink.write(changes(), position=32, mode=UPSERT).status == "committed"
    with Sink(uri, app_id="cdc") as reopened:
        assert reopened.committed_position() == 32
    assert both_readers(uri, {}) == {1: (20, "new")}


def test_a_delete_recorded_before_a_crash_still_applies_on_the_rerun(tmp_path: Any) -> None:
    """The tombstone is written before the merge; a rerun of the same batch must still delete the row."""
    uri = str(tmp_path / "t")
    with Sink(uri, app_id="cdc") as sink:
        sink.write(changes((7, 5, "x", False, False)), position=5, mode=UPSERT)
    with Sink(uri, app_id="cdc") as tombstones_only:  # the side table gets the delete, the table does not
        tombstone = pa.table({"id": pa.array([7], pa.int64()), "_lsn": pa.array([9], pa.int64())})
        tombstones_only.tombstone_sink().write(tombstone, position=9, mode=Upsert(key=("id",), order_by="_lsn", tombstones=False))
    assert both_readers(uri, {}) == {7: (5, "x")}
    with Sink(uri, app_id="cdc") as sink:
        assert sink.write(changes((7, 9, None, True, False)), position=9, mode=UPSERT).status == "committed"
    assert both_readers(uri, {}) == {}


def test_kept_values_come_from_the_table_or_from_an_earlier_change_in_the_batch(tmp_path: Any) -> None:
    uri = str(tmp_path / "t")
    big = "B" * 5000
    with Sink(uri, app_id="cdc") as sink:
        sink.write(changes((1, 1, big, False, False), (2, 1, "two", False, False)), position=1, mode=UPSERT)
        # id 1: an update that did not carry body keeps the table's; id 2: an earlier change in the
        # batch carried it, so the last change takes that one; id 3: never carried: null.
        sink.write(
            changes(
                (1, 2, None, False, True), (2, 2, "two-b", False, False), (2, 3, None, False, True), (3, 3, None, False, True)
            ),
            position=3,
            mode=UPSERT,
        )
    assert both_readers(uri, {}) == {1: (2, big), 2: (3, "two-b"), 3: (3, None)}


def test_a_zombie_merging_on_an_old_snapshot_is_skipped_not_applied_twice(tmp_path: Any) -> None:
    uri = str(tmp_path / "t")
    with Sink(uri, app_id="cdc") as first:
        first.write(changes((1, 1, "a", False, False)), position=1, mode=UPSERT)
    live, zombie = Sink(uri, app_id="cdc"), Sink(uri, app_id="cdc")
    batch = changes((1, 2, "b", False, False), (9, 2, "nine", False, False))
    assert live.write(batch, position=2, mode=UPSERT).status == "committed"
    late = zombie.write(batch, position=2, mode=UPSERT)  # its snapshot predates the live writer's commit
    assert late.status == "skipped" and late.committed_position == 2
    stale = zombie.write(changes((5, 3, "z", False, False)), position=4, previous=1, mode=UPSERT)
    assert stale.status == "stale"
    assert both_readers(uri, {}) == {1: (2, "b"), 9: (2, "nine")}


def test_upsert_matches_a_model_under_random_replays(tmp_path: Any) -> None:
    """A seeded stream of changes in batches; every batch also replays a random earlier range. The
    table must equal the model of the stream applied once, in order."""
    rng = random.Random(5)
    uri = str(tmp_path / "t")
    model: dict[int, str] = {}
    history: list[tuple[int, int, str | None, bool, bool]] = []
    lsn = 0
    with Sink(uri, app_id="cdc") as sink:
        for position in range(1, 26):
            batch = []
            for _ in range(rng.randint(1, 30)):
                lsn += 1
                key = rng.randint(1, 40)
                if key in model and rng.random() < 0.3:
                    batch.append((key, lsn, None, True, False))
                    del model[key]
                else:
                    model[key] = f"v{lsn}"
                    batch.append((key, lsn, f"v{lsn}", False, False))
            history += batch
            start = rng.randint(0, len(history) - 1)
            replayed = history[start : start + rng.randint(0, 40)]
            sink.write(changes(*replayed, *batch), position=position * 1000, mode=UPSERT)
        final = both_readers(uri, {})
    assert {k: body for k, (_, body) in final.items()} == model


def test_dedup_inserts_only_unseen_keys_within_the_window(table_uri: str, storage_options: dict[str, str]) -> None:
    dedup = Dedup(key=("id",), window="t.day >= '2026-11-02'")  # type: ignore[arg-type]
    day = pa.array(["2026-11-01", "2026-11-02", "2026-11-02"])
    with Sink(table_uri, app_id="events", storage_options=storage_options) as sink:
        sink.write(pa.table({"id": [1, 2, 2], "day": day}), position=1, mode=dedup)
        # id 2 is a duplicate inside the window; id 1 sits outside it and comes in again; 3 is new.
        result = sink.write(pa.table({"id": [2, 1, 3], "day": day}), position=2, mode=dedup)
        assert result.rows == 2
    rows = sorted(query_duckdb(table_uri, "id, day", storage_options))
    assert rows == [(1, "2026-11-01"), (1, "2026-11-02"), (2, "2026-11-02"), (3, "2026-11-02")]


def test_keyed_writes_refuse_null_keys_and_missing_columns_and_write_nothing(tmp_path: Any) -> None:
    uri = str(tmp_path / "t")
    with Sink(uri, app_id="cdc") as sink:
        with pytest.raises(BadRecord, match=r"row 1 .* null 'id'"):
            sink.write(pa.table({"id": [1, None], "_lsn": [1, 1]}), position=1, mode=Upsert(key="id", order_by="_lsn"))
        with pytest.raises(ConfigError, match="'seq'"):
            sink.write(pa.table({"id": [1], "_lsn": [1]}), position=1, mode=Upsert(key="id", order_by="seq"))
    assert not table_exists(uri, {})


def test_a_truncate_deletes_older_rows_the_batch_does_not_touch(tmp_path: Any) -> None:
    uri = str(tmp_path / "t")
    with Sink(uri, app_id="cdc") as sink:
        sink.write(changes((1, 1, "a", False, False), (2, 1, "b", False, False)), position=1, mode=UPSERT)
        truncated = Upsert(
            key="id", order_by="_lsn", delete_flag="_deleted", keep_flags={"body": "_keep_body"}, truncate_before=5  # type: ignore[arg-type]
        )
        sink.write(changes((3, 5, "after", False, False)), position=5, mode=truncated)
        assert sink.advance(9).status == "committed" and sink.committed_position() == 9
    assert both_readers(uri, {}) == {3: (5, "after")}


def test_pruned_tombstones_are_gone_and_the_rest_still_guard(tmp_path: Any) -> None:
    uri = str(tmp_path / "t")
    with Sink(uri, app_id="cdc") as sink:
        sink.write(changes((1, 1, "a", False, False), (2, 1, "b", False, False)), position=1, mode=UPSERT)
        sink.write(changes((1, 5, None, True, False)), position=5, mode=UPSERT)
        sink.write(changes((2, 9, None, True, False)), position=9, mode=UPSERT)
        assert sink.prune_tombstones(below=6) == 1  # id 1's delete (5) goes, id 2's (9) stays
        sink.write(changes((2, 1, "b", False, False)), position=10, mode=UPSERT)  # older than id 2's delete
    assert both_readers(uri, {}) == {}
    assert sorted(r["id"] for r in read_column_deltalake(tombstone_table_uri(uri), {}, ["id"])) == [2]  # type: ignore[type-var]
