"""The commit protocol: one Delta commit of the staged files plus `txn(app_id, position)`.

1. Check the snapshot's `txn` for the app id; if it already holds the position (or more), skip.
2. Commit against that same snapshot: create log entry `version + 1` only if it does not exist
   (lakesink.log_store: a create-only PUT or a hard link). If another writer created it first,
   read that entry, move the snapshot past it, and check again: a commit of another writer with
   this app id may have committed the position already (or moved it past `previous`).
3. A create that got no answer may have landed (timeout, reset): read the entry back and decide
   from the write id in its commitInfo. If the entry cannot be read, raise CommitOutcomeUnknown
   and keep the staged files, so a rerun resolves it.
4. Every `delta.checkpointInterval` versions, checkpoint (through delta-rs), so readers and the
   next writer's open replay a short log.

Where the store cannot create an object only if absent, or the table's commits are coordinated
another way (a DynamoDB lock: lakesink.log_store.open_log_store), commits go through delta-rs,
whose conflict check rejects a concurrent commit with the same app id (CommitFailedError); that
is never retried blindly, but refreshed and re-checked the same way.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
from deltalake import CommitProperties, PostCommitHookProperties, Transaction
from deltalake.exceptions import CommitFailedError, DeltaProtocolError, SchemaMismatchError
from deltalake.transaction import AddAction

from lakesink import __version__
from lakesink.crashpoints import crash_point
from lakesink.errors import (
    CommitOutcomeUnknown,
    ConcurrentWriterError,
    LakesinkError,
    SchemaMismatch,
    StorageUnavailable,
    TerminalError,
)
from lakesink.log_entry import WRITE_ID_KEY, EntrySummary, encode_append, summarize
from lakesink.log_store import ConditionalPutUnsupported, LogStore
from lakesink.stage import StagedFile
from lakesink.table import TableHandle, translate

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one `Sink.write` did.

    `status` is "committed" (the rows are in the table now), "skipped" (the position was already
    committed: by an earlier run, a concurrent copy of the job, or a lost answer that had landed), or
    "stale" (the write said which position it continues from, and another writer moved the committed
    position to one inside this batch: nothing was written; re-read the source from
    `committed_position`).
    """

    status: Literal["committed", "skipped", "stale"]
    app_id: str
    position: int
    committed_position: int | None
    table_version: int
    rows: int = 0
    files: int = 0
    reason: str = ""

    @property
    def committed(self) -> bool:
        return self.status == "committed"


class AnyPrevious:
    def __repr__(self) -> str:
        return "ANY"


ANY_PREVIOUS: AnyPrevious = AnyPrevious()
"""`previous=ANY_PREVIOUS`: commit whenever the committed position is below the batch's position."""


@dataclass(frozen=True, slots=True)
class CommitPolicy:
    """How hard to try before giving up; all waits go through the injected `sleep`."""

    max_attempts: int = 8
    resolve_attempts: int = 6
    backoff_seconds: float = 0.2


def commit_staged(
    handle: TableHandle,
    staged: Sequence[StagedFile],
    *,
    app_id: str,
    position: int,
    schema: pa.Schema,
    partition_by: Sequence[str],
    clock: Callable[[], float],
    previous: int | AnyPrevious | None = ANY_PREVIOUS,
    sleep: Callable[[float], None] = time.sleep,
    policy: CommitPolicy = CommitPolicy(),
) -> WriteResult:
    """Commit `staged` with `txn(app_id, position)` exactly once.

    With `previous` set, commit only while the committed position is exactly `previous` (the batch
    holds the records after it): a batch cut from an older position must never be committed on top
    of a newer one, or the records between would be written twice.

    Raises:
        ConcurrentWriterError: other writers with this app id won `policy.max_attempts` times in a row.
        CommitOutcomeUnknown: the commit may have landed and the log could not be read to decide.
        SchemaMismatch: another writer changed the table's schema so that the staged files no longer fit.
        TerminalError: the commit was refused for a reason retrying cannot fix.
    """
    job = _Job(handle, staged, app_id, position, schema, partition_by, clock, previous, sleep, policy)
    log_store = handle.log_store
    if log_store is not None:
        try:
            return _commit_by_log_entry(job, log_store)
        except ConditionalPutUnsupported as exc:
            log.warning("%s: %s; committing through delta-rs from now on", handle.uri, exc)
            handle.use_delta_rs_commits()
    return _commit_through_delta_rs(job)


@dataclass(frozen=True, slots=True)
class _Job:
    """One `commit_staged` call's arguments, for whichever way it commits."""

    handle: TableHandle
    staged: Sequence[StagedFile]
    app_id: str
    position: int
    schema: pa.Schema
    partition_by: Sequence[str]
    clock: Callable[[], float]
    previous: int | AnyPrevious | None
    sleep: Callable[[float], None]
    policy: CommitPolicy


def _commit_by_log_entry(job: _Job, log_store: LogStore) -> WriteResult:
    """Steps 1-4 of the module doc, with lakesink creating the log entry itself."""
    handle, staged, app_id, position, previous, sleep, policy = (
        job.handle, job.staged, job.app_id, job.position, job.previous, job.sleep, job.policy
    )  # fmt: skip
    # Tags the entry, so after a lost answer the log tells whether the commit holding our
    # position is ours (report it committed) or a concurrent copy's (skipped).
    write_id = uuid.uuid4().hex
    first_read_version = handle.version()
    races = 0  # entries of other writers with this app id that took the version we tried
    unanswered = 0  # creates that got no answer (or found the entry being created by another)
    others = 0  # other writers' entries read one by one since the last full refresh
    last_error: BaseException | None = None
    while True:
        handle.check_writable()  # cached: costs nothing unless a refresh brought a new protocol
        committed = handle.committed_position(app_id)
        if committed is not None and committed >= position:
            if (races or unanswered) and _landed_ours(handle, write_id, since=first_read_version):
                return _committed(handle, app_id, position, staged, reason=_LOST_ANSWER)
            reason = "already committed" if not (races or unanswered) else "committed by a concurrent writer"
            return _skipped(handle, app_id, position, committed, reason)
        if not isinstance(previous, AnyPrevious) and committed != previous:
            return stale_result(handle, app_id, position, committed, previous)
        version = handle.version() + 1
        body = encode_append(
            staged,
            app_id=app_id,
            position=position,
            now_ms=int(job.clock() * 1000),
            read_version=version - 1,
            partition_by=job.partition_by,
            commit_info=_commit_info(app_id, position, write_id),
            client_version=f"lakesink-{__version__}",
        )
        crash_point("before_commit")
        created: bool | None
        try:
            created = log_store.create(version, body)
        except StorageUnavailable as exc:
            log.info(
                "position %d of %r: creating log entry %d got no answer (%s); reading it back", position, app_id, version, exc
            )
            created, last_error = None, exc
        if created:
            return _after_own_commit(handle, version, app_id, position, staged)
        summary = _read_entry(
            handle, log_store, version, app_id=app_id, position=position, cause=last_error, sleep=sleep, policy=policy
        )
        if summary is None:
            # Nothing there: the create did not land (or another writer's is still in flight).
            unanswered += 1
            if unanswered >= policy.max_attempts:
                raise CommitOutcomeUnknown(
                    f"could not commit position {position} of {app_id!r} after {policy.max_attempts} attempts "
                    f"({last_error or 'the log entry stayed absent'}); staged files are kept, rerun to resolve",
                    table_uri=handle.uri,
                    app_id=app_id,
                    position=position,
                ) from last_error
            sleep(_backoff(policy, unanswered - 1))
            continue
        if summary.write_id == write_id:
            return _after_own_commit(handle, version, app_id, position, staged, reason=_LOST_ANSWER)
        log.info("position %d of %r: another writer created log entry %d first; re-checking", position, app_id, version)
        if app_id in summary.txns:
            races += 1
            if races >= policy.max_attempts:
                raise ConcurrentWriterError(
                    f"gave up committing position {position} of {app_id!r}: another writer with the same app id "
                    f"committed first {policy.max_attempts} times. Run one copy of a job per app id."
                )
        others += 1
        if summary.changes_table or app_id in summary.txns or others > _READ_ONE_BY_ONE:
            # A new schema or protocol, a copy of this job (decide from its latest position, which
            # a stale result tells the caller to re-read from), or a writer far ahead: let
            # delta-rs read up to the latest entry.
            _refresh_or_unknown(
                handle, app_id, position, last_error or RuntimeError("concurrent commit"), sleep=sleep, policy=policy
            )
            _check_files_still_fit(handle, job.schema, job.partition_by, app_id=app_id, position=position)
            others = 0
        else:
            handle.advance(version, summary.txns)


# Other writers' entries read one GET at a time before one delta-rs refresh (a LIST) catches up.
_READ_ONE_BY_ONE = 3
_LOST_ANSWER = "the answer was lost; the log shows this write's commit landed"


def _read_entry(
    handle: TableHandle,
    log_store: LogStore,
    version: int,
    *,
    app_id: str,
    position: int,
    cause: BaseException | None,
    sleep: Callable[[float], None],
    policy: CommitPolicy,
) -> EntrySummary | None:
    """What log entry `version` holds (None: there is none); CommitOutcomeUnknown if it cannot be read."""
    for attempt in range(policy.resolve_attempts):
        try:
            body = log_store.read(version)
        except StorageUnavailable as exc:
            cause = cause or exc
            sleep(_backoff(policy, attempt))
            continue
        return None if body is None else summarize(body, version=version)
    raise CommitOutcomeUnknown(
        f"the commit of position {position} for {app_id!r} may or may not have landed "
        f"({cause or 'no answer'}) and log entry {version} could not be read back to decide. "
        "Staged files are kept; rerun the same write when the store answers and it will skip or commit.",
        table_uri=handle.uri,
        app_id=app_id,
        position=position,
    ) from cause


def _after_own_commit(
    handle: TableHandle, version: int, app_id: str, position: int, staged: Sequence[StagedFile], *, reason: str = ""
) -> WriteResult:
    crash_point("after_commit")
    handle.advance(version, {app_id: position})
    log.debug("committed %d of %r: %d files, version %d", position, app_id, len(staged), version)
    interval = _checkpoint_interval(handle)
    if version % interval == 0:
        # Delta's own writers clean up expired log entries after a checkpoint (the only thing that
        # makes older entries expendable); the cleanup LISTs the whole log, so once in ten.
        cleanup = version % (interval * _CLEANUP_EVERY) == 0 and _expired_log_cleanup_enabled(handle)
        try:
            handle.checkpoint(cleanup_expired_logs=cleanup)
        except LakesinkError as exc:
            # The commit landed; a missing checkpoint only makes the log longer to read until the next one.
            log.warning(
                "committed version %d of %s, but could not checkpoint it (%s); the next interval tries again",
                version,
                handle.uri,
                exc,
            )
    return _committed(handle, app_id, position, staged, reason=reason)


def _expired_log_cleanup_enabled(handle: TableHandle) -> bool:
    return str(handle.table.metadata().configuration.get("delta.enableExpiredLogCleanup", "true")).lower() != "false"


def _check_files_still_fit(
    handle: TableHandle, schema: pa.Schema, partition_by: Sequence[str], *, app_id: str, position: int
) -> None:
    """After another writer changed the table's metadata: the staged files must still be valid data of it.

    Raises:
        SchemaMismatch: a column of the staged files is gone or changed type, or the partitioning changed.
    """
    current = handle.arrow_schema()
    changed = [f.name for f in schema if current.get_field_index(f.name) < 0 or current.field(f.name).type != f.type]
    if changed or handle.partition_columns() != list(partition_by):
        raise SchemaMismatch(
            f"the schema of {handle.uri} changed while position {position} of {app_id!r} was being committed (another "
            f"writer altered it): the table has {current} partitioned by {handle.partition_columns()}, the staged files have "
            f"{schema} partitioned by {list(partition_by)}. Nothing was committed; rerun, and the source is read with the "
            "table's schema."
        )


def _commit_through_delta_rs(job: _Job) -> WriteResult:
    """Steps 1-3 of the module doc, with delta-rs committing (for stores without create-only PUTs)."""
    handle, staged, app_id, position, previous, sleep, policy = (
        job.handle, job.staged, job.app_id, job.position, job.previous, job.sleep, job.policy
    )  # fmt: skip
    rows = sum(f.num_records for f in staged)
    last_error: BaseException | None = None
    # Tags every attempt's commitInfo, so after a lost answer the log tells whether the commit
    # holding our position is ours (report it committed) or a concurrent copy's (skipped).
    write_id = uuid.uuid4().hex
    first_read_version = handle.version()
    for attempt in range(policy.max_attempts):
        handle.sync_delta_rs()
        committed = handle.committed_position(app_id)
        if committed is not None and committed >= position:
            if attempt > 0 and _landed_ours(handle, write_id, since=first_read_version):
                log.info("position %d of %r: the answer was lost, and the log shows this write's commit landed", position, app_id)
                return _committed(
                    handle, app_id, position, staged, reason="the answer was lost; the log shows this write's commit landed"
                )
            reason = "already committed" if attempt == 0 else "committed by a concurrent writer"
            return _skipped(handle, app_id, position, committed, reason)
        if not isinstance(previous, AnyPrevious) and committed != previous:
            return stale_result(handle, app_id, position, committed, previous)
        read_version = handle.version()
        hooks = _post_commit_hooks(handle, read_version)
        now_ms = int(job.clock() * 1000)
        try:
            crash_point("before_commit")
            handle.table.create_write_transaction(
                [_add_action(f, now_ms) for f in staged],
                "append",
                job.schema,
                partition_by=list(job.partition_by) or None,
                commit_properties=CommitProperties(
                    custom_metadata=_commit_info(app_id, position, write_id),
                    app_transactions=[Transaction(app_id, position, now_ms)],
                ),
                post_commithook_properties=hooks,
            )
        except CommitFailedError as exc:
            # Another writer with this app id committed since our snapshot: re-check, never re-send.
            log.info("position %d of %r: another writer committed since version %d; re-checking", position, app_id, read_version)
            last_error = exc
            _refresh_or_unknown(handle, app_id, position, exc, sleep=sleep, policy=policy)
            continue
        except (DeltaProtocolError, SchemaMismatchError, ValueError, TypeError) as exc:
            raise translate(exc, None, doing=f"commit position {position} of {app_id!r}") from exc
        except Exception as exc:  # noqa: BLE001 - every other failure leaves the outcome unknown
            log.info(
                "position %d of %r: commit attempt %d failed, outcome unknown (%s); reading the log to decide",
                position, app_id, attempt + 1, translate(exc, None, doing="commit"),
            )  # fmt: skip
            last_error = exc
            _refresh_or_unknown(handle, app_id, position, exc, sleep=sleep, policy=policy)
            sleep(_backoff(policy, attempt))
            continue
        crash_point("after_commit")
        try:
            handle.refresh()
        except StorageUnavailable:
            pass  # the commit landed; the next write refreshes before it trusts the snapshot
        else:
            handle.note_own_commit(app_id, position, read_version=read_version)
        log.debug("committed %d of %r: %d files, %d rows, version %d", position, app_id, len(staged), rows, handle.version())
        return _committed(handle, app_id, position, staged)
    if isinstance(last_error, CommitFailedError):
        raise ConcurrentWriterError(
            f"gave up committing position {position} of {app_id!r}: another writer with the same app id "
            f"committed first {policy.max_attempts} times. Run one copy of a job per app id."
        ) from last_error
    raise CommitOutcomeUnknown(
        f"could not commit position {position} of {app_id!r} after {policy.max_attempts} attempts "
        f"({translate(last_error, None, doing='commit') if last_error else 'no error'}); staged files are kept, rerun to resolve",
        table_uri=handle.uri,
        app_id=app_id,
        position=position,
    ) from last_error


def _refresh_or_unknown(
    handle: TableHandle,
    app_id: str,
    position: int,
    cause: BaseException,
    *,
    sleep: Callable[[float], None],
    policy: CommitPolicy,
) -> None:
    """Bring the snapshot up to date so the next check decides; give up as CommitOutcomeUnknown."""
    for attempt in range(policy.resolve_attempts):
        try:
            handle.refresh()
            return
        except LakesinkError as exc:
            if isinstance(exc, TerminalError):
                raise
            sleep(_backoff(policy, attempt))
    raise CommitOutcomeUnknown(
        f"the commit of position {position} for {app_id!r} may or may not have landed "
        f"({translate(cause, None, doing='commit')}) and the log could not be read back to decide. "
        "Staged files are kept; rerun the same write when the store answers and it will skip or commit.",
        table_uri=handle.uri,
        app_id=app_id,
        position=position,
    ) from cause


def _post_commit_hooks(handle: TableHandle, read_version: int) -> PostCommitHookProperties:
    """Checkpoint as the table says, and clean up expired log entries once in `_CLEANUP_EVERY` checkpoints.

    Left to the table config, delta-rs runs the expired-log cleanup in *every* commit's post-commit
    hook, and that cleanup LISTs the whole `_delta_log` (no start-after: every entry the table keeps,
    on every store): a commit then costs more with every commit before it (benchmarks/commit_cost.py:
    2.1x slower at commit 400 than at 1-30 on S3). Delta's own writers clean up after a checkpoint,
    the only thing that makes older entries expendable, so ask for it (as the table's
    `delta.enableExpiredLogCleanup` says) only on a commit expected to write a checkpoint: delta-rs
    checkpoints version v when (v + 1) % interval == 0, and this commit becomes read_version + 1
    unless another writer got in first. Even there the full LIST grows with the log (at 5,000 kept
    entries it cost a checkpoint commit about as much as the checkpoint itself), so only one
    checkpoint commit in `_CLEANUP_EVERY` asks for it: entries past the retention stay at most
    `_CLEANUP_EVERY` x interval commits longer (retention is a minimum, never a promise to delete).
    If another writer takes that version, the cleanup just runs on a later one; it is safe on any
    commit, since it only removes entries older than the table's log retention and covered by a
    checkpoint.
    """
    interval = _checkpoint_interval(handle)
    cleanup: bool | None = None if (read_version + 2) % (interval * _CLEANUP_EVERY) == 0 else False
    return PostCommitHookProperties(create_checkpoint=True, cleanup_expired_logs=cleanup)


# One checkpoint commit in this many also runs the expired-log cleanup (see _post_commit_hooks).
_CLEANUP_EVERY = 10


def _checkpoint_interval(handle: TableHandle) -> int:
    raw = handle.table.metadata().configuration.get("delta.checkpointInterval")
    try:
        interval = int(raw) if raw is not None else _DELTA_RS_CHECKPOINT_INTERVAL
    except ValueError:
        interval = _DELTA_RS_CHECKPOINT_INTERVAL
    return interval if interval > 0 else _DELTA_RS_CHECKPOINT_INTERVAL


# delta-rs's checkpoint interval for a table that does not set `delta.checkpointInterval`.
_DELTA_RS_CHECKPOINT_INTERVAL = 100


def _backoff(policy: CommitPolicy, attempt: int) -> float:
    return float(policy.backoff_seconds * (2 ** min(attempt, 6)))


def stale_result(handle: TableHandle, app_id: str, position: int, committed: int | None, previous: int | None) -> WriteResult:
    log.info("position %d of %r is stale: continues from %s, committed position is %s", position, app_id, previous, committed)
    return WriteResult(
        status="stale",
        app_id=app_id,
        position=position,
        committed_position=committed,
        table_version=handle.version(),
        reason=f"this batch continues from {previous}, but the committed position is now {committed}: re-read from there",
    )


def _committed(handle: TableHandle, app_id: str, position: int, staged: Sequence[StagedFile], *, reason: str = "") -> WriteResult:
    return WriteResult(
        status="committed",
        app_id=app_id,
        position=position,
        committed_position=position,
        table_version=handle.version(),
        rows=sum(f.num_records for f in staged),
        files=len(staged),
        reason=reason,
    )


def _skipped(handle: TableHandle, app_id: str, position: int, committed: int, reason: str) -> WriteResult:
    log.debug("skipped position %d of %r: %s (committed position %d)", position, app_id, reason, committed)
    return WriteResult(
        status="skipped",
        app_id=app_id,
        position=position,
        committed_position=committed,
        table_version=handle.version(),
        reason=reason,
    )


def _add_action(staged: StagedFile, now_ms: int) -> AddAction:
    return AddAction(staged.path, staged.size, dict(staged.partition_values), now_ms, True, staged.stats)


def _landed_ours(handle: TableHandle, write_id: str, *, since: int) -> bool:
    """Whether a commit after version `since` carries this write's id (reads only those commits)."""
    try:
        infos = handle.commit_infos(range(since + 1, handle.version() + 1))
    except LakesinkError:
        return False  # only the report's wording depends on it; the table is exact either way
    return any(info.get(WRITE_ID_KEY) == write_id for info in infos)


def _commit_info(app_id: str, position: int, write_id: str) -> dict[str, object]:
    # Only this whitelist reaches commitInfo: never options, paths with credentials or user data.
    return {
        "lakesink.version": __version__,
        "lakesink.appId": app_id,
        "lakesink.position": position,
        WRITE_ID_KEY: write_id,
    }
