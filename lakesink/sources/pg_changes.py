"""pgoutput messages assembled into whole source transactions, and those into one Arrow table of
changes per source table: the shape a keyed write (lakesink.config.Upsert) takes.

Each change row holds the source columns (text converted to Arrow), `_lsn` (the commit LSN of its
transaction: the order of changes, stored in the table), `__lakesink_deleted` and, for a column
some change did not carry (PostgreSQL's unchanged TOAST values, or a column added or dropped
mid-batch), `__lakesink_keep.<column>`: keep the table's value. An update that changes the key is
a delete of the old key and an insert of the new one. A transaction is taken whole or not at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from lakesink.config import Upsert
from lakesink.errors import SourceContractViolation
from lakesink.sources.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    Relation,
    Truncate,
    Update,
    Value,
)
from lakesink.sources.pgtypes import arrow_type, to_arrow_array
from lakesink.sources.postgres import SourceColumn, SourceTable, format_lsn

LSN_COLUMN = "_lsn"
OP_COLUMN = "_op"
"""In the change log: insert, update, delete or truncate."""
COMMIT_TIME_COLUMN = "_commit_time"
"""In the change log: when the source transaction committed (UTC)."""
DELETED_FLAG = "__lakesink_deleted"
KEEP_PREFIX = "__lakesink_keep."


def keep_flag(column: str) -> str:
    return f"{KEEP_PREFIX}{column}"


CHUNK_BYTES = 16 << 20
"""Text gathered for one table before it is converted to an Arrow chunk: Python strings cost several
times their Arrow size, so a large transaction is held as Arrow, not as text."""


@dataclass
class TableChanges:
    """The changes of one source table in the batch being gathered, in stream order: Arrow chunks,
    then the latest changes as text column by column. A TRUNCATE is a row of its own (op "truncate",
    no values)."""

    table: SourceTable
    columns: dict[str, SourceColumn]
    chunk_bytes: int = field(default_factory=lambda: CHUNK_BYTES)
    values: dict[str, list[str | None]] = field(default_factory=dict)
    kept: dict[str, list[bool]] = field(default_factory=dict)
    lsns: list[int] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    commit_times: list[int] = field(default_factory=list)
    chunks: list[pa.Table] = field(default_factory=list)
    truncated_at: int | None = None
    after_truncate: int = 0  # the first row after the last TRUNCATE
    bytes: int = 0
    _text_bytes: int = 0
    _sealed_rows: int = 0

    @property
    def rows(self) -> int:
        return self._sealed_rows + len(self.lsns)

    def add(self, names: tuple[str, ...], row: tuple[Value, ...], *, lsn: int, op: str, commit_us: int) -> None:
        n = len(self.lsns)
        carried = set()
        delete = op == "delete"
        size = 24
        for name, value in zip(names, row, strict=True):
            column = self.values.get(name)
            if column is None:
                column = self.values[name] = [None] * n
                self.kept[name] = [True] * n  # rows before the column appeared did not carry it
            keep = value is UNCHANGED or (delete and name not in self.table.key)
            text = None if value is UNCHANGED or value is None else str(value)
            column.append(text)
            self.kept[name].append(keep)
            if text is not None:
                size += len(text)
            carried.add(name)
        for name, column in self.values.items():
            if name not in carried:
                column.append(None)
                self.kept[name].append(True)
        self.lsns.append(lsn)
        self.ops.append(op)
        self.commit_times.append(commit_us)
        self.bytes += size
        self._text_bytes += size
        if self._text_bytes >= self.chunk_bytes:
            self._seal()

    def truncate(self, lsn: int, *, commit_us: int) -> None:
        """A TRUNCATE at `lsn`: every change gathered before it is void for the mirror."""
        self.add((), (), lsn=lsn, op="truncate", commit_us=commit_us)
        self.truncated_at = lsn
        self.after_truncate = self.rows

    def _seal(self) -> None:
        """Convert the text gathered so far to an Arrow chunk (every column and keep flag known now)."""
        if not self.lsns:
            return
        arrays: dict[str, pa.Array] = {}
        for name, column in self.columns.items():
            if name in self.values:
                arrays[name] = to_arrow_array(
                    self.values[name], column.type_oid, column.type_modifier, column=name, table=self.table.qualified
                )
        arrays[LSN_COLUMN] = pa.array(self.lsns, pa.int64())
        arrays[OP_COLUMN] = pa.array(self.ops, pa.string())
        arrays[COMMIT_TIME_COLUMN] = pa.array(self.commit_times, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        for name, kept in self.kept.items():
            arrays[keep_flag(name)] = pa.array(kept, pa.bool_())
        self.chunks.append(pa.table(arrays))
        self._sealed_rows += len(self.lsns)
        self.values = {name: [] for name in self.values}
        self.kept = {name: [] for name in self.kept}
        self.lsns, self.ops, self.commit_times = [], [], []
        self._text_bytes = 0

    def to_arrow(self) -> pa.Table:
        """Every change as Arrow: source columns (typed), `_lsn`, op, commit time, delete and keep flags
        (a keep flag only for a column some change after the last TRUNCATE did not carry)."""
        self._seal()
        arrays: dict[str, pa.ChunkedArray] = {}
        for name, column in self.columns.items():
            # A column no change carried (only TRUNCATEs) is null: the merge still joins on the key.
            arrays[name] = self._column(name, arrow_type(column.type_oid, column.type_modifier))
        arrays[LSN_COLUMN] = self._column(LSN_COLUMN, pa.int64())
        arrays[OP_COLUMN] = self._column(OP_COLUMN, pa.string())
        arrays[COMMIT_TIME_COLUMN] = self._column(COMMIT_TIME_COLUMN, pa.timestamp("us", tz="UTC"))
        arrays[DELETED_FLAG] = pc.equal(arrays[OP_COLUMN], pa.scalar("delete", pa.string()))
        for name in self.columns:
            flag = keep_flag(name)
            kept = self._column(flag, pa.bool_(), fill=True)  # not carried before the column appeared
            if pc.any(kept.slice(self.after_truncate)).as_py():
                arrays[flag] = kept
        return pa.table(arrays)

    def _column(self, name: str, kind: pa.DataType, *, fill: bool | None = None) -> pa.ChunkedArray:
        """Column `name` across the chunks; a chunk without it contributes `fill` values (null by default)."""
        parts = []
        for chunk in self.chunks:
            if name in chunk.column_names:
                parts += chunk.column(name).chunks
            else:
                parts.append(pa.array([fill] * chunk.num_rows, kind) if fill is not None else pa.nulls(chunk.num_rows, kind))
        return pa.chunked_array(parts, type=kind)

    def batch(self) -> tuple[pa.Table, Upsert]:
        """The changes since the last TRUNCATE as Arrow, and the keyed write that applies them (by `_lsn`)."""
        rows = self.to_arrow().slice(self.after_truncate).drop_columns([OP_COLUMN, COMMIT_TIME_COLUMN])
        keep = tuple((name[len(KEEP_PREFIX) :], name) for name in rows.column_names if name.startswith(KEEP_PREFIX))
        mode = Upsert(
            key=self.table.key, order_by=LSN_COLUMN, delete_flag=DELETED_FLAG, keep_flags=keep, truncate_before=self.truncated_at
        )
        return rows, mode

    def change_log(self) -> pa.Table:
        """Every change, TRUNCATEs included, as rows of the change-log table (changelog_schema)."""
        rows = self.to_arrow()
        return rows.select([*self.columns, OP_COLUMN, LSN_COLUMN, COMMIT_TIME_COLUMN])


def changelog_schema(table: SourceTable) -> pa.Schema:
    """The change log of `table`: its columns, then `_op`, `_lsn` and `_commit_time`."""
    fields = [pa.field(c.name, arrow_type(c.type_oid, c.type_modifier)) for c in table.columns]
    when = pa.field(COMMIT_TIME_COLUMN, pa.timestamp("us", tz="UTC"))
    return pa.schema([*fields, pa.field(OP_COLUMN, pa.string()), pa.field(LSN_COLUMN, pa.int64()), when])


class ChangeAssembler:
    """Feeds on decoded pgoutput messages; hands out whole transactions as per-table changes.

    `committed` is each table's committed LSN: a transaction at or below it for a table is
    dropped for that table (the stream restarts at the smallest of them, so the others see
    transactions they hold already).
    """

    def __init__(self, tables: Iterable[SourceTable], committed: Mapping[str, int | None]) -> None:
        self._tables = {t.oid: t for t in tables}
        self._committed = dict(committed)
        self._relations: dict[int, tuple[SourceTable, tuple[str, ...], dict[str, SourceColumn]]] = {}
        self._changes: dict[str, TableChanges] = {}
        self._lsn: int | None = None  # the open transaction's commit LSN
        self._commit_us = 0
        self.position: int | None = None  # the commit LSN of the last whole transaction gathered
        self.transactions = 0
        self.rows = 0

    @property
    def in_transaction(self) -> bool:
        return self._lsn is not None

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self._changes.values())

    def feed(self, message: Message) -> None:
        """Take one message of the stream, in order.

        Raises:
            SourceContractViolation: a change to a table the job does not mirror, or a message out of order.
        """
        if isinstance(message, Begin):
            self._lsn = message.final_lsn
            self._commit_us = message.commit_time_us
        elif isinstance(message, Commit):
            held = [self._committed.get(t.qualified) for t in self._tables.values()]
            # A transaction every table holds (PostgreSQL resends the acknowledged one) is not counted.
            if self._lsn is not None and not all(h is not None and self._lsn <= h for h in held):
                self.position = message.commit_lsn
                self.transactions += 1
            self._lsn = None
        elif isinstance(message, Relation):
            table = self._tables.get(message.oid)
            if table is None:
                raise SourceContractViolation(
                    f"table {message.namespace}.{message.name} joined the publication while the job ran: restart the job, "
                    "which sets up a Delta table for it"
                )
            columns = {c.name: SourceColumn(c.name, c.type_oid, c.type_modifier) for c in message.columns}
            self._relations[message.oid] = (table, tuple(columns), columns)
            changes = self._changes.get(table.qualified)
            if changes is not None:
                changes.columns.update(columns)
        elif isinstance(message, (Insert, Update, Delete)):
            self._change(message)
        elif isinstance(message, Truncate):
            for oid in message.relation_oids:
                target = self._gather(oid)
                if target is not None:
                    target.truncate(self._open_lsn(), commit_us=self._commit_us)

    def _open_lsn(self) -> int:
        if self._lsn is None:
            raise SourceContractViolation("a change arrived outside a transaction: the stream is out of order; rerun")
        return self._lsn

    def _gather(self, oid: int) -> TableChanges | None:
        """The buffer of the relation's table, or None when the table holds this transaction already."""
        lsn = self._open_lsn()
        known = self._relations.get(oid)
        if known is None:
            raise SourceContractViolation(f"a change to relation {oid} came before its description: the stream is out of order")
        table, _, columns = known
        committed = self._committed.get(table.qualified)
        if committed is not None and lsn <= committed:
            return None
        changes = self._changes.get(table.qualified)
        if changes is None:
            changes = self._changes[table.qualified] = TableChanges(table, dict(columns))
        return changes

    def _change(self, message: Insert | Update | Delete) -> None:
        changes = self._gather(message.relation_oid)
        if changes is None:
            return
        lsn = self._open_lsn()
        _, names, _ = self._relations[message.relation_oid]
        key = changes.table.key
        at = self._commit_us
        if isinstance(message, Insert):
            changes.add(names, message.new, lsn=lsn, op="insert", commit_us=at)
        elif isinstance(message, Delete):
            changes.add(names, message.old, lsn=lsn, op="delete", commit_us=at)
        elif message.old is not None and _key_of(names, message.old, key) != _key_of(names, message.new, key):
            changes.add(names, message.old, lsn=lsn, op="delete", commit_us=at)
            changes.add(names, message.new, lsn=lsn, op="insert", commit_us=at)
        else:
            changes.add(names, message.new, lsn=lsn, op="update", commit_us=at)
        self.rows += 1

    def holds(self, position: int) -> None:
        """Every table holds everything before `position` now (moved there with no rows): a transaction
        at or below it is skipped. Call it between transactions, with nothing gathered."""
        if self._lsn is not None or self._changes:
            raise SourceContractViolation(f"tables were moved to {format_lsn(position)} with changes still gathered")
        self._committed = {name: max(lsn or 0, position) for name, lsn in self._committed.items()}
        self.position = max(self.position or 0, position)

    def take(self) -> tuple[int | None, dict[str, TableChanges]]:
        """The position (the last whole transaction's commit LSN) and the changes gathered up to it, per
        table; the assembler starts a new batch. Call it between transactions only."""
        if self._lsn is not None:
            raise SourceContractViolation(f"a batch was cut inside the transaction at {format_lsn(self._lsn)}")
        changes, self._changes = self._changes, {}
        if self.position is not None:
            for table in changes:
                self._committed[table] = max(self._committed.get(table) or 0, self.position)
        self.rows = 0
        self.transactions = 0
        return self.position, changes


def source_schema(table: SourceTable) -> pa.Schema:
    """The Arrow schema of the mirror of `table`: its columns, then `_lsn`."""
    fields = [pa.field(c.name, arrow_type(c.type_oid, c.type_modifier)) for c in table.columns]
    return pa.schema([*fields, pa.field(LSN_COLUMN, pa.int64())])


def _key_of(names: tuple[str, ...], row: tuple[Value, ...], key: tuple[str, ...]) -> tuple[Value, ...]:
    values = dict(zip(names, row, strict=True))
    return tuple(values.get(k) for k in key)
