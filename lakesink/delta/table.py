"""Open, create and refresh a Delta table, and read its `txn` positions without replaying history.

One `TableHandle` stays open for the life of a `Sink`. Its version, protocol, metadata and `txn`s
are lakesink's own reading of the log (lakesink.delta.snapshot: each log object read once), moved
on by the entries lakesink creates or reads itself (`advance`). A delta-rs table is loaded only
for what needs one (merge, compaction, vacuum, delete, schema evolution, reading rows, commits on
stores without create-only PUTs), at the handle's version; a log the snapshot reader leaves to
delta-rs (a V2 checkpoint) is read through it. Checkpoints are lakesink.delta.checkpointer's.

The raw delta-rs table never leaves this module: what lakesink reads of it and writes through it
are methods here. The methods that write to the log (`create`, `add_columns`, `commit_transaction`,
`merge`, `delete_where`, `compact`, `vacuum`) are called by lakesink.commit only (`make lint` checks it).
"""
from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs
from deltalake import CommitProperties, DeltaTable, PostCommitHookProperties, Transaction
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, DeltaProtocolError, SchemaMismatchError, TableNotFoundError
from deltalake.transaction import AddAction

from lakesink.delta.errors import CommitConflict, CommitNotAnswered, translate
from lakesink.delta.log_entry import StagedFile, encode_create
from lakesink.delta.log_folder import open_log_folder
from lakesink.delta.merge import SOURCE, TARGET, MergePlan, metric
from lakesink.delta.protocol import writer_protocol_problems
from lakesink.delta.snapshot import (
    LogFolder,
    LogNotReadHere,
    LogSnapshot,
    MetadataAction,
    ProtocolAction,
    read_snapshot,
    snapshot_at_zero,
)
from lakesink.errors import ConfigError, InternalError, TableError
from lakesink.layout import LOG_DIR
from lakesink.storage.listing import visible_entries
from lakesink.storage.objects import ObjectStore, open_store
from lakesink.storage.options import StorageOptions

if TYPE_CHECKING:
    import pyarrow.dataset as pads  # imports pandas: only where a dataset is read

log = logging.getLogger(__name__)

# The `delta.checkpointInterval` of tables lakesink creates: frequent checkpoints keep log replay
# (every open, every snapshot update) short; each costs once per interval, never per commit.
DEFAULT_CHECKPOINT_INTERVAL = 20
# A table property that lets readers forget old `txn`s (lakesink.ingest.resume says what that risks).
TXN_RETENTION = "delta.setTransactionRetentionDuration"

class TableHandle:
    """A Delta table kept open between commits: lakesink's own reading of the log (the version,
    protocol, metadata and `txn`s: lakesink.delta.snapshot) and, loaded only when an operation
    needs it (merge, compaction, reading rows), a delta-rs table."""

    def __init__(
        self,
        snapshot: LogSnapshot,
        *,
        uri: str,
        options: StorageOptions,
        writing: bool = False,
        table: DeltaTable | None = None,
        txns_complete: bool = True,
        folder: LogFolder | None = None,
        store: ObjectStore | None = None,
    ) -> None:
        self.uri = uri
        self.options = options
        self._folder = folder or open_log_folder(uri, options)
        self._store = store or open_store(uri, options)
        self._snapshot = snapshot
        self._table = table
        # False when delta-rs read the log (lakesink.delta.snapshot.LogNotReadHere): the snapshot then
        # knows only the txns lakesink saw, and delta-rs is asked for the others.
        self._txns_complete = txns_complete
        self._asked: dict[str, tuple[int, int | None]] = {}  # app id -> (version, delta-rs's answer)
        self._schema: tuple[str, pa.Schema] | None = None
        self._writing = writing
        self._checked: tuple[object, ...] | None = None
        if writing:
            self.check_writable()

    def __repr__(self) -> str:
        return f"TableHandle({self.uri!r}, version={self.version()})"

    @classmethod
    def open(cls, uri: str, options: StorageOptions, *, writing: bool = False) -> TableHandle | None:
        """The table at `uri`, or None when there is none yet.

        With `writing`, the table must be one lakesink can append to (`check_writable`, also after
        every refresh), and "none yet" means an empty location: a prefix or folder holding other
        files (a Parquet dataset, say) is refused rather than turned into a Delta table, so nothing
        is ever written next to data lakesink did not write.

        Raises:
            TableError: something is there but it is not a Delta table lakesink can read (or write).
            StorageUnavailable: the store did not answer.
        """
        handle = cls._read(uri, options, writing=writing)
        if handle is not None or not writing:
            return handle
        found = visible_entries(uri, options, limit=3)
        if not found:
            return None
        # A concurrent writer creates version 0 before it stages any file: look again before refusing.
        handle = cls._read(uri, options, writing=writing)
        if handle is None:
            raise TableError(
                f"{uri} is not a Delta table: it has no {LOG_DIR} but holds other files ({', '.join(found)}"
                f"{', ...' if len(found) >= 3 else ''}). lakesink writes only into a Delta table or an empty "
                "location: fix the table URI, or convert that data to Delta first."
            )
        return handle

    @classmethod
    def _read(cls, uri: str, options: StorageOptions, *, writing: bool) -> TableHandle | None:
        folder, store = open_log_folder(uri, options), open_store(uri, options)
        try:
            snapshot = read_snapshot(folder, store)
        except LogNotReadHere as exc:
            log.info("%s: %s; delta-rs reads the log", uri, exc)
            return cls._read_by_delta_rs(uri, options, writing=writing)
        if snapshot is None:
            return None
        log.info("opened table %s at version %d (storage options %r)", uri, snapshot.version, options)
        return cls(snapshot, uri=uri, options=options, writing=writing, folder=folder, store=store)

    @classmethod
    def _read_by_delta_rs(cls, uri: str, options: StorageOptions, *, writing: bool) -> TableHandle | None:
        try:
            table = DeltaTable(uri, storage_options=options.for_delta())
        except TableNotFoundError:
            return None
        except Exception as exc:
            raise translate(exc, options, doing=f"open {uri}") from exc
        return cls(_snapshot_of(table), uri=uri, options=options, writing=writing, table=table, txns_complete=False)

    @classmethod
    def open_existing(cls, uri: str, options: StorageOptions) -> TableHandle:
        """The table at `uri`, to read.

        Raises:
            TableError: there is no Delta table at `uri` (or it is not one lakesink can read).
            StorageUnavailable: the store did not answer.
        """
        handle = cls.open(uri, options)
        if handle is None:
            raise TableError(
                f"no Delta table at {uri}: check the path (and storage_options=KEY=VALUE / AWS_* settings for S3)",
                options=("storage_options",),
            )
        return handle

    @classmethod
    def create(
        cls,
        uri: str,
        options: StorageOptions,
        *,
        schema: pa.Schema,
        partition_by: Sequence[str],
        configuration: Mapping[str, str],
    ) -> TableHandle:
        """Create the table through delta-rs (a store lakesink does not commit to itself), or open
        it if a concurrent writer created it first."""
        try:
            table = DeltaTable.create(
                uri,
                schema=schema,
                partition_by=list(partition_by) or None,
                mode="ignore",
                configuration=dict(configuration),
                storage_options=options.for_delta(),
                # Version 0 or nothing: with retries, delta-rs commits a loser's CREATE TABLE as
                # version 1, 2, ... (a new table id, the loser's schema) when a concurrent creator,
                # or our own create whose answer was lost and was re-sent, took version 0.
                commit_properties=CommitProperties(max_commit_retries=0),
            )
        except Exception as exc:
            # A concurrent creator (or our own lost answer) took version 0: use that table.
            created = cls.open(uri, options, writing=True)
            if created is None:
                raise translate(exc, options, doing=f"create {uri}") from exc
            log.info("table %s was created by a concurrent writer (or our lost answer): using it", uri)
            return created
        log.info("created table %s (partitioned by %s, storage options %r)", uri, list(partition_by) or "nothing", options)
        # delta-rs holds version 0 as it wrote it, or as a concurrent creator did ("ignore"): the
        # snapshot starts from the same entry, read once.
        folder = open_log_folder(uri, options)
        body = folder.read(0)
        if body is None or table.version() != 0:
            handle = cls.open(uri, options, writing=True)
            if handle is None:
                raise TableError(f"created {uri} but cannot read it back; check the store's consistency")
            return handle
        return cls(snapshot_at_zero(body), uri=uri, options=options, writing=True, table=table, folder=folder)

    @staticmethod
    def first_entry(
        schema: pa.Schema, *, partition_by: Sequence[str], configuration: Mapping[str, str], now_ms: int, client_version: str
    ) -> bytes:
        """Log entry 0 of a new table with `schema` (for lakesink.commit to create)."""
        return encode_create(
            schema_json=DeltaSchema.from_arrow(schema).to_json(), partition_by=partition_by, configuration=configuration,
            table_id=str(uuid.uuid4()), now_ms=now_ms, client_version=client_version,
        )  # fmt: skip

    @classmethod
    def created(cls, uri: str, options: StorageOptions, first_entry: bytes, *, folder: LogFolder) -> TableHandle:
        """The table lakesink just created with `first_entry` as its log entry 0, in `folder`."""
        return cls(snapshot_at_zero(first_entry), uri=uri, options=options, writing=True, folder=folder)

    def version(self) -> int:
        return self._snapshot.version

    def refresh(self) -> None:
        """Read the log entries added since this handle's version, up to the latest.

        Raises:
            StorageUnavailable: the store did not answer.
        """
        try:
            snapshot = read_snapshot(self._folder, self._store, after=self._snapshot)
        except LogNotReadHere as exc:
            log.info("%s: %s; delta-rs reads the log", self.uri, exc)
            self._update_delta_rs()
            self._set(_snapshot_of(self._delta_rs()), txns_complete=False)
        else:
            assert snapshot is not None  # read on from a snapshot
            self._set(snapshot, txns_complete=self._txns_complete)

    def _set(self, snapshot: LogSnapshot, *, txns_complete: bool) -> None:
        self._snapshot = snapshot
        self._txns_complete = txns_complete
        if self._writing:
            self.check_writable()  # another writer may have upgraded the protocol

    def sync_delta_rs(self) -> None:
        """Have the delta-rs table at this handle's version (loaded, or brought up to the latest
        and this handle with it), for an operation that must run on the snapshot lakesink checked."""
        if self._delta_rs().version() != self.version():
            self._update_delta_rs()
            self._follow_delta_rs()

    def _delta_rs(self) -> DeltaTable:
        """The delta-rs table, loaded at this handle's version the first time it is needed."""
        if self._table is None:
            try:
                self._table = DeltaTable(self.uri, version=self.version(), storage_options=self.options.for_delta())
            except Exception as exc:
                raise translate(exc, self.options, doing=f"open {self.uri}") from exc
        return self._table

    def _update_delta_rs(self) -> None:
        try:
            self._delta_rs().update_incremental()
        except Exception as exc:
            raise translate(exc, self.options, doing=f"refresh {self.uri}") from exc

    def _follow_delta_rs(self) -> None:
        """After delta-rs committed or read on: this handle reads up to the delta-rs version."""
        target = self._delta_rs().version()
        if target <= self.version():
            return
        try:
            snapshot = read_snapshot(self._folder, self._store, after=self._snapshot, up_to=target)
        except LogNotReadHere:
            self._set(_snapshot_of(self._delta_rs()), txns_complete=False)
            return
        assert snapshot is not None
        self._set(snapshot, txns_complete=self._txns_complete)

    def advance(self, version: int, txns: dict[str, int]) -> None:
        """Entry `version`, the one after this handle's, was created or read by lakesink: move to it.

        `txns` are the positions it sets; every other position carries over unchanged.
        """
        current = self.version()
        if version != current + 1:
            raise InternalError(f"log entry {version} does not follow version {current}")
        carried = {app: (version, pos) for app, (at, pos) in self._asked.items() if at == current}
        carried.update({app: (version, pos) for app, pos in txns.items()})  # known here, expiring or not
        self._asked = carried
        self._snapshot = self._snapshot.advanced(version, txns)

    def check_writable(self) -> None:
        """Refuse a table whose writer protocol asks for more than appending Parquet files.

        Raises:
            TableError: naming the writer version or feature(s) lakesink cannot honour.
        """
        protocol, metadata = self._snapshot.protocol, self._snapshot.metadata
        configuration = dict(metadata.configuration)
        key = (
            protocol.min_writer_version, protocol.writer_features, tuple(sorted(configuration.items())), metadata.schema_string
        )  # fmt: skip
        if key == self._checked:
            return
        problems = writer_protocol_problems(
            protocol.min_writer_version, list(protocol.writer_features) if protocol.writer_features is not None else None,
            configuration, metadata.schema_string,
        )  # fmt: skip
        if problems:
            raise TableError(
                f"lakesink cannot write to {self.uri}: {'; '.join(problems)}. Nothing was written. Write to this "
                "table with a Delta writer that supports it, or ingest into a new table."
            )
        self._checked = key

    def committed_position(self, app_id: str) -> int | None:
        """The `txn` version for `app_id` at this handle's version (None if it has none).

        A table that lets `txn`s expire (`delta.setTransactionRetentionDuration`) is asked through
        delta-rs, which hides expired ones as every Delta reader must (lakesink.ingest.resume).
        """
        expiring = TXN_RETENTION in self._snapshot.metadata.configuration
        if not expiring and app_id in self._snapshot.txns:
            return self._snapshot.txns[app_id]
        if self._txns_complete and not expiring:
            return None
        asked = self._asked.get(app_id)
        if asked is not None and asked[0] == self.version():
            return asked[1]
        self.sync_delta_rs()  # transaction_version reads the delta-rs snapshot
        try:
            position = self._delta_rs().transaction_version(app_id)
        except Exception as exc:
            raise translate(exc, self.options, doing=f"read the txn of {app_id!r}") from exc
        self._asked[app_id] = (self.version(), position)
        return position

    def known_txns(self) -> dict[str, int] | None:
        """Every app id's `txn` version at this handle's version, when lakesink read them all itself
        (None when delta-rs reads this table's txns, or they may expire: ask `committed_position`)."""
        if not self._txns_complete or TXN_RETENTION in self._snapshot.metadata.configuration:
            return None
        return dict(self._snapshot.txns)

    def note_own_commit(self, txns: Mapping[str, int], *, read_version: int) -> None:
        """After a successful commit and refresh: if ours is the only new commit, remember its txn.

        Otherwise another writer committed too and the next read asks the log, so a zombie's
        commit landed in between is never hidden.
        """
        if self.version() == read_version + 1:
            self._asked.update({app_id: (read_version + 1, position) for app_id, position in txns.items()})

    def commit_infos(self, versions: range) -> list[dict[str, Any]]:
        """The commitInfo of each given version, read by name (GETs only; no LIST of the log).

        Raises:
            StorageUnavailable: the store did not answer.
        """
        infos = []
        for version in versions:
            body = self._folder.read(version)
            if body is None:
                continue  # expired by log clean-up: nothing to tell
            for line in body.splitlines():
                if line.startswith(b'{"commitInfo"'):
                    infos.append(json.loads(line)["commitInfo"])
        return infos

    def arrow_schema(self) -> pa.Schema:
        text = self._snapshot.metadata.schema_string
        if self._schema is None or self._schema[0] != text:
            try:
                self._schema = (text, pa.schema(DeltaSchema.from_json(text).to_arrow()))
            except Exception as exc:
                raise TableError(f"{self.uri}: cannot read the table's schema ({exc})") from exc
        return self._schema[1]

    def partition_columns(self) -> list[str]:
        return list(self._snapshot.metadata.partition_columns)

    def add_columns(self, fields: Sequence[pa.Field]) -> None:
        """Add nullable columns (schema evolution) in a commit of their own, then refresh."""
        delta_fields = DeltaSchema.from_arrow(pa.schema(fields)).fields
        self.sync_delta_rs()  # alter on a snapshot no older than lakesink's own commits
        try:
            self._delta_rs().alter.add_columns(delta_fields)
        except Exception as exc:
            self.refresh()
            present = set(self.arrow_schema().names)
            if all(f.name in present for f in fields):
                return  # a concurrent writer (or our lost answer) added them already
            raise translate(exc, self.options, doing="add columns") from exc
        self.refresh()

    def configuration(self) -> Mapping[str, str]:
        """The table's `delta.*` (and other) properties."""
        return dict(self._snapshot.metadata.configuration)

    def add_actions(self) -> pa.Table:
        """The snapshot's live files, one row each (`path`, `size_bytes`, `num_records`, partition values)."""
        self.sync_delta_rs()
        return pa.table(self._delta_rs().get_add_actions(flatten=True))

    def dataset(self, filesystem: pafs.FileSystem) -> pads.Dataset:
        """The snapshot's rows as a pyarrow dataset read through `filesystem` (rooted at the table)."""
        self.sync_delta_rs()
        return self._delta_rs().to_pyarrow_dataset(filesystem=filesystem)

    def commit_transaction(
        self,
        staged: Sequence[StagedFile],
        *,
        schema: pa.Schema,
        partition_by: Sequence[str],
        txns: Mapping[str, int],
        now_ms: int,
        commit_info: Mapping[str, object],
    ) -> None:
        """Commit `staged` with `txn(app_id, position)` for each of `txns` through delta-rs, which checks for conflicts.
        Its post-commit hook neither checkpoints nor cleans up: lakesink.commit has that done in the
        background (lakesink.delta.checkpointer).

        Raises:
            CommitConflict: another writer committed since this snapshot in a way delta-rs refuses.
            CommitNotAnswered: the attempt failed; the commit may or may not have landed.
            TableError, ConfigError, StorageUnavailable: refused for a reason a retry cannot change.
        """
        try:
            self._delta_rs().create_write_transaction(
                [AddAction(f.path, f.size, dict(f.partition_values), now_ms, True, f.stats) for f in staged],
                "append",
                schema,
                partition_by=list(partition_by) or None,
                commit_properties=CommitProperties(
                    custom_metadata=dict(commit_info), app_transactions=_transactions(txns, now_ms)
                ),
                post_commithook_properties=_NO_POST_COMMIT_WORK,
            )
        except CommitFailedError as exc:
            raise CommitConflict(translate(exc, None, doing="commit").args[0]) from exc
        except (DeltaProtocolError, SchemaMismatchError, ValueError, TypeError) as exc:
            raise translate(exc, None, doing=f"commit {_positions_text(txns)}") from exc
        except Exception as exc:
            raise CommitNotAnswered(translate(exc, None, doing="commit").args[0]) from exc


    def merge(
        self,
        source: pa.Table,
        plan: MergePlan,
        *,
        txns: Mapping[str, int],
        now_ms: int,
        commit_info: Mapping[str, object],
    ) -> dict[str, Any]:
        """MERGE `source` into the table as `plan` says, in one commit that also sets
        `txn(app_id, position)` for each of `txns`, on this handle's snapshot (delta-rs refuses it if another writer
        committed since); returns delta-rs's metrics.

        Raises:
            CommitConflict: another writer committed since this snapshot.
            CommitNotAnswered: the attempt failed; the commit may or may not have landed.
            TableError, ConfigError, StorageUnavailable: refused for a reason a retry cannot change.
        """
        self.sync_delta_rs()
        read_version = self.version()
        try:
            builder = self._delta_rs().merge(
                source,
                predicate=plan.predicate(),
                source_alias=SOURCE,
                target_alias=TARGET,
                commit_properties=CommitProperties(
                    custom_metadata=dict(commit_info), app_transactions=_transactions(txns, now_ms)
                ),
                post_commithook_properties=_NO_POST_COMMIT_WORK,
            )
            metrics = plan.apply(builder).execute()
        except CommitFailedError as exc:
            raise CommitConflict(translate(exc, None, doing="merge").args[0]) from exc
        except (DeltaProtocolError, SchemaMismatchError, ValueError, TypeError) as exc:
            raise translate(exc, None, doing=f"merge {_positions_text(txns)}") from exc
        except Exception as exc:
            if _is_plan_error(exc):
                raise ConfigError(f"cannot merge into {self.uri}: {translate(exc, None, doing='merge').args[0]}") from exc
            raise CommitNotAnswered(translate(exc, None, doing="merge").args[0]) from exc
        if self._delta_rs().version() == read_version:
            # A merge that changes no row commits nothing, txn included: commit the position alone.
            self.commit_transaction(
                [], schema=self.arrow_schema(), partition_by=self.partition_columns(), txns=txns, now_ms=now_ms,
                commit_info=commit_info,
            )  # fmt: skip
        self._follow_delta_rs()
        return dict(metrics)

    def compact(
        self, *, target_bytes: int, partition_filters: Sequence[tuple[str, str, str]] | None, max_commit_attempts: int
    ) -> dict[str, Any]:
        """Rewrite the small files (of the partitions the filters select) into files of about
        `target_bytes`, in one commit that changes no data (`dataChange=false`); delta-rs's metrics.

        Concurrent appends do not conflict with it (they remove nothing); delta-rs retries its commit
        past them up to `max_commit_attempts` times.

        Raises:
            CommitConflict: another writer removed files this compaction rewrites (a rerun starts afresh).
            StorageUnavailable, TableError: the compaction could not be made; nothing was committed.
        """
        self.refresh()
        self.sync_delta_rs()
        try:
            metrics = self._delta_rs().optimize.compact(
                partition_filters=list(partition_filters) if partition_filters else None,
                target_size=target_bytes,
                commit_properties=CommitProperties(max_commit_retries=max_commit_attempts),
                post_commithook_properties=PostCommitHookProperties(create_checkpoint=True, cleanup_expired_logs=False),
            )
        except CommitFailedError as exc:
            raise CommitConflict(translate(exc, None, doing="compact").args[0]) from exc
        except Exception as exc:
            raise translate(exc, self.options, doing=f"compact {self.uri}") from exc
        self.refresh()
        return dict(metrics)

    def vacuum(self, *, retention_hours: int, dry_run: bool, enforce_retention: bool) -> list[str]:
        """The files that later commits removed more than `retention_hours` ago: listed (`dry_run`) or
        deleted (delta-rs's vacuum, which records it in the log). Files never committed are `gc`'s.

        Raises:
            ConfigError: the retention is shorter than the table's `delta.deletedFileRetentionDuration`
                and `enforce_retention` is on.
            StorageUnavailable, TableError: the vacuum could not be made.
        """
        self.refresh()
        self.sync_delta_rs()
        try:
            files = self._delta_rs().vacuum(
                retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=enforce_retention,
                post_commithook_properties=PostCommitHookProperties(create_checkpoint=True, cleanup_expired_logs=False),
            )  # fmt: skip
        except Exception as exc:
            if "retention period" in str(exc).lower() or "minimum" in str(exc).lower():
                raise ConfigError(
                    f"a retention of {retention_hours} h is shorter than {self.uri}'s minimum "
                    f"(delta.deletedFileRetentionDuration, 7 days by default): readers of older versions would lose "
                    "files. Give a longer retention=DURATION, or allow_short_retention=True if no one reads old versions.",
                    options=("retention", "allow_short_retention"),
                ) from exc
            raise translate(exc, self.options, doing=f"vacuum {self.uri}") from exc
        if not dry_run:
            self.refresh()
        root = self.uri.rstrip("/") + "/"
        # delta-rs names them by full path or URI; the log (and lakesink) by path in the table.
        return [f[len(root) :] if f.startswith(root) else f for f in files]

    def delete_where(self, predicate: str) -> int:
        """Delete the rows `predicate` holds for, in a commit of their own; returns how many.

        Raises:
            StorageUnavailable, TableError: the delete could not be made (it may be retried: a
                delete applied twice removes nothing more).
        """
        self.sync_delta_rs()
        try:
            metrics = self._delta_rs().delete(predicate)
        except Exception as exc:
            raise translate(exc, self.options, doing=f"delete from {self.uri}") from exc
        self._follow_delta_rs()
        return metric(metrics, "num_deleted_rows")

    def rows_where(self, columns: Sequence[str], keys: pa.Table) -> pa.Table:
        """The snapshot's rows whose `keys.column_names` values are among `keys`' rows, `columns` only.

        Reads `columns` of every row and joins in memory: meant for small tables (tombstones). No
        filter is pushed down: delta-rs's file statistics are typed `string` where its dataset reads
        `string_view`, which pyarrow cannot compare.
        """
        self.sync_delta_rs()
        found = self._delta_rs().to_pyarrow_dataset().to_table(columns=list(columns))
        found = pa.table({name: found.column(name).cast(keys.schema.field(name).type) if name in keys.column_names
                          else found.column(name) for name in found.column_names})  # fmt: skip
        distinct = keys.group_by(keys.column_names).aggregate([])
        return found.join(distinct, keys.column_names, join_type="inner")

# Commits through delta-rs leave the checkpoint (and the expired-log cleanup after it) to
# lakesink.commit, which has it written in the background instead of inside the commit.
_NO_POST_COMMIT_WORK = PostCommitHookProperties(create_checkpoint=False, cleanup_expired_logs=False)


def _transactions(txns: Mapping[str, int], now_ms: int) -> list[Transaction]:
    return [Transaction(app_id, position, now_ms) for app_id, position in txns.items()]


def _positions_text(txns: Mapping[str, int]) -> str:
    return ", ".join(f"position {position} of {app_id!r}" for app_id, position in txns.items())


def _is_plan_error(exc: BaseException) -> bool:
    """delta-rs's answer to SQL it cannot plan (a bad window predicate or column): nothing was written."""
    text = str(exc)
    return any(marker in text for marker in ("SQL error", "Schema error", "No field named", "Error during planning"))


def _snapshot_of(table: DeltaTable) -> LogSnapshot:
    """The writer's view of a table delta-rs has read (its txns are asked for one by one)."""
    protocol, metadata = table.protocol(), table.metadata()
    return LogSnapshot(
        version=table.version(),
        protocol=ProtocolAction(
            min_reader_version=protocol.min_reader_version,
            min_writer_version=protocol.min_writer_version,
            reader_features=tuple(protocol.reader_features) if protocol.reader_features is not None else None,
            writer_features=tuple(protocol.writer_features) if protocol.writer_features is not None else None,
        ),
        metadata=MetadataAction(
            table_id=str(metadata.id),
            schema_string=table.schema().to_json(),
            partition_columns=tuple(metadata.partition_columns),
            configuration=dict(metadata.configuration),
        ),
        txns={},
    )
