"""`lakesink cdc`: mirror a PostgreSQL publication's tables into Delta tables, each change exactly once.

    capture_changes(dsn, "s3://lake/pg", app_id="shop", slot="lakesink_shop", publication="shop")

Each source table has its own Delta table under the root (lakesink.layout.mirror_table_uri) and
its own `txn` for the app id: the commit LSN of the last source transaction it holds. A batch of
whole source transactions becomes one MERGE per table (lakesink.config.Upsert ordered by `_lsn`),
and PostgreSQL is told to keep the WAL from the smallest of those positions on (`flush_lsn`), so:

- a crash anywhere (before, during or after a commit, before the acknowledgement) loses nothing:
  the stream restarts at the smallest committed position, and each table skips what it holds;
- a replayed change never overwrites a newer row, and a deleted row never comes back.

A new slot exports a snapshot; with `snapshot=True` the tables' rows are copied under it (as
upserts at the slot's LSN, so a copy redone after a crash converges) before the stream starts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pyarrow as pa

from lakesink.config import CommitInterval, Upsert
from lakesink.crashpoints import crash_point
from lakesink.errors import ConcurrentWriterError, ConfigError, SourceContractViolation
from lakesink.layout import changelog_table_uri, mirror_table_uri, snapshot_app_id
from lakesink.metrics import METRICS
from lakesink.sink import Sink
from lakesink.sources.pg_changes import LSN_COLUMN, ChangeAssembler, TableChanges, changelog_schema, source_schema
from lakesink.sources.pgoutput import decode
from lakesink.sources.pgtypes import convert_strings
from lakesink.sources.postgres import ChangeStream, PostgresSource, SlotState, SourceTable, format_lsn

log = logging.getLogger(__name__)

DEFAULT_CDC_INTERVAL = CommitInterval(rows=200_000, bytes=64 << 20, seconds=5.0)
"""A batch commits at 200,000 changes, 64 MB of values or 5 s, whichever comes first (never inside a transaction)."""
# A table the stream brings nothing for gets its position moved alone once in this many batches,
# so the WAL PostgreSQL keeps for the job does not grow behind a quiet table.
IDLE_ADVANCE_EVERY = 10
# Tombstones below the acknowledged LSN can no longer meet an older change from the slot (PostgreSQL
# never sends what was acknowledged again); forget them once in this many batches.
TOMBSTONE_PRUNE_EVERY = 500
# While idle, tables move to where PostgreSQL's decoding is once that is this much WAL past the
# acknowledged position: a quiet publication must not make the server keep all WAL since.
IDLE_CATCH_UP_BYTES = 16 << 20


@dataclass(frozen=True, slots=True)
class TablePosition:
    source: str
    table_uri: str
    committed_lsn: int | None


@dataclass(frozen=True, slots=True)
class CdcReport:
    """What a `capture_changes` run did. `stopped`: "idle" (until_idle passed), "signal" or "limit"."""

    app_id: str
    slot: str
    tables: tuple[TablePosition, ...]
    transactions: int
    changes: int
    commits: int
    snapshot_rows: int
    acknowledged_lsn: int | None
    stopped: str
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return {
            "app_id": self.app_id,
            "slot": self.slot,
            "tables": [
                {"source": t.source, "table_uri": t.table_uri, "committed_lsn": _lsn_text(t.committed_lsn)} for t in self.tables
            ],
            "transactions": self.transactions,
            "changes": self.changes,
            "commits": self.commits,
            "snapshot_rows": self.snapshot_rows,
            "acknowledged_lsn": _lsn_text(self.acknowledged_lsn),
            "stopped": self.stopped,
            "seconds": round(self.seconds, 3),
        }


def _lsn_text(lsn: int | None) -> str | None:
    return None if lsn is None else format_lsn(lsn)


@dataclass
class _Mirror:
    """One source table's Delta table (and change log, when asked for) and the position they both hold."""

    source: SourceTable
    sink: Sink
    changelog: Sink | None = None
    committed: int | None = None
    idle_batches: int = 0

    def __post_init__(self) -> None:
        self.committed = self.held()

    def held(self) -> int | None:
        """The position every table of this source table holds (None: one of them holds none)."""
        positions = [s.committed_position() for s in self.sinks()]
        return None if None in positions else min(p for p in positions if p is not None)

    def sinks(self) -> list[Sink]:
        return [self.sink] if self.changelog is None else [self.sink, self.changelog]

    def set_up(self, position: int) -> None:
        """Create the tables that do not exist yet, and commit `position` (no rows) where it is not held."""
        self.sink.ensure_table(source_schema(self.source))
        if self.changelog is not None:
            self.changelog.ensure_table(changelog_schema(self.source))
        self.advance(position)

    def advance(self, position: int) -> int:
        """Commit `position` with no rows on every table below it; how many commits that took."""
        results = [s.advance(position) for s in self.sinks() if (s.committed_position() or -1) < position]
        self.committed = self.held()
        return sum(r.committed for r in results)

    def apply(self, changes: TableChanges, position: int) -> int:
        """Append the changes to the change log and merge them into the mirror; how many commits that took."""
        commits = 0
        if self.changelog is not None:
            commits += self.changelog.write(changes.change_log(), position=position).committed
        rows, mode = changes.batch()
        commits += self.sink.write(rows, position=position, mode=mode).committed
        self.committed = self.held()
        return commits


@dataclass
class _Counters:
    transactions: int = 0
    changes: int = 0
    commits: int = 0
    snapshot_rows: int = 0
    acknowledged: int | None = None
    batches: int = 0
    options: dict[str, str] = field(default_factory=dict)
    mirrors: dict[str, _Mirror] = field(default_factory=dict)


def capture_changes(
    dsn: str,
    root_uri: str,
    *,
    app_id: str,
    slot: str,
    publication: str,
    snapshot: bool = False,
    until_idle: float | None = None,
    interval: CommitInterval = DEFAULT_CDC_INTERVAL,
    storage_options: Mapping[str, str] | None = None,
    evolve_schema: bool = False,
    changelog: bool = False,
    stop: threading.Event | None = None,
    max_transactions: int | None = None,
    progress: Callable[[CdcReport], None] | None = None,
) -> CdcReport:
    """Stream the publication's changes into Delta tables under `root_uri` until `stop` is set, no
    message came for `until_idle` seconds, or `max_transactions` were applied; every stop is at a
    commit boundary. The slot is created if missing (the publication is the DBA's). With `changelog`,
    every change is also appended to `<table>_changes` (its columns, `_op`, `_lsn`, `_commit_time`),
    exactly once, from the position the mirror holds when it is first asked for.

    Raises:
        SourceContractViolation: the slot was dropped, or its WAL removed, while the tables hold
            positions (changes are missing: the message names the gap); never a silent re-sync.
        ConfigError: no such publication, a table without a key, a table that joined the
            publication holding rows the job cannot copy consistently.
        BadRecord: a value with no exact Delta value (the message names table, column and value).
        StorageUnavailable, CommitOutcomeUnknown: transient: rerun as is.
    """
    started = time.monotonic()
    stop = stop or threading.Event()
    source = PostgresSource(dsn, slot=slot, publication=publication)
    options = dict(storage_options or {})
    counters = _Counters(options=options)
    try:
        tables = source.tables()
        for table in tables:
            sink = Sink(mirror_table_uri(root_uri, table.schema, table.name), app_id=app_id, storage_options=options,
                        evolve_schema=evolve_schema)  # fmt: skip
            log_sink = None
            if changelog:
                log_sink = Sink(changelog_table_uri(root_uri, table.schema, table.name), app_id=app_id,
                                storage_options=options, evolve_schema=evolve_schema)  # fmt: skip
            counters.mirrors[table.qualified] = _Mirror(table, sink, log_sink)
        stream = _start(source, counters, snapshot=snapshot)
        try:
            stopped = _run(
                stream, counters, interval=interval, until_idle=until_idle, stop=stop, max_transactions=max_transactions,
                progress=progress, app_id=app_id, slot=slot, started=started,
            )  # fmt: skip
        finally:
            stream.close()
    finally:
        source.close()
    return _report(counters, app_id=app_id, slot=slot, stopped=stopped, started=started)


def _report(counters: _Counters, *, app_id: str, slot: str, stopped: str, started: float) -> CdcReport:
    return CdcReport(
        app_id=app_id,
        slot=slot,
        tables=tuple(TablePosition(name, m.sink.uri, m.committed) for name, m in sorted(counters.mirrors.items())),
        transactions=counters.transactions,
        changes=counters.changes,
        commits=counters.commits,
        snapshot_rows=counters.snapshot_rows,
        acknowledged_lsn=counters.acknowledged,
        stopped=stopped,
        seconds=time.monotonic() - started,
    )


def _start(source: PostgresSource, counters: _Counters, *, snapshot: bool) -> ChangeStream:
    """Set the tables up against the slot and start the stream where every table's changes continue."""
    mirrors = counters.mirrors
    held = {name: p for name, m in mirrors.items() if (p := m.sink.committed_position()) is not None}
    state = _slot_released(source)
    if state.confirmed_flush_lsn is None:
        if held:
            name, lsn = min(held.items(), key=lambda item: item[1])
            raise SourceContractViolation(
                f"replication slot {source.slot!r} does not exist, but {name} holds changes up to {format_lsn(lsn)}: the "
                "changes made since are gone from this job's reach. Nothing was written. To re-sync, start a new job "
                "(a new --app-id and --slot, --snapshot) into a new root; lakesink never re-syncs silently."
            )
        return _new_slot(source, counters, snapshot=snapshot)
    if state.wal_status == "lost":
        raise SourceContractViolation(
            f"replication slot {source.slot!r} lost WAL it needed (wal_status 'lost', max_slot_wal_keep_size?): changes "
            f"after {format_lsn(state.confirmed_flush_lsn)} are gone. Nothing was written; re-sync with a new job and --snapshot."
        )
    missing = [name for name, mirror in mirrors.items() if mirror.sink.committed_position() is None]
    if missing and snapshot:
        # A first run stopped inside its snapshot (or a table joined the publication): copy every table
        # again under a new slot's snapshot, whatever the old slot holds. Upserts at the new slot's LSN
        # converge on the rows copied or streamed before, and the copy's last commit deletes the rows
        # the source no longer holds.
        log.warning("%s hold(s) no position yet: copying every table again under a new slot", ", ".join(missing))
        source.drop_slot()
        return _new_slot(source, counters, snapshot=True)
    if not held:
        # A first run without --snapshot stopped before its tables held the slot's start: nothing was
        # acknowledged, so the slot still starts there.
        held = {name: state.confirmed_flush_lsn for name in mirrors}
        for mirror in mirrors.values():
            mirror.set_up(state.confirmed_flush_lsn)
        missing = []
    start = min(held.values())
    if state.confirmed_flush_lsn > start:
        raise SourceContractViolation(
            f"replication slot {source.slot!r} was moved to {format_lsn(state.confirmed_flush_lsn)}, past what every table "
            f"holds ({format_lsn(start)}): the changes in between are missing. Nothing was written. Was the slot used by "
            "another consumer? Re-sync with a new job and --snapshot."
        )
    for name in missing:
        _join_late(source, mirrors[name], start)
        log.info("%s joined the publication: mirrored from %s on", name, format_lsn(start))
    for mirror in mirrors.values():
        if mirror.changelog is not None and mirror.changelog.committed_position() is None:
            mirror.set_up(mirror.sink.committed_position() or start)  # a change log asked for later starts now
    log.info("streaming slot %s from %s", source.slot, format_lsn(start))
    return source.stream(start)


def _slot_released(source: PostgresSource, *, wait: float = 15.0) -> SlotState:
    """The slot's state once no other connection streams from it: after a crash, PostgreSQL holds the
    slot for the dead connection until it notices (wal_sender_timeout); a second live copy of the
    job holds it for good.

    Raises:
        ConcurrentWriterError: the slot stayed in use for `wait` seconds.
    """
    deadline = time.monotonic() + wait
    while True:
        state = source.slot_state()
        if state.active_pid is None:
            return state
        if time.monotonic() >= deadline:
            raise ConcurrentWriterError(
                f"replication slot {source.slot!r} is in use by PostgreSQL backend {state.active_pid}: is another copy of "
                "this job running? Run one copy per slot (rerun once it stops)."
            )
        log.info("slot %s is in use by backend %s; waiting for it to be released", source.slot, state.active_pid)
        time.sleep(0.5)


def _join_late(source: PostgresSource, mirror: _Mirror, position: int) -> None:
    table = mirror.source
    if source.has_rows(table):
        raise ConfigError(
            f"{table.qualified} holds no position of this job but holds rows (it joined the publication later, or the "
            "first run stopped before copying it): rerun with --snapshot, which copies every table again under a new "
            "slot, or mirror it with a job of its own.",
            options=("snapshot",),
        )
    mirror.set_up(position)


def _new_slot(source: PostgresSource, counters: _Counters, *, snapshot: bool) -> ChangeStream:
    created = source.create_slot()
    point = created.consistent_point
    try:
        for mirror in counters.mirrors.values():
            if snapshot:
                counters.snapshot_rows += _copy(source, mirror, created.snapshot, point, counters.options)
            mirror.set_up(point)
            counters.commits += 1
            crash_point("cdc_snapshot_table")
    except BaseException:
        created.close()
        raise
    log.info("slot %s starts at %s; streaming", source.slot, format_lsn(point))
    return created.stream()


def _copy(source: PostgresSource, mirror: _Mirror, snapshot: str, point: int, options: dict[str, str]) -> int:
    """Copy the table's rows as of the snapshot: upserts at the slot's LSN in chunks (app id of this
    snapshot attempt), then one commit at the slot's position that also deletes rows an earlier,
    interrupted attempt copied and the source no longer holds."""
    table, sink = mirror.source, mirror.sink
    sink.ensure_table(source_schema(table))
    mode = Upsert(key=table.key, order_by=LSN_COLUMN)
    copied = 0
    chunk_sink = Sink(sink.uri, app_id=snapshot_app_id(sink.app_id, point), storage_options=options)
    for chunk, batch in enumerate(source.copy_rows(table, snapshot), start=1):
        arrays = [
            convert_strings(batch.column(i), c.type_oid, c.type_modifier, column=c.name, table=table.qualified)
            for i, c in enumerate(table.columns)
        ]
        rows = pa.Table.from_arrays([*arrays, pa.array([point] * batch.num_rows, pa.int64())],
                                    names=[*(c.name for c in table.columns), LSN_COLUMN])  # fmt: skip
        chunk_sink.write(rows, position=chunk, mode=mode)
        copied += batch.num_rows
        log.info("snapshot of %s: %d rows copied", table.qualified, copied)
    empty = pa.Table.from_pylist([], schema=source_schema(table))
    final = Upsert(key=table.key, order_by=LSN_COLUMN, truncate_before=point)
    sink.write(empty, position=point, mode=final)
    return copied


def _run(
    stream: ChangeStream,
    counters: _Counters,
    *,
    interval: CommitInterval,
    until_idle: float | None,
    stop: threading.Event,
    max_transactions: int | None,
    progress: Callable[[CdcReport], None] | None,
    app_id: str,
    slot: str,
    started: float,
) -> str:
    mirrors = counters.mirrors
    assembler = ChangeAssembler([m.source for m in mirrors.values()], {n: m.committed for n, m in mirrors.items()})
    _acknowledge(stream, counters)
    batch_started: float | None = None
    last_message = time.monotonic()
    while True:
        now = time.monotonic()
        if not assembler.in_transaction:
            due = bool(assembler.transactions) and batch_started is not None and interval.reached(
                rows=assembler.rows, nbytes=assembler.bytes, seconds=now - batch_started
            )
            limit = max_transactions is not None and counters.transactions + assembler.transactions >= max_transactions
            idle = until_idle is not None and now - last_message >= until_idle
            if due or stop.is_set() or limit or idle:
                _flush(assembler, stream, counters, final=stop.is_set() or limit or idle)
                batch_started = None
                if progress is not None:
                    progress(_report(counters, app_id=app_id, slot=slot, stopped="", started=started))
                if stop.is_set() or limit or idle:
                    return "signal" if stop.is_set() else ("limit" if limit else "idle")
        wait = 0.5 if until_idle is None else max(0.05, min(0.5, until_idle - (now - last_message)))
        message = stream.read(wait)
        if message is None:
            if not assembler.in_transaction and assembler.transactions == 0:
                _catch_up_while_idle(stream, assembler, counters)
            continue
        last_message = time.monotonic()
        assembler.feed(decode(message.payload))
        if batch_started is None and assembler.in_transaction:
            batch_started = last_message


def _catch_up_while_idle(stream: ChangeStream, assembler: ChangeAssembler, counters: _Counters) -> None:
    """Nothing gathered, nothing in flight: PostgreSQL has sent every transaction before the WAL position it
    reports (`sent_up_to`, the end of the last record its walsender decoded). When that is far ahead of
    what was acknowledged (writes to tables outside the publication, other databases), move every table
    there with a commit of no rows and acknowledge it, so the slot does not hold that WAL back."""
    end = stream.sent_up_to
    acknowledged = counters.acknowledged or 0
    if end - acknowledged < IDLE_CATCH_UP_BYTES:
        return
    for mirror in counters.mirrors.values():
        counters.commits += mirror.advance(end)
    assembler.holds(end)
    _acknowledge(stream, counters)
    log.info("idle: every table moved to %s, where PostgreSQL's WAL is (acknowledged)", format_lsn(end))


def _flush(assembler: ChangeAssembler, stream: ChangeStream, counters: _Counters, *, final: bool) -> None:
    """Commit the whole transactions gathered so far, table by table, then acknowledge what every table holds."""
    transactions = assembler.transactions
    position, changes = assembler.take()
    if position is None:
        _acknowledge(stream, counters)
        return
    for name, mirror in counters.mirrors.items():
        table_changes = changes.get(name)
        if table_changes is not None:
            counters.commits += mirror.apply(table_changes, position)
            counters.changes += table_changes.rows
            mirror.idle_batches = 0
        elif mirror.committed is not None and mirror.committed < position:
            mirror.idle_batches += 1
            if not final and mirror.idle_batches < IDLE_ADVANCE_EVERY:
                continue
            counters.commits += mirror.advance(position)
            mirror.idle_batches = 0
        else:
            continue
        crash_point("cdc_between_tables")
    counters.transactions += transactions
    crash_point("cdc_before_ack")
    _acknowledge(stream, counters)
    counters.batches += 1
    if counters.batches % TOMBSTONE_PRUNE_EVERY == 0 and counters.acknowledged is not None:
        for mirror in counters.mirrors.values():
            mirror.sink.prune_tombstones(below=counters.acknowledged)


def _acknowledge(stream: ChangeStream, counters: _Counters) -> None:
    held = [m.committed for m in counters.mirrors.values()]
    if held and all(h is not None for h in held):
        lsn = min(h for h in held if h is not None)
        stream.acknowledge(lsn)
        counters.acknowledged = lsn
        for mirror in counters.mirrors.values():
            # WAL PostgreSQL has decoded and this job not yet acknowledged: what the slot holds back.
            METRICS.set("lakesink_source_lag_bytes", max(0, stream.sent_up_to - lsn), app_id=mirror.sink.app_id,
                        table=mirror.sink.uri)  # fmt: skip


def cdc_status(
    dsn: str, root_uri: str, *, app_id: str, slot: str, publication: str, storage_options: Mapping[str, str] | None = None
) -> dict[str, object]:
    """Each mirrored table's committed LSN and the slot's confirmed LSN and lag (WAL bytes PostgreSQL
    keeps for the job), as JSON-ready values; reads only."""
    source = PostgresSource(dsn, slot=slot, publication=publication)
    try:
        tables = source.tables()
        state = source.slot_state()
    finally:
        source.close()
    rows = []
    for table in tables:
        with Sink(mirror_table_uri(root_uri, table.schema, table.name), app_id=app_id,
                  storage_options=dict(storage_options or {})) as sink:  # fmt: skip
            rows.append({"source": table.qualified, "table_uri": sink.uri, "committed_lsn": _lsn_text(sink.committed_position())})
    return {
        "slot": slot,
        "exists": state.confirmed_flush_lsn is not None,
        "confirmed_flush_lsn": _lsn_text(state.confirmed_flush_lsn),
        "current_wal_lsn": format_lsn(state.current_lsn),
        "lag_bytes": state.lag_bytes(),
        "wal_status": state.wal_status,
        "tables": rows,
    }
