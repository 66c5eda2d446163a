"""A real Kafka-protocol broker for tests: noida-db (PyPI; one binary, `--only kafka`) on a free
127.0.0.1 port with its own data directory, plus the producer, offset and admin helpers the Kafka tests use.

No Apache Kafka broker installs here; noida-db speaks the native protocol to confluent-kafka (librdkafka):
topics, keyed and idempotent produce, transactions with read_committed, consumer groups, DeleteRecords.
Where it differs from Kafka in ways a test can trip on (noida-db 0.2.3, probed with confluent-kafka 2.16):

- Persistence: everything lives in memory; `DATA_DIR/kafka.json` is written on SIGTERM/SIGINT only
  (about 4 s and 800 MB for 1M messages of 200 bytes). `stop()` + `restart()` keeps topics, records,
  deleted-records low watermarks and committed group offsets; `restart(kill=True)` comes back as of the
  last clean stop: high watermarks move *back* and the lost offsets are handed out again to new messages.
  Restarting under a producer: an idempotent one (as `produce_json`) fails fatally after the restart
  (OUT_OF_ORDER_SEQUENCE_NUMBER), and its last 100-200 acked messages were missing afterwards in each of
  4 probes; a plain one (enable.idempotence=false) lost none in 4. Stop producing before a restart when a
  test counts messages.
- Fetch answers ignore fetch.max.bytes and max.partition.fetch.bytes: one answer carries everything from
  the fetch offset to the end of each partition. librdkafka rejects an answer above receive.message.max.bytes
  (100 MB by default) and retries forever; consumers reading a bigger backlog need `CONSUMER_OPTIONS`.
- Consumer groups: session timeouts are never enforced, so a SIGKILLed member is never expired: its
  partitions stay unassigned and the next rebalance waits for it forever. Members that are killed must
  use static membership (group.instance.id), and their replacement the same id: it then takes over at
  once. A broker restart forgets every group's membership (not its offsets), dead members included.
  cooperative-sticky deadlocks in its second round; use an eager assignor (range, roundrobin).
- Addresses: it advertises the address it is bound to, with no option to advertise another, so a client
  bootstrapped through a plain TCP relay moves to the broker's own port. `KafkaProxy` rewrites the port.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

START_TIMEOUT = 30.0
# For every consumer reading more than ~100 MB of backlog from noida-db (see the module docstring).
CONSUMER_OPTIONS: dict[str, Any] = {"receive.message.max.bytes": 2_000_000_000}
# Produce helpers flush after this many messages: librdkafka's local queue holds 100,000 by default
# (queue.buffering.max.messages), and a full queue raises BufferError instead of waiting.
FLUSH_EVERY = 50_000


class KafkaUnavailable(Exception):
    """noida-db is missing or did not start; the message says why (with the broker log's tail)."""


def noida_binary() -> Path:
    """The noida-db binary itself, not the `noida-db` Python wrapper on PATH.

    The wrapper runs the binary as a child and does not forward signals: SIGKILLing it would leave the
    broker running, and SIGTERM would not reach it (no snapshot saved).
    """
    try:
        candidate = Path(str(resources.files("noida_db").joinpath("noida-db")))
    except ModuleNotFoundError:
        candidate = None
    if candidate is not None and candidate.is_file():
        if not os.access(candidate, os.X_OK):
            candidate.chmod(0o755)  # what the wrapper does too: wheels may lose the mode bit
        return candidate
    raise KafkaUnavailable("noida-db is not installed (`pip install noida-db`, or the project's `test` extra)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(eq=False)
class KafkaBroker:
    """One noida-db process serving Kafka on 127.0.0.1:`port`, its data in `data_dir`.

    Not frozen: `restart()` replaces the process, and every holder of this object (a session fixture's
    users) must see the new one.
    """

    port: int
    data_dir: Path
    log_file: Path
    process: subprocess.Popen[bytes]
    _admin: AdminClient | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def admin(self) -> AdminClient:
        """An AdminClient for this broker (one per broker object, made on first use)."""
        if self._admin is None:
            self._admin = AdminClient({"bootstrap.servers": self.bootstrap})
        return self._admin

    def create_topic(self, name: str, partitions: int = 6, **config: str | int) -> str:
        """Create topic `name` (replication factor 1) and return its name; wait until it is in the metadata.

        `config` are topic configs; an underscore stands for a dot (`retention_ms=1000` is retention.ms).
        """
        topic_config = {key.replace("_", "."): str(value) for key, value in config.items()}
        futures = self.admin().create_topics([NewTopic(name, partitions, 1, config=topic_config)], operation_timeout=10)
        futures[name].result(timeout=15)
        deadline = time.monotonic() + 10
        while True:
            topic = self.admin().list_topics(name, timeout=5).topics.get(name)
            if topic is not None and topic.error is None and len(topic.partitions) == partitions:
                return name
            if time.monotonic() > deadline:
                raise KafkaUnavailable(f"topic {name} was created but is not in the metadata: {topic}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM: noida-db writes its snapshot (kafka.json) and exits; SIGKILLed if it does not within `timeout`."""
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is saved, whatever changed since the last clean stop is lost."""
        self._signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def restart(self, *, kill: bool = False) -> None:
        """Stop (or SIGKILL, with `kill=True`) and start again on the same port with the same data dir.

        Returns once the broker answers metadata requests. Clients keep their configuration: librdkafka
        reconnects to the same address by itself.
        """
        if self.process.poll() is None:
            self.kill() if kill else self.stop()
        self._admin = None
        # The port was ours a moment ago; another process taking it in between is unlikely but possible.
        self.process = _launch(self.port, self.data_dir, self.log_file)
        _wait_until_ready(self, START_TIMEOUT)

    def _signal(self, signum: int) -> None:
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signum)  # its own process group (start_new_session)
        except ProcessLookupError:
            pass


def start_kafka(data_dir: Path, *, attempts: int = 3) -> KafkaBroker:
    """Start noida-db (Kafka only) on a free 127.0.0.1 port with `data_dir` (created if missing; use a fresh one).

    Returns once a metadata request answers; raises KafkaUnavailable with the log's tail when it does not
    within START_TIMEOUT seconds. The process has its own process group; its output goes to
    `data_dir/noida-db.log`.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file = data_dir / "noida-db.log"
    failure: KafkaUnavailable | None = None
    for _ in range(attempts):
        port = free_port()
        broker = KafkaBroker(port, data_dir, log_file, _launch(port, data_dir, log_file))
        try:
            _wait_until_ready(broker, START_TIMEOUT)
            return broker
        except KafkaUnavailable as exc:
            if "already in use" not in str(exc):
                raise
            failure = exc  # the port was taken between choosing and binding: try another
    assert failure is not None
    raise failure


def _launch(port: int, data_dir: Path, log_file: Path) -> subprocess.Popen[bytes]:
    command = [str(noida_binary()), "start", "--only", "kafka", "--kafka-port", str(port), "--data-dir", str(data_dir)]
    with log_file.open("ab") as log:
        log.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(command)}\n".encode())
        log.flush()
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=data_dir
        )


def _wait_until_ready(broker: KafkaBroker, timeout: float) -> None:
    """Wait until noida-db says it serves Kafka on the port (so an answer there is not another process's),
    then until a metadata request answers."""
    deadline = time.monotonic() + timeout
    last_error = "it never said it was serving Kafka"
    while time.monotonic() < deadline:
        if broker.process.poll() is not None:
            raise KafkaUnavailable(
                f"noida-db exited with status {broker.process.returncode} before serving Kafka on {broker.bootstrap}; "
                f"log {broker.log_file}:\n{broker.log_tail()}"
            )
        if broker.bootstrap not in _this_launch_log(broker.log_file):
            time.sleep(0.05)
            continue
        try:
            broker.admin().list_topics(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
            return
        except KafkaException as exc:
            last_error = f"metadata request failed: {exc}"
    broker.kill()
    raise KafkaUnavailable(
        f"noida-db did not answer a Kafka metadata request on {broker.bootstrap} within {timeout:.0f} s ({last_error}); "
        f"log {broker.log_file}:\n{broker.log_tail()}"
    )


def _this_launch_log(log_file: Path) -> str:
    """The log written since the last launch (`_launch` starts each with a `--- ` line)."""
    try:
        return log_file.read_text(errors="replace").rsplit("\n--- ", 1)[-1]
    except OSError:
        return ""


# --- producing ------------------------------------------------------------------------------------------------

KeyFunction = Callable[[dict[str, Any]], "str | bytes | None"]


def _encode(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


def _encode_key(key: str | bytes | None) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


class _Deliveries:
    """Counts delivery reports and keeps the first error (a produce helper raises it after flushing)."""

    def __init__(self) -> None:
        self.delivered = 0
        self.error: KafkaError | None = None

    def __call__(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self.error = self.error or error
        else:
            self.delivered += 1

    def check(self, sent: int) -> None:
        if self.error is not None:
            raise KafkaException(self.error)
        if self.delivered != sent:
            raise RuntimeError(f"{sent} messages sent, {self.delivered} delivered")


def _flush(producer: Producer, timeout: float = 60) -> None:
    left = producer.flush(timeout)
    if left:
        raise RuntimeError(f"{left} messages still queued after flushing for {timeout:.0f} s")


def produce_json(
    bootstrap: str,
    topic: str,
    records: Iterable[dict[str, Any]],
    *,
    key: KeyFunction | None = None,
    partition: int | None = None,
    config: Mapping[str, Any] | None = None,
) -> int:
    """Produce each record as one JSON message (compact, UTF-8); return how many were delivered.

    Idempotent producer (acks=all): a retried send never duplicates a message, which the exactly-once
    tests count on. `key(record)` gives the message key (str or bytes; partitioned by its hash);
    `partition` pins every message to one partition. Raises on the first delivery error.
    """
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            "batch.num.messages": 10_000,
            **(config or {}),
        }
    )
    deliveries = _Deliveries()
    sent = 0
    for record in records:
        value = _encode(record)
        message_key = _encode_key(key(record)) if key is not None else None
        while True:
            try:
                if partition is None:
                    producer.produce(topic, value, message_key, on_delivery=deliveries)
                else:
                    producer.produce(topic, value, message_key, partition, on_delivery=deliveries)
                break
            except BufferError:
                producer.poll(0.05)  # the local queue is full: serve delivery reports until there is room
        sent += 1
        if sent % FLUSH_EVERY == 0:
            _flush(producer)
        elif sent % 1000 == 0:
            producer.poll(0)
    _flush(producer)
    deliveries.check(sent)
    return sent


def produce_transactional(
    bootstrap: str,
    topic: str,
    batches: list[tuple[list[dict[str, Any]], bool]],
    *,
    key: KeyFunction | None = None,
    transactional_id: str | None = None,
) -> int:
    """Produce each batch in its own transaction, committed when its flag is True and aborted when False.

    Returns the number of messages committed. Every batch's messages reach the broker before the
    transaction ends (aborted ones included: their offsets are taken, a read_committed consumer never
    sees them). A fresh transactional.id unless `transactional_id` is given (reusing one fences the
    producer that had it).
    """
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": transactional_id or f"lakesink-test-{uuid.uuid4().hex[:12]}",
            "linger.ms": 5,
        }
    )
    producer.init_transactions(30)
    committed = 0
    for records, commit in batches:
        producer.begin_transaction()
        for record in records:
            message_key = _encode_key(key(record)) if key is not None else None
            while True:
                try:
                    producer.produce(topic, _encode(record), message_key)
                    break
                except BufferError:
                    producer.poll(0.05)
        _flush(producer)  # sent, so an aborted batch occupies offsets like a real one
        if commit:
            producer.commit_transaction(30)
            committed += len(records)
        else:
            producer.abort_transaction(30)
    return committed


# --- offsets --------------------------------------------------------------------------------------------------


def _offsets_consumer(bootstrap: str, read_committed: bool = False) -> Consumer:
    # A group id is required by the client, but this consumer never joins: it only asks for offsets.
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"lakesink-offsets-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        }
    )


def partitions_of(bootstrap: str, topic: str) -> list[int]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = admin.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None:
        raise KafkaException(metadata.error if metadata is not None else KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
    return sorted(metadata.partitions)


def watermarks(bootstrap: str, topic: str, *, read_committed: bool = False) -> dict[int, tuple[int, int]]:
    """(low, high) watermark per partition: the first offset still stored, and the offset after the last
    message (the last stable offset with `read_committed`: an open transaction's first offset)."""
    consumer = _offsets_consumer(bootstrap, read_committed)
    try:
        result = {}
        for partition in partitions_of(bootstrap, topic):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
            result[partition] = (low, high)
        return result
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The high watermark per partition: the offset the next message will get (markers included)."""
    return {partition: high for partition, (_, high) in watermarks(bootstrap, topic).items()}


def delete_records(bootstrap: str, topic: str, partition: int, before_offset: int) -> int:
    """Delete the partition's records below `before_offset`, as retention would; returns the new low watermark."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.delete_records([TopicPartition(topic, partition, before_offset)], operation_timeout=10)
    (future,) = futures.values()
    return int(future.result(timeout=15).low_watermark)


def read_topic(
    bootstrap: str, topic: str, *, read_committed: bool = True, timeout: float = 30
) -> list[tuple[int, int, dict[str, Any]]]:
    """Every message of `topic` as (partition, offset, decoded JSON value), read with `assign` (no group)
    from each partition's low watermark to its end as it was when called (the last stable offset when
    `read_committed`, the default: aborted messages are not returned)."""
    ends = watermarks(bootstrap, topic, read_committed=read_committed)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"lakesink-read-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
            **CONSUMER_OPTIONS,
        }
    )
    consumer.assign([TopicPartition(topic, partition, low) for partition, (low, high) in ends.items() if high > low])
    # Markers and aborted messages take offsets no message is read at: a partition is done when the
    # consumer's position reaches its high watermark, not when the last message seen is high - 1.
    pending = {partition for partition, (low, high) in ends.items() if high > low}
    messages: list[tuple[int, int, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    try:
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: partitions {sorted(pending)} not read to their end in {timeout:.0f} s")
            for message in consumer.consume(10_000, 0.2):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(error)
                partition, offset = message.partition(), message.offset()
                assert partition is not None and offset is not None
                messages.append((partition, offset, json.loads(message.value() or b"null")))
            for position in consumer.position([TopicPartition(topic, partition) for partition in pending]):
                if position.offset >= ends[position.partition][1]:
                    pending.discard(position.partition)
        return messages
    finally:
        consumer.close()


# --- a relay that keeps clients on it -------------------------------------------------------------------------

# The responses carrying broker addresses: Metadata, FindCoordinator, DescribeCluster.
_ADDRESS_APIS = frozenset({3, 10, 60})


class KafkaProxy:
    """A TCP relay on 127.0.0.1 in front of a noida-db broker that a test can cut (`cut()`, like TcpProxy).

    noida-db advertises its own port in Metadata and FindCoordinator answers, so through a plain relay
    a client would go straight to the broker after bootstrapping. This relay reads the Kafka framing
    (4-byte size, then the request header's api key and correlation id), and in the answers carrying
    broker addresses replaces the broker's port after its host string with its own: the host string is
    kept byte for byte, so sizes do not change and no other field is parsed.
    """

    def __init__(self, broker_port: int, host: str = "127.0.0.1") -> None:
        self.broker_port = broker_port
        self._listener = socket.socket()
        self._listener.bind((host, 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._needle = host.encode() + struct.pack(">i", broker_port)
        self._replacement = host.encode() + struct.pack(">i", self.port)
        self._host = host
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._closed = False
        self._refusing = False
        self.connections = 0
        self.rewritten = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def bootstrap(self) -> str:
        return f"{self._host}:{self.port}"

    def refuse(self, refusing: bool = True) -> None:
        """While refusing, new connections are accepted and reset at once (the broker looks down)."""
        self._refusing = refusing

    def cut(self) -> int:
        """Reset every open connection (RST, no FIN); returns how many were cut."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _reset(sock)
        return len(pairs)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._refusing:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection((self._host, self.broker_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._pairs.append((client, upstream))
                self.connections += 1
            pending: dict[int, int] = {}  # correlation id -> api key, of this connection's requests in flight
            threading.Thread(target=self._pump, args=(client, upstream, pending), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket, pending: dict[int, int]) -> None:
        buffers = {client: bytearray(), upstream: bytearray()}
        try:
            while True:
                ready, _, _ = select.select([client, upstream], [], [], 1.0)
                for sock in ready:
                    data = sock.recv(1 << 20)
                    if not data:
                        return
                    buffer = buffers[sock]
                    buffer += data
                    while len(buffer) >= 4:
                        size = struct.unpack_from(">i", buffer)[0]
                        if len(buffer) < 4 + size:
                            break
                        frame = bytes(buffer[: 4 + size])
                        del buffer[: 4 + size]
                        if sock is client:
                            api_key, _version, correlation = struct.unpack_from(">hhi", frame, 4)
                            pending[correlation] = api_key
                            upstream.sendall(frame)
                        else:
                            correlation = struct.unpack_from(">i", frame, 4)[0]
                            if pending.pop(correlation, None) in _ADDRESS_APIS and self._needle in frame:
                                frame = frame.replace(self._needle, self._replacement)
                                self.rewritten += 1
                            client.sendall(frame)
        except (OSError, ValueError):  # ValueError: select() on a socket cut() closed meanwhile
            return
        finally:
            for sock in (client, upstream):
                try:
                    sock.close()
                except OSError:
                    pass


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass
