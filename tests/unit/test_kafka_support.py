"""The Kafka test support (tests/support/kafka.py) against a real noida-db broker: topics, produce helpers,
transactions, watermarks, DeleteRecords, restarts and the address-rewriting proxy. These pin the broker
behaviour the Kafka source's tests rely on; when noida-db changes it, they say so here first."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from tests.support import kafka
from tests.support.kafka import (
    CONSUMER_OPTIONS,
    KafkaBroker,
    KafkaProxy,
    KafkaUnavailable,
    delete_records,
    end_offsets,
    produce_json,
    produce_transactional,
    read_topic,
    start_kafka,
    watermarks,
)
from tests.support.tcp_proxy import TcpProxy


def group_consumer(bootstrap: str, group: str, **config: Any) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **CONSUMER_OPTIONS,
            **config,
        }
    )


def advertised(bootstrap: str) -> set[tuple[str, int]]:
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    return {(str(broker.host), int(broker.port)) for broker in metadata.brokers.values()}


def test_keyed_json_messages_land_once_per_key_partition_and_end_offsets_count_them(
    kafka_broker: KafkaBroker, kafka_topic: Callable[..., str]
) -> None:
    topic = kafka_topic(6)
    records = [{"id": i, "customer": f"c{i % 97}"} for i in range(20_000)]
    assert produce_json(kafka_broker.bootstrap, topic, records, key=lambda r: str(r["customer"])) == 20_000

    ends = end_offsets(kafka_broker.bootstrap, topic)
    assert sorted(ends) == list(range(6)) and sum(ends.values()) == 20_000
    read = read_topic(kafka_broker.bootstrap, topic)
    assert sorted(value["id"] for _, _, value in read) == list(range(20_000))
    partitions_of_customer: dict[str, set[int]] = {}
    for partition, _, value in read:
        partitions_of_customer.setdefault(value["customer"], set()).add(partition)
    assert all(len(partitions) == 1 for partitions in partitions_of_customer.values())

    assert produce_json(kafka_broker.bootstrap, topic, [{"id": -1}], partition=4) == 1
    assert end_offsets(kafka_broker.bootstrap, topic)[4] == ends[4] + 1


def test_aborted_transactions_are_hidden_from_read_committed_and_markers_take_offsets(
    kafka_broker: KafkaBroker, kafka_topic: Callable[..., str]
) -> None:
    topic = kafka_topic(1)
    batches = [
        ([{"batch": 0, "i": i} for i in range(3)], True),
        ([{"batch": 1, "i": i} for i in range(3)], False),
        ([{"batch": 2, "i": i} for i in range(2)], True),
    ]
    assert produce_transactional(kafka_broker.bootstrap, topic, batches) == 5

    committed = read_topic(kafka_broker.bootstrap, topic)
    everything = read_topic(kafka_broker.bootstrap, topic, read_committed=False)
    assert [value["batch"] for _, _, value in committed] == [0, 0, 0, 2, 2]
    assert [value["batch"] for _, _, value in everything] == [0, 0, 0, 1, 1, 1, 2, 2]
    # Each transaction's end is a control record taking one offset: offsets are not dense.
    assert [offset for _, offset, _ in committed] == [0, 1, 2, 8, 9]
    assert end_offsets(kafka_broker.bootstrap, topic) == {0: 11}


def test_delete_records_moves_the_low_watermark_and_reading_below_it_is_an_error_event(
    kafka_broker: KafkaBroker, kafka_topic: Callable[..., str]
) -> None:
    topic = kafka_topic(2)
    produce_json(kafka_broker.bootstrap, topic, ({"i": i} for i in range(100)), partition=0)
    assert delete_records(kafka_broker.bootstrap, topic, 0, 40) == 40
    assert watermarks(kafka_broker.bootstrap, topic) == {0: (40, 100), 1: (0, 0)}
    assert [offset for _, offset, _ in read_topic(kafka_broker.bootstrap, topic)] == list(range(40, 100))

    consumer = group_consumer(kafka_broker.bootstrap, "below-low-watermark", **{"auto.offset.reset": "error"})
    try:
        consumer.assign([TopicPartition(topic, 0, 10)])
        errors: list[Message] = []
        deadline = time.monotonic() + 10
        while not errors and time.monotonic() < deadline:
            errors = [m for m in consumer.consume(100, 0.2) if m.error() is not None]
        assert errors, "no error event for an offset below the low watermark"
        error = errors[0].error()
        assert error is not None and error.code() == KafkaError._AUTO_OFFSET_RESET
        assert (errors[0].partition(), errors[0].offset()) == (0, 10)
        assert "Offset out of range" in error.str()
    finally:
        consumer.close()


def committed_offsets(broker: KafkaBroker, group: str, topic: str) -> dict[int, int]:
    consumer = group_consumer(broker.bootstrap, group)
    try:
        return {tp.partition: tp.offset for tp in consumer.committed([TopicPartition(topic, p) for p in range(2)], timeout=10)}
    finally:
        consumer.close()


def test_a_clean_restart_keeps_records_and_group_offsets_and_a_kill_goes_back_to_the_last_clean_stop(tmp_path: Path) -> None:
    broker = start_kafka(tmp_path / "broker")
    try:
        port = broker.port
        topic = broker.create_topic("kept", 2)
        produce_json(broker.bootstrap, topic, ({"i": i} for i in range(1000)), key=lambda r: str(r["i"]))
        ends = end_offsets(broker.bootstrap, topic)
        consumer = group_consumer(broker.bootstrap, "g")
        consumer.assign([TopicPartition(topic, p, 0) for p in range(2)])
        consumer.commit(offsets=[TopicPartition(topic, p, ends[p] - 1) for p in range(2)], asynchronous=False)
        consumer.close()

        broker.restart()
        assert broker.port == port and (tmp_path / "broker" / "kafka.json").exists()
        assert end_offsets(broker.bootstrap, topic) == ends
        assert committed_offsets(broker, "g", topic) == {p: ends[p] - 1 for p in range(2)}

        produce_json(broker.bootstrap, topic, ({"i": i} for i in range(500)))
        broker.create_topic("lost", 1)
        broker.restart(kill=True)
        assert end_offsets(broker.bootstrap, topic) == ends  # the 500 are gone, their offsets free again
        assert "lost" not in broker.admin().list_topics(timeout=10).topics
    finally:
        broker.stop()
    assert broker.process.returncode == 0


def test_start_failure_says_why_with_the_log_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setattr(kafka, "free_port", lambda: taken.getsockname()[1])
        with pytest.raises(KafkaUnavailable, match=r"(?s)exited with status 1 .*already in use"):
            start_kafka(tmp_path / "broker", attempts=1)


def test_a_plain_relay_loses_its_clients_to_the_advertised_port_and_the_kafka_proxy_keeps_them(
    kafka_broker: KafkaBroker, kafka_topic: Callable[..., str]
) -> None:
    relay = TcpProxy(kafka_broker.port)
    try:
        assert advertised(f"127.0.0.1:{relay.port}") == {("127.0.0.1", kafka_broker.port)}
    finally:
        relay.close()

    topic = kafka_topic(3)
    produce_json(kafka_broker.bootstrap, topic, ({"i": i} for i in range(3000)))
    proxy = KafkaProxy(kafka_broker.port)
    try:
        assert advertised(proxy.bootstrap) == {("127.0.0.1", proxy.port)}
        consumer = group_consumer(proxy.bootstrap, "through-the-proxy")
        consumer.subscribe([topic])
        seen: set[tuple[int | None, int | None]] = set()

        def consume_until(count: int) -> None:
            deadline = time.monotonic() + 20
            while len(seen) < count and time.monotonic() < deadline:
                seen.update((m.partition(), m.offset()) for m in consumer.consume(500, 0.2) if m.error() is None)

        try:
            consume_until(3000)
            cut = proxy.cut()
            connections = proxy.connections
            produce_json(kafka_broker.bootstrap, topic, ({"i": i} for i in range(3000, 4000)))
            consume_until(4000)
            consumer.commit(asynchronous=False)
        finally:
            consumer.close()
        assert len(seen) == 4000
        assert cut >= 1  # the consumer's connections ran through the proxy, and were reset
        assert proxy.connections > connections  # it came back through the proxy, not to the broker's port
    finally:
        proxy.close()
