#!/usr/bin/env python
"""How fast does `lakesink kafka` move JSON messages into Delta, against a raw loop, and how far behind does it run?

    python benchmarks/kafka.py            # 1M messages, local and s3, 1 and 2 processes, median of 5; lag; profile (~9 min)
    python benchmarks/kafka.py --quick    # 200k messages, one run each, 10 s lag runs on local disk, no profile (~1-2 min)
    python benchmarks/kafka.py --stores local --processes 1 --repeat 5 --no-lag --no-profile
    python benchmarks/kafka.py --stores '' --messages 1200 --no-profile --lag-stores local   # the lag runs only
    python benchmarks/kafka.py --lakesink-dir /tmp/patched/lakesink --no-profile   # measure a proposed patch
    python benchmarks/kafka.py --from-json benchmarks/results/kafka.json     # reprint the tables only

It starts a real Kafka-protocol broker (noida-db, tests/support/kafka.py) and, for `s3`, a real moto
S3 server in its own process (tests/support/moto_server.py). Both share the machine's cores with
the consumers being measured (and with the benchmark itself, which reads the table's log or the
raw children's progress every 0.25 s while a run is timed).

Throughput. `--messages` + one batch (the commit interval's rows) JSON messages of ~200 bytes
(ids, strings, an amount, a quantity, an ISO event time and the produce time as epoch seconds;
the user id as the key) are produced once, round-robin over a 6-partition topic, before anything
is timed. A run is done once `--messages` of them are in the table (lakesink) or written (raw):
the extra batch is there so that every measured batch is full (due by its size) and none waits
for the interval's time limit, which a backlog's last batch otherwise does (5 s after it began,
in both loops alike: enough to swamp the figures). For each store (a local folder; a prefix of
the moto bucket) and each process count (1, 2), repetitions interleaved (every configuration once,
then again; raw and lakesink alternate which goes first):

* `lakesink`: P real `lakesink kafka TABLE --bootstrap ... --topic T --group G --app-id A --json
  --log-format json` processes (same group and app id; a fresh group, app id and table per run)
  at lakesink's default commit interval (500000rows,128MB,5s). Done = the commitInfo timestamp of
  the first log entry after which the table holds `--messages` rows (the benchmark reads the log
  every 0.25 s); checked: those rows are exactly the messages the partitions' txns cover.
* `raw`: P processes of the same consumer loop without Delta (this file, `--raw-child`): a
  confluent-kafka Consumer in a fresh group (subscribe; librdkafka's auto commit, so a rebalance
  between two members duplicates little), consume(num_messages=20000), the values kept as bytes;
  a batch is written under the same rule as lakesink's commit interval (500,000 messages, 128 MB
  of values, or 5 s since its first message): values joined with b"\\n", pyarrow.json.read_json,
  pq.write_table (snappy) to the same store (pyarrow's S3FileSystem for moto). No log, no commit,
  no positions. Done = the end of the write that brings the children's rows to `--messages`
  (each reports its writes on stdout).
* `consume` (`--ceiling`, on by default; no store): the raw loop without read_json and
  write_table, what the broker and the client deliver: the ceiling of both.

Once done, the processes are killed (SIGKILL: what they read afterwards is not measured, and
the tables are thrown away). Every run is timed from the spawn (imports and the group join
included): `msg/s` = messages done / that time; `msg/s after join` = the same from the first
partition assignment any process reported. The ratio is lakesink's median rate over raw's, per
configuration; the paired ratio the median of each repetition's (its two runs back to back,
under the same load). Each run records its processes' CPU seconds (wait4), peak RSS, the broker's
and moto's CPU seconds over the run, and the 1-minute load average when it started.

Lag. A fresh topic; one `lakesink kafka` (stopped with SIGTERM at the end) per store and commit
interval (`--lag-intervals`, default the default 5 s and 1 s); six warm-up messages first (one per
partition) until the table holds them (the table exists and the consumer holds the partitions),
then a producer process sends `--lag-rate` messages/s (default 10,000; a batch every 10 ms on an
absolute schedule) for `--lag-seconds` (default 30), each carrying time.time() at its produce()
call. A message's lag = the commitInfo timestamp of the log entry that added its file - its
produce time (every message: the files' produce-time column is read after the run). The
benchmark also polls the log every 50 ms and keeps when each entry was first seen, as a check of
the commit timestamps.

Profile (`--profile`, on by default in the full run): one more 1-process local run under py-spy
(100 samples/s, every thread, idle samples too), the main thread's samples grouped into start-up
(imports, CLI, opening the table), poll/consume (waiting in librdkafka's consume, which includes
the group join and the broker's answers), grouping (Python per message in KafkaSource._grouped),
decode (JSON -> Arrow: screening, pyarrow's parser, date/time casts, schema inference), stage
(Parquet encode and write), commit (the log entry), and other; with the top frames of each group.
pyarrow's parser and librdkafka's fetchers run on threads py-spy does not see: their CPU is in
the process's CPU seconds only. Written to benchmarks/results/kafka_profile.txt (raw folded
stacks beside it).

Output: benchmarks/results/kafka.json (machine, configuration, every run) and kafka.md (the
tables, also printed); --quick writes kafka-quick.*. The lakesink measured is a copy of lakesink/
taken at the start (benchmarks/throughput.py's measure_a_copy; --lakesink-dir: that package
instead), byte-compiled, so edits made meanwhile are not measured halfway.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Heavy imports (pyarrow, deltalake, lakesink) happen inside functions: the raw child and the lag
# producer run this file too, and should pay only for what they use.

RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_RESULTS = RESULTS / "kafka.json"
QUICK_RESULTS = RESULTS / "kafka-quick.json"
PROFILE_TEXT = RESULTS / "kafka_profile.txt"
PACKAGES = ("confluent-kafka", "noida-db", "moto")
STORES = ("local", "s3")
KINDS = ("raw", "lakesink")
CEILING = "consume"  # the raw loop without read_json and write_table: what the broker and client deliver
PARTITIONS = 6
BUCKET = "lakesink-kafka-bench"
DEFAULT_INTERVAL = "500000rows,128MB,5s"  # lakesink kafka's default (main() checks it against DEFAULT_KAFKA_INTERVAL)
FULL = {"messages": 1_000_000, "repeat": 5, "lag_seconds": 30.0, "lag_stores": "local,s3", "profile": True}
QUICK = {"messages": 200_000, "repeat": 1, "lag_seconds": 10.0, "lag_stores": "local", "profile": False}
TARGET_RATIO = 0.8
POLL_MESSAGES = 20_000  # per consume() call, as lakesink asks
RUN_TIMEOUT = 600.0
# noida-db answers a fetch with everything up to the end of each partition (tests/support/kafka.py)
CONSUMER_OPTIONS = {"receive.message.max.bytes": "2000000000"}
EVENTS = ("page_view", "search", "add_to_cart", "checkout", "login")
COUNTRIES = ("DE", "FR", "US", "GB", "NL", "ES", "IT", "PL")
CURRENCIES = ("EUR", "USD", "GBP")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# messages


def message(i: int, rng: random.Random, produced_at: float) -> tuple[bytes, bytes]:
    """(key, value): one event as compact JSON, ~200 bytes; `produced_at` is epoch seconds."""
    user = rng.randrange(1_000_000)
    at = 1_796_083_200 + i // 10  # 2026-12-01 in steps of 0.1 s per message
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))
    value = (
        f'{{"event_id":{i},"user_id":"u-{user:07d}","event":"{EVENTS[i % 5]}","product_id":{rng.randrange(100_000)},'
        f'"amount":{rng.random() * 500:.2f},"currency":"{CURRENCIES[i % 3]}",'
        f'"quantity":{1 + i % 7},"country":"{COUNTRIES[i % 8]}","ts":"{stamp}.{(i * 100) % 1000:03d}Z",'
        f'"produced_at":{produced_at:.6f}}}'
    )
    return f"u-{user:07d}".encode(), value.encode()


def _producer(bootstrap: str, **extra: Any) -> Any:
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.num.messages": 10_000, **extra})


def produce_backlog(bootstrap: str, topic: str, count: int, seed: int = 14) -> dict[str, Any]:
    """`count` messages round-robin over the partitions, flushed; the user id is the key."""
    producer = _producer(bootstrap, **{"linger.ms": 20, "queue.buffering.max.messages": 500_000})
    rng = random.Random(seed)
    started = time.perf_counter()
    sizes = 0
    for i in range(count):
        key, value = message(i, rng, time.time())
        sizes += len(value)
        while True:
            try:
                producer.produce(topic, value, key, i % PARTITIONS)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    undelivered = producer.flush(120)
    if undelivered:
        raise RuntimeError(f"{undelivered} messages not delivered")
    seconds = time.perf_counter() - started
    return {"messages": count, "value_bytes_mean": round(sizes / count, 1), "seconds": round(seconds, 2)}


def steady_producer(bootstrap: str, topic: str, rate: float, seconds: float, first_id: int, out: str) -> None:
    """The lag run's producer (its own process): rate/100 messages every 10 ms on an absolute schedule,
    each value carrying time.time() at its produce(); what it did goes to `out` as JSON."""
    producer = _producer(bootstrap)
    tick = 0.01
    per_tick = max(1, round(rate * tick))
    ticks = round(seconds / tick)
    rng = random.Random(first_id)
    behind = 0
    sent = 0
    started = time.time()
    for t in range(ticks):
        pause = started + t * tick - time.time()
        if pause > 0:
            time.sleep(pause)
        elif pause < -tick:
            behind += 1
        for _ in range(per_tick):
            key, value = message(first_id + sent, rng, time.time())
            while True:
                try:
                    producer.produce(topic, value, key)
                    break
                except BufferError:
                    producer.poll(0.01)
            sent += 1
        producer.poll(0)
    ended = time.time()
    left = producer.flush(60)
    done = {"sent": sent, "undelivered": left, "started": started, "ended": ended, "behind_ticks": behind}
    Path(out).write_text(json.dumps(done))


# ---------------------------------------------------------------------------------------------
# the raw loop (a child process: `python benchmarks/kafka.py --raw-child JSON`)


def raw_child(config: dict[str, Any]) -> None:
    """The raw loop: consume, read_json, write_table; batches under lakesink's commit-interval rule.

    Lines of JSON on stdout: when it is first given partitions, and per file written (its rows, when,
    the time spent so far in consume, read_json and write_table); a summary at the end. Runs until
    SIGTERM (then writes what it holds) or SIGKILL (the benchmark, once it has what it measures)."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.json as pajson
    import pyarrow.parquet as pq
    from confluent_kafka import Consumer

    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stop.append(signum))
    imported = time.time()
    if config.get("s3"):
        s3 = config["s3"]
        fs: Any = pafs.S3FileSystem(
            access_key=s3["AWS_ACCESS_KEY_ID"], secret_key=s3["AWS_SECRET_ACCESS_KEY"], region=s3["AWS_REGION"],
            endpoint_override=s3["AWS_ENDPOINT_URL"], scheme="http",
        )  # fmt: skip
    else:
        fs = pafs.LocalFileSystem()
        fs.create_dir(config["root"], recursive=True)
    consumer = Consumer(
        {
            "bootstrap.servers": config["bootstrap"], "group.id": config["group"], "auto.offset.reset": "earliest",
            "enable.partition.eof": False, "isolation.level": "read_committed", **CONSUMER_OPTIONS,
        }
    )  # fmt: skip
    assigned: list[float] = []

    def on_assign(_consumer: Any, partitions: list[Any]) -> None:
        if partitions and not assigned:
            assigned.append(time.time())
            print(json.dumps({"assigned": assigned[0]}), flush=True)

    consumer.subscribe([config["topic"]], on_assign=on_assign)
    rows_limit, bytes_limit, seconds_limit = config["rows"], config["bytes"], config["seconds"]
    values: list[bytes] = []
    nbytes = 0
    batch_started: float | None = None
    timers = {"consume": 0.0, "decode": 0.0, "write": 0.0}
    files = rows = received = 0
    consume_busy = 0.0
    last_write = first_message = last_consumed = None
    clock = time.perf_counter
    while True:
        now = time.monotonic()
        due = batch_started is not None and (
            len(values) >= rows_limit or nbytes >= bytes_limit or now - batch_started >= seconds_limit
        )
        if values and (due or stop):
            written = len(values)
            if config.get("write", True):
                started = clock()
                table = pajson.read_json(pa.py_buffer(b"\n".join(values)))
                timers["decode"] += clock() - started
                started = clock()
                pq.write_table(table, f"{config['root']}/part-{os.getpid()}-{files:05d}.snappy.parquet", filesystem=fs)
                timers["write"] += clock() - started
                written = table.num_rows
            files += 1
            rows += written
            values, nbytes, batch_started = [], 0, None
            last_write = time.time()
            timed = {**{k: round(v, 3) for k, v in timers.items()}, "consume": round(consume_busy, 3)}
            print(json.dumps({"rows": written, "at": last_write, "timers_s": timed}), flush=True)
        if stop:
            break
        started = clock()
        messages = consumer.consume(num_messages=POLL_MESSAGES, timeout=0.5)
        timers["consume"] += clock() - started
        got = 0
        for m in messages:
            if m.error() is None:
                value = m.value()
                values.append(value)
                nbytes += len(value)
                got += 1
        if got:
            consume_busy = timers["consume"]  # the polls after the last message are not consuming
            received += got
            last_consumed = time.time()
            first_message = first_message or last_consumed
            if batch_started is None:
                batch_started = time.monotonic()
    consumer.close()
    print(json.dumps({
        "imported": imported, "assigned": assigned[0] if assigned else None, "first_message": first_message,
        "last_consumed": last_consumed, "done": last_write, "messages": received, "rows": rows, "files": files,
        "timers_s": {**{k: round(v, 3) for k, v in timers.items()}, "consume": round(consume_busy, 3)},
    }))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# stores and the Delta log


class Store:
    """Where a run writes: a local folder or a prefix of the moto bucket; reads the log and files back."""

    def __init__(self, kind: str, scratch: Path, moto: Any = None) -> None:
        self.kind = kind
        self.scratch = scratch
        self.moto = moto
        self._client: Any = None
        self._fs: Any = None

    def uri(self, name: str) -> str:
        return str(self.scratch / "lake" / name) if self.kind == "local" else f"s3://{BUCKET}/{name}"

    def storage_options(self) -> dict[str, str]:
        return self.moto.storage_options() if self.kind == "s3" else {}

    def storage_args(self) -> list[str]:
        return [arg for k, v in self.storage_options().items() for arg in ("--storage-option", f"{k}={v}")]

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self.moto.client()
        return self._client

    @property
    def fs(self) -> Any:
        import pyarrow.fs as pafs

        if self._fs is None:
            if self.kind == "local":
                self._fs = pafs.LocalFileSystem()
            else:
                o = self.storage_options()
                self._fs = pafs.S3FileSystem(
                    access_key=o["AWS_ACCESS_KEY_ID"], secret_key=o["AWS_SECRET_ACCESS_KEY"], region=o["AWS_REGION"],
                    endpoint_override=o["AWS_ENDPOINT_URL"], scheme="http",
                )  # fmt: skip
        return self._fs

    def path(self, uri: str, relative: str = "") -> str:
        """A path pyarrow's filesystem takes (bucket/key for s3)."""
        base = uri.removeprefix("s3://")
        return f"{base}/{relative}" if relative else base

    def read_entry(self, uri: str, version: int) -> bytes | None:
        """Log entry `version` of the table at `uri`, or None if it does not exist (yet)."""
        name = f"_delta_log/{version:020d}.json"
        if self.kind == "local":
            try:
                return (Path(uri) / name).read_bytes()
            except FileNotFoundError:
                return None
        key = f"{uri.removeprefix(f's3://{BUCKET}/')}/{name}"
        try:
            return self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def reset(self) -> None:
        if self.kind == "s3":
            self.moto.reset()
            self.moto.create_bucket(BUCKET)
            self._client = self._fs = None


def parse_entry(body: bytes) -> dict[str, Any]:
    entry: dict[str, Any] = {"timestamp_ms": None, "txns": {}, "adds": []}
    for line in body.splitlines():
        if not line.strip():
            continue
        action = json.loads(line)
        if "commitInfo" in action:
            entry["timestamp_ms"] = action["commitInfo"].get("timestamp")
        elif "txn" in action:
            entry["txns"][action["txn"]["appId"]] = action["txn"]["version"]
        elif "add" in action:
            stats = json.loads(action["add"].get("stats") or "{}")
            entry["adds"].append({"path": action["add"]["path"], "rows": stats.get("numRecords"), "size": action["add"]["size"]})
    return entry


def covered_at(entries: list[dict[str, Any]], app_id: str, topic: str, ends: dict[int, int]) -> dict[str, Any] | None:
    """The first entry after which every partition's txn holds its last offset (end - 1)."""
    held: dict[int, int] = {}
    want = {p: end - 1 for p, end in ends.items() if end > 0}
    for entry in entries:
        for app, offset in entry["txns"].items():
            prefix = f"{app_id}/{topic}/"
            if app.startswith(prefix):
                held[int(app[len(prefix) :])] = offset
        if all(held.get(p, -1) >= last for p, last in want.items()):
            return entry
    return None


def committed_at(entries: list[dict[str, Any]], app_id: str, topic: str, rows: int) -> dict[str, Any] | None:
    """The first entry after which the table holds at least `rows` rows, with the rows and the
    partitions' offsets then; checked: the rows are exactly the messages the offsets cover
    (the topic's offsets are dense from 0), so none is missing or there twice."""
    held: dict[int, int] = {}
    total = 0
    for entry in entries:
        total += sum(a["rows"] or 0 for a in entry["adds"])
        for app, offset in entry["txns"].items():
            prefix = f"{app_id}/{topic}/"
            if app.startswith(prefix):
                held[int(app[len(prefix) :])] = offset
        if total >= rows:
            covered = sum(offset + 1 for offset in held.values())
            if covered != total:
                raise RuntimeError(f"{total} rows, but the offsets {held} cover {covered} messages")
            return {**entry, "rows_then": total, "offsets_then": dict(held)}
    return None


# ---------------------------------------------------------------------------------------------
# processes


class Watched:
    """Processes started together and reaped with wait4 (CPU seconds and peak RSS of each)."""

    def __init__(self, commands: list[list[str]], *, cwd: Path, logs: Path, env: dict[str, str] | None = None) -> None:
        self.outputs: list[Path] = []
        self.errors: list[Path] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        logs.parent.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        for i, command in enumerate(commands):
            out, err = logs.with_name(f"{logs.name}-{i}.out"), logs.with_name(f"{logs.name}-{i}.err")
            self.outputs.append(out)
            self.errors.append(err)
            with out.open("wb") as stdout, err.open("wb") as stderr:
                self.processes.append(subprocess.Popen(command, cwd=cwd, stdout=stdout, stderr=stderr, env=env))

    def signal(self, signum: int) -> None:
        for p in self.processes:
            if p.returncode is None:
                try:
                    p.send_signal(signum)
                except ProcessLookupError:
                    pass

    def until(self, done: Callable[[], bool], timeout: float = RUN_TIMEOUT, every: float = 0.25) -> None:
        """Poll `done` until it holds; a process that exits first, or the timeout, is an error (with the logs)."""
        deadline = time.monotonic() + timeout
        while not done():
            if any(p.poll() is not None for p in self.processes):
                self.signal(signal.SIGKILL)
                raise RuntimeError(f"a process exited before the run was done: {self.describe()}")
            if time.monotonic() > deadline:
                self.signal(signal.SIGKILL)
                raise RuntimeError(f"not done after {timeout:.0f} s: {self.describe()}")
            time.sleep(every)

    def describe(self) -> str:
        """Each process's command, exit status and the tails of its output, for an error message."""
        parts = []
        for p, out, err in zip(self.processes, self.outputs, self.errors, strict=True):
            parts.append(f"\n{' '.join(map(str, p.args[:6]))} ... exit {p.poll()}:\n  stdout: {out.read_text()[-1500:]}"
                         f"\n  stderr: {err.read_text(errors='replace')[-3000:]}")  # fmt: skip
        return "".join(parts)

    def wait(self, timeout: float = RUN_TIMEOUT, *, check: bool = True) -> list[dict[str, Any]]:
        """Reap every process (killed after `timeout`); `check`: a nonzero exit is an error."""
        timer = threading.Timer(timeout, self.signal, args=(signal.SIGKILL,))
        timer.start()
        results = []
        try:
            for p in self.processes:
                _, status, usage = os.wait4(p.pid, 0)
                p.returncode = os.waitstatus_to_exitcode(status)
                results.append({"exit": p.returncode, "ended": time.time(), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
                                "peak_rss_mib": round(usage.ru_maxrss / 1024)})  # fmt: skip
        finally:
            timer.cancel()
        for p, result, err in zip(self.processes, results, self.errors, strict=True):
            if check and result["exit"] != 0:
                raise RuntimeError(f"{p.args[:4]} exited {result['exit']}: {err.read_text()[-3000:]}")
        return results


def cpu_seconds(pid: int | None) -> float | None:
    import psutil

    if pid is None:
        return None
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system + getattr(times, "children_user", 0) + getattr(times, "children_system", 0)


def _diff(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else round(after - before, 2)


def _json_time(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


def first_assignment(err: Path) -> float | None:
    """When a lakesink process (--log-format json) was first given partitions."""
    for line in err.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("logger") == "lakesink.ingest.kafka" and str(event.get("message", "")).startswith("assigned "):
            return _json_time(event["time"])
    return None


# ---------------------------------------------------------------------------------------------
# one throughput run


class Bench:
    def __init__(self, args: argparse.Namespace, scratch: Path, broker: Any, moto: Any, topic: str, ends: dict[int, int]) -> None:
        self.args = args
        self.scratch = scratch
        self.broker = broker
        self.moto = moto
        self.topic = topic
        self.ends = ends
        self.stores = {kind: Store(kind, scratch, moto) for kind in STORES if kind == "local" or moto is not None}
        self.interval = parse_interval(args.commit_interval)

    def lakesink_command(self, store: Store, uri: str, group: str, app_id: str, *, topic: str | None = None,
                         interval: str | None = None) -> list[str]:  # fmt: skip
        """`lakesink kafka` until SIGTERM (the benchmark sends it once the table holds what it waits for)."""
        command = [sys.executable, "-m", "lakesink", "--log-format", "json", "kafka", uri, "--bootstrap", self.broker.bootstrap,
                   "--topic", topic or self.topic, "--group", group, "--app-id", app_id, "--json",
                   "--commit-interval", interval or self.args.commit_interval, *store.storage_args()]  # fmt: skip
        for k, v in CONSUMER_OPTIONS.items():
            command += ["--consumer-option", f"{k}={v}"]
        return command

    def run(self, kind: str, store_kind: str, processes: int, repetition: int) -> dict[str, Any]:
        store = self.stores[store_kind]
        name = f"{kind}-{store_kind}-p{processes}-r{repetition}-{uuid.uuid4().hex[:6]}"
        uri = store.uri(name)
        group = f"g-{name}"
        logs = self.scratch / "logs" / name
        measured = self.args.messages
        if kind == "lakesink":
            commands = [self.lakesink_command(store, uri, group, f"bench-{name}") for _ in range(processes)]
        else:
            config = {"bootstrap": self.broker.bootstrap, "topic": self.topic, "group": group, "root": store.path(uri),
                      "s3": store.storage_options() or None, "write": kind == "raw", **self.interval}  # fmt: skip
            commands = [
                [sys.executable, str(Path(__file__).resolve()), "--raw-child", json.dumps(config)] for _ in range(processes)
            ]
        load = os.getloadavg()[0]
        broker_cpu, moto_cpu = cpu_seconds(self.broker.process.pid), cpu_seconds(self.moto.process.pid if self.moto else None)
        watched = Watched(commands, cwd=self.scratch, logs=logs)
        log_tail = LogTail(store, uri)
        if kind == "lakesink":
            watched.until(lambda: committed_at(log_tail.read(), f"bench-{name}", self.topic, measured) is not None)
        else:
            watched.until(lambda: raw_done(watched.outputs, measured) is not None)
        # Done: what is read after this point is not measured. SIGKILL, so that neither kind spends
        # the machine on it (lakesink would commit what it holds on SIGTERM; the tables are thrown away).
        watched.signal(signal.SIGKILL)
        procs = watched.wait(check=False)
        broker_cpu = _diff(cpu_seconds(self.broker.process.pid), broker_cpu)
        moto_cpu = _diff(cpu_seconds(self.moto.process.pid if self.moto else None), moto_cpu)
        started = watched.started
        result: dict[str, Any] = {
            "kind": kind, "store": "-" if kind == CEILING else store_kind, "processes": processes, "repetition": repetition,
            "load_1m": round(load, 2),
            "process_cpu_s": round(sum(p["cpu_s"] for p in procs), 2), "peak_rss_mib": max(p["peak_rss_mib"] for p in procs),
            "broker_cpu_s": broker_cpu, "moto_cpu_s": moto_cpu,
        }  # fmt: skip
        if kind == "lakesink":
            entries = log_tail.read()
            done = committed_at(entries, f"bench-{name}", self.topic, measured)
            assert done is not None
            done_at, rows = done["timestamp_ms"] / 1000, done["rows_then"]
            assigned = [a for a in (first_assignment(err) for err in watched.errors) if a is not None]
            upto = [e for e in entries if e["version"] <= done["version"]]
            result.update({"commits": sum(1 for e in upto if e["adds"]), "files": sum(len(e["adds"]) for e in upto)})
        else:
            finished = raw_done(watched.outputs, measured)
            assert finished is not None
            done_at, rows, files = finished
            assigned = [t for t in (_raw_assigned(out) for out in watched.outputs) if t is not None]
            result["files"] = files
            # each child's time split as of its last write up to done
            splits = [[e["timers_s"] for e in _progress(out) if "rows" in e and e["at"] <= done_at] for out in watched.outputs]
            result["timers_s"] = {k: round(sum(s[-1][k] for s in splits if s), 3) for k in ("consume", "decode", "write")}
        result.update({
            "rows": rows, "seconds": round(done_at - started, 3),
            "join_s": round(min(assigned) - started, 3) if assigned else None,
            "after_join_s": round(done_at - min(assigned), 3) if assigned else None,
        })  # fmt: skip
        result["messages_per_s"] = round(rows / result["seconds"])
        if result["after_join_s"]:
            result["messages_per_s_after_join"] = round(rows / result["after_join_s"])
        if store_kind == "local":
            _remove(Path(uri))
        store.reset()
        return result


def _progress(out: Path) -> list[dict[str, Any]]:
    """A raw child's progress lines so far (one per file written, one when it is given partitions)."""
    lines = []
    for line in out.read_text().splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                pass  # being written
    return lines


def raw_done(outputs: list[Path], measured: int) -> tuple[float, int, int] | None:
    """(when, rows, files): the write after which the raw children had written `measured` rows in all."""
    writes = sorted((e["at"], e["rows"]) for out in outputs for e in _progress(out) if "rows" in e)
    total = 0
    for files, (at, rows) in enumerate(writes, 1):
        total += rows
        if total >= measured:
            return at, total, files
    return None


def _raw_assigned(out: Path) -> float | None:
    return next((e["assigned"] for e in _progress(out) if "assigned" in e), None)


class LogTail:
    """The Delta log entries of a table as they appear (read incrementally)."""

    def __init__(self, store: Store, uri: str) -> None:
        self.store, self.uri = store, uri
        self.entries: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        while (body := self.store.read_entry(self.uri, len(self.entries))) is not None:
            self.entries.append({"version": len(self.entries), "seen": time.time(), **parse_entry(body)})
        return self.entries


def measure_other(package: Path, scratch: Path) -> dict[str, Any]:
    """As throughput.measure_a_copy, for a lakesink package elsewhere (a patch being evaluated)."""
    import shutil

    from benchmarks.throughput import sources_digest

    shutil.copytree(package, scratch / "measured" / "lakesink", ignore=shutil.ignore_patterns("__pycache__"))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(scratch / "measured"), os.environ.get("PYTHONPATH")]))
    return {"from": str(package), "sources_sha256": sources_digest(scratch / "measured" / "lakesink")}


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def parse_interval(text: str) -> dict[str, Any]:
    from lakesink.config import CommitInterval

    interval = CommitInterval.parse(text)
    return {"rows": interval.rows or 1 << 62, "bytes": interval.bytes or 1 << 62, "seconds": interval.seconds or 1e9}


# ---------------------------------------------------------------------------------------------
# lag


def lag_run(bench: Bench, store_kind: str, interval_seconds: float, *, seconds: float, rate: float) -> dict[str, Any]:
    import multiprocessing

    import pyarrow.parquet as pq

    store = bench.stores[store_kind]
    name = f"lag-{store_kind}-{interval_seconds:g}s-{uuid.uuid4().hex[:6]}"
    topic = bench.broker.create_topic(name, PARTITIONS)
    uri, group, app_id = store.uri(name), f"g-{name}", f"bench-{name}"
    interval = f"500000rows,128MB,{interval_seconds:g}s"
    logs = bench.scratch / "logs" / name
    load = os.getloadavg()[0]
    watched = Watched([bench.lakesink_command(store, uri, group, app_id, topic=topic, interval=interval)], cwd=bench.scratch,
                      logs=logs)  # fmt: skip
    log_tail = LogTail(store, uri)

    def wait_for(ends: dict[int, int]) -> None:
        watched.until(lambda: covered_at(log_tail.read(), app_id, topic, ends) is not None, timeout=120, every=0.05)

    from tests.support.kafka import end_offsets

    try:
        producer = _producer(bench.broker.bootstrap)
        rng = random.Random(1)
        for p in range(PARTITIONS):  # warm-up: the table is created and every partition held before the clock runs
            producer.produce(topic, message(-1 - p, rng, time.time())[1], None, p)
        producer.flush(30)
        del producer  # its connection would outlive the broker and log the disconnect
        wait_for(end_offsets(bench.broker.bootstrap, topic))
        warm_versions = len(log_tail.entries)
        out = bench.scratch / f"{name}-producer.json"
        context = multiprocessing.get_context("spawn")
        child = context.Process(target=steady_producer, args=(bench.broker.bootstrap, topic, rate, seconds, 0, str(out)))
        child.start()
        while child.is_alive():
            time.sleep(0.05)
            log_tail.read()
        child.join()
        produced = json.loads(out.read_text())
        wait_for(end_offsets(bench.broker.bootstrap, topic))
        watched.signal(signal.SIGTERM)
        proc = watched.wait(60)[0]
    finally:
        watched.signal(signal.SIGKILL)
    lags: list[float] = []
    seen_lags: list[float] = []
    batches = []
    for entry in log_tail.entries:
        version = entry["version"]
        if version < warm_versions or not entry["adds"]:
            continue
        committed = entry["timestamp_ms"] / 1000
        rows = 0
        for add in entry["adds"]:
            table = pq.read_table(store.path(uri, add["path"]), columns=["event_id", "produced_at"], filesystem=store.fs)
            ids = table.column("event_id").to_pylist()
            for event_id, produced_at in zip(ids, table.column("produced_at").to_pylist(), strict=True):
                if event_id >= 0:
                    lags.append(committed - produced_at)
                    seen_lags.append(entry["seen"] - produced_at)
                    rows += 1
        batches.append({"version": version, "rows": rows, "commit_to_seen_s": round(entry["seen"] - committed, 3)})
    if len(lags) != produced["sent"]:
        raise RuntimeError(f"lag run {name}: {len(lags)} produced messages in the table, {produced['sent']} sent")
    store.reset()
    if store_kind == "local":
        _remove(Path(uri))
    return {
        "store": store_kind, "interval_s": interval_seconds, "load_1m": round(load, 2), "messages": len(lags),
        "producer": {**produced, "rate": round(produced["sent"] / (produced["ended"] - produced["started"]))},
        "commits": len(batches), "batch_rows_mean": round(statistics.mean(b["rows"] for b in batches)) if batches else 0,
        "lag_s": _percentiles(lags), "seen_lag_s": _percentiles(seen_lags),
        "commit_to_seen_s_median": round(statistics.median(b["commit_to_seen_s"] for b in batches), 3) if batches else None,
        "lakesink_cpu_s": proc["cpu_s"], "batches": batches,
    }  # fmt: skip


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        rank = (len(ordered) - 1) * q
        low = int(rank)
        high = min(low + 1, len(ordered) - 1)
        return round(ordered[low] + (ordered[high] - ordered[low]) * (rank - low), 3)

    return {"min": round(ordered[0], 3), "p50": at(0.5), "p95": at(0.95), "p99": at(0.99), "max": round(ordered[-1], 3)}


# ---------------------------------------------------------------------------------------------
# profile

# Main-thread stage of a sample: the innermost frame (from the leaf up) matching one of these.
STAGES: list[tuple[str, Callable[[str], bool]]] = [
    ("commit", lambda f: f.startswith(("commit_claims ", "Committer.")) or "lakesink/commit.py" in f),
    ("stage", lambda f: f.startswith("stage_batch ") or "lakesink/write/" in f),
    ("decode", lambda f: f.startswith("decode (lakesink/sources/kafka_decode.py")),
    ("grouping", lambda f: f.startswith(("KafkaSource._grouped ", "_Gathering."))),
    ("poll/consume", lambda f: f.startswith("KafkaSource.poll ")),
    ("other (loop, assignment, refresh, group offsets)", lambda f: f.startswith("consume_kafka ")),
]
DECODE_PARTS: list[tuple[str, Callable[[str], bool]]] = [
    ("pyarrow JSON parser (read_json)", lambda f: "read_json" in f or f.startswith("_parse_fast ")),
    ("date/time casts", lambda f: f.startswith("_dates_and_times ")),
    ("schema inference", lambda f: f.startswith("_inferred ")),
    ("screening and joining values (_Lines.of)", lambda f: f.startswith("_Lines.of ")),
    ("joining polls (_joined)", lambda f: f.startswith("_joined ")),
]


def classify(frames: list[str], rules: list[tuple[str, Callable[[str], bool]]]) -> str | None:
    for frame in reversed(frames):
        for name, match in rules:
            if match(frame):
                return name
    return None


def summarize_profile(folded: str, *, rate: int) -> dict[str, Any]:
    """Seconds of samples per thread, and the main thread's per stage (`STAGES`), decode's parts and
    top leaf frames."""
    threads: dict[str, int] = {}
    stages: dict[str, int] = {}
    decode: dict[str, int] = {}
    leaves: dict[str, dict[str, int]] = {}
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        if len(frames) < 2:
            continue  # a thread without a Python frame (starting or exiting)
        # "thread (123): MainThread", or "thread (123)" while the thread had no name yet: one thread
        main = any(f.startswith("_run_module_as_main ") for f in frames[1:3])
        thread = "main thread" if main else frames[0].split(": ", 1)[-1]
        threads[thread] = threads.get(thread, 0) + count
        if not main:
            continue
        body = frames[1:]
        stage = classify(body, STAGES) or "start-up (imports, CLI, opening the table)"
        stages[stage] = stages.get(stage, 0) + count
        if stage == "decode":
            part = classify(body, DECODE_PARTS) or "other decode"
            decode[part] = decode.get(part, 0) + count
        leaf = body[-1] if body else "?"
        leaves.setdefault(stage, {})
        leaves[stage][leaf] = leaves[stage].get(leaf, 0) + count

    def seconds(counts: dict[str, int]) -> dict[str, float]:
        return {k: round(n / rate, 2) for k, n in sorted(counts.items(), key=lambda kv: -kv[1])}

    staged = seconds(stages)
    return {
        "rate_hz": rate, "threads": seconds(threads),
        "main_thread_s": round(sum(staged.values()), 2), "stages_s": dict(sorted(staged.items(), key=lambda kv: -kv[1])),
        "decode_s": seconds(decode),
        "top_frames": {
            s: [(f, round(n / rate, 2)) for f, n in sorted(fs.items(), key=lambda kv: -kv[1])[:6]] for s, fs in leaves.items()
        },
    }  # fmt: skip


def profile_run(bench: Bench) -> dict[str, Any]:
    """py-spy over one 1-process local lakesink run (all threads, idle samples too)."""
    import shutil

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("py-spy is missing: pip install py-spy (the bench extra)")
    store = bench.stores["local"]
    name = f"profile-{uuid.uuid4().hex[:6]}"
    uri = store.uri(name)
    folded = PROFILE_TEXT.with_suffix(".folded")
    rate = 100
    command = [spy, "record", "--format", "raw", "--threads", "--idle", "--rate", str(rate), "--output", str(folded), "--",
               *bench.lakesink_command(store, uri, f"g-{name}", f"bench-{name}")]  # fmt: skip
    load = os.getloadavg()[0]
    broker_cpu = cpu_seconds(bench.broker.process.pid)
    logs = bench.scratch / "logs" / name
    logs.parent.mkdir(parents=True, exist_ok=True)
    watched = Watched([command], cwd=bench.scratch, logs=logs)
    log_tail = LogTail(store, uri)
    measured = bench.args.messages
    watched.until(lambda: committed_at(log_tail.read(), f"bench-{name}", bench.topic, measured) is not None)
    import psutil

    for child in psutil.Process(watched.processes[0].pid).children():
        child.send_signal(signal.SIGKILL)  # as in the measured runs; py-spy sees it exit and writes its output
    exited = watched.wait()[0]["ended"]
    broker_cpu = _diff(cpu_seconds(bench.broker.process.pid), broker_cpu)
    entries = log_tail.read()
    done = committed_at(entries, f"bench-{name}", bench.topic, measured)
    assert done is not None
    done_at = done["timestamp_ms"] / 1000
    summary = summarize_profile(folded.read_text(), rate=rate)
    assigned = first_assignment(watched.errors[0])
    summary.update({
        "wall_s": round(done_at - watched.started, 2), "join_s": round(assigned - watched.started, 2) if assigned else None,
        "after_done_s": round(exited - done_at, 2), "broker_cpu_s": broker_cpu, "load_1m": round(load, 2),
        "messages": done["rows_then"], "commits": len([e for e in entries if e["adds"] and e["version"] <= done["version"]]),
    })  # fmt: skip
    _remove(Path(uri))
    return summary


def profile_text(summary: dict[str, Any], lakesink: dict[str, Any] | None, raw: dict[str, Any] | None, machine_line: str) -> str:
    """`lakesink`, `raw`: the median 1-process local runs of the throughput phase (CPU, raw's timers)."""
    msgs = summary["messages"]
    lines = [
        f"py-spy over one `lakesink kafka` run: {msgs:,} messages, 6 partitions, local table, 1 process, commit interval "
        f"at its default ({summary['commits']} commits); {summary['rate_hz']} samples/s, every Python thread, idle samples "
        "included (so a stage's seconds are wall time on that thread).",
        f"{machine_line}; 1-minute load at start {summary['load_1m']}.",
        f"Spawn to the commit that completed them {summary['wall_s']:.2f} s under py-spy; the first partition assignment at "
        f"{_n(summary['join_s'])} s; the samples go on until the process was killed, {summary['after_done_s']:.2f} s after "
        f"that commit (reading the next batch). Broker CPU over the run {summary['broker_cpu_s']} s.",
    ]
    if lakesink:
        lines.append(
            f"Without py-spy (median 1-process local run of the throughput phase): {lakesink['rows']:,} messages in "
            f"{lakesink['seconds']:.2f} s, process CPU "
            f"{lakesink['process_cpu_s']:.2f} s (every thread: librdkafka's fetchers and pyarrow's parser pool are not Python "
            "threads, and py-spy does not see them)."
        )
    lines += [
        "",
        "Python threads (seconds of samples):",
        *[f"  {t}: {s:.2f}" for t, s in summary["threads"].items()],
        "",
        f"Main thread by stage (seconds; it does all of lakesink's work in turn, {summary['main_thread_s']:.2f} s in all):",
        *[f"  {s:<52} {v:6.2f}" for s, v in summary["stages_s"].items()],
        "",
        "decode (JSON -> Arrow) split:",
        *[f"  {s:<52} {v:6.2f}" for s, v in summary["decode_s"].items()],
    ]
    if raw:
        t = raw["timers_s"]
        lines += [
            "",
            f"The raw loop (median 1-process local run, its own timers): {raw['rows']:,} messages, spawn to the write that "
            f"completed them {raw['seconds']:.2f} s, first assignment at {_n(raw['join_s'])} s, consume {t['consume']:.2f} s "
            f"(join included), read_json {t['decode']:.2f} s, write_table {t['write']:.2f} s; process CPU "
            f"{raw['process_cpu_s']:.2f} s.",
        ]
    lines += ["", "Top leaf frames per stage (seconds):"]
    for stage, frames in summary["top_frames"].items():
        lines.append(f"  {stage}:")
        lines += [f"    {s:6.2f}  {f}" for f, s in frames]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# output


def medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (store, processes): each kind's median rate and run, the ratio of the median rates and
    the paired ratios (each repetition's lakesink rate over its raw rate)."""
    rows = []
    for store in STORES:
        for processes in sorted({r["processes"] for r in runs}):
            cell: dict[str, Any] = {"store": store, "processes": processes}
            for kind in KINDS:
                mine = sorted((r for r in runs if (r["store"], r["processes"], r["kind"]) == (store, processes, kind)),
                              key=lambda r: r["messages_per_s"])  # fmt: skip
                if not mine:
                    continue
                joined = [r["messages_per_s_after_join"] for r in mine if r.get("messages_per_s_after_join")]
                cell[kind] = {
                    "runs": len(mine), "messages_per_s": round(statistics.median(r["messages_per_s"] for r in mine)),
                    "messages_per_s_after_join": round(statistics.median(joined)) if joined else None,
                    "seconds": round(statistics.median(r["seconds"] for r in mine), 3),
                    "rates_all": [r["messages_per_s"] for r in mine], "loads": [r["load_1m"] for r in mine],
                    "process_cpu_us_per_message": round(statistics.median(1e6 * r["process_cpu_s"] / r["rows"] for r in mine), 2),
                    "broker_cpu_s": _median_of(r["broker_cpu_s"] for r in mine),
                    "moto_cpu_s": _median_of(r["moto_cpu_s"] for r in mine),
                    "peak_rss_mib": max(r["peak_rss_mib"] for r in mine),
                    "join_s": _median_of(r.get("join_s") for r in mine),
                    "median_run": mine[len(mine) // 2],
                }  # fmt: skip
            if "raw" in cell and "lakesink" in cell:
                lk, raw = cell["lakesink"], cell["raw"]
                cell["ratio"] = round(lk["messages_per_s"] / raw["messages_per_s"], 3)
                if lk["messages_per_s_after_join"] and raw["messages_per_s_after_join"]:
                    cell["ratio_after_join"] = round(lk["messages_per_s_after_join"] / raw["messages_per_s_after_join"], 3)
                # Each repetition's two runs ran back to back: their ratio sees the same load.
                pairs: dict[int, dict[str, float]] = {}
                for r in runs:
                    if (r["store"], r["processes"]) == (store, processes):
                        pairs.setdefault(r["repetition"], {})[r["kind"]] = r["messages_per_s"]
                paired = sorted(p["lakesink"] / p["raw"] for p in pairs.values() if len(p) == 2)
                cell["paired_ratios"] = [round(x, 3) for x in paired]
                cell["paired_ratio_median"] = round(statistics.median(paired), 3) if paired else None
            ceiling = [r["messages_per_s"] for r in runs if r["kind"] == CEILING and r["processes"] == processes]
            if ceiling:
                cell[CEILING] = {"messages_per_s": round(statistics.median(ceiling)), "rates_all": sorted(ceiling)}
            if "raw" in cell or "lakesink" in cell:
                rows.append(cell)
    return rows


def _median_of(values: Any) -> float | None:
    kept = [v for v in values if v is not None]
    return round(statistics.median(kept), 2) if kept else None


def _n(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def markdown(result: dict[str, Any]) -> str:
    from benchmarks._machine import describe

    config = result["config"]
    m = result["machine"]
    lines = [
        f"# lakesink kafka: messages/s and lag ({'--quick run' if config['quick'] else 'full run'})",
        "",
        f"{describe(m, packages=PACKAGES)}; 1-minute load average at start {m['load_average_1_5_15'][0]}, at end "
        f"{m.get('load_average_at_end', ['-'])[0]}. The broker (noida-db), moto and the consumers share the cores.",
        f"{config['produced']:,} JSON messages of ~{result['backlog']['value_bytes_mean']:.0f} bytes on {PARTITIONS} partitions, "
        f"produced before the runs; a run is done when {config['messages']:,} are committed (lakesink) or written (raw), "
        "so that every batch is a full one (the rest is there so that no batch waits for the interval's time limit). "
        f"Commit interval {config['commit_interval']} for lakesink and the same batching rule for raw. "
        f"{config['repeat']} run(s) per configuration, interleaved; medians. msg/s = messages done / (spawn to the "
        "commit or write that completed them), imports and the group join included; after join: from the first "
        "partition assignment. ratio = lakesink's median msg/s / raw's; paired = the median of each repetition's "
        "ratio (its two runs back to back, under the same load), with the range. consume only: the raw loop without "
        "read_json and write_table (what the broker and the client deliver; no store).",
        "",
        f"| store | processes | lakesink msg/s | raw msg/s | ratio (target ≥ {TARGET_RATIO}) | paired ratio (range) | "
        "after join: lakesink / raw msg/s (ratio) | consume only msg/s | CPU µs per message lakesink / raw | "
        "broker CPU s l / r | peak RSS MiB l / r | loads at start |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in result["summary"]:
        lk, raw = row.get("lakesink"), row.get("raw")
        if not lk or not raw:
            continue
        mark = "✓" if row["ratio"] >= TARGET_RATIO else "✗"
        loads = ", ".join(f"{x:.1f}" for x in lk["loads"] + raw["loads"])
        paired = (
            "-".join(f"{x:.2f}" for x in (row["paired_ratios"][0], row["paired_ratios"][-1])) if row.get("paired_ratios") else "-"
        )
        lines.append(
            f"| {row['store']} | {row['processes']} | {lk['messages_per_s']:,} | {raw['messages_per_s']:,} | "
            f"{row['ratio']:.2f}x {mark} | {_n(row.get('paired_ratio_median'))}x ({paired}) | "
            f"{_n(lk['messages_per_s_after_join'])} / {_n(raw['messages_per_s_after_join'])} "
            f"({_n(row.get('ratio_after_join'))}x) | {_n(row.get(CEILING, {}).get('messages_per_s'))} | "
            f"{lk['process_cpu_us_per_message']:.1f} / {raw['process_cpu_us_per_message']:.1f} | "
            f"{_n(lk['broker_cpu_s'], 1)} / {_n(raw['broker_cpu_s'], 1)} | {lk['peak_rss_mib']} / {raw['peak_rss_mib']} | "
            f"{loads} |"
        )
    lines += [
        "",
        "Every run (s = spawn to done; join = spawn to the first assignment; CPU s until the processes were killed, just "
        "after done; raw's time split summed over its processes, as of its last write):",
        "",
        "| # | kind | store | P | messages | s | msg/s | join s | load | CPU s | broker CPU s | moto CPU s | files | "
        "raw consume / read_json / write s |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, r in enumerate(result["runs"], 1):
        t = r.get("timers_s")
        timers = f"{t['consume']:.2f} / {t['decode']:.2f} / {t['write']:.2f}" if t else "-"
        lines.append(
            f"| {i} | {r['kind']} | {r['store']} | {r['processes']} | {r['rows']:,} | {r['seconds']:.2f} | "
            f"{r['messages_per_s']:,} | {_n(r.get('join_s'))} | {r['load_1m']:.1f} | {r['process_cpu_s']:.1f} | "
            f"{_n(r['broker_cpu_s'], 1)} | {_n(r['moto_cpu_s'], 1)} | {r['files']} | {timers} |"
        )
    if result.get("lag"):
        lines += [
            "",
            f"Lag: a producer process at a steady {config['lag_rate']:,.0f} messages/s for {config['lag_seconds']:.0f} s; "
            "lag = the commitInfo timestamp of the entry that made a message visible - its produce() time, every message; "
            "'seen' = when the benchmark's 50 ms poll of the log first saw the entry.",
            "",
            "| store | commit interval | messages | producer msg/s | commits | rows per commit | lag p50 s | p95 s | p99 s | "
            "max s | "
            "seen p50 / p95 / max s | lakesink CPU s | load |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in result["lag"]:
            lag, seen = r["lag_s"], r["seen_lag_s"]
            lines.append(
                f"| {r['store']} | {r['interval_s']:g} s | {r['messages']:,} | {r['producer']['rate']:,} | {r['commits']} | "
                f"{r['batch_rows_mean']:,} | {lag['p50']:.2f} | {lag['p95']:.2f} | {lag['p99']:.2f} | {lag['max']:.2f} | "
                f"{seen['p50']:.2f} / {seen['p95']:.2f} / {seen['max']:.2f} | {r['lakesink_cpu_s']:.1f} | {r['load_1m']:.1f} |"
            )
    if result.get("profile"):
        p = result["profile"]
        stages = ", ".join(f"{s} {v:.2f}" for s, v in p["stages_s"].items())
        lines += ["", f"Profile (1 process, local; main thread seconds, `{PROFILE_TEXT.name}` has the detail): {stages}."]
    return "\n".join(lines) + "\n"


def write_outputs(result: dict[str, Any], path: Path) -> str:
    from benchmarks._machine import write_results

    result["summary"] = medians(result["runs"])
    text = markdown(result)
    write_results(path, result)
    path.with_suffix(".md").write_text(text)
    return text


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200k messages, one run each, 10 s lag runs (local), no profile")
    parser.add_argument(
        "--messages", type=int, default=None, help="messages produced for the throughput runs (default 1,000,000)"
    )
    parser.add_argument("--repeat", type=int, default=None, help="runs per configuration (default 5; --quick 1)")
    parser.add_argument("--stores", default="local,s3", help="comma-separated subset of local,s3")
    parser.add_argument("--processes", default="1,2", help="process counts (default 1,2)")
    parser.add_argument(
        "--commit-interval",
        default=None,
        help=f"lakesink's --commit-interval and raw's batching (default {DEFAULT_INTERVAL}; --quick 100000rows,128MB,5s)",
    )
    parser.add_argument("--lag-seconds", type=float, default=None, help="length of each lag run (default 30; --quick 10)")
    parser.add_argument("--lag-rate", type=float, default=10_000, help="messages/s of the lag runs (default 10,000)")
    parser.add_argument("--lag-intervals", default="5,1", help="commit intervals of the lag runs, seconds (default 5,1)")
    parser.add_argument("--lag-stores", default=None, help="stores of the lag runs (default local,s3; --quick local)")
    parser.add_argument("--no-lag", action="store_true", help="skip the lag runs")
    parser.add_argument(
        "--ceiling", action=argparse.BooleanOptionalAction, default=True, help="the consume-only loop too (default on)"
    )
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="py-spy over one more run (default on; --quick off)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help=f"results JSON (default {DEFAULT_RESULTS}; --quick {QUICK_RESULTS})"
    )
    parser.add_argument("--from-json", type=Path, default=None, help="only reprint the tables of a results JSON")
    parser.add_argument(
        "--lakesink-dir",
        type=Path,
        default=None,
        help="measure this copy of the lakesink package (a proposed patch) instead of the tree's",
    )
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy every process's output to this folder at the end")
    parser.add_argument("--raw-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.raw_child is not None:
        raw_child(json.loads(args.raw_child))
        return 0
    if args.from_json is not None:
        print(write_outputs(json.loads(args.from_json.read_text()), args.out or args.from_json))
        return 0
    sizes = QUICK if args.quick else FULL
    args.messages = args.messages or sizes["messages"]
    args.repeat = args.repeat or sizes["repeat"]
    args.lag_seconds = sizes["lag_seconds"] if args.lag_seconds is None else args.lag_seconds
    args.lag_stores = args.lag_stores or sizes["lag_stores"]
    args.profile = sizes["profile"] if args.profile is None else args.profile
    args.commit_interval = args.commit_interval or ("100000rows,128MB,5s" if args.quick else DEFAULT_INTERVAL)
    stores = [s for s in args.stores.split(",") if s]
    lag_stores = [] if args.no_lag or args.lag_seconds <= 0 else [s for s in args.lag_stores.split(",") if s]
    processes = [int(p) for p in args.processes.split(",") if p]
    for store in {*stores, *lag_stores}:
        if store not in STORES:
            parser.error(f"unknown store {store!r}")
    out = args.out or (QUICK_RESULTS if args.quick else DEFAULT_RESULTS)
    # SIGTERM exits through the finally blocks below, which stop the broker and moto
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from benchmarks._machine import describe, machine
    from benchmarks.throughput import measure_a_copy
    from lakesink.config import CommitInterval
    from lakesink.ingest.kafka import DEFAULT_KAFKA_INTERVAL
    from tests.support.kafka import end_offsets, start_kafka
    from tests.support.moto_server import start_moto_server

    if CommitInterval.parse(DEFAULT_INTERVAL) != DEFAULT_KAFKA_INTERVAL:
        log(f"note: lakesink kafka's default commit interval is now {DEFAULT_KAFKA_INTERVAL}, not {DEFAULT_INTERVAL}")
    result: dict[str, Any] = {"machine": machine(packages=PACKAGES), "runs": [], "lag": [], "profile": None}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lakesink-kafka-bench-") as folder:
        scratch = Path(folder)
        result["measured"] = measure_a_copy(scratch) if args.lakesink_dir is None else measure_other(args.lakesink_dir, scratch)
        compileall.compile_dir(scratch / "measured" / "lakesink", quiet=1)  # no run pays for compiling the copy
        broker = start_kafka(scratch / "broker")
        moto = start_moto_server() if "s3" in {*stores, *lag_stores} else None
        try:
            if moto is not None:
                moto.create_bucket(BUCKET)
            topic = broker.create_topic("events", PARTITIONS)
            # One batch more than is measured: every measured batch is then due by its size, never by the time limit.
            produced = args.messages + parse_interval(args.commit_interval)["rows"] if stores else args.messages
            log(f"producing {produced:,} messages to {topic} ({PARTITIONS} partitions)")
            result["backlog"] = produce_backlog(broker.bootstrap, topic, produced)
            ends = end_offsets(broker.bootstrap, topic)
            result["config"] = {
                "quick": args.quick, "messages": args.messages, "produced": produced, "repeat": args.repeat, "stores": stores,
                "processes": processes,
                "commit_interval": args.commit_interval, "lag_seconds": args.lag_seconds,
                "lag_rate": args.lag_rate, "lag_intervals": args.lag_intervals, "lag_stores": lag_stores,
                "profile": args.profile, "end_offsets": ends,
            }  # fmt: skip
            log(f"  {result['backlog']}")
            bench = Bench(args, scratch, broker, moto, topic, ends)
            for repetition in range(args.repeat):
                for count in processes if args.ceiling else ():
                    run = bench.run(CEILING, "local", count, repetition)
                    result["runs"].append(run)
                    log(f"[{CEILING} x{count} #{repetition + 1}] {run['seconds']:.2f} s, {run['messages_per_s']:,} msg/s")
                for store in stores:
                    for count in processes:
                        kinds = KINDS if repetition % 2 == 0 else tuple(reversed(KINDS))
                        for kind in kinds:
                            run = bench.run(kind, store, count, repetition)
                            result["runs"].append(run)
                            log(
                                f"[{kind} {store} x{count} #{repetition + 1}] {run['seconds']:.2f} s, "
                                f"{run['messages_per_s']:,} msg/s (after join {_n(run.get('after_join_s'))} s), "
                                f"CPU {run['process_cpu_s']:.1f} s, load {run['load_1m']}"
                            )
                write_outputs(result, out)
            for store in lag_stores:
                for interval in (float(x) for x in args.lag_intervals.split(",") if x):
                    log(f"[lag {store} {interval:g}s] {args.lag_rate:,.0f} msg/s for {args.lag_seconds:g} s")
                    lag = lag_run(bench, store, interval, seconds=args.lag_seconds, rate=args.lag_rate)
                    result["lag"].append(lag)
                    log(
                        f"  lag p50 {lag['lag_s']['p50']} s, p95 {lag['lag_s']['p95']} s, max {lag['lag_s']['max']} s; "
                        f"{lag['commits']} commits"
                    )
                    write_outputs(result, out)
            if args.profile:
                log("[profile] py-spy over one 1-process local run")
                result["profile"] = profile_run(bench)
                local = next((c for c in medians(result["runs"]) if (c["store"], c["processes"]) == ("local", 1)), {})
                lakesink, raw = (local.get(k, {}).get("median_run") for k in ("lakesink", "raw"))
                line = describe(result["machine"], packages=PACKAGES)
                PROFILE_TEXT.write_text(profile_text(result["profile"], lakesink, raw, line))
        finally:
            if moto is not None:
                moto.stop()
            broker.kill()
            if args.keep_logs is not None and (scratch / "logs").exists():
                import shutil

                shutil.copytree(
                    scratch / "logs", args.keep_logs, dirs_exist_ok=True
                )  # nothing to keep: a clean stop would write the 1M messages to disk first
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(write_outputs(result, out))
    log(f"wrote {out} and {out.with_suffix('.md')} in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
