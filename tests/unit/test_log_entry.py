"""lakesink.delta.log_entry: the bytes of an append commit, and what a committer reads back from any entry."""

from __future__ import annotations

import json

import pytest

from lakesink.delta.log_entry import WRITE_ID_KEY, StagedFile, encode_append, summarize
from lakesink.errors import TableError


def entry(txns: dict[str, int] | None = None) -> bytes:
    staged = [
        StagedFile(
            path="p=a b/part-1.parquet", size=10, partition_values=(("p", "a b"),), stats='{"numRecords":2}', num_records=2
        )
    ]
    return encode_append(
        staged,
        txns={"job": 42} if txns is None else txns,
        now_ms=1_700_000_000_000,
        read_version=6,
        partition_by=["p"],
        commit_info={WRITE_ID_KEY: "w1", "lakesink.appId": "job"},
        client_version="lakesink-0",
    )


def test_an_append_of_several_partitions_holds_one_txn_per_position_and_summarizes_to_them_all() -> None:
    body = entry({"job/orders/0": 120, "job/orders/1": 98})
    actions = [json.loads(line) for line in body.decode().splitlines()]
    assert [next(iter(a)) for a in actions] == ["commitInfo", "add", "txn", "txn"]
    assert [(a["txn"]["appId"], a["txn"]["version"]) for a in actions[2:]] == [("job/orders/0", 120), ("job/orders/1", 98)]
    assert summarize(body, version=7).txns == {"job/orders/0": 120, "job/orders/1": 98}


def test_an_append_is_commit_info_one_add_per_file_and_the_txn() -> None:
    actions = [json.loads(line) for line in entry().decode().splitlines()]
    assert [next(iter(a)) for a in actions] == ["commitInfo", "add", "txn"]
    info, add, txn = actions[0]["commitInfo"], actions[1]["add"], actions[2]["txn"]
    assert (info["operation"], info["readVersion"], info["isBlindAppend"], info[WRITE_ID_KEY]) == ("WRITE", 6, True, "w1")
    # The path is a URI relative to the root: the object's name percent-encoded once more.
    assert (add["path"], add["partitionValues"], add["size"], add["dataChange"]) == (
        "p=a%20b/part-1.parquet",
        {"p": "a b"},
        10,
        True,
    )
    assert txn == {"appId": "job", "version": 42, "lastUpdated": 1_700_000_000_000}


def test_summarize_reads_the_txn_the_write_id_and_whether_the_table_changed() -> None:
    summary = summarize(entry(), version=7)
    assert (summary.txns, summary.write_id, summary.changes_table) == ({"job": 42}, "w1", False)
    foreign = b'{"commitInfo":{"operation":"ADD COLUMNS"}}\n{"metaData":{"id":"x"}}\n'
    assert summarize(foreign, version=8) == summarize(foreign, version=8)
    assert (summarize(foreign, version=8).write_id, summarize(foreign, version=8).changes_table) == (None, True)


def test_a_damaged_entry_is_a_table_error_naming_its_line() -> None:
    with pytest.raises(TableError, match="log entry 9 line 2 is not JSON"):
        summarize(b'{"txn":{"appId":"a","version":1}}\n{not json\n', version=9)
