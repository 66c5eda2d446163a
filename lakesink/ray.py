"""Bulk loads on Ray Data: a `ray.data.Datasink` that loads a dataset into a Delta table exactly once.

    ds.write_datasink(lakesink.ray.DeltaSink("s3://lake/events", app_id="events-backfill", position=20240601))

The whole load is one position of one app id, committed once, in one Delta commit:

1. **Driver, `on_write_start`.** The table is opened (`lakesink.sink.Sink`: a location holding
   other files is refused here, before any task runs). If the app id's committed position is
   `position` or more, the load is a no-op: the sink the workers receive (Ray serializes it after
   this call) says so, and they stage nothing. Otherwise the workers get the table's schema,
   partitioning and statistics settings.
2. **Workers, `write`.** Each task fits its blocks to the table's schema
   (`lakesink.write.schema.fit`) and streams them into Parquet files with Delta statistics,
   partitioned as the table is (`lakesink.write.file_writer.GroupFiles`). Every file is named
   (`lakesink.layout.data_file_path`) by the load's position, a sequence number and a random 64-bit
   nonce drawn when the file is opened: no two tasks, nor two attempts of one task, ever share a
   name, so no attempt overwrites a file another one returned. A table that does not exist yet is
   created by the first task that has rows, from its first block's schema, before it stages a
   file (a create-only log entry 0: tasks racing to create it open the one that won). The task
   returns its files (`StagedTask`).
3. **Driver, `on_write_complete`.** One commit of every returned file with
   `txn(app_id, position)` (`Sink.commit_files`), checked on the snapshot it is made on: if the
   position was committed meanwhile (a concurrent run of the same load), it is "skipped" and the
   files stay unreferenced. `DeltaSink.result` is the outcome (status "committed" or "skipped").

What a failure leaves: a task that fails is retried by Ray (system failures always; exceptions
raised in the task only with `ray_remote_args={"retry_exceptions": True}`), and only the files of
the attempt whose result reaches the driver are committed; a failed attempt's files, a failed
load's, and those of a driver killed before its commit are orphans that no log entry names,
invisible to readers, which `lakesink gc` deletes once older than its grace period. The table's
log always exists before the first data file (step 2), so such a location stays a Delta table
that a rerun of the load (same app id and position) commits into, once.

Why the table is not created on the driver from the schema Ray passes to `on_write_start`: Ray
takes it from the first bundle entering the write operator, which is not the data's schema when
the write is fused with the operators before it (a `read_parquet` passes its file list's schema;
`range` passes None), so only a block is trusted.

Ray is imported by this module only (`pip install 'lakesink[ray]'`); `import lakesink` does not.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import WriteResult as RayWriteResult

from lakesink.commit import ANY_PREVIOUS, WriteResult, settled
from lakesink.config import DEFAULT_TARGET_FILE_BYTES
from lakesink.delta.log_entry import StagedFile
from lakesink.errors import ConfigError, InternalError, InvalidPosition, SchemaMismatch, TableError
from lakesink.sink import Sink
from lakesink.storage.objects import open_store
from lakesink.storage.options import StorageOptions
from lakesink.storage.uri import normalize_table_uri
from lakesink.write.file_writer import GroupFiles
from lakesink.write.schema import delta_schema, fit
from lakesink.write.stats import StatsColumns

__all__ = ["DeltaSink", "StagedTask"]

log = logging.getLogger(__name__)
_MAX_POSITION = 2**63 - 1


@dataclass(frozen=True, slots=True)
class StagedTask:
    """What one write task staged: its Parquet files (on the store, committed by the driver or
    nobody), the table schema it fitted its rows to (None: it had no rows), and the columns it
    added to that schema (`evolve_schema`)."""

    files: tuple[StagedFile, ...]
    table_schema: pa.Schema | None
    new_fields: tuple[pa.Field, ...] = ()
    rows: int = 0


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the driver decided in `on_write_start`, for the workers (serialized with the sink)."""

    load_id: str  # this write_datasink call's (random)
    skip: bool
    table_schema: pa.Schema | None  # None: the table does not exist yet; the first task with rows creates it
    partition_by: tuple[str, ...]
    stats: StatsColumns


_Table = tuple[pa.Schema, list[str], StatsColumns]
_tables_opened: dict[str, _Table] = {}
"""The table as the first task of a load (by load id) in this worker process created or opened it:
Ray runs many tasks in one worker process, and opening the table costs a read of its log."""


class DeltaSink(Datasink[StagedTask]):
    """A Ray Data sink that appends a dataset to a Delta table as one position of one app id, exactly once.

        sink = lakesink.ray.DeltaSink(table_uri, app_id="events-backfill", position=3)
        ds.write_datasink(sink)
        sink.result.status        # "committed"; "skipped" when position 3 was committed before

    `position` is the load's place in its app id's history (a load number, a date as yyyymmdd):
    a rerun of a load that committed adds nothing, and a position below the committed one is
    skipped too. `partition_by` partitions a new table; `evolve_schema` adds new columns as
    nullable ones (each addition is a commit of its own before the data's). `storage_options`
    travel to the workers with the sink (Ray serializes it); each worker adds its own AWS
    environment variables, as the driver does.

    `min_bytes_per_task` (Ray's `min_bytes_per_write`) has Ray gather at least that many bytes of
    rows (in memory) for each write task, so a task writes a few large files instead of one small
    file per block (1 GB of NDJSON: 5 files instead of 200, and faster); None writes each block as
    it comes, in the task that made it (the read's, fused with the write).

    Ray retries failed tasks; exceptions raised inside a task (not only lost workers) are retried
    with `ds.write_datasink(sink, ray_remote_args={"max_retries": 3, "retry_exceptions": True})`.

    Raises (from `ds.write_datasink`, possibly wrapped by Ray):
        InvalidPosition: `position` is not a non-negative int64 (at construction).
        ConfigError: an empty `app_id`, a `min_bytes_per_task` below 1 (at construction).
        TableError: the location holds files but no Delta table; or the table does not exist and
            the dataset has no rows to create it with.
        SchemaMismatch: the rows do not fit the table; nothing is committed.
        ConcurrentWriterError, CommitOutcomeUnknown, StorageUnavailable: as `lakesink.Sink.write`.
    """

    def __init__(
        self,
        table_uri: str,
        *,
        app_id: str,
        position: int,
        storage_options: dict[str, str] | None = None,
        partition_by: Sequence[str] | None = None,
        evolve_schema: bool = False,
        min_bytes_per_task: int | None = DEFAULT_TARGET_FILE_BYTES,
    ) -> None:
        if not app_id or not isinstance(app_id, str):
            raise ConfigError("app_id must be a non-empty string naming the load")
        if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position <= _MAX_POSITION:
            raise InvalidPosition(f"position must be an int in 0..2**63-1 (a Delta txn version), not {position!r}")
        self.table_uri = normalize_table_uri(table_uri)
        self.app_id = app_id
        self.position = position
        self._storage_options = dict(storage_options or {})
        self._partition_by = list(partition_by or [])
        self._evolve = evolve_schema
        if min_bytes_per_task is not None and (isinstance(min_bytes_per_task, bool) or min_bytes_per_task < 1):
            raise ConfigError(f"min_bytes_per_task must be a positive number of bytes or None, not {min_bytes_per_task!r}")
        self._min_bytes_per_task = min_bytes_per_task
        self._plan: _Plan | None = None
        self._sink: Sink | None = None  # the driver's; never serialized to the workers
        self._result: WriteResult | None = None

    def __repr__(self) -> str:
        options = StorageOptions.resolve(self._storage_options, environ={})
        return f"DeltaSink({self.table_uri!r}, app_id={self.app_id!r}, position={self.position}, storage_options={options!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_sink"] = None
        state["_result"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def result(self) -> WriteResult | None:
        """What the load did, once `write_datasink` returned: status "committed" (with the table
        version, rows and files) or "skipped" (the position was committed already); None before."""
        return self._result

    def get_name(self) -> str:
        return "DeltaSink"

    @property
    def min_bytes_per_write(self) -> int | None:
        return self._min_bytes_per_task

    # -- driver ------------------------------------------------------------------------------------

    def on_write_start(self, schema: pa.Schema | None = None) -> None:
        # `schema` is Ray's guess from the first input bundle: not trusted (see the module docstring).
        self._result = None
        sink = self._open_sink()
        committed = sink.committed_position()
        handle = sink.handle
        if handle is not None:
            done = settled(handle, self.app_id, self.position, committed, ANY_PREVIOUS)
            if done is not None:
                log.info("%s: position %d of %r is committed already (%s): the load writes nothing", self.table_uri,
                         self.position, self.app_id, done.reason)  # fmt: skip
                self._result = done
                self._plan = _Plan(uuid.uuid4().hex, skip=True, table_schema=None, partition_by=(), stats=StatsColumns())
                return
            self._plan = _Plan(
                uuid.uuid4().hex, skip=False, table_schema=handle.arrow_schema(), partition_by=tuple(handle.partition_columns()),
                stats=StatsColumns.of_table(handle.configuration()),
            )  # fmt: skip
        else:
            self._plan = _Plan(
                uuid.uuid4().hex, skip=False, table_schema=None, partition_by=tuple(self._partition_by), stats=StatsColumns()
            )
        log.info("%s: loading position %d of %r", self.table_uri, self.position, self.app_id)

    def on_write_complete(self, write_result: RayWriteResult[StagedTask]) -> None:
        sink = self._open_sink()
        try:
            if self._plan is not None and self._plan.skip:
                return  # `result` says skipped since on_write_start
            if self._plan is None:  # an empty dataset: Ray ran no task (and did not call on_write_start)
                self.on_write_start(None)
                if self._result is not None:
                    return
            tasks = [t for t in write_result.write_returns if t is not None]
            files = [f for t in tasks for f in t.files]
            schema = _load_schema(tasks, self.table_uri)
            handle = sink.handle
            if handle is None:
                sink.refresh()  # a task may have created the table
                handle = sink.handle
            if schema is None:
                if handle is None:
                    raise TableError(
                        f"{self.table_uri} does not exist yet and the dataset has no rows to create it with: nothing "
                        f"was committed (position {self.position} of {self.app_id!r} is not recorded)"
                    )
                schema = handle.arrow_schema()
            result = sink.commit_files(files, position=self.position, previous=ANY_PREVIOUS, schema=schema)
            if result.committed:
                result = replace(result, rows=sum(f.num_records for f in files), files=len(files))
                log.info("%s: committed position %d of %r in version %d: %d rows in %d files from %d tasks", self.table_uri,
                         self.position, self.app_id, result.table_version, result.rows, result.files, len(tasks))  # fmt: skip
            else:
                log.info("%s: position %d of %r %s (%s): the %d staged files are left to `lakesink gc`", self.table_uri,
                         self.position, self.app_id, result.status, result.reason, len(files))  # fmt: skip
            self._result = result
        finally:
            self._plan = None  # the next write_datasink with this sink decides afresh
            self._close_sink()

    def on_write_failed(self, error: Exception) -> None:
        log.warning("%s: the load of position %d of %r failed (%s); rerunning it commits it once (or finds it committed), "
                    "and files its tasks staged that no commit names are left to `lakesink gc`", self.table_uri,
                    self.position, self.app_id, error)  # fmt: skip
        self._plan = None
        self._close_sink()

    def _open_sink(self) -> Sink:
        if self._sink is None:
            self._sink = Sink(
                self.table_uri, app_id=self.app_id, storage_options=self._storage_options, partition_by=self._partition_by,
                evolve_schema=self._evolve,
            )  # fmt: skip
        return self._sink

    def _close_sink(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    # -- workers -----------------------------------------------------------------------------------

    def write(self, blocks: Iterable[Block], ctx: object) -> StagedTask:
        plan = self._plan
        if plan is None:
            raise InternalError("DeltaSink.write ran before on_write_start: Ray did not call it on the driver")
        if plan.skip:
            for _ in blocks:
                pass  # the position is committed: stage nothing
            return StagedTask(files=(), table_schema=None)
        options = StorageOptions.resolve(self._storage_options)
        table_schema, partition_by, stats = plan.table_schema, list(plan.partition_by), plan.stats
        files: GroupFiles | None = None
        new_fields: dict[str, pa.Field] = {}
        rows = 0
        try:
            for block in blocks:
                data = BlockAccessor.for_block(block).to_arrow()
                if data.num_rows == 0:
                    continue
                if table_schema is None:
                    table_schema, partition_by, stats = self._create_table(plan.load_id, data.schema)
                fitted = fit(data, table_schema, evolve=self._evolve)
                _add_new_fields(new_fields, fitted.new_fields, self.table_uri)
                if files is None:
                    files = GroupFiles(
                        open_store(self.table_uri, options), self.app_id, self.position, partition_by, stats=stats
                    )  # fmt: skip
                files.write(fitted.table)
                rows += fitted.table.num_rows
            staged = tuple(files.close()) if files is not None else ()
        except BaseException:
            if files is not None:
                files.abort()
            raise
        log.debug("%s: task %s staged %d rows in %d files", self.table_uri, getattr(ctx, "task_idx", "?"), rows, len(staged))
        return StagedTask(files=staged, table_schema=table_schema, new_fields=tuple(new_fields.values()), rows=rows)

    def _create_table(self, load_id: str, schema: pa.Schema) -> _Table:
        """The table (created for rows of `schema` if it still does not exist: before any file is staged)."""
        known = _tables_opened.get(load_id)
        if known is not None:
            return known
        with Sink(
            self.table_uri, app_id=self.app_id, storage_options=self._storage_options, partition_by=self._partition_by,
            evolve_schema=self._evolve,
        ) as sink:  # fmt: skip
            handle = sink.handle or sink.ensure_table(delta_schema(schema))
            table = handle.arrow_schema(), handle.partition_columns(), StatsColumns.of_table(handle.configuration())
        if len(_tables_opened) >= 16:
            _tables_opened.clear()
        _tables_opened[load_id] = table
        return table


def _add_new_fields(known: dict[str, pa.Field], fields: Iterable[pa.Field], table_uri: str) -> None:
    for field in fields:
        seen = known.setdefault(field.name, field)
        if seen.type != field.type:
            raise SchemaMismatch(
                f"new column {field.name!r} of {table_uri} comes as {seen.type} in some rows and as {field.type} in others: "
                "cast it to one type in the dataset; nothing was committed"
            )


def _load_schema(tasks: Sequence[StagedTask], table_uri: str) -> pa.Schema | None:
    """The schema the load's files were written for: the table's, plus the columns the tasks added
    (None: no task had rows)."""
    with_rows = [t for t in tasks if t.table_schema is not None]
    if not with_rows:
        return None
    base = with_rows[0].table_schema
    assert base is not None
    if any(t.table_schema is not None and not t.table_schema.equals(base) for t in with_rows):
        raise SchemaMismatch(
            f"the schema of {table_uri} changed during the load (another writer altered it): its tasks wrote files "
            "for different schemas. Nothing was committed; rerun the load."
        )
    new_fields: dict[str, pa.Field] = {}
    for task in with_rows:
        _add_new_fields(new_fields, task.new_fields, table_uri)
    return pa.schema(list(base) + list(new_fields.values()))
