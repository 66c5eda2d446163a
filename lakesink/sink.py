"""Sink: write batches of rows to a Delta table, each exactly once for its (app id, position)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

import pyarrow as pa

from lakesink.commit import (
    ANY_PREVIOUS,
    AnyPrevious,
    Claim,
    CommitOutcome,
    CommitPolicy,
    Committer,
    LogStore,
    PartsResult,
    WriteResult,
    add_columns,
    check_files_fit,
    create_table,
    delete_rows,
    settled,
)
from lakesink.config import Dedup, Upsert
from lakesink.crashpoints import crash_point
from lakesink.delta.log_entry import StagedFile
from lakesink.delta.merge import MergePlan
from lakesink.delta.table import DEFAULT_CHECKPOINT_INTERVAL, TableHandle
from lakesink.display import html_table
from lakesink.errors import ConfigError, InvalidPosition, SchemaMismatch
from lakesink.layout import part_app_id, part_key, tombstone_table_uri
from lakesink.storage.objects import ObjectStore, open_store
from lakesink.storage.options import StorageOptions
from lakesink.storage.uri import normalize_table_uri
from lakesink.write.changes import check_columns, deletes, first_row_per_key, last_change_per_key, without_outdated
from lakesink.write.convert import to_arrow
from lakesink.write.partitions import check_partition_columns
from lakesink.write.schema import Fitted, fit
from lakesink.write.stage import stage_batch
from lakesink.write.stats import StatsColumns

_MAX_POSITION = 2**63 - 1
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Part:
    """Rows of one partition of a source (`key`, e.g. a Kafka topic partition "orders/3"), and the
    position they take it to: `Sink.write_parts` commits several in one commit, each exactly once.

    Its `txn` app id is `<sink app id>/<key>` (lakesink.layout.part_app_id). `previous` means what
    it means for `Sink.write`: the position this part's rows continue from.
    """

    key: str
    data: Any
    position: int
    previous: int | AnyPrevious | None = ANY_PREVIOUS


class Sink:
    """Exactly-once writer for one app id (one job, or one partition of a source) into one table.

        with lakesink.Sink("s3://lake/events", app_id="events") as sink:
            sink.write(rows, position=42)   # commits, or skips if 42 (or more) is already committed
            sink.committed_position()       # 42

    The table is created on the first write. Keep one Sink open for many writes: it keeps the
    table's snapshot and adds its own commits to it, so a commit costs the same at any length of
    history (one create-only PUT of the next log entry; lakesink.commit).

    `store` (data files: a `lakesink.storage.objects.ObjectStore`), `log_store` (log entries: a
    `lakesink.commit.LogStore`), `clock` and `sleep` are the I/O seams: by default the stores follow
    the table URI; tests pass wrappers that fail on cue.
    """

    def __init__(
        self,
        table_uri: str,
        *,
        app_id: str,
        storage_options: dict[str, str] | None = None,
        partition_by: Sequence[str] | None = None,
        evolve_schema: bool = False,
        checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        store: ObjectStore | None = None,
        log_store: LogStore | None = None,
        commit_policy: CommitPolicy | None = None,
    ) -> None:
        if not app_id or not isinstance(app_id, str):
            raise ConfigError("app_id must be a non-empty string naming the job (or source partition)")
        self.uri = normalize_table_uri(table_uri)
        self.app_id = app_id
        self._options = StorageOptions.resolve(storage_options)
        self._partition_by = list(partition_by or [])
        self._evolve = evolve_schema
        self._checkpoint_interval = checkpoint_interval
        self.store: ObjectStore = store or open_store(self.uri, self._options)
        self._clock, self._sleep = clock, sleep
        self._tombstones: Sink | None = None
        self._committer = Committer(self.uri, self._options, log_store=log_store, clock=clock, sleep=sleep, policy=commit_policy)
        self._handle: TableHandle | None = self._open()
        if self._handle is not None:
            self._check_partitioning(self._handle)

    def __repr__(self) -> str:
        return f"Sink({self.uri!r}, app_id={self.app_id!r}, storage_options={self._options!r})"

    def _repr_html_(self) -> str:
        handle = self._handle
        return html_table(
            "Sink",
            [
                ("table", self.uri),
                ("app_id", self.app_id),
                ("table version", handle.version() if handle is not None else "(not created yet)"),
                ("committed position", handle.committed_position(self.app_id) if handle is not None else None),
                ("storage options", repr(self._options)),
            ],
        )

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Release the table snapshot. Every write commits before it returns; a checkpoint being
        written in the background is waited for (bounded: lakesink.delta.checkpointer)."""
        self._handle = None
        self._committer.close()

    @property
    def partition_by(self) -> list[str]:
        """The partition columns asked for (the table's own, once it exists, win: see `handle`)."""
        return list(self._partition_by)

    @property
    def evolve_schema(self) -> bool:
        return self._evolve

    @property
    def handle(self) -> TableHandle | None:
        """The open table, or None before the first write created it."""
        return self._handle

    def committed_position(self, *, part: str | None = None) -> int | None:
        """The last position committed for this app id (None before the first commit), as of the
        table this sink opened (or created, or last refreshed): no request to the store. A table
        another writer created since is found by `refresh`, or by the first write.

        With `part`, the position of that source partition (`write_parts`)."""
        if self._handle is None:
            return None
        return self._handle.committed_position(self.app_id if part is None else part_app_id(self.app_id, part))

    def committed_parts(self) -> dict[str, int] | None:
        """Every source partition's committed position (`write_parts`), by part key, as of this
        sink's snapshot; None when the table's log is read by delta-rs, which cannot list them
        (ask `committed_position(part=...)` for the keys you know)."""
        if self._handle is None:
            return {}
        txns = self._handle.known_txns()
        if txns is None:
            return None
        keys = {app: part_key(self.app_id, app) for app in txns}
        return {key: txns[app] for app, key in keys.items() if key is not None}

    def refresh(self) -> None:
        """Read log entries other writers added since the last call."""
        if self._handle is None:
            self._handle = self._open()
        else:
            self._handle.refresh()

    def write(
        self,
        data: Any,
        *,
        position: int,
        previous: int | AnyPrevious | None = ANY_PREVIOUS,
        mode: Upsert | Dedup | None = None,
    ) -> WriteResult:
        """Commit `data` for `position` exactly once.

        `data` is a pyarrow Table or RecordBatch, a polars or pandas DataFrame, or a list of dicts.
        If this app id's committed position is already `position` or more, nothing is written and
        the result's status is "skipped". Positions are non-negative int64s that grow.

        `previous` (optional) is the position this batch continues from: its rows are exactly the
        ones after `previous` up to `position`. Given it, the write commits only while the committed
        position is `previous` (None: nothing committed yet); if another writer moved it to a point
        inside this batch, nothing is written and the status is "stale": re-read from
        `result.committed_position`. Without it, any position above the committed one commits, which
        is right when each position is one indivisible batch (a message, a file).

        `mode` makes it a keyed write, one MERGE in the commit that carries the position:
        `Upsert(key=..., order_by=...)` keeps the table a mirror of the input by key, where a change
        never overwrites a newer one and a delete is never undone by an older insert, so replaying
        any batch changes nothing; `Dedup(key=...)` inserts only keys the table does not hold
        (lakesink.config has both). Without it, the rows are appended.

        Raises:
            InvalidPosition: `position` is not a non-negative int64.
            SchemaMismatch: the data does not fit the table (the message names the column).
            ConcurrentWriterError, CommitOutcomeUnknown, StorageUnavailable: see lakesink.errors.
        """
        _check_position(position)
        if not (isinstance(previous, (AnyPrevious, int)) or previous is None):
            raise InvalidPosition(f"previous must be an int or None, not {type(previous).__name__}")
        committed = self.committed_position()
        if self._handle is not None:
            done = settled(self._handle, self.app_id, position, committed, previous)
            if done is not None:
                return done
        arrow = to_arrow(data)
        if mode is not None:
            return self._write_keyed(arrow, mode, position=position, previous=previous)
        handle, fitted = self._fit_to_table(arrow)
        partition_by = handle.partition_columns()
        staged, existing = self._stage(handle, fitted.table, position=position)
        if existing:
            decided = self._restage(handle, existing, [Claim(self.app_id, position, previous)])
            if decided is not None and decided[0] is not None:
                return decided[0]
        log.debug(
            "staged position %d of %r: %d files, %d rows, %d bytes",
            position, self.app_id, len(staged), fitted.table.num_rows, sum(f.size for f in staged),
        )  # fmt: skip
        crash_point("after_stage")
        return self._committer.commit(
            handle, staged, app_id=self.app_id, position=position, schema=fitted.table.schema, partition_by=partition_by,
            previous=previous,
        )  # fmt: skip

    def write_parts(self, parts: Sequence[Part]) -> PartsResult:
        """Commit the rows of several source partitions, and each one's position, in one commit.

        Each part is decided as `write` decides a batch, on the same snapshot the commit is made
        on: a part whose position is committed already is "skipped", one whose partition another
        writer moved inside it (see `previous`) is "stale"; either way its rows are left out, and
        the other parts are committed together, once. A part with no rows still commits its position.
        Appends only (a keyed write takes one position: `write` with `mode`).

            sink.write_parts([Part("orders/0", rows0, position=120, previous=99),
                              Part("orders/1", rows1, position=98, previous=80)])

        Raises:
            InvalidPosition: a position that is not a non-negative int64; ConfigError: two parts with one key.
            TableError: the table does not exist yet and no part has rows to create it with.
            SchemaMismatch, ConcurrentWriterError, CommitOutcomeUnknown, StorageUnavailable: as `write`.
        """
        keys = [p.key for p in parts]
        if len(set(keys)) != len(keys) or not all(isinstance(k, str) and k for k in keys):
            raise ConfigError(f"write_parts needs a distinct, non-empty key per part, not {keys}")
        for p in parts:
            _check_position(p.position)
            if not (isinstance(p.previous, (AnyPrevious, int)) or p.previous is None):
                raise InvalidPosition(f"previous must be an int or None, not {type(p.previous).__name__}")
        claims = [Claim(part_app_id(self.app_id, p.key), p.position, p.previous) for p in parts]
        results: list[WriteResult | None] = [None] * len(parts)
        rows = [to_arrow(p.data) for p in parts]
        files = 0
        while True:
            if self._handle is not None:
                for i, claim in enumerate(claims):
                    if results[i] is None:
                        committed = self._handle.committed_position(claim.app_id)
                        results[i] = settled(self._handle, claim.app_id, claim.position, committed, claim.previous)
            pending = [i for i, r in enumerate(results) if r is None]
            if not pending:
                break
            outcome, files = self._commit_parts([claims[i] for i in pending], [rows[i] for i in pending])
            for i, result in zip(pending, outcome.results, strict=True):
                if outcome.committed and result is not None:
                    result = replace(result, rows=rows[i].num_rows)
                results[i] = result
            if outcome.committed:
                break
        done = [r for r in results if r is not None]
        landed = [r for r in done if r.committed]
        version = landed[0].table_version if landed else (self._handle.version() if self._handle else -1)
        return PartsResult(parts=tuple(done), table_version=version, commits=1 if landed else 0, files=files if landed else 0)

    def _commit_parts(self, claims: list[Claim], parts: list[pa.Table]) -> tuple[CommitOutcome, int]:
        """Stage the rows of `parts` together and commit them with every claim, or with none."""
        with_rows = [t for t in parts if t.num_rows]
        if not with_rows:
            handle = self._handle or TableHandle.open_existing(self.uri, self._options)
            self._handle = handle
            schema, partition_by = handle.arrow_schema(), handle.partition_columns()
            return self._committer.commit_claims(
                handle, [], claims, label=self.app_id, schema=schema, partition_by=partition_by
            ), 0  # fmt: skip
        try:
            together = pa.concat_tables(with_rows, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise SchemaMismatch(
                f"the parts of one write_parts call have conflicting columns ({exc}): give them one schema"
            ) from exc
        handle, fitted = self._fit_to_table(together)
        partition_by = handle.partition_columns()
        staged, existing = self._stage(handle, fitted.table, position=max(c.position for c in claims))
        if existing:
            decided = self._restage(handle, existing, claims)
            if decided is not None:
                return CommitOutcome(committed=False, table_version=handle.version(), results=decided), 0
        crash_point("after_stage")
        outcome = self._committer.commit_claims(
            handle, staged, claims, label=self.app_id, schema=fitted.table.schema, partition_by=partition_by
        )
        return outcome, len(staged)

    def _fit_to_table(self, data: pa.Table) -> tuple[TableHandle, Fitted]:
        """The table (created for `data` if there is none) and `data` fitted to it, new columns added."""
        handle = self._handle
        fitted = fit(data, handle.arrow_schema() if handle else None, evolve=self._evolve)
        if handle is None:
            handle = self.ensure_table(fitted.table.schema)
            # A concurrent creator may have made the table with another schema: fit against it.
            fitted = fit(data, handle.arrow_schema(), evolve=self._evolve)
        if fitted.new_fields:
            add_columns(handle, fitted.new_fields)
        return handle, fitted

    def _write_keyed(
        self, data: pa.Table, mode: Upsert | Dedup, *, position: int, previous: int | AnyPrevious | None
    ) -> WriteResult:
        check_columns(data, mode)
        flags = mode.flag_columns if isinstance(mode, Upsert) else ()
        batch = last_change_per_key(data, mode) if isinstance(mode, Upsert) else first_row_per_key(data, mode.key)
        values = batch.drop_columns(list(flags))
        handle, fitted = self._fit_to_table(values)
        source = fitted.table.select(values.column_names)
        for flag in flags:
            source = source.append_column(flag, batch.column(flag))
        if isinstance(mode, Dedup):
            plan = MergePlan(key=mode.key, columns=tuple(values.column_names), window=mode.window)
        else:
            plan = MergePlan(
                key=mode.key, columns=tuple(values.column_names), order_by=mode.order_by, delete_flag=mode.delete_flag,
                keep_flags=mode.keep_flags, delete_unmatched_below=mode.truncate_before,
            )  # fmt: skip
            if mode.tombstones:
                source = self._apply_tombstones(source, mode, position=position)
        return self._committer.commit_merge(handle, source, plan, app_id=self.app_id, position=position, previous=previous)

    def _apply_tombstones(self, source: pa.Table, mode: Upsert, *, position: int) -> pa.Table:
        """`source` without changes older than a delete of their key; this batch's deletes recorded
        first (in the side table, before the merge: a crash in between leaves a tombstone of a
        delete that the rerun applies again, which only ever drops changes older than it)."""
        tombstones = self.tombstone_sink()
        if tombstones.handle is not None:
            known = tombstones.handle.rows_where([*mode.key, mode.order_by], source.select(list(mode.key)))
            source = without_outdated(source, known, mode)
        gone = deletes(source, mode)
        if gone.num_rows:
            tombstones.write(gone, position=position, mode=Upsert(key=mode.key, order_by=mode.order_by, tombstones=False))
        return source

    def tombstone_sink(self) -> Sink:
        """The writer of this table's tombstones (lakesink.config.Upsert), with this sink's app id."""
        if self._tombstones is None:
            self._tombstones = Sink(
                tombstone_table_uri(self.uri), app_id=self.app_id, storage_options=dict(self._options.values),
                checkpoint_interval=self._checkpoint_interval, clock=self._clock, sleep=self._sleep,
            )  # fmt: skip
        return self._tombstones

    def prune_tombstones(self, *, below: int) -> int:
        """Forget deleted keys whose delete has an order value below `below` (an int order column):
        call it once no change older than `below` can be replayed any more (for PostgreSQL, below
        the position every table of the job has committed). Returns how many were removed."""
        if self._tombstones is None and TableHandle.open(tombstone_table_uri(self.uri), self._options) is None:
            return 0
        tombstones = self.tombstone_sink()
        if tombstones.handle is None:
            return 0
        order = [f.name for f in tombstones.handle.arrow_schema()][-1]
        return delete_rows(tombstones.handle, column=order, below=below)

    def advance(self, position: int, *, previous: int | AnyPrevious | None = ANY_PREVIOUS) -> WriteResult:
        """Commit `position` with no rows (a source that moved on without anything for this table), on
        the table as it is; "skipped" if the position is committed already.

        Raises:
            TableError: the table does not exist yet (write to it first); as `write` otherwise.
        """
        _check_position(position)
        handle = self._handle or TableHandle.open_existing(self.uri, self._options)
        self._handle = handle
        return self.commit_files([], position=position, previous=previous, schema=handle.arrow_schema())

    def _stage(self, handle: TableHandle, rows: pa.Table, *, position: int) -> tuple[list[StagedFile], list[tuple[str, bytes]]]:
        """`rows` (fitted to the table) as Parquet files on the store, and those of them already there."""
        existing: list[tuple[str, bytes]] = []
        staged = stage_batch(
            self.store, rows, app_id=self.app_id, position=position, partition_by=handle.partition_columns(),
            stats=StatsColumns.of_table(handle.configuration()), existing=existing,
        )  # fmt: skip
        return staged, existing

    def _restage(
        self, handle: TableHandle, existing: list[tuple[str, bytes]], claims: Sequence[Claim]
    ) -> tuple[WriteResult | None, ...] | None:
        """Files of this batch are on the store already (named by their content). Either another
        writer committed one of its positions since our snapshot (they may be named by its commit:
        never overwrite them; the decisions are returned), or a killed run staged them and they are
        orphans (rewrite them, so `lakesink gc` sees them young and leaves them until this commit
        names them; None)."""
        handle.refresh()
        decided = tuple(settled(handle, c.app_id, c.position, handle.committed_position(c.app_id), c.previous) for c in claims)
        if any(decided):
            return decided
        log.info("%s: rewriting %d file(s) a killed run left on the store", [c.app_id for c in claims], len(existing))
        for path, body in existing:
            self.store.write_bytes(path, body)
        return None

    def ensure_table(self, schema: pa.Schema, *, must_match: bool = False) -> TableHandle:
        """The table, created with `schema` (and the partitioning asked for) if it does not exist yet.

        A writer that stages files itself calls this before staging the first one: the table's
        location must hold a Delta log before any data file, or a rerun after a crash would find
        files without a log there and refuse the location (TableHandle.open). With `must_match`,
        a table a concurrent writer created first must have exactly `schema`.

        Raises:
            SchemaMismatch: a partition column is missing or of a type Delta cannot partition by;
                with `must_match`, the table was created with another schema.
            ConfigError: the table exists with another partitioning than the one asked for.
        """
        if self._handle is not None:
            return self._handle
        check_partition_columns(schema, self._partition_by)
        handle = create_table(
            self.uri,
            self._options,
            schema=schema,
            partition_by=self._partition_by,
            checkpoint_interval=self._checkpoint_interval,
            clock=self._clock,
        )
        self._check_partitioning(handle)
        self._handle = handle
        if must_match:
            check_files_fit(handle, schema, handle.partition_columns(), doing="this run read the source", exact=True)
        return handle

    def commit_files(
        self, files: Sequence[StagedFile], *, position: int, previous: int | AnyPrevious | None, schema: pa.Schema
    ) -> WriteResult:
        """Commit Parquet files already on the store (`lakesink.delta.log_entry.StagedFile`s, written for
        the table's partitioning and fitted to `schema`) for `position`, exactly once: the second half of `write`, for writers
        that stage their own files (lakesink.ingest). Creates the table, or adds the new columns
        of `schema`, first.

        Raises:
            SchemaMismatch: the table's schema changed under this writer (created or altered by
                another one) so that the files no longer fit it; rerun to read with the new schema.
            InvalidPosition, ConcurrentWriterError, CommitOutcomeUnknown: as `write`.
        """
        _check_position(position)
        handle = self.ensure_table(schema)
        current = handle.arrow_schema()
        new_fields = [f for f in schema if current.get_field_index(f.name) < 0]
        if new_fields and self._evolve:
            add_columns(handle, new_fields)
        partition_by = handle.partition_columns()
        check_files_fit(handle, schema, partition_by, doing=f"this run wrote position {position}", exact=True)
        return self._committer.commit(
            handle, files, app_id=self.app_id, position=position, schema=schema, partition_by=partition_by, previous=previous
        )

    def _open(self) -> TableHandle | None:
        return TableHandle.open(self.uri, self._options, writing=True)

    def _check_partitioning(self, handle: TableHandle) -> None:
        existing = handle.partition_columns()
        if self._partition_by and existing != self._partition_by:
            raise ConfigError(
                f"{self.uri} is partitioned by {existing or 'nothing'}, not {self._partition_by}: "
                "drop partition_by (the table's own partitioning is used) or write to another table"
            )


def _check_position(position: object) -> None:
    if isinstance(position, bool) or not isinstance(position, int):
        raise InvalidPosition(f"position must be an int, not {type(position).__name__}")
    if not 0 <= position <= _MAX_POSITION:
        raise InvalidPosition(f"position {position} is outside 0..2**63-1 (Delta txn versions are int64)")
