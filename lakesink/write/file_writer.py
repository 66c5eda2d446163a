"""Stream rows into Parquet files on the store: one open file per partition, rolled at a target size.

The streaming path (lakesink.ingest.pipeline) cannot name a file by its content, as `stage_batch`
does: the name is needed when the upload starts, long before the last row is known. A file is named
(lakesink.layout) by the position its commit group starts after, a sequence number, and a random
nonce. A name is never reused, so no writer (a rerun, a concurrent copy, a zombie) can ever
overwrite a file that a commit names. The price: a crash leaves the files of the group it was
writing as orphans that no commit names; `lakesink gc` deletes them (lakesink.maintenance.gc).
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from lakesink.config import DEFAULT_ROW_GROUP_BYTES, DEFAULT_TARGET_FILE_BYTES
from lakesink.crashpoints import crash_point
from lakesink.delta.log_entry import StagedFile
from lakesink.layout import PartitionValues, data_file_path
from lakesink.storage.objects import ObjectStore
from lakesink.write.partitions import split_by_partition
from lakesink.write.stage import not_writable, parquet_writer
from lakesink.write.stats import DEFAULT_STATS_COLUMNS, FloatColumns, StatsColumns, stats_from_parquet


@dataclass
class _OpenFile:
    path: str
    partition_values: PartitionValues
    schema: pa.Schema
    context: AbstractContextManager[pa.NativeFile]
    stream: pa.NativeFile
    writer: pq.ParquetWriter
    rows: int = 0
    floats: FloatColumns = field(default_factory=FloatColumns)


@dataclass
class GroupFiles:
    """The Parquet files of one commit group, as they are written.

    Rows arrive as tables fitted to the table's schema; each `write` appends them to each
    partition's open file in row groups of up to `row_group_bytes` (in memory). A file is finished
    once it reaches `target_bytes` (the next rows go to a new one) and when the group is closed.
    """

    store: ObjectStore
    app_id: str
    start_position: int  # the position the group continues from (-1: the start of the source)
    partition_by: Sequence[str]
    target_bytes: int = DEFAULT_TARGET_FILE_BYTES
    row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES
    stats: StatsColumns = DEFAULT_STATS_COLUMNS
    sequence: itertools.count[int] = field(default_factory=itertools.count)
    _open: dict[PartitionValues, _OpenFile] = field(default_factory=dict)
    _done: list[StagedFile] = field(default_factory=list)

    def write(self, rows: pa.Table) -> None:
        """Append `rows` (already fitted to the table's schema).

        Raises:
            SchemaMismatch: a partition column of a type Delta cannot partition by.
            StorageUnavailable: the store refused or timed out.
        """
        if rows.num_rows == 0:
            return
        for values, part in split_by_partition(rows, self.partition_by):
            current = self._open.get(values)
            if current is not None and current.schema != part.schema:
                self._finish(values)  # the schema grew (evolution): the file's footer has the old one
                current = None
            step = max(1, part.num_rows * self.row_group_bytes // max(1, part.nbytes))
            for offset in range(0, part.num_rows, step):
                if current is None:
                    current = self._start(values, part.schema)
                piece = part.slice(offset, step)
                try:
                    current.writer.write_table(piece, row_group_size=piece.num_rows)
                except OSError as exc:
                    self._fail(values, exc)
                    raise
                except pa.ArrowInvalid as exc:
                    self._fail(values, not_writable(exc))  # raises it
                    raise
                current.floats.add(piece)
                current.rows += piece.num_rows
                if current.stream.tell() >= self.target_bytes:
                    self._finish(values)
                    current = None

    def close(self) -> list[StagedFile]:
        """Finish every open file; the group's files, each on the store in full."""
        for values in list(self._open):
            self._finish(values)
        return list(self._done)

    def abort(self) -> None:
        """Stop writing after an error: local partial files are removed, S3 ones left to gc."""
        for current in self._open.values():
            with contextlib.suppress(Exception):
                current.writer.close()
            aborted = RuntimeError("aborted")
            with contextlib.suppress(Exception):
                current.context.__exit__(RuntimeError, aborted, None)
        self._open.clear()

    def _start(self, values: PartitionValues, schema: pa.Schema) -> _OpenFile:
        path = data_file_path(
            values, position=self.start_position, part=next(self.sequence), app_id=self.app_id, tag=secrets.token_hex(8)
        )
        context = self.store.open_output(path)
        stream = context.__enter__()
        try:
            writer = parquet_writer(stream, schema)  # writes the magic
        except BaseException as exc:
            context.__exit__(type(exc), exc, exc.__traceback__)  # raises the store's error (a full disk: transient)
            raise
        opened = _OpenFile(path, values, schema, context, stream, writer)
        self._open[values] = opened
        return opened

    def _fail(self, values: PartitionValues, exc: BaseException) -> None:
        """Drop the partition's file after `exc`; raises the store's error for it (StorageUnavailable for
        a full disk or an unreachable store) when `exc` is an I/O error."""
        current = self._open.pop(values)
        with contextlib.suppress(Exception):
            current.writer.close()
        current.context.__exit__(type(exc), exc, exc.__traceback__)

    def _finish(self, values: PartitionValues) -> None:
        current = self._open[values]
        try:
            current.writer.close()
            size = current.stream.tell()
        except BaseException as exc:
            self._fail(values, exc)
            raise
        del self._open[values]
        current.context.__exit__(None, None, None)
        self._done.append(
            StagedFile(
                path=current.path,
                size=size,
                partition_values=values,
                stats=stats_from_parquet(
                    current.writer.writer.metadata, current.schema, floats=current.floats, columns=self.stats
                ),
                num_records=current.rows,
            )
        )
        if len(self._done) == 1:
            crash_point("mid_stage")  # one file of the group is on the store; the others are not (yet)
