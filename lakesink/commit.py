"""The commit protocol: one Delta commit of the staged files plus `txn(app_id, position)`.

1. Check the snapshot's `txn` for the app id; if it already holds the position (or more), skip
   (`settled`: the one skip/stale decision, for both ways of committing and for `Sink.write`).
2. Commit against that same snapshot: create log entry `version + 1` only if it does not exist
   (lakesink.delta.log_store: a create-only PUT or a hard link). If another writer created it
   first, read that entry, move the snapshot past it, and check again: a commit of another writer
   with this app id may have committed the position already (or moved it past `previous`).
3. A create that got no answer may have landed (timeout, reset): read the entry back and decide
   from the write id in its commitInfo. If the entry cannot be read, raise CommitOutcomeUnknown
   and keep the staged files, so a rerun resolves it.
4. Every `delta.checkpointInterval` versions, have the version checkpointed (through delta-rs),
   so readers and the next writer's open replay a short log: in the background
   (lakesink.delta.checkpointer), so no commit waits for one; a failed checkpoint is a warning.

Where the store cannot create an object only if absent, or the table's commits are coordinated
another way (a DynamoDB lock: lakesink.delta.log_store.open_log_store), commits go through delta-rs,
whose conflict check rejects a concurrent commit with the same app id; that is never retried
blindly, but refreshed and re-checked the same way.

This module is the only one that writes to a table's log: appends (both ways), the table's
creation, schema evolution and checkpoints (`make lint` checks it).
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import pyarrow as pa

from lakesink._version import __version__
from lakesink.crashpoints import crash_point
from lakesink.delta.checkpointer import BackgroundCheckpointer, Checkpointer
from lakesink.delta.errors import CommitConflict, CommitNotAnswered
from lakesink.delta.log_entry import WRITE_ID_KEY, EntrySummary, StagedFile, encode_append, summarize
from lakesink.delta.log_store import ConditionalPutUnsupported, open_log_store
from lakesink.delta.log_store import LogStore as LogStore
from lakesink.delta.merge import MergePlan, metric, quote
from lakesink.delta.table import TableHandle
from lakesink.display import dataclass_html
from lakesink.errors import (
    CommitOutcomeUnknown,
    ConcurrentWriterError,
    InternalError,
    LakesinkError,
    SchemaMismatch,
    StorageUnavailable,
    TerminalError,
)
from lakesink.metrics import METRICS
from lakesink.storage.options import StorageOptions

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

    def _repr_html_(self) -> str:
        return dataclass_html(self)


class AnyPrevious:
    def __repr__(self) -> str:
        return "ANY"


ANY_PREVIOUS: AnyPrevious = AnyPrevious()
"""`previous=ANY_PREVIOUS`: commit whenever the committed position is below the batch's position."""


@dataclass(frozen=True, slots=True)
class Claim:
    """One position a commit sets, `txn(app_id, position)`, only while the committed position is
    below it (and is `previous`, unless that is ANY_PREVIOUS): see `settled`."""

    app_id: str
    position: int
    previous: int | AnyPrevious | None = ANY_PREVIOUS


@dataclass(frozen=True, slots=True)
class CommitOutcome:
    """What committing several claims together did: all of them committed in one table version,
    or none: then `results` holds, for each claim in order, the "skipped" or "stale" result that
    kept it out (None for a claim that could still commit, without the others)."""

    committed: bool
    table_version: int
    results: tuple[WriteResult | None, ...]
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PartsResult:
    """What one `Sink.write_parts` did: a result per part, in the order given (its `app_id` is the
    part's `txn` app id). The parts that committed did so in one table version, `table_version`
    (with `commits` == 1; 0 when every part was skipped or stale)."""

    parts: tuple[WriteResult, ...]
    table_version: int
    commits: int
    files: int = 0

    @property
    def committed(self) -> bool:
        return self.commits > 0

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.parts)

    def _repr_html_(self) -> str:
        return dataclass_html(self)


@dataclass(frozen=True, slots=True)
class CommitPolicy:
    """How hard to try before giving up; all waits go through the injected `sleep`."""

    max_attempts: int = 8
    resolve_attempts: int = 6
    backoff_seconds: float = 0.2


def settled(
    handle: TableHandle,
    app_id: str,
    position: int,
    committed: int | None,
    previous: int | AnyPrevious | None,
    *,
    raced: bool = False,
) -> WriteResult | None:
    """What a write that must not commit returns: "skipped" (the position is committed already) or
    "stale" (the committed position is not the one this batch continues from); None: commit it.

    `raced`: the position was found committed after an attempt of this write (a concurrent copy's
    commit, or our own whose answer was lost: callers tell those apart first).
    """
    status: Literal["skipped", "stale"]
    if committed is not None and committed >= position:
        status = "skipped"
        if raced:
            reason = "committed by a concurrent writer"
        elif committed == position:
            reason = "already committed"
        else:
            reason = f"lower than the committed position {committed}"
        log.debug("skipped position %d of %r: %s (committed position %d)", position, app_id, reason, committed)
    elif not isinstance(previous, AnyPrevious) and committed != previous:
        status = "stale"
        reason = f"this batch continues from {previous}, but the committed position is now {committed}: re-read from there"
        log.info("position %d of %r is stale: continues from %s, committed position is %s", position, app_id, previous, committed)
    else:
        return None
    return WriteResult(
        status=status,
        app_id=app_id,
        position=position,
        committed_position=committed,
        table_version=handle.version(),
        reason=reason,
    )


def check_files_fit(
    handle: TableHandle, schema: pa.Schema, partition_by: Sequence[str], *, doing: str, exact: bool = False
) -> None:
    """Files written with `schema` and `partition_by` must be valid data of the table as it is now:
    each of their columns in the table with the same type (with `exact`, the same columns in the
    same order: the files are about to become the table's rows as they were read), the same
    partitioning.

    Raises:
        SchemaMismatch: another writer created or altered the table so that they are not (`doing`
            names what this writer was doing); nothing is committed, and a rerun reads the source
            with the table's schema.
    """
    current = handle.arrow_schema()
    table_partitioning = handle.partition_columns()
    if exact:
        fits = [(f.name, f.type) for f in current] == [(f.name, f.type) for f in schema]
    else:
        fits = all(current.get_field_index(f.name) >= 0 and current.field(f.name).type == f.type for f in schema)
    if not fits or table_partitioning != list(partition_by):
        raise SchemaMismatch(
            f"the schema of {handle.uri} changed while {doing} (another writer created or altered it): the table has "
            f"{current} partitioned by {table_partitioning}, the staged files have {schema} partitioned by "
            f"{list(partition_by)}. Nothing was committed; rerun, and the source is read with the table's schema."
        )


def create_table(
    uri: str,
    options: StorageOptions,
    *,
    schema: pa.Schema,
    partition_by: Sequence[str],
    checkpoint_interval: int,
    clock: Callable[[], float] = time.time,
) -> TableHandle:
    """Create the table (version 0), or open it if a concurrent writer created it first.

    Where lakesink creates its log entries itself, entry 0 is one create-only PUT too, and the
    handle starts from what it wrote (delta-rs's create read the new log back three times: 12
    requests on S3). Whoever creates entry 0 first made the table; a writer that lost, or whose
    answer was lost, opens the table that is there.

    Raises:
        StorageUnavailable: no answer, and no table there: nothing was written; rerun.
    """
    configuration = {"delta.checkpointInterval": str(checkpoint_interval)}
    log_store = open_log_store(uri, options)
    if log_store is None:
        return TableHandle.create(uri, options, schema=schema, partition_by=partition_by, configuration=configuration)
    body = TableHandle.first_entry(
        schema, partition_by=partition_by, configuration=configuration, now_ms=int(clock() * 1000),
        client_version=f"lakesink-{__version__}",
    )  # fmt: skip
    cause: StorageUnavailable | None = None
    try:
        created: bool | None = log_store.create(0, body)
    except ConditionalPutUnsupported:
        return TableHandle.create(uri, options, schema=schema, partition_by=partition_by, configuration=configuration)
    except StorageUnavailable as exc:
        created, cause = None, exc
    if created:
        log.info("created table %s (partitioned by %s, storage options %r)", uri, list(partition_by) or "nothing", options)
        return TableHandle.created(uri, options, body, folder=log_store)  # the store it was created in reads it too
    handle = TableHandle.open(uri, options, writing=True)
    if handle is None:
        raise StorageUnavailable(f"could not create the table {uri} ({cause}); nothing was written: rerun")
    log.info("table %s was created by a concurrent writer (or our lost answer): using it", uri)
    return handle


def add_columns(handle: TableHandle, fields: Sequence[pa.Field]) -> None:
    """Add nullable columns (schema evolution) in a commit of their own."""
    log.info("adding columns %s to %s (schema evolution)", [f.name for f in fields], handle.uri)
    handle.add_columns(fields)


def delete_rows(handle: TableHandle, *, column: str, below: int) -> int:
    """Delete the rows whose `column` is below `below`, in a commit of their own; how many went."""
    removed = handle.delete_where(f"{quote(column)} < {int(below)}")
    log.info("deleted %d row(s) of %s with %s below %d", removed, handle.uri, column, below)
    return removed


def compact(
    handle: TableHandle, *, target_bytes: int, partition_filters: Sequence[tuple[str, str, str]] | None = None
) -> dict[str, Any]:
    """Rewrite small files into larger ones in a commit of their own that changes no data (see
    TableHandle.compact); appends committed meanwhile, by lakesink or anyone, are kept as they are."""
    metrics = handle.compact(target_bytes=target_bytes, partition_filters=partition_filters, max_commit_attempts=20)
    log.info("compacted %s: %s", handle.uri, metrics)
    return metrics


def vacuum(handle: TableHandle, *, retention_hours: int, dry_run: bool, enforce_retention: bool = True) -> list[str]:
    """Delete (or list, `dry_run`) the files later commits removed longer than `retention_hours` ago."""
    return handle.vacuum(retention_hours=retention_hours, dry_run=dry_run, enforce_retention=enforce_retention)


class Committer:
    """Commits staged files to one table for a `Sink`, each batch exactly once.

    `log_store` is where lakesink creates log entries itself (by default the table's, opened at the
    first commit); once a store proves unable to create an object only if absent, or the options
    say commits are coordinated another way, delta-rs commits instead. `checkpointer` writes the
    checkpoints the commits make due (by default in a background thread of its own); `close`
    waits for it, bounded.
    """

    def __init__(
        self,
        uri: str,
        options: StorageOptions,
        *,
        log_store: LogStore | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        policy: CommitPolicy | None = None,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self._uri = uri
        self._options = options
        self._log_store = log_store
        self._log_store_known = log_store is not None
        self._clock = clock
        self._sleep = sleep
        self._policy = policy or CommitPolicy()
        self.checkpointer: Checkpointer = checkpointer or BackgroundCheckpointer(uri, options)

    def close(self, *, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds (the checkpointer's default if None) for the checkpoint being
        written in the background; True if none is left running (see lakesink.delta.checkpointer)."""
        return self.checkpointer.close(timeout=timeout)

    def commit(
        self,
        handle: TableHandle,
        staged: Sequence[StagedFile],
        *,
        app_id: str,
        position: int,
        schema: pa.Schema,
        partition_by: Sequence[str],
        previous: int | AnyPrevious | None = ANY_PREVIOUS,
    ) -> WriteResult:
        """Commit `staged` with `txn(app_id, position)` exactly once.

        With `previous` set, commit only while the committed position is exactly `previous` (the
        batch holds the records after it): a batch cut from an older position must never be
        committed on top of a newer one, or the records between would be written twice.

        Raises:
            ConcurrentWriterError: other writers with this app id won `policy.max_attempts` times in a row.
            CommitOutcomeUnknown: the commit may have landed and the log could not be read to decide.
            SchemaMismatch: another writer changed the table's schema so that the staged files no longer fit.
            TerminalError: the commit was refused for a reason retrying cannot fix.
        """
        outcome = self.commit_claims(
            handle, staged, [Claim(app_id, position, previous)], label=app_id, schema=schema, partition_by=partition_by
        )
        result = outcome.results[0]
        assert result is not None  # one claim: it committed, or it is what settled the commit
        return result

    def commit_claims(
        self,
        handle: TableHandle,
        staged: Sequence[StagedFile],
        claims: Sequence[Claim],
        *,
        label: str,
        schema: pa.Schema,
        partition_by: Sequence[str],
    ) -> CommitOutcome:
        """Commit `staged` with every claim's `txn` in one commit, exactly once; or nothing, if any
        claim must not commit (skipped or stale, checked on the same snapshot as the commit): the
        caller then leaves those claims' rows out, and commits the rest again (`Sink.write_parts`).

        `label` names the job in logs, metrics and commitInfo (the sink's app id).

        Raises:
            as `commit`.
        """
        if not claims or len({c.app_id for c in claims}) != len(claims):
            raise InternalError(f"a commit needs claims with distinct app ids, not {[c.app_id for c in claims]}")
        job = _Job(
            handle, staged, tuple(claims), label, schema, partition_by, self._clock, self._sleep, self._policy,
            self.checkpointer,
        )  # fmt: skip
        started = time.monotonic()
        return _recorded(job, self._commit(job), started, sum(f.size for f in staged))

    def _commit(self, job: _Job) -> CommitOutcome:
        handle = job.handle
        if not self._log_store_known:
            self._log_store, self._log_store_known = open_log_store(self._uri, self._options), True
        if self._log_store is not None:
            try:
                return _commit_by_log_entry(job, self._log_store)
            except ConditionalPutUnsupported as exc:
                log.warning("%s: %s; committing through delta-rs from now on", handle.uri, exc)
                self._log_store = None
        return _commit_through_delta_rs(job, _append_attempt(job))

    def commit_merge(
        self,
        handle: TableHandle,
        source: pa.Table,
        plan: MergePlan,
        *,
        app_id: str,
        position: int,
        previous: int | AnyPrevious | None = ANY_PREVIOUS,
    ) -> WriteResult:
        """MERGE `source` into the table (`plan`) with `txn(app_id, position)`, in one commit, exactly
        once: checked and committed on one snapshot, through delta-rs (whose conflict check refuses
        it if any writer committed since), re-checked after a conflict or an unanswered attempt.

        Raises:
            as `commit`; ConfigError for a plan delta-rs cannot run (a bad window predicate).
        """
        job = _Job(
            handle, (), (Claim(app_id, position, previous),), app_id, source.schema, (), self._clock, self._sleep,
            self._policy, self.checkpointer,
        )  # fmt: skip
        metrics: dict[str, Any] = {}

        def attempt(read_version: int, write_id: str) -> None:
            metrics.update(
                handle.merge(
                    source, plan, txns=job.txns(), now_ms=int(job.clock() * 1000), commit_info=job.commit_info(write_id)
                )
            )

        started = time.monotonic()
        outcome = _commit_through_delta_rs(job, attempt)
        result = outcome.results[0]
        assert result is not None
        if not outcome.committed:
            return result
        changed = sum(metric(metrics, f"num_target_rows_{kind}") for kind in ("inserted", "updated", "deleted"))
        merged = replace(result, rows=changed, files=metric(metrics, "num_target_files_added"))
        _recorded(job, replace(outcome, results=(merged,)), started, 0)
        return merged


def _recorded(job: _Job, outcome: CommitOutcome, started: float, size: int) -> CommitOutcome:
    """`outcome`, once its commit is counted in lakesink.metrics."""
    if outcome.committed:
        seconds = time.monotonic() - started
        rows, files = sum(r.rows for r in outcome.results if r), sum(r.files for r in outcome.results if r)
        log.debug(
            "committed %s to %s: version %d, %d rows, %d files, %.3f s",
            job.describe(), job.handle.uri, outcome.table_version, rows, files, seconds,
            extra={"app_id": job.label, "table": job.handle.uri, "version": outcome.table_version,
                   "position": job.claims[0].position if len(job.claims) == 1 else job.txns(),
                   "rows": rows, "files": files, "bytes": size, "seconds": round(seconds, 4)},
        )  # fmt: skip
        labels = {"app_id": job.label, "table": job.handle.uri}
        METRICS.inc("lakesink_commits_total", 1, **labels)
        METRICS.inc("lakesink_rows_written_total", rows, **labels)
        METRICS.inc("lakesink_files_written_total", files, **labels)
        METRICS.inc("lakesink_bytes_written_total", size, **labels)
        METRICS.observe("lakesink_commit_seconds", seconds, **labels)
        if outcome.reason == _LOST_ANSWER:
            METRICS.inc("lakesink_lost_answers_resolved_total", 1, **labels)
    return outcome


def _append_attempt(job: _Job) -> Callable[[int, str], None]:
    def attempt(read_version: int, write_id: str) -> None:
        job.handle.commit_transaction(
            job.staged,
            schema=job.schema,
            partition_by=job.partition_by,
            txns=job.txns(),
            now_ms=int(job.clock() * 1000),
            commit_info=job.commit_info(write_id),
        )

    return attempt


@dataclass(frozen=True, slots=True)
class _Job:
    """One commit's arguments, for whichever way it commits."""

    handle: TableHandle
    staged: Sequence[StagedFile]
    claims: tuple[Claim, ...]
    label: str  # the job, in logs, metrics and commitInfo
    schema: pa.Schema
    partition_by: Sequence[str]
    clock: Callable[[], float]
    sleep: Callable[[float], None]
    policy: CommitPolicy
    checkpointer: Checkpointer

    def txns(self) -> dict[str, int]:
        return {c.app_id: c.position for c in self.claims}

    def describe(self) -> str:
        if len(self.claims) == 1:
            return f"position {self.claims[0].position} of {self.claims[0].app_id!r}"
        return f"{len(self.claims)} positions of {self.label!r}"

    def settled(self, *, retried: bool, write_id: str, since: int) -> CommitOutcome | None:
        """`settled` for each claim; None if every one may commit. After an attempt, a commit that
        landed with our write id is ours (it set every claim at once)."""
        committed = [self.handle.committed_position(c.app_id) for c in self.claims]
        reached = any(p is not None and p >= c.position for c, p in zip(self.claims, committed, strict=True))
        if reached and retried and _landed_ours(self.handle, write_id, since=since):
            log.info("%s: %s", self.describe(), _LOST_ANSWER)
            return self.committed(reason=_LOST_ANSWER)
        results = tuple(
            settled(self.handle, c.app_id, c.position, p, c.previous, raced=retried)
            for c, p in zip(self.claims, committed, strict=True)
        )
        if all(r is None for r in results):
            return None
        return CommitOutcome(committed=False, table_version=self.handle.version(), results=results)

    def committed(self, *, reason: str = "") -> CommitOutcome:
        version = self.handle.version()
        rows, files = sum(f.num_records for f in self.staged), len(self.staged)
        results = tuple(
            WriteResult(
                status="committed", app_id=c.app_id, position=c.position, committed_position=c.position,
                table_version=version, rows=rows if len(self.claims) == 1 else 0,
                files=files if len(self.claims) == 1 else 0, reason=reason,
            )
            for c in self.claims
        )  # fmt: skip
        return CommitOutcome(committed=True, table_version=version, results=results, reason=reason)

    def commit_info(self, write_id: str) -> dict[str, object]:
        # Only this whitelist reaches commitInfo: never options, paths with credentials or user data.
        info: dict[str, object] = {"lakesink.version": __version__, "lakesink.appId": self.label}
        if len(self.claims) == 1:
            info["lakesink.position"] = self.claims[0].position
        else:
            info["lakesink.positions"] = self.txns()
        info[WRITE_ID_KEY] = write_id
        return info

    def outcome_unknown(self, detail: str, cause: BaseException | None) -> CommitOutcomeUnknown:
        """The give-up error when the commit may or may not have landed; the staged files are kept."""
        error = CommitOutcomeUnknown(
            f"the commit of {self.describe()} may or may not have landed ({detail}); "
            "staged files are kept: rerun the same write when the store answers, and it will skip or commit.",
            table_uri=self.handle.uri,
            app_id=self.label,
            position=max(c.position for c in self.claims),
        )
        error.__cause__ = cause
        return error

    def lost_races(self) -> ConcurrentWriterError:
        """The give-up error when other writers with these app ids kept committing first."""
        return ConcurrentWriterError(
            f"gave up committing {self.describe()}: another writer with the same app id committed first "
            f"{self.policy.max_attempts} times. Run one copy of a job per app id."
        )

    def races(self, summary: EntrySummary) -> bool:
        """Whether another writer's entry set a position of ours (a copy of this job)."""
        return any(c.app_id in summary.txns for c in self.claims)


def _commit_by_log_entry(job: _Job, log_store: LogStore) -> CommitOutcome:
    """Steps 1-4 of the module doc, with lakesink creating the log entry itself."""
    handle, policy, label = job.handle, job.policy, job.label
    # Tags the entry, so after a lost answer the log tells whether the commit holding our
    # position is ours (report it committed) or a concurrent copy's (skipped).
    write_id = uuid.uuid4().hex
    first_read_version = handle.version()
    races = 0  # entries of other writers with this app id that took the version we tried
    unanswered = 0  # creates that got no answer, or that found nothing there
    in_flight = 0  # creates refused in a row while the entry was not readable yet (another's in flight)
    others = 0  # other writers' entries read one by one since the last full refresh
    last_error: BaseException | None = None
    while True:
        handle.check_writable()  # cached: costs nothing unless a refresh brought a new protocol
        done = job.settled(retried=bool(races or unanswered), write_id=write_id, since=first_read_version)
        if done is not None:
            return done
        version = handle.version() + 1
        body = encode_append(
            job.staged,
            txns=job.txns(),
            now_ms=int(job.clock() * 1000),
            read_version=version - 1,
            partition_by=job.partition_by,
            commit_info=job.commit_info(write_id),
            client_version=f"lakesink-{__version__}",
        )
        crash_point("before_commit")
        created: bool | None
        try:
            created = log_store.create(version, body)
        except StorageUnavailable as exc:
            log.info("%s: creating log entry %d got no answer (%s); reading it back", job.describe(), version, exc)
            created, last_error = None, exc
        if created:
            return _after_own_commit(job, version)
        summary = _read_entry(job, log_store, version, cause=last_error)
        if summary is None and created is False:
            # Refused, yet nothing to read: another writer's create of this entry is in flight (S3
            # answers 409 to a conditional PUT racing one). A concurrent commit, of any app id, not
            # an unanswered request: only a store that keeps refusing what it never shows gives up.
            in_flight += 1
            METRICS.inc("lakesink_commit_conflicts_total", app_id=label, table=handle.uri)
            if in_flight >= policy.max_attempts:
                raise job.outcome_unknown(f"log entry {version} was refused {in_flight} times but never readable", last_error)
            job.sleep(_backoff(policy, in_flight - 1))
            continue
        in_flight = 0
        if summary is None:
            # Nothing there: the create did not land.
            unanswered += 1
            METRICS.inc("lakesink_commit_retries_total", app_id=label, table=handle.uri)
            if unanswered >= policy.max_attempts:
                raise job.outcome_unknown(
                    f"{policy.max_attempts} attempts: {last_error or 'the log entry stayed absent'}", last_error
                )
            job.sleep(_backoff(policy, unanswered - 1))
            continue
        if summary.write_id == write_id:
            return _after_own_commit(job, version, reason=_LOST_ANSWER)
        log.info("%s: another writer created log entry %d first; re-checking", job.describe(), version)
        METRICS.inc("lakesink_commit_conflicts_total", app_id=label, table=handle.uri)
        raced = job.races(summary)
        if raced:
            races += 1
            if races >= policy.max_attempts:
                raise job.lost_races()
        others += 1
        if summary.changes_table or raced or others > _READ_ONE_BY_ONE:
            # A new schema or protocol, a copy of this job (decide from its latest position, which
            # a stale result tells the caller to re-read from), or a writer far ahead: let
            # delta-rs read up to the latest entry.
            _refresh_or_unknown(job, last_error or RuntimeError("concurrent commit"))
            check_files_fit(handle, job.schema, job.partition_by, doing=f"{job.describe()} was being committed")
            others = 0
        else:
            handle.advance(version, summary.txns)


# Other writers' entries read one GET at a time before one delta-rs refresh (a LIST) catches up.
_READ_ONE_BY_ONE = 3
_LOST_ANSWER = "the answer was lost; the log shows this write's commit landed"


def _read_entry(job: _Job, log_store: LogStore, version: int, *, cause: BaseException | None) -> EntrySummary | None:
    """What log entry `version` holds (None: there is none); CommitOutcomeUnknown if it cannot be read."""
    for attempt in range(job.policy.resolve_attempts):
        try:
            body = log_store.read(version)
        except StorageUnavailable as exc:
            cause = cause or exc
            job.sleep(_backoff(job.policy, attempt))
            continue
        return None if body is None else summarize(body, version=version)
    raise job.outcome_unknown(f"{cause or 'no answer'}; log entry {version} could not be read back to decide", cause)


def _after_own_commit(job: _Job, version: int, *, reason: str = "") -> CommitOutcome:
    handle = job.handle
    crash_point("after_commit")
    handle.advance(version, job.txns())
    log.debug("created log entry %d: %s, %d files", version, job.describe(), len(job.staged))
    _checkpoint_if_due(job, version, version)
    return job.committed(reason=reason)


def _checkpoint_if_due(job: _Job, ours: int, newest: int) -> None:
    """Our commit made version `ours`; if it is a checkpoint version, have `newest` (the newest
    version known, >= ours) checkpointed in the background: the commit never waits for it."""
    configuration = job.handle.configuration()
    interval = _checkpoint_interval(configuration)
    if ours % interval != 0:
        return
    # Delta's own writers clean up expired log entries after a checkpoint (the only thing that
    # makes older entries expendable); the cleanup LISTs the whole log, so once in ten.
    cleanup = ours % (interval * CLEANUP_EVERY) == 0 and _expired_log_cleanup_enabled(configuration)
    job.checkpointer.checkpoint(newest, cleanup_expired_logs=cleanup)


def _expired_log_cleanup_enabled(configuration: Mapping[str, str]) -> bool:
    return str(configuration.get("delta.enableExpiredLogCleanup", "true")).lower() != "false"


def _commit_through_delta_rs(job: _Job, attempt_commit: Callable[[int, str], None]) -> CommitOutcome:
    """Steps 1-3 of the module doc, with delta-rs committing (for stores without create-only PUTs,
    and for merges): `attempt_commit(read_version, write_id)` makes one attempt."""
    handle, policy, label = job.handle, job.policy, job.label
    last_error: BaseException | None = None
    # Tags every attempt's commitInfo, so after a lost answer the log tells whether the commit
    # holding our position is ours (report it committed) or a concurrent copy's (skipped).
    write_id = uuid.uuid4().hex
    first_read_version = handle.version()
    for attempt in range(policy.max_attempts):
        handle.sync_delta_rs()
        done = job.settled(retried=attempt > 0, write_id=write_id, since=first_read_version)
        if done is not None:
            return done
        read_version = handle.version()
        try:
            crash_point("before_commit")
            attempt_commit(read_version, write_id)
        except CommitConflict as exc:
            # Another writer with this app id committed since our snapshot: re-check, never re-send.
            log.info("%s: another writer committed since version %d; re-checking", job.describe(), read_version)
            METRICS.inc("lakesink_commit_conflicts_total", app_id=label, table=handle.uri)
            last_error = exc
            _refresh_or_unknown(job, exc)
            continue
        except CommitNotAnswered as exc:
            log.info(
                "%s: commit attempt %d failed, outcome unknown (%s); reading the log to decide", job.describe(), attempt + 1, exc
            )
            last_error = exc
            METRICS.inc("lakesink_commit_retries_total", app_id=label, table=handle.uri)
            _refresh_or_unknown(job, exc)
            job.sleep(_backoff(policy, attempt))
            continue
        crash_point("after_commit")
        try:
            handle.refresh()
        except StorageUnavailable:
            pass  # the commit landed; the next write refreshes before it trusts the snapshot
        else:
            handle.note_own_commit(job.txns(), read_version=read_version)
            # delta-rs's post-commit hook is told not to checkpoint (it would, inline); when no other
            # writer got in first, ours is the version after the one we read.
            _checkpoint_if_due(job, read_version + 1, handle.version())
        log.debug(
            "delta-rs committed %s: %d files, %d rows, version %d",
            job.describe(), len(job.staged), sum(f.num_records for f in job.staged), handle.version(),
        )  # fmt: skip
        return job.committed()
    if isinstance(last_error, CommitConflict):
        raise job.lost_races() from last_error
    raise job.outcome_unknown(f"{policy.max_attempts} attempts: {last_error or 'no error'}", last_error)


def _refresh_or_unknown(job: _Job, cause: BaseException) -> None:
    """Bring the snapshot up to date so the next check decides; give up as CommitOutcomeUnknown."""
    for attempt in range(job.policy.resolve_attempts):
        try:
            job.handle.refresh()
            return
        except LakesinkError as exc:
            if isinstance(exc, TerminalError):
                raise
            job.sleep(_backoff(job.policy, attempt))
    raise job.outcome_unknown(f"{cause}; the log could not be read back to decide", cause)


# One checkpoint in this many also runs the expired-log cleanup (benchmarks/README.md says why).
CLEANUP_EVERY = 10
# delta-rs's checkpoint interval for a table that does not set `delta.checkpointInterval`.
_DELTA_RS_CHECKPOINT_INTERVAL = 100


def _checkpoint_interval(configuration: Mapping[str, str]) -> int:
    raw = configuration.get("delta.checkpointInterval")
    try:
        interval = int(raw) if raw is not None else _DELTA_RS_CHECKPOINT_INTERVAL
    except ValueError:
        interval = _DELTA_RS_CHECKPOINT_INTERVAL
    return interval if interval > 0 else _DELTA_RS_CHECKPOINT_INTERVAL


def _backoff(policy: CommitPolicy, attempt: int) -> float:
    # Half of it random: writers that failed together (a store's hiccup, one entry raced) retry apart.
    base = policy.backoff_seconds * (2 ** min(attempt, 6))
    return float(base / 2 + random.uniform(0, base / 2))


def _landed_ours(handle: TableHandle, write_id: str, *, since: int) -> bool:
    """Whether a commit after version `since` carries this write's id (reads only those commits)."""
    try:
        infos = handle.commit_infos(range(since + 1, handle.version() + 1))
    except LakesinkError:
        return False  # only the report's wording depends on it; the table is exact either way
    return any(info.get(WRITE_ID_KEY) == write_id for info in infos)
