"""`lakesink kafka`: Kafka topics into a Delta table, every message exactly once.

    consume_kafka("s3://lake/orders", KafkaOptions("broker:9092", ("orders",), group="lake"), app_id="orders")

The table is the truth about what was read. Each topic partition has its own `txn`,
`<app id>/<topic>/<partition>` (lakesink.layout.part_app_id), whose version is the offset of the last
message of that partition the table holds. A batch holds messages of every partition this consumer
was given, and becomes one commit: the rows of all of them and one `txn` per partition
(`Sink.write_parts`), each partition's part committed only while the table still holds the offset
the batch continues from. So:

- on assignment, a partition is read from the table's offset + 1 (the group's committed offsets
  only when the table has none; `start` when neither has): a restart, a rebalance or a crash
  anywhere re-reads exactly what the table lacks;
- a consumer that lost its partitions without noticing (a zombie, paused past its session) can
  commit nothing another member committed: its part continues from an offset the table no longer
  holds, so it is "stale", its rows are dropped and the partition re-read from the table's offset;
- on revoke, what was read of the revoked partitions is committed before they are given up (a
  lost assignment is dropped instead: another member may own it already);
- after each commit, the same offsets are committed to the group so lag tools work; they are
  never read back while the table has an offset.

Offsets are not dense (transaction markers, compaction): a position is the last offset applied,
never "next offset - 1". Bad messages go to the dead-letter table (`bad_records`) before the batch
commits, at the same positions, each exactly once (lakesink.ingest.kafka_quarantine).
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from lakesink.config import CommitInterval
from lakesink.crashpoints import crash_point
from lakesink.errors import ConfigError
from lakesink.ingest.kafka_quarantine import KafkaQuarantine
from lakesink.metrics import METRICS
from lakesink.sink import Part, Sink
from lakesink.sources.kafka import KafkaSource
from lakesink.sources.kafka_client import KafkaOptions, partition_offsets
from lakesink.sources.kafka_decode import Decoded, Fetched, KafkaPartition, decode

log = logging.getLogger(__name__)

DEFAULT_KAFKA_INTERVAL = CommitInterval(rows=500_000, bytes=128 << 20, seconds=5.0)
"""A batch commits at 500,000 messages, 128 MB of message values or 5 s, whichever comes first."""
# Messages asked of the client per poll: large enough that the per-call cost vanishes.
_POLL_MESSAGES = 20_000


@dataclass(frozen=True, slots=True)
class PartitionPosition:
    topic: str
    partition: int
    committed_offset: int | None


@dataclass(frozen=True, slots=True)
class KafkaReport:
    """What a `consume_kafka` run did. `stopped`: "idle" (until_idle passed), "signal" or "limit"."""

    app_id: str
    table_uri: str
    group: str
    topics: tuple[str, ...]
    messages: int
    rows: int
    bad_records: int
    commits: int
    stale_batches: int
    partitions: tuple[PartitionPosition, ...]
    gaps: tuple[dict[str, object], ...]
    stopped: str
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return {
            "app_id": self.app_id,
            "table_uri": self.table_uri,
            "group": self.group,
            "topics": list(self.topics),
            "messages": self.messages,
            "rows": self.rows,
            "bad_records": self.bad_records,
            "commits": self.commits,
            "stale_batches": self.stale_batches,
            "partitions": [
                {"topic": p.topic, "partition": p.partition, "committed_offset": p.committed_offset} for p in self.partitions
            ],
            "gaps": list(self.gaps),
            "stopped": self.stopped,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class _Partition:
    """What this consumer holds of one assigned partition: the offset the table held when it was
    read from there (`previous`) and the messages read since."""

    previous: int | None
    fetched: list[Fetched] = field(default_factory=list)
    messages: int = 0
    nbytes: int = 0


@dataclass
class _Counters:
    messages: int = 0
    rows: int = 0
    bad: int = 0
    commits: int = 0
    stale: int = 0
    committed: dict[KafkaPartition, int | None] = field(default_factory=dict)


class _Consumer:
    """The batch being gathered, per partition, and how it is committed."""

    def __init__(
        self, sink: Sink, options: KafkaOptions, *, quarantine: KafkaQuarantine | None, evolve: bool, counters: _Counters
    ) -> None:
        self.sink = sink
        self.options = options
        self.quarantine = quarantine
        self.evolve = evolve
        self.counters = counters
        self.held: dict[KafkaPartition, _Partition] = {}
        self.source: KafkaSource | None = None
        self.batch_started: float | None = None
        self.rebalanced: float | None = None  # when partitions last came or went (None: never yet)

    # -- the source's callbacks (called inside poll) ------------------------------------------------

    def assigned(self, partitions: Sequence[KafkaPartition]) -> Mapping[KafkaPartition, int | None]:
        """The table's offset for each newly assigned partition, read fresh: another member may have
        committed it since this consumer last held it."""
        self.sink.refresh()
        offsets = {p: self.sink.committed_position(part=p.key) for p in partitions}
        for p, offset in offsets.items():
            self.held[p] = _Partition(previous=offset)
            self.counters.committed[p] = offset
        self.rebalanced = time.monotonic()
        log.info("assigned %s; the table holds %s", [p.key for p in partitions], {p.key: o for p, o in offsets.items()})
        return offsets

    def revoked(self, partitions: Sequence[KafkaPartition], lost: bool = False) -> None:
        """Commit what was read of `partitions` before they go (drop it if the assignment was lost)."""
        mine = [p for p in partitions if p in self.held]
        if not lost:
            self.flush(mine)
        else:
            log.warning("lost %s: dropping what was read of them (another member re-reads it)", [p.key for p in mine])
        for p in mine:
            del self.held[p]
        self.rebalanced = time.monotonic()

    # -- batches ------------------------------------------------------------------------------------

    def add(self, fetched: Sequence[Fetched], since: float | None = None) -> None:
        """Hold `fetched`; `since`: the earliest they can have arrived (a new batch's age counts from there)."""
        for f in fetched:
            state = self.held.get(f.partition)
            if state is None:
                continue  # a partition given up inside this poll
            held_up_to = state.fetched[-1].last_offset if state.fetched else state.previous
            if held_up_to is not None and f.first_offset <= held_up_to:
                # Messages from before a seek (the client may still hand some over): a part claims to
                # continue from `previous`, so it must never hold an offset at or below it.
                f = _after(f, held_up_to)
                if not len(f):
                    continue
            state.fetched.append(f)
            state.messages += len(f)
            state.nbytes += f.nbytes
            self.counters.messages += len(f)
            if self.batch_started is None:
                self.batch_started = since if since is not None else time.monotonic()

    def gathered(self) -> tuple[int, int]:
        return sum(s.messages for s in self.held.values()), sum(s.nbytes for s in self.held.values())

    def due(self, interval: CommitInterval, now: float) -> bool:
        if self.batch_started is None:
            return False
        messages, nbytes = self.gathered()
        return interval.reached(rows=messages, nbytes=nbytes, seconds=now - self.batch_started)

    def flush(self, partitions: Sequence[KafkaPartition] | None = None) -> None:
        """Commit the messages read of `partitions` (all held ones by default) as one commit."""
        chosen = [p for p in (self.held if partitions is None else partitions) if p in self.held and self.held[p].fetched]
        if not chosen:
            return
        handle = self.sink.handle
        schema = handle.arrow_schema() if handle is not None else None
        decoded: list[Decoded] = []
        for p in chosen:
            state = self.held[p]
            decoded.append(
                decode(
                    state.fetched, schema=schema, columns=self.options.columns, quarantine=self.quarantine is not None,
                    max_record_bytes=self.options.max_record_bytes, evolve=self.evolve,
                )
            )  # fmt: skip
        if self.quarantine is not None:
            self.counters.bad += self.quarantine.write(decoded)
        crash_point("kafka_before_commit")
        parts = [
            Part(d.partition.key, d.table, position=d.last_offset, previous=self.held[d.partition].previous) for d in decoded
        ]
        result = self.sink.write_parts(parts)
        crash_point("kafka_after_commit")
        applied: dict[KafkaPartition, int] = {}
        for d, r in zip(decoded, result.parts, strict=True):
            state = self.held[d.partition]
            state.fetched, state.messages, state.nbytes = [], 0, 0
            if r.reason:
                log.info("%s: %s", d.partition.key, r.reason)  # e.g. a lost answer the log showed had landed
            if r.status == "committed":
                state.previous = d.last_offset
                applied[d.partition] = d.last_offset
                self.counters.rows += d.table.num_rows
            else:
                # The table moved under this batch (another member committed the partition, or this
                # one's own earlier run did): continue from what the table holds, re-reading if needed.
                self.counters.stale += 1
                state.previous = r.committed_position
                log.info(
                    "%s: batch up to offset %d was %s (the table holds %s); reading on from there",
                    d.partition.key, d.last_offset, r.status, r.committed_position,
                )  # fmt: skip
                if r.committed_position != d.last_offset and self.source is not None:
                    # Read on from exactly what the table holds: the next batch continues from it.
                    self.source.seek(d.partition, r.committed_position)
            self.counters.committed[d.partition] = state.previous
        self.counters.commits += result.commits
        self.batch_started = None
        if any(s.fetched for s in self.held.values()):
            self.batch_started = time.monotonic()
        if applied and self.source is not None:
            self.source.commit_group_offsets(applied)
        for p, offset in applied.items():
            labels = {"app_id": self.sink.app_id, "table": self.sink.uri, "partition": p.key}
            METRICS.set("lakesink_source_offset", offset, **labels)
            high = self.source.cached_high(p) if self.source is not None else None
            if high is not None:
                METRICS.set("lakesink_source_lag_messages", max(0, high - offset - 1), **labels)


def _after(fetched: Fetched, offset: int) -> Fetched:
    """The messages of `fetched` after `offset`."""
    start = bisect_right(fetched.offsets, offset)
    return replace(
        fetched,
        offsets=fetched.offsets[start:],
        values=fetched.values[start:],
        keys=None if fetched.keys is None else fetched.keys[start:],
        timestamps=None if fetched.timestamps is None else fetched.timestamps[start:],
        nbytes=sum(len(v or b"") for v in fetched.values[start:]),
    )


def consume_kafka(
    table_uri: str,
    options: KafkaOptions,
    *,
    app_id: str,
    interval: CommitInterval = DEFAULT_KAFKA_INTERVAL,
    until_idle: float | None = None,
    storage_options: Mapping[str, str] | None = None,
    partition_by: Sequence[str] | None = None,
    evolve_schema: bool = False,
    bad_records: str | None = None,
    stop: threading.Event | None = None,
    max_messages: int | None = None,
    progress: Callable[[KafkaReport], None] | None = None,
    source_factory: Callable[..., KafkaSource] = KafkaSource,
) -> KafkaReport:
    """Consume `options.topics` as a member of `options.group` into the Delta table at `table_uri`
    until `stop` is set, no message came for `until_idle` seconds, or `max_messages` were read;
    every stop is at a commit boundary (what was read is committed first).

    Run any number of copies with the same group and app id: each gets a share of the partitions,
    and they commit to the table concurrently.

    Raises:
        SourceContractViolation: messages the table needs next were deleted by retention (the
            message names the partition and the gap; `options.accept_gap` skips it, reported).
        BadRecord: a message that is not one JSON object, without `bad_records`.
        SchemaMismatch: a message that does not fit the table (without `evolve_schema`).
        ConfigError: bad options, an unknown topic.
        SourceUnavailable, StorageUnavailable, CommitOutcomeUnknown: transient: rerun as is.
    """
    if not app_id:
        raise ConfigError("app_id must name the job: the table's offsets are kept under it")
    started = time.monotonic()
    stop = stop or threading.Event()
    storage = dict(storage_options or {})
    sink = Sink(table_uri, app_id=app_id, storage_options=storage, partition_by=partition_by, evolve_schema=evolve_schema)
    quarantine = KafkaQuarantine(bad_records, app_id=app_id, storage_options=storage) if bad_records else None
    counters = _Counters()
    consumer = _Consumer(sink, options, quarantine=quarantine, evolve=evolve_schema, counters=counters)
    stopped = ""
    try:
        source = source_factory(options, on_assign=consumer.assigned, on_revoke=consumer.revoked)
        consumer.source = source
        try:
            stopped = _run(
                source, consumer, interval=interval, until_idle=until_idle, stop=stop, max_messages=max_messages,
                progress=progress, report=lambda s: _report(consumer, source, s, started=started, app_id=app_id),
            )  # fmt: skip
            report = _report(consumer, source, stopped, started=started, app_id=app_id)
        finally:
            source.close()
    finally:
        sink.close()
        if quarantine is not None:
            quarantine.close()
    return report


def _run(
    source: KafkaSource,
    consumer: _Consumer,
    *,
    interval: CommitInterval,
    until_idle: float | None,
    stop: threading.Event,
    max_messages: int | None,
    progress: Callable[[KafkaReport], None] | None,
    report: Callable[[str], KafkaReport],
) -> str:
    started = last_message = time.monotonic()
    drained = started  # when a poll last returned: the messages it did not hand over arrived after it
    while True:
        now = time.monotonic()
        limit = max_messages is not None and consumer.counters.messages >= max_messages
        idle = until_idle is not None and _idle_for(now, last_message, consumer.rebalanced, started) >= until_idle
        if consumer.due(interval, now) or stop.is_set() or limit or idle:
            consumer.flush()
            if progress is not None:
                progress(report(""))
            if stop.is_set() or limit or idle:
                return "signal" if stop.is_set() else ("limit" if limit else "idle")
        wait = 0.5 if until_idle is None else max(0.05, min(0.5, until_idle - (now - last_message)))
        if consumer.batch_started is not None and interval.seconds is not None:
            # Back when the batch falls due, not up to `wait` later: a poll asking for more messages
            # than arrive within `wait` returns only at its timeout.
            wait = max(0.01, min(wait, consumer.batch_started + interval.seconds - now))
        want = _POLL_MESSAGES if max_messages is None else max(1, min(_POLL_MESSAGES, max_messages - consumer.counters.messages))
        fetched = source.poll(max_messages=want, timeout=wait)
        if fetched:
            last_message = time.monotonic()
            consumer.add(fetched, since=drained)
        drained = time.monotonic()


# Before its first assignment a member waits at least this long for one before it counts as idle: a
# group's first join can take seconds (Kafka's group.initial.rebalance.delay.ms is 3 s by default).
_FIRST_ASSIGNMENT_GRACE = 10.0


def _idle_for(now: float, last_message: float, rebalanced: float | None, started: float) -> float:
    """How long the member has been idle: since its last message or its last rebalance; before its
    first assignment, only what exceeds the grace period for the first join."""
    if rebalanced is None:
        return now - started - _FIRST_ASSIGNMENT_GRACE
    return now - max(last_message, rebalanced)


def _report(consumer: _Consumer, source: KafkaSource, stopped: str, *, started: float, app_id: str) -> KafkaReport:
    counters = consumer.counters
    return KafkaReport(
        app_id=app_id,
        table_uri=consumer.sink.uri,
        group=consumer.options.group,
        topics=tuple(consumer.options.topics),
        messages=counters.messages,
        rows=counters.rows,
        bad_records=counters.bad,
        commits=counters.commits,
        stale_batches=counters.stale,
        partitions=tuple(PartitionPosition(p.topic, p.partition, o) for p, o in sorted(counters.committed.items())),
        gaps=tuple(
            {"topic": g.partition.topic, "partition": g.partition.partition, "expected": g.expected, "low": g.low,
             "missing": g.missing}
            for g in source.gaps()
        ),
        stopped=stopped,
        seconds=time.monotonic() - started,
    )


def kafka_status(
    table_uri: str, options: KafkaOptions, *, app_id: str, storage_options: Mapping[str, str] | None = None
) -> dict[str, object]:
    """Per partition of `options.topics`: the table's offset (the last message it holds), the
    group's committed offset (next to read), the high watermark and the lag (offsets after the
    table's, up to the high watermark: messages not in the table yet, and on a transactional topic
    the markers and aborted messages among them, so a caught-up transactional partition shows a
    small lag), as JSON-ready values. Reads only: joins no group, commits nothing."""
    with Sink(table_uri, app_id=app_id, storage_options=dict(storage_options or {})) as sink:
        offsets = partition_offsets(options)
        rows = []
        for o in offsets:
            held = sink.committed_position(part=o.partition.key)
            next_offset = o.low if held is None else max(held + 1, o.low)
            rows.append(
                {
                    "topic": o.partition.topic, "partition": o.partition.partition, "table_offset": held,
                    "group_offset": o.group, "low_watermark": o.low, "high_watermark": o.high,
                    "lag": max(0, o.high - next_offset),
                }
            )  # fmt: skip
        return {
            "table_uri": sink.uri, "app_id": app_id, "group": options.group, "topics": list(options.topics),
            "lag": sum(int(r["lag"]) for r in rows), "partitions": rows,  # type: ignore[call-overload]
        }  # fmt: skip
