"""Open, create and refresh a Delta table, and read its `txn` positions without replaying history.

One `TableHandle` stays open for the life of a `Sink`: after each commit it refreshes the snapshot
incrementally (only new log entries are read), so the cost of a commit does not grow with the
number of commits before it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import DeltaError, DeltaProtocolError, TableNotFoundError

from lakesink.errors import ConfigError, StorageUnavailable, TableError
from lakesink.storage import StorageOptions, redact

# delta-rs writes a checkpoint every `delta.checkpointInterval` commits in its post-commit hook.
# Frequent checkpoints keep log replay (refresh, `transaction_version`) short; a checkpoint's own
# cost grows with the number of live files, so this is a balance (see benchmarks/commit_cost.py).
DEFAULT_CHECKPOINT_INTERVAL = 20


class TableHandle:
    """A Delta table kept open between commits, with a per-snapshot cache of `txn` versions."""

    def __init__(self, table: DeltaTable, *, uri: str, options: StorageOptions) -> None:
        self.table = table
        self.uri = uri
        self._options = options
        self._txn_cache: dict[str, tuple[int, int | None]] = {}

    def __repr__(self) -> str:
        return f"TableHandle({self.uri!r}, version={self.table.version()})"

    @classmethod
    def open(cls, uri: str, options: StorageOptions) -> TableHandle | None:
        """The table at `uri`, or None when there is none yet.

        Raises:
            TableError: something is there but it is not a Delta table lakesink can write.
            StorageUnavailable: the store did not answer.
        """
        try:
            table = DeltaTable(uri, storage_options=options.for_delta())
        except TableNotFoundError:
            return None
        except Exception as exc:
            raise translate(exc, options, doing=f"open {uri}") from exc
        return cls(table, uri=uri, options=options)

    @classmethod
    def create(
        cls,
        uri: str,
        options: StorageOptions,
        *,
        schema: pa.Schema,
        partition_by: Sequence[str],
        checkpoint_interval: int,
    ) -> TableHandle:
        """Create the table, or open it if a concurrent writer created it first."""
        try:
            DeltaTable.create(
                uri,
                schema=schema,
                partition_by=list(partition_by) or None,
                mode="ignore",
                configuration={"delta.checkpointInterval": str(checkpoint_interval)},
                storage_options=options.for_delta(),
                # Version 0 or nothing: with retries, delta-rs commits a loser's CREATE TABLE as
                # version 1, 2, ... (a new table id, the loser's schema) when a concurrent creator,
                # or our own create whose answer was lost and was re-sent, took version 0.
                commit_properties=CommitProperties(max_commit_retries=0),
            )
        except Exception as exc:
            # A concurrent creator (or our own lost answer) took version 0: use that table.
            created = cls.open(uri, options)
            if created is None:
                raise translate(exc, options, doing=f"create {uri}") from exc
            return created
        handle = cls.open(uri, options)
        if handle is None:
            raise TableError(f"created {uri} but cannot read it back; check the store's consistency")
        return handle

    def version(self) -> int:
        return self.table.version()

    def refresh(self) -> None:
        """Read the log entries added since this snapshot (incrementally).

        Raises:
            StorageUnavailable: the store did not answer.
        """
        try:
            self.table.update_incremental()
        except Exception as exc:
            raise translate(exc, self._options, doing=f"refresh {self.uri}") from exc

    def committed_position(self, app_id: str) -> int | None:
        """The `txn` version for `app_id` in the current snapshot (None if it has none)."""
        version = self.table.version()
        cached = self._txn_cache.get(app_id)
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            position = self.table.transaction_version(app_id)
        except Exception as exc:
            raise translate(exc, self._options, doing=f"read the txn of {app_id!r}") from exc
        self._txn_cache[app_id] = (version, position)
        return position

    def note_own_commit(self, app_id: str, position: int, *, read_version: int) -> None:
        """After a successful commit and refresh: if ours is the only new commit, cache its txn.

        Otherwise another writer committed too and the next read asks the log, so a zombie's
        commit landed in between is never hidden by the cache.
        """
        if self.table.version() == read_version + 1:
            self._txn_cache[app_id] = (read_version + 1, position)

    def arrow_schema(self) -> pa.Schema:
        return pa.schema(self.table.schema().to_arrow())

    def partition_columns(self) -> list[str]:
        return list(self.table.metadata().partition_columns)

    def add_columns(self, fields: Sequence[pa.Field]) -> None:
        """Add nullable columns (schema evolution) in a commit of their own, then refresh."""
        delta_fields = DeltaSchema.from_arrow(pa.schema(fields)).fields
        try:
            self.table.alter.add_columns(delta_fields)
        except Exception as exc:
            self.refresh()
            present = set(self.arrow_schema().names)
            if all(f.name in present for f in fields):
                return  # a concurrent writer (or our lost answer) added them already
            raise translate(exc, self._options, doing="add columns") from exc
        self.refresh()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def translate(exc: BaseException, options: StorageOptions | None, *, doing: str) -> Exception:
    """A lakesink error for a delta-rs/pyarrow error, with secrets and terminal colours scrubbed."""
    text = _ANSI.sub("", redact(str(exc), options))
    if isinstance(exc, DeltaProtocolError):
        return TableError(f"cannot {doing}: {text}. The table needs a newer writer than lakesink's delta-rs.")
    if isinstance(exc, (ValueError, TypeError)):
        return ConfigError(f"cannot {doing}: {text}")
    lowered = text.lower()
    if "nosuchbucket" in lowered:
        return ConfigError(f"cannot {doing}: the bucket does not exist. Create it, or fix the table URI.")
    if any(code in lowered for code in ("invalidaccesskeyid", "signaturedoesnotmatch", "accessdenied", "403 forbidden")):
        return ConfigError(f"cannot {doing}: the store refused the credentials ({text[:300]}). Check AWS_* settings.")
    if "not a delta table" in lowered or "no files in log segment" in lowered:
        return TableError(f"cannot {doing}: {text}. Point lakesink at a Delta table or an empty location.")
    if isinstance(exc, (OSError, DeltaError)) or "generic" in lowered:
        return StorageUnavailable(f"cannot {doing}: {text}. Check the endpoint and credentials, then rerun.")
    return TableError(f"cannot {doing}: {text}")
