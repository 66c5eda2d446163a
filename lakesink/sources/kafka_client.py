"""librdkafka's side of the Kafka source: the options and the consumer configuration they make,
secrets kept out of every text, librdkafka's errors as lakesink errors, and the offsets `lakesink
status` reads without joining the group.

confluent-kafka is imported on first use (`client()`): `import lakesink` does not need it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from lakesink.config import DEFAULT_MAX_RECORD_BYTES, positive_int
from lakesink.errors import ConfigError, LakesinkError, SourceUnavailable
from lakesink.sources.kafka_decode import METADATA_COLUMNS, KafkaPartition

__all__ = [
    "REDACTED",
    "ErrorCodes",
    "KafkaOptions",
    "PartitionOffsets",
    "client",
    "group_offsets",
    "is_secret_option",
    "partition_offsets",
    "error_codes",
    "translated",
]

LIBRDKAFKA_LOG = logging.getLogger("lakesink.sources.kafka.librdkafka")
REDACTED = "***"
# Consumer options whose values never print: librdkafka's passwords, keys, tokens and secrets.
_SECRET_PARTS = ("password", "secret", "token", "ssl.key.pem", "sasl.oauthbearer.config", "ssl_engine_callback_data")
# Set by lakesink; a user value would break exactly once or another promise of this module.
_OWNED = {
    "bootstrap.servers": "pass bootstrap=HOST:PORT instead",
    "group.id": "pass group=NAME instead",
    "auto.offset.reset": "pass start='earliest' or start='latest' instead: lakesink decides where a partition "
    "starts, and turns off librdkafka's reset so that deleted offsets are never skipped quietly",
    "enable.auto.offset.store": "offsets are committed by lakesink after each Delta commit",
}
_DEFAULT_UNAVAILABLE_AFTER = 60.0


def is_secret_option(key: str) -> bool:
    """Whether a librdkafka option's value must never print (sasl.password, ssl.key.pem, *token*, ...)."""
    lowered = key.lower()
    return any(part in lowered for part in _SECRET_PARTS)


@dataclass(frozen=True, slots=True)
class KafkaOptions:
    """Where to read and how (`lakesink kafka` flags: --bootstrap, --topic, --group, --start,
    --consumer-option KEY=VALUE, --column, --accept-gap, --max-record-bytes).

    `start`: where a partition starts when neither the table nor the group has an offset for it.
    `consumer_options`: librdkafka settings (`fetch.max.bytes`, `security.protocol`, `sasl.*`, ...);
    they override lakesink's defaults except the ones that would break exactly once (refused).
    `columns`: metadata columns to add (any of METADATA_COLUMNS: key, topic, partition, offset, timestamp).
    `accept_gap`: continue at the low watermark when the offsets the table needs next were deleted.
    `unavailable_after`: seconds without an answer from any broker before `poll()` raises SourceUnavailable.
    """

    bootstrap: str
    topics: tuple[str, ...]
    group: str
    start: Literal["earliest", "latest"] = "earliest"
    consumer_options: Mapping[str, str] = field(default_factory=dict)
    columns: tuple[str, ...] = ()
    accept_gap: bool = False
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    unavailable_after: float = _DEFAULT_UNAVAILABLE_AFTER

    def __post_init__(self) -> None:
        if not isinstance(self.bootstrap, str) or not self.bootstrap.strip():
            raise ConfigError("Kafka needs bootstrap=HOST:PORT[,HOST:PORT...] (--bootstrap)", options=("bootstrap",))
        topics = (self.topics,) if isinstance(self.topics, str) else tuple(self.topics)
        if not topics or not all(isinstance(t, str) and t and "/" not in t and not t.startswith("^") for t in topics):
            raise ConfigError(f"Kafka needs topics=(NAME, ...) of plain topic names (--topic), not {self.topics!r}")
        object.__setattr__(self, "topics", tuple(dict.fromkeys(topics)))
        if not isinstance(self.group, str) or not self.group:
            raise ConfigError(
                "Kafka needs group=NAME (--group): the consumer group that shares the partitions", options=("group",)
            )
        if self.start not in ("earliest", "latest"):
            raise ConfigError(f"start must be 'earliest' or 'latest', not {self.start!r}", options=("start",))
        columns = (self.columns,) if isinstance(self.columns, str) else tuple(self.columns)
        unknown = [c for c in columns if c not in METADATA_COLUMNS]
        if unknown:
            raise ConfigError(f"unknown Kafka metadata column(s) {unknown}: choose from {', '.join(METADATA_COLUMNS)}")
        object.__setattr__(self, "columns", tuple(dict.fromkeys(columns)))
        positive_int(self.max_record_bytes, what="max_record_bytes", unit="bytes")
        if (
            isinstance(self.unavailable_after, bool)
            or not isinstance(self.unavailable_after, (int, float))
            or self.unavailable_after <= 0
        ):
            raise ConfigError(f"unavailable_after must be a positive number of seconds, not {self.unavailable_after!r}")
        object.__setattr__(self, "consumer_options", _checked_options(self.consumer_options))

    def __repr__(self) -> str:
        shown = {k: (REDACTED if is_secret_option(k) else v) for k, v in self.consumer_options.items()}
        return (
            f"KafkaOptions(bootstrap={self.bootstrap!r}, topics={self.topics!r}, group={self.group!r}, start={self.start!r}, "
            f"consumer_options={shown!r}, columns={self.columns!r}, accept_gap={self.accept_gap!r}, "
            f"max_record_bytes={self.max_record_bytes!r}, unavailable_after={self.unavailable_after!r})"
        )

    __str__ = __repr__

    @property
    def cooperative(self) -> bool:
        """Whether rebalances are incremental (cooperative-sticky, or the KIP-848 consumer protocol)."""
        strategy = self.consumer_options.get("partition.assignment.strategy", "")
        return "cooperative" in strategy or self.consumer_options.get("group.protocol", "classic") == "consumer"

    def consumer_config(self) -> dict[str, str]:
        """librdkafka's configuration: lakesink's settings overridden by `consumer_options`."""
        return {
            "bootstrap.servers": self.bootstrap,
            "group.id": self.group,
            "client.id": "lakesink",
            "enable.auto.commit": "false",
            "enable.auto.offset.store": "false",
            "auto.offset.reset": "error",
            "isolation.level": "read_committed",
            "enable.partition.eof": "false",
            **self.consumer_options,
        }

    def redact(self, text: str) -> str:
        """`text` with every secret option value replaced."""
        secrets = sorted(
            (v for k, v in self.consumer_options.items() if is_secret_option(k) and len(v) >= 4), key=len, reverse=True
        )
        for secret in secrets:
            text = text.replace(secret, REDACTED)
        return text


def _checked_options(options: Mapping[str, object]) -> dict[str, str]:
    checked: dict[str, str] = {}
    for key, value in dict(options).items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"consumer option names are strings, not {key!r}")
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        if key in _OWNED:
            raise ConfigError(f"consumer option {key!r} is set by lakesink: {_OWNED[key]}")
        if key == "enable.auto.commit" and text.strip().lower() not in ("false", "0"):
            raise ConfigError(
                "consumer option enable.auto.commit must stay false: the table holds the positions, and a group "
                "offset committed before its rows are in the table would lose them for lag tools and fallbacks"
            )
        checked[key] = text
    return checked


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    """What the broker knows of one partition: watermarks and the group's committed offset (next to read)."""

    partition: KafkaPartition
    low: int
    high: int
    group: int | None


@functools.cache
def client() -> Any:
    try:
        import confluent_kafka
    except ImportError:
        raise ConfigError("the Kafka source needs confluent-kafka: pip install 'lakesink[kafka]'") from None
    return confluent_kafka


@dataclass(frozen=True, slots=True)
class ErrorCodes:
    """The librdkafka error codes this package acts on (its local ones are spelled with a leading
    underscore in confluent-kafka: `KafkaError._TRANSPORT`)."""

    partition_eof: int
    fatal: int  # a fatal error reported on a message or event (its cause is in the text: e.g. fenced)
    auto_offset_reset: int
    state: int  # a partition that cannot seek (stopped after an offset out of range)
    unknown_topic: tuple[int, ...]
    connection: tuple[int, ...]  # a broker unreachable or not answering: librdkafka retries
    refusals: tuple[int, ...]  # the broker said no (credentials, access, a fenced member): a person must act


@functools.cache
def error_codes() -> ErrorCodes:
    code = vars(client().KafkaError)
    return ErrorCodes(
        partition_eof=code["_PARTITION_EOF"],
        fatal=code["_FATAL"],
        auto_offset_reset=code["_AUTO_OFFSET_RESET"],
        state=code["_STATE"],
        unknown_topic=(code["UNKNOWN_TOPIC_OR_PART"], code["_UNKNOWN_TOPIC"], code["_UNKNOWN_PARTITION"]),
        connection=(code["_ALL_BROKERS_DOWN"], code["_TRANSPORT"], code["_RESOLVE"], code["_TIMED_OUT"]),
        refusals=(
            code["_AUTHENTICATION"],
            code["SASL_AUTHENTICATION_FAILED"],
            code["TOPIC_AUTHORIZATION_FAILED"],
            code["GROUP_AUTHORIZATION_FAILED"],
            code["CLUSTER_AUTHORIZATION_FAILED"],
            code["_FENCED"],
            code["FENCED_INSTANCE_ID"],
        ),
    )


def translated(ck: Any, options: KafkaOptions, error: Any, *, doing: str, trouble: str | None = None) -> LakesinkError:
    """A lakesink error for a librdkafka error: refused access or credentials are a ConfigError,
    anything else a SourceUnavailable (librdkafka retries what can be retried before it says so)."""
    text = options.redact(error.str() if hasattr(error, "str") else str(error))
    code = error.code() if hasattr(error, "code") else None
    if "fenced" in text.lower():
        return ConfigError(
            f"Kafka at {options.bootstrap}: {text}. Another consumer took this one's place in group {options.group} (the "
            "same group.instance.id, or a newer transactional member): this copy stops without committing what it held; "
            "run one process per group.instance.id."
        )
    if code in error_codes().refusals:
        return ConfigError(
            f"Kafka at {options.bootstrap} refused {doing}: {text}. Check the credentials and ACLs (consumer options "
            "sasl.*, ssl.*), group.instance.id, and the topic names."
        )
    last = f" (last connection error: {trouble})" if trouble and trouble != text else ""
    return SourceUnavailable(
        f"Kafka at {options.bootstrap}: {doing} failed: {text}{last}. Check that the broker runs and bootstrap=HOST:PORT; "
        "nothing was lost: rerun.",
        options=("bootstrap",),
    )


def group_offsets(
    consumer: Any, ck: Any, options: KafkaOptions, partitions: list[KafkaPartition], timeout: float
) -> dict[KafkaPartition, int | None]:
    if not partitions:
        return {}
    tps = [ck.TopicPartition(p.topic, p.partition) for p in partitions]
    try:
        answer = consumer.committed(tps, timeout=timeout)
    except ck.KafkaException as exc:
        raise translated(ck, options, exc.args[0], doing="reading the group's offsets") from None
    offsets: dict[KafkaPartition, int | None] = {}
    for tp in answer:
        if tp.error is not None:
            raise translated(ck, options, tp.error, doing=f"reading the group's offset of {tp.topic}/{tp.partition}")
        offsets[KafkaPartition(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else None
    return offsets


def partition_offsets(
    options: KafkaOptions, *, consumer_factory: Callable[[dict[str, Any]], Any] | None = None
) -> list[PartitionOffsets]:
    """Every partition of `options.topics` with its watermarks and the group's committed offset,
    for `lakesink status` (joins no group: reads only).

    Raises:
        ConfigError: a topic does not exist; SourceUnavailable: the broker did not answer.
    """
    ck = client()
    consumer = (consumer_factory or ck.Consumer)({**options.consumer_config(), "logger": LIBRDKAFKA_LOG})
    timeout = min(options.unavailable_after, 30.0)
    try:
        partitions = list(_partitions(consumer, ck, options, timeout))
        group = group_offsets(consumer, ck, options, partitions, timeout)
        result = []
        for partition in partitions:
            tp = ck.TopicPartition(partition.topic, partition.partition)
            try:
                marks = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
            except ck.KafkaException as exc:
                raise translated(ck, options, exc.args[0], doing=f"reading the watermarks of {partition.key}") from None
            if marks is None:
                raise translated(
                    ck, options, f"no answer within {timeout:g}s", doing=f"reading the watermarks of {partition.key}"
                )
            result.append(PartitionOffsets(partition, int(marks[0]), int(marks[1]), group.get(partition)))
        return result
    finally:
        consumer.close()


def _partitions(consumer: Any, ck: Any, options: KafkaOptions, timeout: float) -> Iterator[KafkaPartition]:
    try:
        metadata = consumer.list_topics(timeout=timeout)
    except ck.KafkaException as exc:
        raise translated(ck, options, exc.args[0], doing="connecting") from None
    for topic in options.topics:
        if topic not in metadata.topics:
            raise ConfigError(
                f"Kafka topic {topic} does not exist on {options.bootstrap}: fix topics= (--topic)", options=("topics",)
            )
        for number in sorted(metadata.topics[topic].partitions):
            yield KafkaPartition(topic, number)
