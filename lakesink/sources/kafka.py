"""Kafka topics as a positioned source, through confluent-kafka (librdkafka) in a consumer group.

Position contract (the table is the truth, never the broker's group offsets):
    A partition's position is the offset of the last message applied to the table (quarantined
    ones count). On assignment, each partition starts at the table's position + 1 (`on_assign`
    says it); where the table has none, at the group's committed offset, else at `start`
    (the low or the high watermark). Offsets are not dense (transaction markers, compacted topics):
    a start is where reading begins, never a message assumed to exist.

What is checked before reading a partition, and whenever the broker says an offset is out of range:
    - the start is not below the low watermark: the messages in between were deleted (retention,
      DeleteRecords) and were never ingested. That is a SourceContractViolation naming the gap,
      unless `accept_gap` (then reading continues at the low watermark, logged and in `gaps()`);
    - the start is not above the high watermark: a table ahead of its topic means the topic was
      deleted and recreated (or is another cluster's): a SourceContractViolation.
    librdkafka's own reset (`auto.offset.reset`) is off ("error"), so no offset is ever skipped quietly.

Rebalances: librdkafka calls back inside `poll()`. A message fetched before a rebalance may come in
the same batch as messages fetched after it, so `poll()` drops the messages of every partition whose
assignment changed during the call and seeks those still assigned back to their new start: a
partition's messages are handed out in offset order from its start, and never from an assignment
that has ended. Errors raised in a callback (ours or the ingest's) propagate out of `poll()`.

Consumer settings: auto-commit off (positions live in the table; the group's offsets are committed
after each Delta commit for lag tools, `commit_group_offsets`), offsets stored by nothing,
isolation.level=read_committed (aborted and open transactions never land) unless overridden.

confluent-kafka is imported by the constructor: `import lakesink` does not need it
(`pip install 'lakesink[kafka]'`). Secret consumer options (passwords, tokens, keys) never appear in
`repr`, logs or errors.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from lakesink.config import positive_int
from lakesink.errors import ConfigError, InternalError, LakesinkError, SourceContractViolation, SourceUnavailable
from lakesink.sources.kafka_client import (
    LIBRDKAFKA_LOG,
    KafkaOptions,
    PartitionOffsets,
    client,
    error_codes,
    group_offsets,
    is_secret_option,
    partition_offsets,
    translated,
)
from lakesink.sources.kafka_decode import Decoded, Fetched, KafkaPartition, KafkaRejected, decode

__all__ = [
    "Decoded",
    "Fetched",
    "KafkaGap",
    "KafkaOptions",
    "KafkaPartition",
    "KafkaRejected",
    "KafkaSource",
    "OnAssign",
    "OnRevoke",
    "PartitionOffsets",
    "decode",
    "is_secret_option",
    "partition_offsets",
]

log = logging.getLogger(__name__)
_PROBE_TIMEOUT = 2.0  # of a metadata request that checks whether the broker still answers
_MAX_PROBE_INTERVAL = 10.0  # between checks while nothing arrives; 1 s once a request failed or librdkafka reported trouble


@dataclass(frozen=True, slots=True)
class KafkaGap:
    """Offsets [expected, low) of a partition, deleted before they were ingested, skipped by `accept_gap`."""

    partition: KafkaPartition
    expected: int  # the offset the table (or the group) needed next
    low: int  # the low watermark, where reading continued

    @property
    def missing(self) -> int:
        """Offsets skipped (at most this many messages: offsets are not dense)."""
        return self.low - self.expected


class OnAssign(Protocol):
    """Called with partitions just assigned; returns the table's last applied offset of each (None: none)."""

    def __call__(self, partitions: Sequence[KafkaPartition]) -> Mapping[KafkaPartition, int | None]: ...


class OnRevoke(Protocol):
    """Called with partitions about to be taken away. `lost`: they may already be another member's
    (session timeout, poll interval exceeded): drop what was read from them, commit nothing."""

    def __call__(self, partitions: Sequence[KafkaPartition], *, lost: bool) -> None: ...


class KafkaSource:
    """A member of `options.group` reading `options.topics`; partitions come and go with rebalances.

    Call `poll()` often (at least every max.poll.interval.ms, 5 minutes by default): the rebalance
    callbacks run inside it. `consumer_factory` (tests) makes the consumer from librdkafka's config.
    """

    def __init__(
        self,
        options: KafkaOptions,
        *,
        on_assign: OnAssign,
        on_revoke: OnRevoke,
        consumer_factory: Callable[[dict[str, Any]], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Subscribes to the topics once the broker has answered and every topic exists.

        Raises:
            ConfigError: confluent-kafka is missing, librdkafka refuses an option, or a topic does not exist.
            SourceUnavailable: no broker answered within `options.unavailable_after` seconds.
        """
        self.options = options
        self._ck = client()
        self._codes = error_codes()
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._clock = clock
        self._assigned: dict[KafkaPartition, int] = {}  # assigned partition -> next offset to hand out
        self._changed: set[KafkaPartition] = set()  # (re)assigned or revoked during the current consume()
        self._gaps: list[KafkaGap] = []
        self._failed: LakesinkError | None = None  # a fatal error librdkafka reported, raised by the next poll()
        self._broken: BaseException | None = None  # a rebalance callback raised: the assignment is not ours
        self._trouble: str | None = None  # the first connection error reported since a broker last answered
        self._failing_since: float | None = None  # when the first sign of it came (None: the broker answers)
        self._closed = self._closing = False
        self._probed = clock()  # when a broker last answered or was asked
        config: dict[str, Any] = {
            **options.consumer_config(),
            "error_cb": self._error,
            "on_commit": self._group_committed,
            "logger": LIBRDKAFKA_LOG,
        }
        try:
            self._consumer = (consumer_factory or self._ck.Consumer)(config)
        except self._ck.KafkaException as exc:
            raise ConfigError(f"librdkafka refused the consumer options: {self._text(exc.args[0])}") from None
        try:
            self._check_topics()
            self._consumer.subscribe(
                list(options.topics), on_assign=self._assigned_cb, on_revoke=self._revoked_cb, on_lost=self._lost_cb
            )
        except BaseException:
            self._closed = True
            self._consumer.close()
            raise

    def __enter__(self) -> KafkaSource:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------------

    def poll(self, *, max_messages: int, timeout: float) -> list[Fetched]:
        """The messages that arrived, one Fetched per partition (offset order), within `timeout` seconds.

        Rebalance callbacks run in here. Messages of partitions not assigned when it returns are
        dropped, and so are those of partitions whose assignment changed during the call (they are
        read again from the new start).

        Raises:
            SourceUnavailable: no broker answered for `unavailable_after` seconds, or a fatal client error.
            SourceContractViolation: the offsets the table needs next were deleted (and not `accept_gap`),
                or the table is ahead of the partition.
            ConfigError: a topic vanished, access was refused, or credentials were rejected.
            Whatever `on_assign` / `on_revoke` raised.
        """
        self._usable()
        positive_int(max_messages, what="max_messages")
        self._changed.clear()
        try:
            messages = self._consumer.consume(num_messages=min(max_messages, 1_000_000), timeout=timeout)
        except self._ck.KafkaException as exc:
            raise self._translated(exc.args[0]) from None
        if self._failed is not None:
            raise self._failed
        fetched = self._grouped(messages)
        self._check_alive(answered=bool(messages))
        return fetched

    def _grouped(self, messages: list[Any]) -> list[Fetched]:
        keys = "key" in self.options.columns
        stamps = "timestamp" in self.options.columns
        groups: dict[tuple[str, int], _Gathering] = {}
        where: tuple[str, int] | None = None
        gathering = _Gathering()
        errors: list[Any] = []
        for message in messages:
            if message.error() is not None:
                errors.append(message)
                continue
            here = (message.topic(), message.partition())
            if here != where:
                where = here
                gathering = groups.setdefault(here, _Gathering())
            gathering.offsets.append(message.offset())
            gathering.values.append(message.value())
            if keys:
                gathering.keys.append(message.key())
            if stamps:
                kind, stamp = message.timestamp()
                gathering.timestamps.append(stamp if kind else None)
        fetched: list[Fetched] = []
        reread: list[KafkaPartition] = []
        for (topic, number), got in groups.items():
            partition = KafkaPartition(topic, number)
            start = self._assigned.get(partition)
            if start is None:
                continue  # revoked: another member reads it from the table's position
            if partition in self._changed:
                reread.append(partition)  # fetched partly before the rebalance: read again from its start
                continue
            first = bisect_left(got.offsets, start)  # before `start`: fetched before a seek
            if first == len(got.offsets):
                continue
            got.trim(first)
            self._assigned[partition] = got.offsets[-1] + 1
            fetched.append(got.fetched(partition, keys=keys, stamps=stamps))
        for partition in reread:
            self._reposition(partition, self._assigned[partition])
        for message in errors:  # after the positions moved past this batch: a reassignment starts from them
            self._message_error(message)
        return fetched

    def seek(self, partition: KafkaPartition, after: int | None) -> None:
        """Read `partition` again from offset `after` + 1 (None: as a new assignment without a table
        offset would start). Not assigned any more: nothing to do.

        Raises:
            SourceContractViolation, SourceUnavailable: as `poll()` (the start is checked against the watermarks).
        """
        self._usable()
        if partition not in self._assigned:
            return
        start = self._starts([partition], {partition: after})[partition]
        self._reposition(partition, start)

    # -- positions and offsets ----------------------------------------------------------------------

    def assignment(self) -> list[KafkaPartition]:
        """The partitions this member holds now, sorted."""
        return sorted(self._assigned)

    def watermarks(self, partition: KafkaPartition) -> tuple[int, int]:
        """(low, high): the oldest offset still stored and the offset the next message will get.

        Raises:
            SourceUnavailable: the broker did not answer.
        """
        tp = self._ck.TopicPartition(partition.topic, partition.partition)
        try:
            marks = self._consumer.get_watermark_offsets(tp, timeout=self._request_timeout, cached=False)
        except self._ck.KafkaException as exc:
            raise self._translated(exc.args[0], doing=f"reading the watermarks of {partition.key}") from None
        if marks is None:
            raise self._unavailable(f"reading the watermarks of {partition.key}")
        return int(marks[0]), int(marks[1])

    def cached_high(self, partition: KafkaPartition) -> int | None:
        """The high watermark the last fetch of `partition` reported (no request; None if unknown)."""
        tp = self._ck.TopicPartition(partition.topic, partition.partition)
        try:
            marks = self._consumer.get_watermark_offsets(tp, cached=True)
        except self._ck.KafkaException:
            return None
        return int(marks[1]) if marks is not None and marks[1] >= 0 else None

    def group_offsets(self, partitions: Sequence[KafkaPartition]) -> dict[KafkaPartition, int | None]:
        """The group's committed offset of each partition (the next to read; None: none).

        Raises:
            SourceUnavailable: the group coordinator did not answer.
        """
        return group_offsets(self._consumer, self._ck, self.options, list(partitions), self._request_timeout)

    def commit_group_offsets(self, offsets: Mapping[KafkaPartition, int]) -> None:
        """Commit last + 1 of each partition still assigned to the group, asynchronously: a failure is
        logged, never raised (the table holds the positions; the group's offsets are for lag tools)."""
        if self._closed:
            return
        tps = [self._ck.TopicPartition(p.topic, p.partition, last + 1) for p, last in offsets.items() if p in self._assigned]
        if not tps:
            return
        try:
            self._consumer.commit(offsets=tps, asynchronous=True)
        except self._ck.KafkaException as exc:
            log.warning(
                "Kafka group %s: offsets not committed (the table has them): %s", self.options.group, self._text(exc.args[0])
            )

    def gaps(self) -> list[KafkaGap]:
        """The gaps skipped with `accept_gap` so far, in the order they were found."""
        return list(self._gaps)

    def close(self) -> None:
        """Leave the group (the other members get the partitions). `on_revoke` is not called: the
        caller commits or drops what it read before closing."""
        if self._closed:
            return
        self._closed = self._closing = True
        try:
            self._consumer.close()
        except (self._ck.KafkaException, RuntimeError) as exc:
            log.warning("Kafka consumer did not close cleanly: %s", self._text(exc))
        self._assigned.clear()

    # -- rebalances ---------------------------------------------------------------------------------

    def _assigned_cb(self, _consumer: Any, tps: list[Any]) -> None:
        # librdkafka passes its consumer; self._consumer is the same one (or the test's wrapper of it)
        try:
            partitions = [KafkaPartition(tp.topic, tp.partition) for tp in tps]
            self._answered(self._clock())
            if not partitions or self._closing:
                return
            table = dict(self._on_assign(partitions))
            starts = self._starts(partitions, table)
            chosen = [self._ck.TopicPartition(p.topic, p.partition, starts[p]) for p in partitions]
            if self.options.cooperative:
                self._consumer.incremental_assign(chosen)
            else:
                self._consumer.assign(chosen)
                self._assigned.clear()
            self._assigned.update(starts)
            self._changed.update(partitions)
            log.info("Kafka group %s: assigned %s", self.options.group, ", ".join(f"{p.key}@{starts[p]}" for p in partitions))
        except BaseException as exc:
            self._broken = exc
            raise

    def _revoked_cb(self, _consumer: Any, tps: list[Any]) -> None:
        self._revoke(tps, lost=False)

    def _lost_cb(self, _consumer: Any, tps: list[Any]) -> None:
        self._revoke(tps, lost=True)

    def _revoke(self, tps: list[Any], *, lost: bool) -> None:
        partitions = [KafkaPartition(tp.topic, tp.partition) for tp in tps]
        try:
            if partitions and not self._closing:
                log.info(
                    "Kafka group %s: %s %s",
                    self.options.group,
                    "lost" if lost else "revoked",
                    ", ".join(p.key for p in partitions),
                )
                self._on_revoke(partitions, lost=lost)
        except BaseException as exc:
            self._broken = exc
            raise
        finally:
            for partition in partitions:
                self._assigned.pop(partition, None)
            self._changed.update(partitions)
            if self.options.cooperative:
                self._consumer.incremental_unassign(tps)
            else:
                self._consumer.unassign()

    def _starts(self, partitions: list[KafkaPartition], table: Mapping[KafkaPartition, int | None]) -> dict[KafkaPartition, int]:
        """Where each partition starts: after the table's offset, else at the group's, else at `start`;
        checked against the watermarks (module docstring)."""
        fallback = [p for p in partitions if table.get(p) is None]
        group = self.group_offsets(fallback) if fallback else {}
        starts: dict[KafkaPartition, int] = {}
        for partition in partitions:
            low, high = self.watermarks(partition)
            applied = table.get(partition)
            if applied is not None:
                start, whose = applied + 1, f"the table's last offset is {applied}, so its next offset"
            elif (committed := group.get(partition)) is not None:
                start, whose = committed, "the group's committed offset (the table has none)"
            else:
                starts[partition] = low if self.options.start == "earliest" else high
                continue
            if start > high:
                raise self._ahead(partition, whose, start, high)
            starts[partition] = self._gap(partition, start, low, whose) if start < low else start
        return starts

    def _gap(self, partition: KafkaPartition, expected: int, low: int, whose: str) -> int:
        """Where reading continues when offsets [expected, low) were deleted: nowhere, unless `accept_gap`."""
        gap = KafkaGap(partition, expected, low)
        if not self.options.accept_gap:
            raise SourceContractViolation(
                f"{partition.key}: {whose} is {expected}, but the broker has deleted every message below offset {low} "
                f"(retention or DeleteRecords): offsets {expected} to {low - 1} ({gap.missing} offsets) were never "
                "ingested and are gone. Nothing was read from this partition. To continue from offset "
                f"{low} and accept the loss, pass accept_gap=True (the gap is logged and reported).",
                options=("accept_gap",),
            )
        log.warning(
            "ACCEPTED GAP in %s: offsets %d to %d (%d offsets) were deleted before they were ingested; "
            "continuing at the low watermark %d (accept_gap)",
            partition.key,
            expected,
            low - 1,
            gap.missing,
            low,
        )
        self._gaps.append(gap)
        return low

    @staticmethod
    def _ahead(partition: KafkaPartition, whose: str, start: int, high: int) -> SourceContractViolation:
        return SourceContractViolation(
            f"{partition.key}: {whose} is {start}, beyond the end of the partition (high watermark {high}): the "
            "topic was deleted and recreated, or this is another cluster's. Nothing was read from this partition. "
            "Ingest the new topic into a new table or with a new app id."
        )

    def _reposition(self, partition: KafkaPartition, offset: int) -> None:
        """Fetch `partition` from `offset` on. A partition librdkafka stopped (offset out of range)
        cannot seek, and is assigned again instead (with the others at their positions, when eager)."""
        self._assigned[partition] = offset
        tp = self._ck.TopicPartition(partition.topic, partition.partition, offset)
        try:
            self._consumer.seek(tp)
            return
        except self._ck.KafkaException as exc:
            if exc.args[0].code() != self._codes.state:
                raise self._translated(exc.args[0], doing=f"seeking {partition.key} to {offset}") from None
        try:
            if self.options.cooperative:
                self._consumer.incremental_unassign([tp])
                self._consumer.incremental_assign([tp])
            else:
                self._consumer.assign([self._ck.TopicPartition(p.topic, p.partition, at) for p, at in self._assigned.items()])
        except self._ck.KafkaException as exc:
            raise self._translated(exc.args[0], doing=f"assigning {partition.key} at {offset}") from None

    # -- errors and liveness ------------------------------------------------------------------------

    def _message_error(self, message: Any) -> None:
        error = message.error()
        code = error.code()
        codes = self._codes
        if code == codes.partition_eof:
            return
        if code == codes.auto_offset_reset:
            self._out_of_range(KafkaPartition(message.topic(), message.partition()))
            return
        if code in codes.unknown_topic:
            raise ConfigError(
                f"Kafka topic {message.topic()} is not on {self.options.bootstrap} (any more): {self._text(error)}. "
                "Check topics= (--topic); nothing was lost, the table keeps its positions.",
                options=("topics",),
            )
        if error.fatal() or code == codes.fatal or code in codes.refusals:
            raise self._translated(error)
        log.warning("Kafka: %s", self._text(error))

    def _out_of_range(self, partition: KafkaPartition) -> None:
        """librdkafka's fetch from the partition's position was refused as out of range."""
        expected = self._assigned.get(partition)
        if expected is None:
            return
        low, high = self.watermarks(partition)
        whose = "the next offset to read"
        if expected > high:
            raise self._ahead(partition, whose, expected, high)
        self._reposition(partition, self._gap(partition, expected, low, whose) if expected < low else expected)

    def _error(self, error: Any) -> None:
        """librdkafka's error_cb: connection trouble (retried by librdkafka) or a fatal error."""
        codes = self._codes
        code = error.code()
        if error.fatal() or code == codes.fatal or code in codes.refusals:
            self._failed = self._failed or self._translated(error)
        elif code in codes.connection:
            if self._trouble is None:
                log.warning("Kafka broker %s: %s (retrying)", self.options.bootstrap, self._text(error))
                self._trouble = self._text(error)
            if self._failing_since is None:
                self._failing_since = self._clock()
        else:
            log.warning("Kafka: %s", self._text(error))

    def _group_committed(self, error: Any, tps: list[Any]) -> None:
        problems = [f"{tp.topic}/{tp.partition}: {tp.error}" for tp in tps or [] if tp.error is not None]
        if error is not None or problems:
            detail = self._text(error) if error is not None else "; ".join(problems)
            log.warning("Kafka group %s: offsets not committed (the table has them): %s", self.options.group, self._text(detail))

    def _check_alive(self, *, answered: bool) -> None:
        """SourceUnavailable once no broker has answered for `unavailable_after` seconds.

        Messages prove that a broker answers. While none come, a metadata request asks, every few
        seconds, and every second once librdkafka reported connection trouble or a request failed;
        the time counts from the first such sign (time spent outside `poll()` does not count).
        """
        now = self._clock()
        if answered:
            self._answered(now)
            return
        interval = 1.0 if self._failing_since is not None else min(_MAX_PROBE_INTERVAL, self.options.unavailable_after / 3)
        if now - self._probed < interval:
            return
        self._probed = now
        try:
            self._consumer.list_topics(self.options.topics[0], timeout=min(_PROBE_TIMEOUT, self.options.unavailable_after))
        except self._ck.KafkaException as exc:
            self._trouble = self._trouble or self._text(exc.args[0])
            self._failing_since = self._failing_since if self._failing_since is not None else now
        else:
            self._answered(self._clock())
            return
        if self._clock() - self._failing_since >= self.options.unavailable_after:
            raise self._unavailable("reading")

    def _answered(self, now: float) -> None:
        self._probed = now
        self._failing_since = self._trouble = None

    def _check_topics(self) -> None:
        try:
            metadata = self._consumer.list_topics(timeout=self.options.unavailable_after)
        except self._ck.KafkaException as exc:
            raise self._translated(exc.args[0], doing="connecting") from None
        missing = [t for t in self.options.topics if t not in metadata.topics]
        if missing:
            raise ConfigError(
                f"Kafka topic(s) {', '.join(missing)} do not exist on {self.options.bootstrap}: create them, or fix "
                "topics= (--topic)",
                options=("topics",),
            )
        self._answered(self._clock())

    def _usable(self) -> None:
        if self._closed:
            raise InternalError("the Kafka source is closed")
        if self._broken is not None:
            raise InternalError(
                f"the Kafka source cannot go on after a rebalance callback raised {type(self._broken).__name__}: "
                "its assignment is no longer known; close it and make a new one"
            )
        if self._failed is not None:
            raise self._failed

    @property
    def _request_timeout(self) -> float:
        return min(self.options.unavailable_after, 30.0)

    def _text(self, error: object) -> str:
        return self.options.redact(str(error.str() if hasattr(error, "str") else error))

    def _unavailable(self, doing: str) -> SourceUnavailable:
        trouble = f" (last error: {self._trouble})" if self._trouble else ""
        return SourceUnavailable(
            f"Kafka: no broker at {self.options.bootstrap} answered for {self.options.unavailable_after:g}s while "
            f"{doing}{trouble}. Check that the broker runs and bootstrap=HOST:PORT; nothing was lost: rerun.",
            options=("bootstrap",),
        )

    def _translated(self, error: Any, *, doing: str = "reading") -> LakesinkError:
        return translated(self._ck, self.options, error, doing=doing, trouble=self._trouble)


@dataclass(slots=True)
class _Gathering:
    offsets: list[int] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    timestamps: list[int | None] = field(default_factory=list)

    def trim(self, first: int) -> None:
        if first:
            for items in (self.offsets, self.values, self.keys, self.timestamps):
                del items[:first]

    def fetched(self, partition: KafkaPartition, *, keys: bool, stamps: bool) -> Fetched:
        nbytes = sum(map(len, filter(None, self.values))) + (sum(map(len, filter(None, self.keys))) if keys else 0)
        return Fetched(
            partition,
            self.offsets,
            self.values,
            keys=self.keys if keys else None,
            timestamps=self.timestamps if stamps else None,
            nbytes=nbytes,
        )
