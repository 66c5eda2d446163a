"""The Kafka source (lakesink.sources.kafka): decoding messages into Arrow, and a consumer-group member
against a real Kafka-protocol broker (noida-db, started here on a free port; no mock of Kafka).

Decoding needs no broker: values are JSON objects, refused ones named by topic/partition@offset.
The broker tests check where partitions start (the table's offset + 1, else the group's, else
`start`), seeks, group offsets, deleted offsets (retention) refused or accepted, read_committed,
rebalances between two members, errors raised in callbacks, an unreachable broker, and secrets.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from lakesink.errors import BadRecord, ConfigError, InternalError, SourceContractViolation, SourceUnavailable, StorageUnavailable
from lakesink.sources.kafka import (
    Fetched,
    KafkaOptions,
    KafkaPartition,
    KafkaSource,
    decode,
    is_secret_option,
    partition_offsets,
)

ck = pytest.importorskip("confluent_kafka")
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

P0 = KafkaPartition("orders", 0)


def fetched(
    values: Sequence[bytes | None], *, first: int = 0, step: int = 1, partition: KafkaPartition = P0, **extra: Any
) -> Fetched:
    offsets = list(range(first, first + step * len(values), step))
    return Fetched(partition, offsets, list(values), nbytes=sum(len(v or b"") for v in values), **extra)


def decoded(values: Sequence[bytes | None], **kwargs: Any) -> Any:
    options: dict[str, Any] = {"schema": None, "quarantine": True, "max_record_bytes": 1 << 20}
    options.update(kwargs)
    return decode([fetched(values, step=2)], **options)


# -- decoding --------------------------------------------------------------------------------------------


def test_good_messages_decode_in_offset_order_in_one_pyarrow_pass() -> None:
    values = [json.dumps({"id": i, "name": f"n{i}", "amount": i + 0.5}).encode() for i in range(5000)]
    result = decode(
        [fetched(values[:2000], first=10), fetched(values[2000:], first=2010)],
        schema=None,
        quarantine=False,
        max_record_bytes=1024,
    )
    assert result.table.column("id").to_pylist() == list(range(5000))
    assert result.table.schema.field("amount").type == pa.float64()
    assert (result.first_offset, result.last_offset, result.messages, result.rejected) == (10, 5009, 5000, ())


def test_every_kind_of_bad_message_is_refused_by_its_offset_and_the_rest_is_kept() -> None:
    values = [
        b'{"id": 1}',  # offset 0
        b"[1, 2]",  # 2: an array
        b"42",  # 4: a scalar
        None,  # 6: a tombstone
        b"",  # 8
        b"  \r ",  # 10: whitespace only
        b'{"id": 2}{"id": 3}',  # 12: two objects
        b'{"id": 4, ',  # 14: invalid JSON
        b'{"id":\n 5}',  # 16: a line end as whitespace is fine
        b'{"id": "x\ny"}',  # 18: a raw line end inside a string is not JSON
        b'{"id": "six"}',  # 20: not the column's type
        b"\xff\xfe{}",  # 22: not UTF-8
        b'{"id": 7, "pad": "' + b"x" * 100 + b'"}',  # 24: over the size limit
        b'{"id": 8}',  # 26
    ]
    result = decoded(values, max_record_bytes=64)
    assert result.table.column("id").to_pylist() == [1, 5, 8]
    reasons = {r.offset: r.reason for r in result.rejected}
    assert sorted(reasons) == [2, 4, 6, 8, 10, 12, 14, 18, 20, 22, 24]
    assert "list" in reasons[2] and "int" in reasons[4] and "tombstone" in reasons[6] and "empty" in reasons[8]
    assert "Extra data" in reasons[12] and "not valid JSON" in reasons[14] and "control character" in reasons[18]
    assert "'six'" in reasons[20] and "max_record_bytes=BYTES" in reasons[24]
    assert [r.raw for r in result.rejected if r.offset in (2, 12)] == ["[1, 2]", '{"id": 2}{"id": 3}']
    assert (result.last_offset, result.messages) == (26, 14)
    error = result.rejected[0].error()
    assert isinstance(error, BadRecord) and str(error).startswith("orders/0@2: a JSON list, not an object")
    assert "bad_records=PATH" in str(error) and error.options == ("bad_records",)


def test_without_quarantine_the_first_bad_message_by_offset_stops_the_batch() -> None:
    values = [b'{"a": 1}'] * 3 + [b'{"a": "text"}', None, b'{"a": 2}']
    with pytest.raises(BadRecord, match=r"^orders/0@6: field 'a' = 'text' is not int64"):
        decoded(values, quarantine=False)
    with pytest.raises(BadRecord, match=r"^orders/0@0: the value is 299 bytes") as caught:
        decoded([b'{"a": "' + b"y" * 290 + b'"}'], quarantine=False, max_record_bytes=100)
    assert caught.value.options == ("max_record_bytes", "bad_records")


def test_a_bad_message_in_a_large_batch_goes_through_the_salvage_path_of_its_block_only() -> None:
    good = b'{"id": 1, "text": "' + b"z" * 180 + b'"}'
    values = [good] * 120_000  # ~24 MB: three blocks, the middle one refused by pyarrow
    values[60_000] = b'{"id": 1, "text": }'
    result = decode([fetched(values)], schema=None, quarantine=True, max_record_bytes=1024)
    assert [(r.offset, r.reason.split(" (")[0]) for r in result.rejected] == [(60_000, "not valid JSON")]
    assert result.table.num_rows == 119_999


def test_values_are_typed_to_the_table_schema_like_the_file_source() -> None:
    schema = pa.schema(
        [("id", pa.int64()), ("day", pa.date32()), ("at", pa.timestamp("us", tz="UTC")), ("kafka_offset", pa.int64())]
    )
    values = [
        b'{"id": 1, "day": "2026-11-01", "at": "2026-11-01T12:00:00+02:00"}',
        b'{"id": 2, "day": "not a day", "at": "2026-11-01T12:00:00Z"}',
        b'{"id": 3, "extra": true}',
    ]
    result = decoded(values, schema=schema, columns=("offset",))
    assert result.table.schema.field("day").type == pa.date32()
    assert result.table.column("at").to_pylist()[0].hour == 10  # the offset kept: a UTC instant
    assert result.table.column("kafka_offset").to_pylist() == [0]
    reasons = {r.offset: r.reason for r in result.rejected}
    assert reasons[2].startswith("field 'day' = 'not a day' is not date32")
    assert reasons[4].startswith("field(s) 'extra' are not in the table")
    evolved = decoded(values[:1] + values[2:], schema=schema, columns=("offset",), evolve=True)
    assert evolved.table.column("extra").to_pylist() == [None, True] and evolved.rejected == ()


def test_a_new_tables_types_are_inferred_as_the_file_source_infers_them() -> None:
    values = [
        json.dumps({"n": 1, "x": 1, "day": "2026-11-01", "at": "2026-11-01T12:00:00Z", "local": "2026-11-01 12:00:00"}).encode(),
        json.dumps(
            {"n": 2, "x": 2.5, "day": "2026-11-02", "at": "2026-11-01T12:00:00+02:00", "local": "2026-11-01 13:00:00"}
        ).encode(),
    ]
    types = {f.name: f.type for f in decoded(values).table.schema}
    assert types == {
        "n": pa.int64(),
        "x": pa.float64(),
        "day": pa.date32(),
        "at": pa.timestamp("us", tz="UTC"),
        "local": pa.timestamp("us"),
    }


def test_metadata_columns_come_from_the_messages_of_the_good_rows() -> None:
    keys = [b"k0", None, "ключ".encode(), b"\xff"]
    stamps = [1_700_000_000_000, None, 1_700_000_000_002, 1_700_000_000_003]
    batch = fetched([b'{"v": 0}', b'{"v": 1}', b"bad", b'{"v": 3}'], first=100, step=3, keys=keys, timestamps=stamps)
    columns = ("key", "topic", "partition", "offset", "timestamp")
    result = decode([batch], schema=None, columns=columns, quarantine=True, max_record_bytes=1024)
    table = result.table
    assert table.column_names == ["v", "kafka_key", "kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp"]
    assert table.column("kafka_offset").to_pylist() == [100, 103, 109]
    assert table.column("kafka_key").to_pylist() == ["k0", None, "\ufffd"]
    assert table.column("kafka_topic").to_pylist() == ["orders"] * 3
    assert table.schema.field("kafka_partition").type == pa.int32() and table.column("kafka_partition").to_pylist() == [0] * 3
    assert table.schema.field("kafka_timestamp").type == pa.timestamp("ms", tz="UTC")
    assert [t and t.timestamp() for t in table.column("kafka_timestamp").to_pylist()] == [
        1_700_000_000.0,
        None,
        1_700_000_000.003,
    ]
    with pytest.raises(ConfigError, match="kafka_offset"):
        decoded([b'{"kafka_offset": 1}'], columns=("offset",))


def test_decode_refuses_an_empty_or_mixed_batch() -> None:
    with pytest.raises(InternalError):
        decode([], schema=None, quarantine=True, max_record_bytes=10)
    with pytest.raises(InternalError):
        decode(
            [fetched([b"{}"]), fetched([b"{}"], partition=KafkaPartition("orders", 1))],
            schema=None,
            quarantine=True,
            max_record_bytes=10,
        )


def test_decode_throughput(capsys: pytest.CaptureFixture[str]) -> None:
    """Not timed: prints messages/s for 1M values of ~200 bytes (inferred schema, then the table's with metadata)."""
    value = json.dumps(
        {
            "id": 123456,
            "user": "u" * 30,
            "event": "click",
            "amount": 12.5,
            "at": "2026-11-01T12:00:00Z",
            "tags": ["a", "b"],
            "note": "x" * 50,
        }
    ).encode()
    batch = fetched([value] * 1_000_000)
    started = time.perf_counter()
    result = decode([batch], schema=None, quarantine=True, max_record_bytes=1 << 20)
    inferred = time.perf_counter() - started
    started = time.perf_counter()
    decode([batch], schema=result.table.schema, columns=("partition", "offset"), quarantine=True, max_record_bytes=1 << 20)
    typed = time.perf_counter() - started
    with capsys.disabled():
        print(
            f"\ndecode of 1M messages of {len(value)} B: {1e6 / inferred:,.0f}/s inferred, {1e6 / typed:,.0f}/s typed + metadata"
        )


# -- options ---------------------------------------------------------------------------------------------


def test_secret_consumer_options_never_print() -> None:
    secrets = {
        "sasl.password": "hunter2-pw",
        "ssl.key.password": "keypass-9",
        "sasl.oauthbearer.client.secret": "s3cr3t-x",
        "my.token": "tok-123",
    }
    options = KafkaOptions(bootstrap="h:1", topics=("t",), group="g", consumer_options={**secrets, "sasl.username": "alice"})
    for text in (repr(options), str(options), options.redact(f"failed with {' '.join(secrets.values())}")):
        assert not any(secret in text for secret in secrets.values()), text
    assert "alice" in repr(options) and all(is_secret_option(key) for key in secrets)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"enable.auto.commit": "true"}, "enable.auto.commit must stay false"),
        ({"auto.offset.reset": "earliest"}, "start='earliest'"),
        ({"group.id": "other"}, "group=NAME"),
        ({"bootstrap.servers": "x:1"}, "bootstrap=HOST:PORT"),
    ],
)
def test_options_that_would_break_exactly_once_are_refused(options: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        KafkaOptions(bootstrap="h:1", topics=("t",), group="g", consumer_options=options)


def test_consumer_defaults_and_what_a_user_may_override() -> None:
    options = KafkaOptions(
        bootstrap="h:1",
        topics="t",
        group="g",
        consumer_options={"isolation.level": "read_uncommitted", "enable.auto.commit": False},
    )  # type: ignore[arg-type]
    config = options.consumer_config()
    assert options.topics == ("t",)
    assert config["isolation.level"] == "read_uncommitted" and config["enable.auto.commit"] == "false"
    assert config["auto.offset.reset"] == "error" and config["enable.auto.offset.store"] == "false"
    assert KafkaOptions(bootstrap="h:1", topics=("t",), group="g").consumer_config()["isolation.level"] == "read_committed"
    with pytest.raises(ConfigError, match="metadata column"):
        KafkaOptions(bootstrap="h:1", topics=("t",), group="g", columns=("headers",))
    assert KafkaPartition.parse("a.b-c/12") == KafkaPartition("a.b-c", 12) and KafkaPartition("a", 3).key == "a/3"


# -- a real broker ---------------------------------------------------------------------------------------


@dataclass
class Broker:
    port: int
    process: subprocess.Popen[bytes]
    admin: AdminClient

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def topic(self, name: str, partitions: int = 2) -> str:
        self.admin.create_topics([NewTopic(name, partitions, 1)])[name].result(15)
        deadline = time.monotonic() + 10
        while len(getattr(self.admin.list_topics(name, timeout=5).topics.get(name), "partitions", {})) != partitions:
            assert time.monotonic() < deadline, f"topic {name} not in the metadata"
            time.sleep(0.05)
        return name

    def produce(self, topic: str, values: Sequence[bytes | dict[str, Any]], *, partition: int = 0, **config: Any) -> None:
        producer = ck.Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5, **config})
        for value in values:
            producer.produce(topic, value if isinstance(value, bytes) else json.dumps(value).encode(), partition=partition)
        assert producer.flush(30) == 0

    def delete_below(self, topic: str, partition: int, offset: int) -> None:
        tp = ck.TopicPartition(topic, partition, offset)
        self.admin.delete_records([tp])[tp].result(15)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def start_broker(data_dir: Path) -> Broker:
    """noida-db's binary itself (its Python wrapper does not pass signals on) on a free port."""
    binary = Path(str(resources.files("noida_db").joinpath("noida-db")))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "broker.log").open("ab") as log:
        process = subprocess.Popen(
            [str(binary), "start", "--only", "kafka", "--kafka-port", str(port), "--data-dir", str(data_dir)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    broker = Broker(port, process, AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}))
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, (data_dir / "broker.log").read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            broker.admin.list_topics(timeout=5)
            return broker
        except (OSError, ck.KafkaException):
            assert time.monotonic() < deadline, "noida-db did not answer within 30 s"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    started = start_broker(tmp_path_factory.mktemp("noida"))
    yield started
    started.stop()


_names = itertools.count()


@pytest.fixture
def topic(broker: Broker, request: pytest.FixtureRequest) -> str:
    """A new 2-partition topic named after the test."""
    return broker.topic(f"{request.node.name[:40].replace('[', '-').replace(']', '')}-{next(_names)}")


@dataclass
class Member:
    """A KafkaSource with the ingest's side played by a table of committed offsets and a log of callbacks."""

    source: KafkaSource
    table: dict[KafkaPartition, int | None]
    events: list[tuple[str, tuple[str, ...], bool]] = field(default_factory=list)

    def poll_until(self, count: int, *, timeout: float = 20) -> dict[KafkaPartition, list[tuple[int, bytes | None]]]:
        """Poll until `count` messages came (or `timeout`); (offset, value) per partition."""
        got: dict[KafkaPartition, list[tuple[int, bytes | None]]] = {}
        deadline = time.monotonic() + timeout
        while sum(map(len, got.values())) < count and time.monotonic() < deadline:
            for batch in self.source.poll(max_messages=1000, timeout=0.2):
                got.setdefault(batch.partition, []).extend(zip(batch.offsets, batch.values, strict=True))
        return got

    def wait_assigned(self, partitions: int, *, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while len(self.source.assignment()) != partitions:
            assert time.monotonic() < deadline, f"assigned {self.source.assignment()}, waiting for {partitions}"
            self.source.poll(max_messages=1, timeout=0.2)


@pytest.fixture
def members(broker: Broker) -> Iterator[Callable[..., Member]]:
    made: list[KafkaSource] = []

    def make(
        topic: str, table: Mapping[KafkaPartition, int | None] | None = None, *, group: str | None = None, **options: Any
    ) -> Member:
        member = Member(source=None, table=dict(table or {}))  # type: ignore[arg-type]

        def assigned(partitions: Sequence[KafkaPartition]) -> Mapping[KafkaPartition, int | None]:
            member.events.append(("assign", tuple(p.key for p in partitions), False))
            return {p: member.table.get(p) for p in partitions}

        def revoked(partitions: Sequence[KafkaPartition], *, lost: bool) -> None:
            member.events.append(("revoke", tuple(p.key for p in partitions), lost))

        options.setdefault("unavailable_after", 10.0)
        kafka = KafkaOptions(bootstrap=broker.bootstrap, topics=(topic,), group=group or f"g-{topic}", **options)
        member.source = KafkaSource(kafka, on_assign=assigned, on_revoke=revoked)
        made.append(member.source)
        return member

    yield make
    for source in made:
        source.close()


def values_of(got: Mapping[KafkaPartition, list[tuple[int, bytes | None]]], partition: KafkaPartition) -> list[int]:
    return [json.loads(v or b"null")["i"] for _, v in got.get(partition, [])]


def test_each_partition_starts_after_the_tables_offset_then_the_groups_then_start(
    broker: Broker, topic: str, members: Any
) -> None:
    for partition in (0, 1):
        broker.produce(topic, [{"i": i} for i in range(10)], partition=partition)
    p0, p1 = KafkaPartition(topic, 0), KafkaPartition(topic, 1)
    member = members(topic, {p0: 6, p1: None})
    got = member.poll_until(3 + 10)
    assert [o for o, _ in got[p0]] == [7, 8, 9] and values_of(got, p1) == list(range(10))
    assert member.events[0] == ("assign", (p0.key, p1.key), False)

    member.source.commit_group_offsets({p0: 8, p1: 4})  # the group's offsets: next to read = last + 1
    deadline = time.monotonic() + 10
    while member.source.group_offsets([p0, p1]) != {p0: 9, p1: 5}:
        assert time.monotonic() < deadline
        member.source.poll(max_messages=1, timeout=0.1)
    member.source.close()
    statuses = {s.partition: (s.low, s.high, s.group) for s in partition_offsets(member.source.options)}
    assert statuses == {p0: (0, 10, 9), p1: (0, 10, 5)}

    again = members(topic, {p0: 2}, group=member.source.options.group)  # the table wins over the group; p1 from the group
    got = again.poll_until(7 + 5)
    assert values_of(got, p0) == list(range(3, 10)) and values_of(got, p1) == list(range(5, 10))

    latest = members(topic, {}, group=f"new-{topic}", start="latest")
    latest.wait_assigned(2)
    broker.produce(topic, [{"i": 10}], partition=1)
    got = latest.poll_until(1)
    assert got == {p1: [(10, b'{"i": 10}')]}


def test_seek_after_a_stale_commit_reads_the_partition_again_in_order(broker: Broker, topic: str, members: Any) -> None:
    broker.produce(topic, [{"i": i} for i in range(500)])
    p0 = KafkaPartition(topic, 0)
    member = members(topic)
    assert len(member.poll_until(500)[p0]) == 500
    member.source.seek(p0, 449)  # another member committed up to 449: read from 450 again
    got = member.poll_until(50)
    assert values_of(got, p0) == list(range(450, 500))
    member.source.seek(KafkaPartition(topic, 1), None)  # no table offset: where `start` says (empty: nothing)
    with pytest.raises(SourceContractViolation, match="beyond the end of the partition"):
        member.source.seek(KafkaPartition(topic, 1), 3)  # a table ahead of its topic
    member.source.seek(KafkaPartition("someone-elses", 0), 3)  # not assigned: nothing to do


def test_offsets_deleted_before_the_table_read_them_are_a_contract_violation(broker: Broker, topic: str, members: Any) -> None:
    broker.produce(topic, [{"i": i} for i in range(20)])
    broker.delete_below(topic, 0, 10)
    p0 = KafkaPartition(topic, 0)
    member = members(topic, {p0: 3})
    with pytest.raises(SourceContractViolation) as caught:
        member.poll_until(1, timeout=10)
    message = str(caught.value)
    assert message.startswith(f"{p0.key}: the table's last offset is 3, so its next offset is 4")
    assert "below offset 10" in message and "offsets 4 to 9 (6 offsets)" in message and "accept_gap=True" in message
    assert caught.value.options == ("accept_gap",)

    accepting = members(topic, {p0: 3}, group=f"a-{topic}", accept_gap=True)
    assert values_of(accepting.poll_until(10), p0) == list(range(10, 20))
    [gap] = accepting.source.gaps()
    assert (gap.partition, gap.expected, gap.low, gap.missing) == (p0, 4, 10, 6)


class DeletingBeforeAssign:
    """The real consumer; the messages below `offset` are deleted just before it is assigned: the
    first fetch is then out of range, as when retention runs between the check and the fetch."""

    def __init__(self, broker: Broker, topic: str, offset: int, config: dict[str, Any]) -> None:
        self._consumer = ck.Consumer(config)
        self._delete = (broker, topic, offset)

    def assign(self, partitions: list[Any]) -> None:
        if self._delete is not None:
            broker, topic, offset = self._delete
            broker.delete_below(topic, 0, offset)
            self._delete = None
        self._consumer.assign(partitions)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


@pytest.mark.parametrize("accept_gap", [False, True])
def test_offsets_deleted_while_reading_are_caught_from_the_fetch(broker: Broker, topic: str, accept_gap: bool) -> None:
    broker.produce(topic, [{"i": i} for i in range(20)])
    p0 = KafkaPartition(topic, 0)
    options = KafkaOptions(bootstrap=broker.bootstrap, topics=(topic,), group=f"g-{topic}", accept_gap=accept_gap)
    source = KafkaSource(
        options,
        on_assign=lambda partitions: {p0: 4},
        on_revoke=lambda partitions, *, lost: None,
        consumer_factory=lambda config: DeletingBeforeAssign(broker, topic, 12, config),
    )
    try:
        got: list[int] = []
        deadline = time.monotonic() + 15
        if not accept_gap:
            with pytest.raises(SourceContractViolation, match=rf"{p0.key}: the next offset to read is 5, .* offsets 5 to 11"):
                while time.monotonic() < deadline:
                    source.poll(max_messages=100, timeout=0.2)
            return
        while len(got) < 8 and time.monotonic() < deadline:
            got += [o for batch in source.poll(max_messages=100, timeout=0.2) for o in batch.offsets]
        assert got == list(range(12, 20))
        assert [(g.expected, g.low) for g in source.gaps()] == [(5, 12)]
    finally:
        source.close()


def test_read_committed_hides_open_and_aborted_transactions(broker: Broker, topic: str, members: Any) -> None:
    p0 = KafkaPartition(topic, 0)

    def producer(name: str) -> Any:
        made = ck.Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": f"{name}-{topic}"})
        made.init_transactions(15)
        return made

    def transaction(producer: Any, values: range, *, commit: bool) -> None:
        producer.begin_transaction()
        for i in values:
            producer.produce(topic, json.dumps({"i": i}).encode(), partition=0)
        producer.flush(15)  # on the broker: an abort then writes a marker, not just drops the local queue
        if commit:
            producer.commit_transaction(15)

    # Two producers: noida-db 0.2.3 lists an aborted transaction in fetches from past its abort marker,
    # and librdkafka then skips the same producer's next committed transaction (a broker bug).
    committing, aborting = producer("committing"), producer("aborting")
    transaction(committing, range(0, 3), commit=True)
    member = members(topic)
    assert values_of(member.poll_until(3), p0) == [0, 1, 2]
    transaction(aborting, range(100, 103), commit=False)  # open: a read_uncommitted consumer would see it now
    assert member.poll_until(1, timeout=2) == {}
    aborting.abort_transaction(15)
    transaction(committing, range(3, 6), commit=True)
    got = member.poll_until(3)
    assert values_of(got, p0) == [3, 4, 5]
    assert [o for o, _ in got[p0]] == [8, 9, 10]  # after a commit marker, the aborted messages and their marker


def test_an_error_raised_in_a_rebalance_callback_comes_out_of_poll(broker: Broker, topic: str) -> None:
    def failing(partitions: Sequence[KafkaPartition]) -> Mapping[KafkaPartition, int | None]:
        raise StorageUnavailable("the table did not answer")

    options = KafkaOptions(bootstrap=broker.bootstrap, topics=(topic,), group=f"g-{topic}")
    source = KafkaSource(options, on_assign=failing, on_revoke=lambda partitions, *, lost: None)
    try:
        with pytest.raises(StorageUnavailable, match="the table did not answer"):
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                source.poll(max_messages=10, timeout=0.2)
        with pytest.raises(InternalError, match="close it and make a new one"):
            source.poll(max_messages=10, timeout=0.1)
    finally:
        source.close()


@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_two_members_share_the_partitions_and_each_reads_only_its_own(broker: Broker, members: Any, strategy: str) -> None:
    topic = broker.topic(f"shared-{strategy}-{next(_names)}", partitions=4)
    for partition in range(4):
        broker.produce(topic, [{"i": i} for i in range(50)], partition=partition)
    options = {"consumer_options": {"partition.assignment.strategy": strategy, "session.timeout.ms": "6000"}}
    first = members(topic, **options)
    first.wait_assigned(4)
    assert sum(map(len, first.poll_until(200).values())) == 200
    second = members(topic, group=first.source.options.group, **options)
    deadline = time.monotonic() + 20
    while not (len(first.source.assignment()) == 2 and len(second.source.assignment()) == 2):
        if time.monotonic() > deadline and not second.source.assignment():
            # Seen about once in four cooperative runs: the joining member's JoinGroup is never answered
            # while the leader completes the generation without it (the group then waits for the
            # rebalance timeout, max.poll.interval.ms). A broker bug, not the source's.
            pytest.xfail("noida-db 0.2.3 did not answer the second member's JoinGroup")
        assert time.monotonic() < deadline + 10, (first.source.assignment(), second.source.assignment())
        first.source.poll(max_messages=100, timeout=0.1)
        second.source.poll(max_messages=100, timeout=0.1)
    assert set(first.source.assignment()).isdisjoint(second.source.assignment())
    assert any(kind == "revoke" and not lost for kind, _, lost in first.events)
    for partition in range(4):
        broker.produce(topic, [{"i": 50}], partition=partition)
    got = {**first.poll_until(2, timeout=10), **second.poll_until(2, timeout=10)}
    # the second member had no table offsets: it starts its partitions at `start` (earliest)
    for member in (first, second):
        for partition in member.source.assignment():
            assert values_of(got, partition)[-1] == 50


def test_an_unknown_topic_is_a_config_error(broker: Broker) -> None:
    options = KafkaOptions(bootstrap=broker.bootstrap, topics=("no-such-topic",), group="g")
    with pytest.raises(ConfigError, match="no-such-topic do not exist"):
        KafkaSource(options, on_assign=lambda partitions: {}, on_revoke=lambda partitions, *, lost: None)


def test_a_broker_that_does_not_answer_is_source_unavailable_within_the_limit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "very-secret-pw"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"
    options = KafkaOptions(
        bootstrap=closed, topics=("t",), group="g", unavailable_after=2, consumer_options={"ssl.key.password": secret}
    )
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises(SourceUnavailable, match=closed):
        KafkaSource(options, on_assign=lambda partitions: {}, on_revoke=lambda partitions, *, lost: None)
    assert time.monotonic() - started < 10

    broker = start_broker(tmp_path / "broker")
    try:
        topic = broker.topic("doomed")
        broker.produce(topic, [{"i": 1}])
        options = KafkaOptions(
            bootstrap=broker.bootstrap,
            topics=(topic,),
            group="g",
            unavailable_after=3,
            consumer_options={"sasl.password": secret},
        )
        with (
            caplog.at_level(logging.DEBUG),
            KafkaSource(options, on_assign=lambda partitions: {}, on_revoke=lambda partitions, *, lost: None) as source,
        ):
            deadline = time.monotonic() + 15
            while not source.poll(max_messages=10, timeout=0.2):
                assert time.monotonic() < deadline
            broker.stop()
            stopped = time.monotonic()
            with pytest.raises(SourceUnavailable, match=broker.bootstrap) as caught:
                while time.monotonic() - stopped < 30:
                    source.poll(max_messages=10, timeout=0.2)
            assert time.monotonic() - stopped < 3 + 10 + 5  # the limit, the first check's interval, a probe
    finally:
        broker.stop()
    assert secret not in str(caught.value)
    assert not [r for r in caplog.records if secret in r.getMessage()]
