"""`lakesink kafka` against a real Kafka-protocol broker (noida-db, tests/support/kafka.py) in the
situations issue 14 lists besides the kill test (tests/scenarios/test_kafka_exactly_once.py):
transactions, a broker restart, a cut connection, a lost commit answer at the store, a retention gap,
bad messages, `--status`, SIGTERM with metadata columns, and two members sharing a group.

Every test checks exact outcomes: each id once with two readers (assert_exactly_once), the table's
offset per partition, exit codes (0 done, 1 fix first, 75 rerun) and the texts users read. Members
run as `lakesink kafka` subprocesses where the user-facing behaviour matters, else in-process
(`consume_kafka`). Each test has its own topic and group on the session's broker (`kafka_topic`),
or its own broker when it restarts it.

noida-db (0.2.3) never evicts a group member that died without leaving, so every member that may die
or be cut off uses a static `group.instance.id`, and its rerun the same id (which replaces it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import confluent_kafka as ck
import pytest

from lakesink import Sink
from lakesink.config import CommitInterval
from lakesink.errors import CommitOutcomeUnknown
from lakesink.ingest.kafka import KafkaReport, consume_kafka
from lakesink.sources.kafka import KafkaOptions, KafkaSource
from tests.support.checks import assert_exactly_once, log_operations, read_column_deltalake, table_version
from tests.support.fault_proxy import DELTA_LOG_ANY, FaultProxy
from tests.support.kafka import (
    KafkaBroker,
    KafkaProxy,
    delete_records,
    end_offsets,
    produce_json,
    produce_transactional,
    read_topic,
    start_kafka,
)
from tests.support.moto_server import MotoServer

APP_ID = "job"
FAST = "1s"  # --commit-interval of members that should commit often
HALF_SECOND = CommitInterval(rows=None, bytes=None, seconds=0.5)  # the same for members in this process
ONE_BATCH = "1000000rows,512MB,60s"  # --commit-interval of runs whose backlog must be one batch (flushed when idle)
HEARTBEAT = ("heartbeat.interval.ms=500",)
SECRET = "hunter2-very-secret"


def record(i: int) -> dict[str, Any]:
    return {"id": i, "text": f"m{i}"}


def key_of(r: dict[str, Any]) -> str:
    return f"k{r['id'] % 10}"


def kafka_args(uri: str, bootstrap: str, topic: str, group: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lakesink", "kafka", uri, "--bootstrap", bootstrap, "--topic", topic,
            "--group", group, "--app-id", APP_ID, *extra]  # fmt: skip


def storage_args(storage: dict[str, str]) -> list[str]:
    return [arg for key, value in storage.items() for arg in ("--storage-option", f"{key}={value}")]


def static(name: str) -> list[str]:
    """Consumer options of a member that may be cut off or killed: static, so that its rerun replaces it."""
    return [arg for option in (*HEARTBEAT, f"group.instance.id={name}") for arg in ("--consumer-option", option)]


def run(args: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env)


def ok_report(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The --json report of a run that exited 0."""
    assert done.returncode == 0, f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr[-4000:]}"
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["ok"] is True
    return report


def table_offsets(uri: str, topic: str, partitions: int, storage: dict[str, str] | None = None) -> dict[int, int | None]:
    """The table's offset (the last message it holds) of each partition, read fresh."""
    with Sink(uri, app_id=APP_ID, storage_options=storage or {}) as sink:
        return {p: sink.committed_position(part=f"{topic}/{p}") for p in range(partitions)}


def last_offsets(bootstrap: str, topic: str) -> dict[int, int | None]:
    """end offset - 1 per partition: the table's offsets once it holds everything (no transactions)."""
    return {p: end - 1 if end else None for p, end in end_offsets(bootstrap, topic).items()}


def wait_until(condition: Callable[[], bool], what: str, *, timeout: float = 60, alive: list[Member] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for member in alive or []:
            assert member.process.poll() is None, (
                f"{member.name} exited {member.process.returncode} while {what}:\n{member.output()}"
            )
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting until {what}"
        time.sleep(0.2)


class Member:
    """A `lakesink kafka` subprocess, its stdout and stderr in files."""

    def __init__(self, name: str, args: Sequence[str], directory: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.stdout = directory / f"{name}.out"
        self.stderr = directory / f"{name}.err"
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(list(args), stdout=out, stderr=err, env=env)

    def sigterm(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def wait(self, timeout: float = 60) -> int:
        return self.process.wait(timeout=timeout)

    def report(self) -> dict[str, Any]:
        report: dict[str, Any] = json.loads(self.stdout.read_text())
        return report

    def output(self) -> str:
        return f"stdout: {self.stdout.read_text()[-3000:]}\nstderr: {self.stderr.read_text()[-5000:]}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture
def members(tmp_path: Path) -> Iterator[Callable[..., Member]]:
    """`start(name, args, env=None) -> Member`; members still running at the end are SIGKILLed."""
    started: list[Member] = []

    def start(name: str, args: Sequence[str], env: dict[str, str] | None = None) -> Member:
        member = Member(name, args, tmp_path, env)
        started.append(member)
        return member

    yield start
    for member in started:
        member.kill()


class Producing:
    """Produces `burst` messages every `pause` seconds from a thread (ids counting up from `first`)
    until stopped; `produced` is the next id."""

    def __init__(self, bootstrap: str, topic: str, *, first: int, burst: int = 200, pause: float = 0.1) -> None:
        self.bootstrap, self.topic, self.burst, self.pause = bootstrap, topic, burst, pause
        self.produced = first
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                start = self.produced
                produce_json(self.bootstrap, self.topic, (record(i) for i in range(start, start + self.burst)), key=key_of)
                self.produced = start + self.burst
                self._stop.wait(self.pause)
        except BaseException as exc:  # noqa: BLE001 - raised by stop() in the test's thread
            self._error = exc

    def stop(self) -> int:
        """Stop after the burst in progress; the number of ids produced in all."""
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive()
        if self._error is not None:
            raise self._error
        return self.produced


# -- 1. transactions ---------------------------------------------------------------------------------------


def test_only_committed_transactions_land_and_the_tables_offsets_skip_the_markers(
    kafka_broker: KafkaBroker, kafka_topic: Callable[..., str], tmp_path: Path
) -> None:
    """A transactional producer commits and aborts batches of 300 (ending with an aborted one); the
    run reads with read_committed: exactly the committed messages land, and each partition's offset
    in the table is its last committed *message*, not end offset - 1 (that is the abort marker, after
    the commit marker and the aborted messages). A second run starts at that offset + 1, which is a
    commit marker, not a message, and reads the next committed transaction.

    Everything is produced before a member reads (noida-db can make librdkafka skip the committed
    transaction after an aborted one of the same transactional.id while a consumer reads concurrently).
    """
    topic, uri, bootstrap = kafka_topic(3), str(tmp_path / "table"), kafka_broker.bootstrap
    batches = [([record(i) for i in range(b * 300, (b + 1) * 300)], b % 2 == 0) for b in range(6)]  # commit, abort, ...
    assert produce_transactional(bootstrap, topic, batches, key=key_of) == 900
    committed_ids = [r["id"] for records, commit in batches if commit for r in records]
    last_aborted = {r["id"] for r in batches[-1][0]}

    def expected_offsets() -> dict[int, int]:
        return {p: max(o for q, o, _ in read_topic(bootstrap, topic) if q == p) for p in range(3)}

    report = ok_report(run(kafka_args(uri, bootstrap, topic, "g-txn", "--until-idle", "2s", "--json")))
    assert (report["messages"], report["rows"], report["bad_records"]) == (900, 900, 0)
    assert_exactly_once(uri, {}, committed_ids)
    offsets = expected_offsets()
    assert table_offsets(uri, topic, 3) == offsets
    assert {p["partition"]: p["committed_offset"] for p in report["partitions"]} == offsets
    # After each partition's last committed message: its commit marker, the last (aborted) batch's
    # messages of that partition, and its abort marker.
    everything = read_topic(bootstrap, topic, read_committed=False)
    ends = end_offsets(bootstrap, topic)
    for p in range(3):
        aborted_after = sum(1 for q, _, value in everything if q == p and value["id"] in last_aborted)
        assert aborted_after > 0
        assert ends[p] == offsets[p] + 1 + aborted_after + 1 + 1, (p, ends[p], offsets[p], aborted_after)

    more = [([record(i) for i in range(1800, 2100)], True)]
    produce_transactional(bootstrap, topic, more, key=key_of, transactional_id=f"second-{topic}")
    report = ok_report(run(kafka_args(uri, bootstrap, topic, "g-txn", "--until-idle", "2s", "--json")))
    assert (report["messages"], report["rows"]) == (300, 300)
    assert_exactly_once(uri, {}, [*committed_ids, *range(1800, 2100)])
    offsets = expected_offsets()
    assert table_offsets(uri, topic, 3) == offsets
    assert all(end_offsets(bootstrap, topic)[p] == offsets[p] + 2 for p in range(3))  # + the commit marker


# -- 2. the broker restarted -------------------------------------------------------------------------------


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    """A broker of this test's own, which it may restart."""
    broker = start_kafka(tmp_path / "broker")
    try:
        yield broker
    finally:
        broker.stop()


def test_a_broker_restarted_mid_run_loses_and_duplicates_nothing(
    own_broker: KafkaBroker, members: Callable[..., Member], tmp_path: Path
) -> None:
    """A member reads while messages arrive; producing stops (noida-db may drop what is acked during
    its shutdown snapshot) and the broker is restarted at once (clean stop: it keeps its records),
    with the member's batch in flight. The member reconnects and reads what is produced after the
    restart; SIGTERM stops it with exit 0 (a member that exits 75 instead is rerun). Every message
    is in the table once and the table's offsets are the topic's last offsets."""
    broker, uri = own_broker, str(tmp_path / "table")
    topic = broker.create_topic("restarted", 3)
    produce_json(broker.bootstrap, topic, (record(i) for i in range(2000)), key=key_of)
    base = [*kafka_args(uri, broker.bootstrap, topic, "g-restart", "--json"), *static("m1")]
    member = members("m1", [*base, "--commit-interval", FAST])
    wait_until(lambda: table_offsets(uri, topic, 3) == last_offsets(broker.bootstrap, topic), "the first messages are in",
               alive=[member])  # fmt: skip
    producing = Producing(broker.bootstrap, topic, first=2000)
    time.sleep(2.0)
    produced = producing.stop()
    broker.restart()
    assert sum(end_offsets(broker.bootstrap, topic).values()) == produced, "the broker lost messages in its restart"
    produce_json(broker.bootstrap, topic, (record(i) for i in range(produced, produced + 1500)), key=key_of)
    total = produced + 1500
    wanted = last_offsets(broker.bootstrap, topic)
    deadline = time.monotonic() + 90
    while table_offsets(uri, topic, 3) != wanted and member.process.poll() is None:
        assert time.monotonic() < deadline, f"the member did not catch up after the restart:\n{member.output()}"
        time.sleep(0.2)
    if member.process.poll() is None:
        assert member.sigterm() == 0, member.output()
        report = member.report()
        # Messages read of a lost assignment are dropped and read again: counted twice in `messages`.
        assert report["stopped"] == "signal" and report["rows"] == total <= report["messages"], report
    else:  # it gave up on the broker: a transient failure, and a rerun finishes
        assert member.process.returncode == 75, member.output()
        assert json.loads(member.stdout.read_text())["kind"] == "transient"
        ok_report(run([*base, "--until-idle", "2s"]))
    print(f"{total} messages, {produced} before the restart; member: {member.output()[:400]}")
    assert table_offsets(uri, topic, 3) == wanted
    assert_exactly_once(uri, {}, range(total))


# -- 3. the connection cut ---------------------------------------------------------------------------------


@pytest.fixture
def kafka_proxy(kafka_broker: KafkaBroker) -> Iterator[KafkaProxy]:
    proxy = KafkaProxy(kafka_broker.port)
    try:
        yield proxy
    finally:
        proxy.close()


def test_a_member_rides_out_connections_cut_at_a_proxy(
    kafka_broker: KafkaBroker, kafka_topic: Callable[..., str], kafka_proxy: KafkaProxy,
    members: Callable[..., Member], tmp_path: Path,
) -> None:  # fmt: skip
    """Every connection of a member reading through a relay is reset (RST) three times while messages
    arrive: librdkafka reconnects, the member goes on, and after SIGTERM (exit 0) every message is in
    the table once, its offsets the topic's last ones."""
    topic, uri = kafka_topic(3), str(tmp_path / "table")
    produce_json(kafka_broker.bootstrap, topic, (record(i) for i in range(1000)), key=key_of)
    args = kafka_args(uri, kafka_proxy.bootstrap, topic, f"g-{topic}", "--commit-interval", FAST, "--json", *static("m1"))
    member = members("m1", args)
    wait_until(lambda: table_offsets(uri, topic, 3) == last_offsets(kafka_broker.bootstrap, topic), "the first messages are in",
               alive=[member])  # fmt: skip
    producing = Producing(kafka_broker.bootstrap, topic, first=1000)
    cuts = []
    for _ in range(3):
        time.sleep(1.0)
        cuts.append(kafka_proxy.cut())
    total = producing.stop()
    assert all(cuts), f"nothing to cut: {cuts}"
    wanted = last_offsets(kafka_broker.bootstrap, topic)
    wait_until(lambda: table_offsets(uri, topic, 3) == wanted, "the member caught up after the cuts", alive=[member])
    assert member.sigterm() == 0, member.output()
    report = member.report()
    assert report["rows"] == total <= report["messages"] and report["stopped"] == "signal", report
    assert kafka_proxy.connections > 1 + len(cuts)  # it reconnected after each cut
    assert_exactly_once(uri, {}, range(total))


def test_a_member_cut_off_for_longer_than_it_waits_exits_75_and_a_rerun_completes(
    kafka_broker: KafkaBroker, kafka_topic: Callable[..., str], kafka_proxy: KafkaProxy,
    members: Callable[..., Member], tmp_path: Path,
) -> None:  # fmt: skip
    """The relay resets every connection and refuses new ones for longer than the member waits for a
    broker (--unavailable-after 3s): it exits 75 with a SourceUnavailable naming the bootstrap
    it was given (never the sasl.password it was given), in --json on stdout. Messages produced
    meanwhile are read by a rerun once the relay lets clients through: every message once."""
    topic, uri = kafka_topic(3), str(tmp_path / "table")
    produce_json(kafka_broker.bootstrap, topic, (record(i) for i in range(1000)), key=key_of)
    options = [*static("m1"), "--consumer-option", f"sasl.password={SECRET}"]
    command = kafka_args(uri, kafka_proxy.bootstrap, topic, f"g-{topic}", "--commit-interval", FAST, "--json", *options)
    member = members("m1", [*command, "--unavailable-after", "3s"])
    wait_until(lambda: table_offsets(uri, topic, 3) == last_offsets(kafka_broker.bootstrap, topic), "the first messages are in",
               alive=[member])  # fmt: skip
    kafka_proxy.refuse()
    cut_at = time.monotonic()
    assert kafka_proxy.cut() > 0
    produce_json(kafka_broker.bootstrap, topic, (record(i) for i in range(1000, 2000)), key=key_of)
    code = member.wait(timeout=60)
    waited = time.monotonic() - cut_at
    assert code == 75, member.output()
    error = json.loads(member.stdout.read_text())
    assert (error["ok"], error["error"], error["kind"]) == (False, "SourceUnavailable", "transient"), error
    assert kafka_proxy.bootstrap in error["message"] and "rerun" in error["message"], error
    assert SECRET not in member.stdout.read_text() + member.stderr.read_text()
    assert 3 <= waited < 45, waited
    assert table_offsets(uri, topic, 3) != last_offsets(kafka_broker.bootstrap, topic)  # the new ones were never read

    kafka_proxy.refuse(False)
    report = ok_report(run([*command, "--until-idle", "2s"]))
    assert report["messages"] == report["rows"] == 1000
    assert table_offsets(uri, topic, 3) == last_offsets(kafka_broker.bootstrap, topic)
    assert_exactly_once(uri, {}, range(2000))


# -- 4. a commit answer lost at the store ------------------------------------------------------------------


@pytest.fixture
def store_proxy(moto_server: MotoServer) -> Iterator[FaultProxy]:
    with FaultProxy(moto_server.endpoint) as proxy:
        yield proxy


def test_a_lost_answer_to_a_kafka_batch_commit_is_resolved_from_the_log_without_a_second_commit(
    kafka_broker: KafkaBroker, kafka_topic: Callable[..., str], store_proxy: FaultProxy, s3_bucket: str,
    s3_options: dict[str, str],
) -> None:  # fmt: skip
    """On S3 through a fault proxy: the PUT of the log entry of a run's first batch (three
    partitions' rows and offsets) reaches the store and its answer is cut off. boto3 re-sends it and
    gets 412; lakesink reads the entry back and finds its own write id: committed, not retried as
    a second commit. The run goes on with more batches; every message is in the table once, the
    log has one WRITE per batch the run counted, and the table's offsets are the topic's last ones."""
    topic, uri = kafka_topic(3), f"s3://{s3_bucket}/table"
    proxied = {**s3_options, "AWS_ENDPOINT_URL": store_proxy.endpoint}
    options = KafkaOptions(kafka_broker.bootstrap, (topic,), group=f"g-{topic}")
    produce_json(kafka_broker.bootstrap, topic, (record(i) for i in range(500)), key=key_of)
    first = consume_kafka(uri, options, app_id=APP_ID, until_idle=2, storage_options=proxied)
    assert (first.rows, first.commits) == (500, 1)
    operations = log_operations(uri, s3_options)
    assert operations[0] == "CREATE TABLE" and operations.count("WRITE") <= 1

    store_proxy.drop_response_after_apply()  # the next log entry: this run's first batch
    producing = Producing(kafka_broker.bootstrap, topic, first=500, burst=300, pause=0.3)

    def progress(report: KafkaReport) -> None:  # after each commit: messages keep coming for three of them
        if report.commits >= 3:
            producing.stop()

    report = consume_kafka(
        uri, options, app_id=APP_ID, until_idle=2, storage_options=proxied, interval=HALF_SECOND, progress=progress
    )
    total = producing.stop()
    assert not store_proxy.armed(), "the fault never fired"
    # The entry: applied (200) and its answer cut; boto3 re-sent it and was refused (412), and
    # lakesink read it back and found its own write id in it.
    (entry,) = [e.path for e in store_proxy.matching(method="PUT") if e.action.startswith("dropped")]
    outcomes = [(e.status, e.action) for e in store_proxy.matching(method="PUT") if e.path == entry]
    assert outcomes == [(200, "dropped (reset)"), (412, "relayed")], outcomes
    print(f"{report.commits} commits, the first one's answer lost; {total} messages")
    assert report.commits >= 3 and report.rows == report.messages == total - 500 and report.stale_batches == 0
    assert log_operations(uri, s3_options) == operations + ["WRITE"] * report.commits  # one entry per batch
    assert table_offsets(uri, topic, 3, s3_options) == last_offsets(kafka_broker.bootstrap, topic)
    assert_exactly_once(uri, s3_options, range(total))


def test_a_lost_answer_that_cannot_be_resolved_exits_75_and_the_rerun_finds_the_batch_committed(
    kafka_broker: KafkaBroker, kafka_topic: Callable[..., str], store_proxy: FaultProxy, s3_bucket: str,
    s3_options: dict[str, str],
) -> None:  # fmt: skip
    """The answer to a batch's log entry PUT is lost, and from then on the store refuses every request
    for the log: `lakesink kafka` cannot tell whether the batch landed and exits 75 with
    CommitOutcomeUnknown (--json). The rerun finds the batch in the table (it did land): it reads
    nothing again and commits nothing. Every message once, one WRITE for the batch."""
    topic, uri = kafka_topic(3), f"s3://{s3_bucket}/table"
    # Few retries, short backoffs: the store refuses for good, and the run should say so in seconds.
    retries = {"MAX_RETRIES": "1", "RETRY_TIMEOUT": "2s", "BACKOFF_CONFIG.INIT_BACKOFF": "10ms", "CONNECT_TIMEOUT": "2s"}
    proxied = storage_args({**s3_options, **retries, "AWS_ENDPOINT_URL": store_proxy.endpoint})
    command = kafka_args(uri, kafka_broker.bootstrap, topic, f"g-{topic}", "--commit-interval", ONE_BATCH,
                         "--until-idle", "2s", "--json", *proxied)  # fmt: skip
    produce_json(kafka_broker.bootstrap, topic, (record(i) for i in range(600)), key=key_of)
    options = KafkaOptions(kafka_broker.bootstrap, (topic,), group=f"g-{topic}")
    assert consume_kafka(uri, options, app_id=APP_ID, until_idle=2, storage_options=s3_options).commits == 1
    operations = log_operations(uri, s3_options)
    produce_json(kafka_broker.bootstrap, topic, (record(i) for i in range(600, 1500)), key=key_of)
    store_proxy.drop_response_after_apply(then=lambda: store_proxy.refuse(DELTA_LOG_ANY, times=1_000_000))
    done = run(command, timeout=180)
    assert done.returncode == 75, f"stdout: {done.stdout}\nstderr: {done.stderr[-4000:]}"
    error = json.loads(done.stdout)
    assert (error["ok"], error["error"], error["kind"]) == (False, CommitOutcomeUnknown.__name__, "transient"), error
    assert "may or may not have landed" in error["message"], error
    assert [e.action for e in store_proxy.matching(method="PUT")].count("dropped (reset)") == 1
    store_proxy.disarm()
    assert table_offsets(uri, topic, 3, s3_options) == last_offsets(kafka_broker.bootstrap, topic)  # it did land

    rerun = ok_report(run(command))
    assert (rerun["messages"], rerun["rows"], rerun["commits"]) == (0, 0, 0), rerun
    assert log_operations(uri, s3_options) == [*operations, "WRITE"]  # the lost one, once
    assert_exactly_once(uri, s3_options, range(1500))


# -- 5. a retention gap ------------------------------------------------------------------------------------


def produce_to(bootstrap: str, topic: str, partition: int, values: Sequence[bytes | None], **produce: Any) -> None:
    """Raw values (None: a tombstone) to one partition, in order."""
    producer = ck.Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for value in values:
        producer.produce(topic, value, partition=partition, **produce)
    assert producer.flush(30) == 0


def ids_to(bootstrap: str, topic: str, partition: int, ids: range) -> None:
    produce_to(bootstrap, topic, partition, [json.dumps(record(i)).encode() for i in ids])


def test_offsets_deleted_before_they_were_read_stop_the_run_until_the_gap_is_accepted(
    kafka_broker: KafkaBroker, kafka_topic: Callable[..., str], tmp_path: Path
) -> None:
    """The table holds offsets up to 99 of both partitions; 100 more come to each, and partition 0's
    are deleted below offset 150 (DeleteRecords, as retention would). The next run exits 1 naming
    the partition, the table's offset, the low watermark and --accept-gap, and changes nothing (not
    even partition 1's). With --accept-gap it reads partition 0 from 150 and reports the gap in
    --json: the table holds exactly the messages that were not deleted."""
    topic, uri, bootstrap = kafka_topic(2), str(tmp_path / "table"), kafka_broker.bootstrap
    ids_to(bootstrap, topic, 0, range(0, 100))
    ids_to(bootstrap, topic, 1, range(1000, 1100))
    command = kafka_args(uri, bootstrap, topic, f"g-{topic}", "--until-idle", "2s")
    ok_report(run([*command, "--json"]))
    assert table_offsets(uri, topic, 2) == {0: 99, 1: 99}
    version = table_version(uri, {})
    ids_to(bootstrap, topic, 0, range(100, 200))
    ids_to(bootstrap, topic, 1, range(1100, 1200))
    assert delete_records(bootstrap, topic, 0, 150) == 150

    refused = run(command)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    message = refused.stderr
    assert f"error (SourceContractViolation): {topic}/0: the table's last offset is 99, so its next offset is 100" in message
    assert "deleted every message below offset 150" in message and "offsets 100 to 149" in message
    assert "--accept-gap" in message and "accept_gap" not in message, message
    assert table_version(uri, {}) == version and table_offsets(uri, topic, 2) == {0: 99, 1: 99}

    report = ok_report(run([*command, "--accept-gap", "--json"]))
    assert report["gaps"] == [{"topic": topic, "partition": 0, "expected": 100, "low": 150, "missing": 50}]
    assert (report["messages"], report["rows"]) == (50 + 100, 150)
    assert table_offsets(uri, topic, 2) == {0: 199, 1: 199}
    assert_exactly_once(uri, {}, [*range(0, 100), *range(150, 200), *range(1000, 1200)])
    # And a run after that has no gap to accept.
    report = ok_report(run([*command, "--json"]))
    assert (report["messages"], report["gaps"]) == (0, [])


# -- 6. bad messages ---------------------------------------------------------------------------------------


def dead_letters(path: str) -> list[tuple[str, str, int, int, str, str]]:
    rows = read_column_deltalake(path, {}, ["app_id", "topic", "partition", "offset", "reason", "raw"])
    return sorted((r["app_id"], r["topic"], r["partition"], r["offset"], r["reason"], r["raw"]) for r in rows)  # type: ignore[misc]


def test_bad_messages_stop_the_run_or_go_to_the_dead_letter_table_once_even_across_a_kill(
    kafka_broker: KafkaBroker, kafka_topic: Callable[..., str], members: Callable[..., Member], tmp_path: Path
) -> None:
    """After 100 good messages per partition are in, four bad ones arrive among good ones: not JSON,
    a JSON array, a tombstone, an id that is not the table's type. Without --bad-records the run
    exits 1 naming topic/partition@offset of a bad message and --bad-records, and commits nothing.
    With --bad-records, killed between the dead-letter commit and the table's commit (crash point
    kafka_before_commit), then rerun: the good rows land once and each bad message is in the
    dead-letter table once, with where it was, why and its text."""
    topic, uri, bootstrap = kafka_topic(2), str(tmp_path / "table"), kafka_broker.bootstrap
    bad_path = str(tmp_path / "dead-letters")
    ids_to(bootstrap, topic, 0, range(0, 100))
    ids_to(bootstrap, topic, 1, range(1000, 1100))
    command = kafka_args(uri, bootstrap, topic, f"g-{topic}", "--until-idle", "2s", "--commit-interval", ONE_BATCH,
                         *static("bad-1"))  # fmt: skip
    ok_report(run([*command, "--json"]))
    version = table_version(uri, {})

    def values(ids: range) -> list[bytes | None]:
        return [json.dumps(record(i)).encode() for i in ids]

    # Partition 0: offsets 100-119 good, 120 not JSON, 121-140 good, 141 an array, 142-151 good.
    produce_to(bootstrap, topic, 0, [*values(range(200, 220)), b"not json", *values(range(220, 240)), b"[1, 2]",
                                     *values(range(240, 250))])  # fmt: skip
    # Partition 1: offsets 100-129 good, 130 a tombstone, 131-150 good, 151 a string id, 152-156 good.
    produce_to(bootstrap, topic, 1, [*values(range(1200, 1230)), None, *values(range(1230, 1250)),
                                     b'{"id": "seven", "text": "x"}', *values(range(1250, 1255))])  # fmt: skip
    good = [*range(0, 100), *range(200, 250), *range(1000, 1100), *range(1200, 1255)]

    refused = run(command)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"{topic}/0@120: not valid JSON" in refused.stderr or f"{topic}/1@130: a null value" in refused.stderr, refused.stderr
    assert "Nothing was committed from its batch" in refused.stderr and "--bad-records PATH" in refused.stderr
    assert table_version(uri, {}) == version and table_offsets(uri, topic, 2) == {0: 99, 1: 99}

    env = {**os.environ, "LAKESINK_CRASH_AT": "kafka_before_commit"}
    killed = members("killed", [*command, "--bad-records", bad_path], env=env).wait(timeout=60)
    assert killed == -signal.SIGKILL
    expected_letters = [
        (APP_ID, topic, 0, 120, "not valid JSON", "not json"),
        (APP_ID, topic, 0, 141, "a JSON list, not an object", "[1, 2]"),
        (APP_ID, topic, 1, 130, "a null value (a tombstone), not a JSON object", ""),
        (APP_ID, topic, 1, 151, "field 'id' = 'seven' is not int64", '{"id": "seven", "text": "x"}'),
    ]

    def check_letters() -> None:
        letters = dead_letters(bad_path)
        assert [(a, t, p, o, raw) for a, t, p, o, _, raw in letters] == [
            (a, t, p, o, raw) for a, t, p, o, _, raw in expected_letters
        ]
        for (*_, reason, _raw), (*_, begins, _) in zip(letters, expected_letters, strict=True):
            assert reason.startswith(begins), (reason, begins)

    check_letters()  # committed before the kill
    assert table_version(uri, {}) == version and table_offsets(uri, topic, 2) == {0: 99, 1: 99}

    report = ok_report(run([*command, "--bad-records", bad_path, "--json"]))
    assert (report["messages"], report["rows"], report["bad_records"]) == (52 + 57, 105, 0), report  # quarantined already
    check_letters()
    assert table_offsets(uri, topic, 2) == {0: 151, 1: 156}
    assert_exactly_once(uri, {}, good)
    with Sink(bad_path, app_id=APP_ID) as letters:
        assert (letters.committed_position(part=f"{topic}/0"), letters.committed_position(part=f"{topic}/1")) == (151, 156)

    report = ok_report(run([*command, "--bad-records", bad_path, "--json"]))
    assert (report["messages"], report["bad_records"]) == (0, 0)
    check_letters()


# -- 7. --status -------------------------------------------------------------------------------------------


class Recorded:
    """A member in this process (consume_kafka in a thread) whose assignments and revocations are recorded."""

    def __init__(self, uri: str, options: KafkaOptions) -> None:
        self.events: list[tuple[str, tuple[str, ...]]] = []
        self.source: KafkaSource | None = None
        self.stop = threading.Event()
        self.report: KafkaReport | None = None
        self.error: BaseException | None = None

        def factory(options: KafkaOptions, *, on_assign: Any, on_revoke: Any) -> KafkaSource:
            def assigned(partitions: Sequence[Any]) -> Any:
                self.events.append(("assign", tuple(sorted(p.key for p in partitions))))
                return on_assign(partitions)

            def revoked(partitions: Sequence[Any], *, lost: bool = False) -> None:
                self.events.append(("lost" if lost else "revoke", tuple(sorted(p.key for p in partitions))))
                on_revoke(partitions, lost=lost)

            self.source = KafkaSource(options, on_assign=assigned, on_revoke=revoked)
            return self.source

        def main() -> None:
            try:
                self.report = consume_kafka(
                    uri, options, app_id=APP_ID, interval=HALF_SECOND, stop=self.stop, source_factory=factory
                )
            except BaseException as exc:  # noqa: BLE001 - raised by finish() in the test's thread
                self.error = exc

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()

    def finish(self) -> KafkaReport:
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error
        assert self.report is not None
        return self.report


def test_status_shows_offsets_watermarks_and_lag_per_partition_without_joining_the_group(
    kafka_broker: KafkaBroker, kafka_topic: Callable[..., str], tmp_path: Path
) -> None:
    """`--status` (text and --json) before any run: no table or group offsets, lag = every message.
    While a member runs and after it caught up: the table's offset, the group's (next to read), the
    high watermark and lag 0, per partition; `lakesink status TABLE --kafka ...` shows the same. Asked
    seven times while the member runs, neither joins the group: the member keeps its one assignment,
    nothing is revoked, and it reads on."""
    topic, uri, bootstrap = kafka_topic(3), str(tmp_path / "table"), kafka_broker.bootstrap
    group = f"g-{topic}"
    for p in range(3):
        ids_to(bootstrap, topic, p, range(p * 1000, p * 1000 + 100 + 10 * p))
    highs = {0: 100, 1: 110, 2: 120}
    status_command = kafka_args(uri, bootstrap, topic, group, "--status")

    def status() -> dict[str, Any]:
        done = run([*status_command, "--json"])
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    before = status()
    assert (before["app_id"], before["group"], before["topics"], before["lag"]) == (APP_ID, group, [topic], 330)
    assert before["partitions"] == [
        {"topic": topic, "partition": p, "table_offset": None, "group_offset": None, "low_watermark": 0,
         "high_watermark": highs[p], "lag": highs[p]}
        for p in range(3)
    ]  # fmt: skip
    text = run(status_command)
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines() == [
        f"{uri} (group {group}): lag 330 messages in all",
        *(f"  {topic}/{p}: table None, group None, high watermark {highs[p]}, lag {highs[p]}" for p in range(3)),
    ]

    member = Recorded(uri, KafkaOptions(bootstrap, (topic,), group=group))
    try:
        everything = tuple(f"{topic}/{p}" for p in range(3))
        wait_until(lambda: member.events == [("assign", everything)], "the member is assigned every partition", timeout=30)
        wanted = {p: high - 1 for p, high in highs.items()}
        wait_until(lambda: table_offsets(uri, topic, 3) == wanted, "the member read everything")

        def caught_up() -> bool:
            return all(p["group_offset"] == p["high_watermark"] for p in status()["partitions"])

        wait_until(caught_up, "the group's offsets are committed")
        for _ in range(2):
            assert status()["partitions"] == [
                {"topic": topic, "partition": p, "table_offset": highs[p] - 1, "group_offset": highs[p],
                 "low_watermark": 0, "high_watermark": highs[p], "lag": 0}
                for p in range(3)
            ]  # fmt: skip
        text = run(status_command)
        assert text.stdout.splitlines()[1:] == [
            f"  {topic}/{p}: table {highs[p] - 1}, group {highs[p]}, high watermark {highs[p]}, lag 0" for p in range(3)
        ]
        assert member.source is not None and [p.key for p in member.source.assignment()] == list(everything)

        for p in range(3):
            ids_to(bootstrap, topic, p, range(5000 + p * 100, 5000 + p * 100 + 50))
        wait_until(lambda: table_offsets(uri, topic, 3) == {p: high + 49 for p, high in highs.items()}, "the member read on")
        assert status()["lag"] == 0
        wait_until(caught_up, "the group's offsets are committed")
        # `lakesink status TABLE --kafka ...` shows the same under the table's status (and joins no group either).
        table_status = run([sys.executable, "-m", "lakesink", "status", uri, "--kafka", bootstrap, "--topic", topic,
                            "--group", group, "--app-id", APP_ID, "--json"])  # fmt: skip
        assert table_status.returncode == 0, table_status.stderr
        assert json.loads(table_status.stdout)["kafka"] == status()
        assert member.events == [("assign", everything)], member.events  # no rebalance: status never joined
        assert [p.key for p in member.source.assignment()] == list(everything)
    finally:
        report = member.finish()
    assert report.rows == 330 + 150 and report.stale_batches == 0


# -- 8. SIGTERM, and metadata columns ----------------------------------------------------------------------


class TimedProducing(Producing):
    """Producing, with keys k<id % 10> and message i's timestamp (CreateTime) set to `base_ms` + i."""

    def __init__(self, bootstrap: str, topic: str, *, base_ms: int, **kwargs: Any) -> None:
        self.base_ms = base_ms
        super().__init__(bootstrap, topic, **kwargs)

    def _run(self) -> None:
        producer = ck.Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "linger.ms": 5})
        try:
            while not self._stop.is_set():
                start = self.produced
                for i in range(start, start + self.burst):
                    producer.produce(self.topic, json.dumps(record(i)).encode(), f"k{i % 10}", timestamp=self.base_ms + i)
                assert producer.flush(30) == 0
                self.produced = start + self.burst
                self._stop.wait(self.pause)
        except BaseException as exc:  # noqa: BLE001 - raised by stop() in the test's thread
            self._error = exc


def test_sigterm_stops_at_a_commit_boundary_with_what_was_read_committed_and_metadata_columns_right(
    kafka_broker: KafkaBroker, kafka_topic: Callable[..., str], members: Callable[..., Member], tmp_path: Path
) -> None:
    """A member with --with-column key, offset, partition and timestamp reads while messages keep
    coming; SIGTERM: it exits 0 (stopped: signal) with every message it read committed (messages =
    rows, the table's rows and offsets are the report's). Each row's kafka_key, kafka_partition,
    kafka_offset and kafka_timestamp are its message's. A rerun reads the rest: every message once."""
    topic, uri, bootstrap = kafka_topic(3), str(tmp_path / "table"), kafka_broker.bootstrap
    columns = [arg for c in ("key", "offset", "partition", "timestamp") for arg in ("--with-column", c)]
    command = kafka_args(uri, bootstrap, topic, f"g-{topic}", "--commit-interval", FAST, "--json", *columns)
    # An hour ago: not the broker's clock, and within the topic's retention (noida-db deletes messages
    # whose timestamp is older than retention.ms, 7 days, at once).
    base_ms = int(time.time() * 1000) - 3_600_000
    producing = TimedProducing(bootstrap, topic, base_ms=base_ms, first=0, burst=100, pause=0.05)
    member = members("m1", command)
    try:
        with Sink(uri, app_id=APP_ID) as probe:

            def committed_twice() -> bool:
                probe.refresh()
                return probe.handle is not None and probe.handle.version() >= 1

            wait_until(committed_twice, "two commits", alive=[member])
        assert member.sigterm() == 0, member.output()
    finally:
        total = producing.stop()
    report = member.report()
    assert report["stopped"] == "signal" and "SIGTERM: stopping at the next commit boundary" in member.stderr.read_text()
    assert report["messages"] == report["rows"] > 0 and report["rows"] < total, (report, total)
    offsets = table_offsets(uri, topic, 3)
    assert {p["partition"]: p["committed_offset"] for p in report["partitions"]} == offsets

    rows = read_column_deltalake(uri, {}, ["id", "text", "kafka_key", "kafka_partition", "kafka_offset", "kafka_timestamp"])
    assert len(rows) == report["rows"]
    where = {value["id"]: (p, o) for p, o, value in read_topic(bootstrap, topic)}
    for row in rows:
        i = int(row["id"])  # type: ignore[call-overload]
        assert (row["text"], row["kafka_key"]) == (f"m{i}", f"k{i % 10}")
        assert (row["kafka_partition"], row["kafka_offset"]) == where[i]
        assert row["kafka_timestamp"] == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=base_ms + i)
    for p in range(3):  # what the table holds of each partition: every offset up to its offset, once
        held = sorted(int(r["kafka_offset"]) for r in rows if r["kafka_partition"] == p)  # type: ignore[call-overload]
        last = offsets[p]
        assert held == ([] if last is None else list(range(last + 1))), p

    rerun = ok_report(run([*command, "--until-idle", "2s"]))
    assert rerun["rows"] == total - report["rows"]
    assert_exactly_once(uri, {}, range(total))
    assert table_offsets(uri, topic, 3) == last_offsets(bootstrap, topic)


# -- 9. two members rebalancing --------------------------------------------------------------------------


def test_two_members_share_the_partitions_and_leave_at_different_times_without_a_duplicate(
    kafka_broker: KafkaBroker, kafka_topic: Callable[..., str], members: Callable[..., Member], tmp_path: Path
) -> None:
    """Two dynamic members of one group start together on a 6-partition topic while messages arrive
    (each join rebalances the group). The first is stopped with SIGTERM (its partitions are
    committed, then go to the other: another rebalance), messages keep coming, then the second is
    stopped once the table holds everything. Both exit 0 having committed rows, their rows add up to
    every message, and every message is in the table once."""
    topic, uri, bootstrap = kafka_topic(6), str(tmp_path / "table"), kafka_broker.bootstrap
    produce_json(bootstrap, topic, (record(i) for i in range(600)), key=key_of)
    producing = Producing(bootstrap, topic, first=600, burst=100, pause=0.1)
    command = kafka_args(uri, bootstrap, topic, f"g-{topic}", "--commit-interval", FAST, "--json",
                         "--consumer-option", "heartbeat.interval.ms=500")  # fmt: skip
    try:
        a, b = members("a", command), members("b", command)
        time.sleep(6.0)
        assert a.sigterm() == 0, a.output()
        time.sleep(3.0)
    finally:
        total = producing.stop()
    wait_until(lambda: table_offsets(uri, topic, 6) == last_offsets(bootstrap, topic), "the table holds everything",
               alive=[b])  # fmt: skip
    assert b.sigterm() == 0, b.output()
    reports = [a.report(), b.report()]
    print([(r["rows"], r["commits"], r["stale_batches"], [p["partition"] for p in r["partitions"]]) for r in reports])
    assert all(r["rows"] > 0 and r["stopped"] == "signal" for r in reports), reports
    assert sum(r["rows"] for r in reports) == total
    assert_exactly_once(uri, {}, range(total))
