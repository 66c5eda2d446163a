"""`lakesink kafka` processes in one consumer group, SIGKILLed, frozen and restarted at random, others
joining and leaving, while more messages are produced: every message ends in the table exactly
once, and the table's offsets are the topic's last offsets.

The members are real `lakesink kafka` subprocesses against a real Kafka-protocol broker (noida-db,
tests/support/kafka.py); counts are made with two readers. Three kinds of member:

- two static members (`group.instance.id`), SIGKILLed at random and restarted under the same id,
  which takes the dead one's partitions over at once; sometimes the old one is frozen (SIGSTOP)
  instead, the new one started, and the old one thawed: a zombie holding a batch of partitions
  that are no longer its own, which may commit or be fenced, but never writes a row twice;
- a dynamic member that joins and leaves (SIGTERM) at random: every join and every leave
  rebalances the group, so partitions are revoked (their batch committed first) and re-assigned
  while the static members' batches are in flight.

noida-db (0.2.3) never evicts a member that died without leaving the group: Kafka would after
`session.timeout.ms`, noida-db waits for it forever, and the group's next rebalance hangs. So only
static members are SIGKILLed (their restart replaces them); a dynamic member is only stopped cleanly.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.checks import assert_exactly_once
from tests.support.kafka import KafkaBroker, end_offsets, produce_json, start_kafka
from tests.support.moto_server import MotoServer

APP_ID = "orders-job"
GROUP = "lake-orders"
PARTITIONS = 6
FIRST = 200_000  # produced before the first member starts
MORE = 4 * 10_000  # produced in four bursts while members are killed
ROUNDS = 10
MEMBER_OPTIONS = ("heartbeat.interval.ms=500", "max.poll.interval.ms=60000")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    started = start_kafka(tmp_path / "broker")
    try:
        yield started
    finally:
        started.stop()


def message(i: int) -> dict[str, object]:
    return {"id": i, "customer": f"c{i % 977}", "amount": round(i * 0.25, 2), "note": "x" * (i % 50)}


def customer(record: dict[str, object]) -> str:
    return str(record["customer"])


def kafka_args(uri: str, broker: KafkaBroker, topic: str, storage: dict[str, str]) -> list[str]:
    args = [sys.executable, "-m", "lakesink", "kafka", uri, "--bootstrap", broker.bootstrap, "--topic", topic,
            "--group", GROUP, "--app-id", APP_ID]  # fmt: skip
    for key, value in storage.items():
        args += ["--storage-option", f"{key}={value}"]
    return args


def wait_or_dump(process: subprocess.Popen[bytes], timeout: float) -> int:
    """The exit code; if it does not exit in time, fail with its threads' stacks (py-spy, when installed)."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        spy = Path(sys.executable).with_name("py-spy")
        stacks = (
            subprocess.run([str(spy), "dump", "--pid", str(process.pid)], capture_output=True, text=True).stdout
            if spy.exists()
            else ""
        )
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError(f"member {process.pid} did not exit in {timeout} s:\n{stacks}") from None


class Members:
    """The group's `lakesink kafka` processes, their output appended to one log."""

    def __init__(self, uri: str, broker: KafkaBroker, topic: str, storage: dict[str, str], log: Path) -> None:
        self.args = kafka_args(uri, broker, topic, storage)
        self.log = log
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.exits: list[tuple[str, int]] = []
        self.started: dict[str, float] = {}

    def start(self, name: str, *, static: bool, extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        args = [*self.args, "--commit-interval", "20000rows,64MB,1s", *extra]
        for option in (*MEMBER_OPTIONS, *((f"group.instance.id={name}",) if static else ())):
            args += ["--consumer-option", option]
        with open(self.log, "ab") as out:
            out.write(f"=== {name} starts\n".encode())
            process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.running[name] = process
        self.started[name] = time.monotonic()
        return process

    def signal(self, name: str, signum: int) -> subprocess.Popen[bytes]:
        process = self.running[name]
        os.killpg(process.pid, signum)
        return process

    def kill(self, name: str) -> None:
        process = self.running.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def stop(self, name: str) -> None:
        process = self.running.pop(name)
        # A SIGTERM before the CLI has set its handler (start-up) would kill it instead: let it start.
        time.sleep(max(0.0, self.started[name] + 3.0 - time.monotonic()))
        process.send_signal(signal.SIGTERM)
        self.exits.append((name, process.wait(timeout=120)))

    def kill_all(self) -> None:
        for name in list(self.running):
            self.kill(name)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


def table_offsets(uri: str, broker: KafkaBroker, topic: str, storage: dict[str, str]) -> dict[int, int | None]:
    done = subprocess.run([*kafka_args(uri, broker, topic, storage), "--status", "--json"], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return {p["partition"]: p["table_offset"] for p in json.loads(done.stdout)["partitions"]}


@pytest.mark.parametrize("where", ["local", "s3"])
def test_members_killed_frozen_and_restarted_at_random_while_producing_write_every_message_once(
    where: str, broker: KafkaBroker, tmp_path: Path, moto_server: MotoServer
) -> None:
    seed = int(os.environ.get("LAKESINK_KAFKA_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    print(f"seed {seed} (LAKESINK_KAFKA_SEED reproduces the schedule, not the timing)")
    if where == "local":
        uri, storage = str(tmp_path / "table"), {}
        first, more = FIRST, MORE
    else:
        bucket = f"kafka-{os.getpid()}-{rng.randrange(10**9)}"
        moto_server.create_bucket(bucket)
        uri, storage = f"s3://{bucket}/orders", moto_server.storage_options()
        first, more = FIRST // 2, MORE // 2  # the same schedule over fewer messages: S3 commits are slower
    topic = broker.create_topic("orders", PARTITIONS)
    produce_json(broker.bootstrap, topic, (message(i) for i in range(first)), key=customer)
    total = first + more

    bursts = random.Random(seed + 1)

    def produce_more() -> None:
        for burst in range(4):
            time.sleep(bursts.uniform(1.0, 4.0))
            start = first + burst * (more // 4)
            produce_json(broker.bootstrap, topic, (message(i) for i in range(start, start + more // 4)), key=customer)

    producer = threading.Thread(target=produce_more)  # its own rng: the schedule's stays reproducible
    producer.start()
    members = Members(uri, broker, topic, storage, tmp_path / "members.log")
    done: dict[str, int] = {"kills": 0, "zombies": 0, "joins": 0, "leaves": 0}
    try:
        members.start("s1", static=True)
        for step in range(ROUNDS):
            time.sleep(rng.uniform(0.5, 3.0))
            action = "zombie" if step in (2, 6) else rng.choice(["kill", "kill", "zombie", "dynamic"])
            if "s2" not in members.running and rng.random() < 0.5:
                action = "join-s2"
            static = [n for n in members.running if n.startswith("s")]
            if action == "kill":
                name = rng.choice(static)
                members.kill(name)
                time.sleep(rng.uniform(0.0, 2.0))
                members.start(name, static=True)
                done["kills"] += 1
            elif action == "zombie":
                # Freeze it mid-batch, let its replacement take its partitions, then thaw it.
                name = rng.choice(static)
                old = members.signal(name, signal.SIGSTOP)
                del members.running[name]
                members.start(name, static=True)
                time.sleep(rng.uniform(1.0, 3.0))
                os.killpg(old.pid, signal.SIGCONT)
                try:
                    code = old.wait(timeout=15)  # fenced at its next request to the group, usually
                except subprocess.TimeoutExpired:
                    # noida-db does not always fence a thawed member that was frozen mid-join: it waits
                    # for an assignment that never comes. Stop it: it commits what it holds, if anything.
                    os.killpg(old.pid, signal.SIGTERM)
                    code = wait_or_dump(old, 120)
                members.exits.append((f"{name} (zombie)", code))
                done["zombies"] += 1
            elif action == "join-s2":
                members.start("s2", static=True)
                done["joins"] += 1
            elif "d" in members.running:
                members.stop("d")
                done["leaves"] += 1
            else:
                members.start("d", static=False)
                done["joins"] += 1
        producer.join(timeout=120)
        assert not producer.is_alive()
        if "d" in members.running:
            members.stop("d")
        # Let the static members read to the end and stop on their own, then check; again if a
        # partition's owner stopped (idle) before a late burst reached it.
        ends = end_offsets(broker.bootstrap, topic)
        wanted = {p: ends[p] - 1 if ends[p] else None for p in range(PARTITIONS)}
        for _ in range(3):
            for name in [n for n in list(members.running) if n.startswith("s")]:
                members.kill(name)
            finals = [members.start(name, static=True, extra=("--until-idle", "8s")) for name in ("s1", "s2")]
            assert [p.wait(timeout=300) for p in finals] == [0, 0], members.tail()
            members.running.clear()
            if table_offsets(uri, broker, topic, storage) == wanted:
                break
        assert table_offsets(uri, broker, topic, storage) == wanted, members.tail()
    finally:
        for process in members.running.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        producer.join(timeout=120)
    print(f"{done}; exits of stopped members: {members.exits}")
    # A member stopped with SIGTERM exits 0; a thawed zombie exits 0 (stopped: it committed what it
    # held or found it stale) or 1 (fenced: another process holds its group.instance.id).
    assert all(code in (0, 1) for _, code in members.exits), members.exits
    assert_exactly_once(uri, storage, range(total))
