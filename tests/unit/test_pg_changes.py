"""Change assembly: whole transactions per table, key changes, kept values, TRUNCATE, Arrow chunks."""

from __future__ import annotations

import pyarrow as pa
import pytest

from lakesink.errors import SourceContractViolation
from lakesink.sources.pg_changes import DELETED_FLAG, ChangeAssembler, TableChanges, keep_flag
from lakesink.sources.pgoutput import UNCHANGED, Begin, Column, Commit, Delete, Insert, Relation, Truncate, Update
from lakesink.sources.pgtypes import INT8, TEXT
from lakesink.sources.postgres import SourceColumn, SourceTable

TABLE = SourceTable("public", "t", 7, (SourceColumn("id", INT8, -1), SourceColumn("body", TEXT, -1)), ("id",), "d")
RELATION = Relation(7, "public", "t", "d", (Column("id", INT8, -1, True), Column("body", TEXT, -1, False)))


def transaction(assembler: ChangeAssembler, lsn: int, *changes: object) -> None:
    assembler.feed(Begin(lsn, 0, 1))
    for change in changes:
        assembler.feed(change)  # type: ignore[arg-type]
    assembler.feed(Commit(lsn, lsn + 1, 0))


def test_transactions_become_rows_per_table_with_key_changes_and_kept_values() -> None:
    assembler = ChangeAssembler([TABLE], {"public.t": 10})
    assembler.feed(RELATION)
    transaction(assembler, 10, Insert(7, ("1", "held already")))  # at the committed position: skipped
    transaction(assembler, 20, Insert(7, ("1", "a")), Update(7, None, False, ("1", UNCHANGED)))
    transaction(assembler, 30, Update(7, ("1", None), True, ("2", "moved")), Delete(7, ("2", None), True))
    position, changes = assembler.take()
    assert position == 30 and assembler.take()[1] == {}
    rows, mode = changes["public.t"].batch()
    assert rows.column("id").to_pylist() == [1, 1, 1, 2, 2]
    assert rows.column("_lsn").to_pylist() == [20, 20, 30, 30, 30]
    assert rows.column(DELETED_FLAG).to_pylist() == [False, False, True, False, True]
    assert rows.column(keep_flag("body")).to_pylist() == [False, True, True, False, True]
    assert mode.key == ("id",) and mode.keep_flags == (("body", keep_flag("body")),)
    assert changes["public.t"].change_log().column("_op").to_pylist() == ["insert", "update", "delete", "insert", "delete"]


@pytest.mark.parametrize("chunk_bytes", [1, 40, 1 << 20])
def test_arrow_chunks_give_the_same_rows_as_one_piece(chunk_bytes: int) -> None:
    changes = TableChanges(TABLE, {"id": TABLE.columns[0]}, chunk_bytes=chunk_bytes)
    changes.add(("id",), ("1",), lsn=1, op="insert", commit_us=0)
    changes.columns["body"] = TABLE.columns[1]  # a column added mid-batch: earlier rows did not carry it
    changes.add(("id", "body"), ("2", "x" * 50), lsn=2, op="insert", commit_us=0)
    changes.truncate(3, commit_us=0)
    changes.add(("id", "body"), ("3", UNCHANGED), lsn=4, op="update", commit_us=0)
    full = changes.to_arrow()
    assert full.column("id").to_pylist() == [1, 2, None, 3]
    assert full.column("body").to_pylist() == [None, "x" * 50, None, None]
    assert full.column(keep_flag("body")).to_pylist() == [True, False, True, True]
    rows, mode = changes.batch()
    assert rows.column("id").to_pylist() == [3] and mode.truncate_before == 3
    assert len(changes.chunks) >= (4 if chunk_bytes == 1 else 1)


def test_a_change_outside_a_transaction_or_before_its_relation_is_refused() -> None:
    assembler = ChangeAssembler([TABLE], {})
    with pytest.raises(SourceContractViolation, match="outside a transaction"):
        assembler.feed(Insert(7, ("1", "a")))
    assembler.feed(Begin(5, 0, 1))
    with pytest.raises(SourceContractViolation, match="before its description"):
        assembler.feed(Insert(7, ("1", "a")))
    with pytest.raises(SourceContractViolation, match="cut inside"):
        assembler.take()


def test_truncate_of_a_table_makes_an_empty_batch_that_still_names_the_key() -> None:
    assembler = ChangeAssembler([TABLE], {})
    assembler.feed(RELATION)
    transaction(assembler, 9, Truncate((7,), False, False))
    _, changes = assembler.take()
    rows, mode = changes["public.t"].batch()
    assert rows.num_rows == 0 and "id" in rows.column_names and rows.schema.field("id").type == pa.int64()
    assert mode.truncate_before == 9
