#!/usr/bin/env python
"""How fast does `lakesink cdc` apply PostgreSQL changes to Delta tables, and how far behind does it run?

    python benchmarks/cdc.py                      # 1M-row table, 500k inserts, 200k updates, 30 s lag run; local and s3
    python benchmarks/cdc.py --quick              # 100k-row table, 50k inserts, 20k updates, 10 s lag run; local only
    python benchmarks/cdc.py --stores s3 --rows 1000000 --inserts 100000 --updates 50000
    python benchmarks/cdc.py --from-json benchmarks/results/cdc.json      # reprint the tables only

It starts a real PostgreSQL 15 (tests/support/postgres.py: logical replication on, fsync off) and,
for `s3`, a real moto S3 server in its own process (tests/support/moto_server.py). For each store,
in a fresh database, a table

    events(id bigint primary key, account int, amount numeric(12,2), status text, at timestamptz)

published as `pub`, goes through four phases, each one `capture_changes` call (the Python API behind
`lakesink cdc`, at its default commit interval: 200,000 changes, 64 MB or 5 s) into ROOT/events:

1. snapshot: `--rows` rows seeded, then `capture_changes(snapshot=True)` creates the slot and
   copies them (COPY under the slot's snapshot, as chunks of upserts); timed from the call to the
   moment the stream starts (`PostgresSource.stream` is called).
2. inserts: `--inserts` new rows in transactions of `--txn-rows` (`INSERT ... SELECT
   generate_series`), then applied by `capture_changes(max_transactions=N)`: it stops at the commit
   that holds the Nth transaction, so no idle wait is in the figure. changes/s = changes / (time
   from the call to the progress callback of the last commit).
3. updates: `--updates` updates of random existing ids (distinct within a transaction) in
   transactions of `--txn-rows` (`UPDATE events SET amount = amount + 1, status = 'x' WHERE id =
   ANY(%s)`), applied the same way.
   The workload of 2 and 3 has finished (its WAL written) before the capture starts, so the figure
   is the apply rate, not the producer's. Its sessions commit with synchronous_commit = on.
4. lag: a producer process inserts `--lag-rate` rows/s (`--lag-txn-rows` rows every
   lag-txn-rows/lag-rate seconds, on an absolute schedule) for `--lag-seconds` while
   `capture_changes` runs in a thread; the producer records each transaction's commit time (when
   COMMIT returned, synchronous_commit = on), the progress callback (it fires right after each
   batch's Delta commits) the time each count of transactions became visible. Lag of transaction
   k = the first progress time with more than k transactions applied - its commit time.
   `stop` is set once every transaction is applied.

After phases 1-3 the Delta table is checked against PostgreSQL (row count; after 3, the count of
status = 'x'), and its file count kept.

Time split. Without changing lakesink, the benchmark wraps (in its own process) the functions each
change goes through with perf_counter timers: `ChangeStream.read` (receive: a message; wait: a
read that timed out), `lakesink.ingest.cdc.decode` (pgoutput decoding), `ChangeAssembler.feed`
(assembling whole transactions, text values kept per column), `TableChanges.batch` (Arrow
conversion), `Sink.write` minus `TableHandle.merge` (lakesink's keyed-write preparation: last
change per key, schema fit) and `TableHandle.merge` (the delta-rs MERGE and its commit, whose
metrics are kept: files scanned, skipped, added, removed, rows copied, scan and rewrite time).
"other" is the rest of the apply time (the capture loop, acknowledgements, opening the table,
starting the stream). The per-message wrappers (read, decode, feed) cost a little: the benchmark
measures one wrapper's cost and reports the estimated total (`instrumentation_s`); `--no-split`
leaves them out (only the per-batch wrappers remain).

Output: benchmarks/results/cdc.json (machine, configuration, every phase) and cdc.md (the tables,
also printed); --quick writes cdc-quick.*.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
from deltalake import DeltaTable  # noqa: E402

from benchmarks._machine import describe, machine, write_results  # noqa: E402
from lakesink.delta.table import TableHandle  # noqa: E402
from lakesink.ingest import cdc as cdc_module  # noqa: E402
from lakesink.ingest.cdc import DEFAULT_CDC_INTERVAL, CdcReport, capture_changes  # noqa: E402
from lakesink.sink import Sink  # noqa: E402
from lakesink.sources.pg_changes import ChangeAssembler, TableChanges  # noqa: E402
from lakesink.sources.postgres import ChangeStream, PostgresSource  # noqa: E402
from tests.support.cdc import workload_connection  # noqa: E402
from tests.support.moto_server import MotoServer, start_moto_server  # noqa: E402
from tests.support.postgres import PostgresServer, start_postgres  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_RESULTS = RESULTS / "cdc.json"
QUICK_RESULTS = RESULTS / "cdc-quick.json"
PACKAGES = ("psycopg2-binary", "moto")
STORES = ("local", "s3")
FULL = {"rows": 1_000_000, "inserts": 500_000, "updates": 200_000, "lag_seconds": 30.0, "stores": "local,s3"}
QUICK = {"rows": 100_000, "inserts": 50_000, "updates": 20_000, "lag_seconds": 10.0, "stores": "local"}
TARGETS = {"inserts_per_s": 50_000, "updates_per_s": 10_000, "lag_p99_s": 10.0}
SEED = 20_250_101
APP_ID = "bench"
SLOT = "bench_slot"
PUBLICATION = "pub"
BUCKET = "lakesink-cdc-bench"
SAFETY_IDLE = 5.0  # until_idle of the apply phases: only stops a run whose transactions never all arrive
MERGE_METRICS = (
    "num_source_rows", "num_target_rows_inserted", "num_target_rows_updated", "num_target_rows_deleted",
    "num_target_rows_copied", "num_target_files_scanned", "num_target_files_skipped_during_scan", "num_target_files_added",
    "num_target_files_removed", "execution_time_ms", "scan_time_ms", "rewrite_time_ms",
)  # fmt: skip
SPLIT = ("receive", "wait", "decode", "assemble", "arrow", "sink", "merge")
SCHEMA = """
CREATE TABLE events (id bigint PRIMARY KEY, account int, amount numeric(12,2), status text, at timestamptz);
"""
INSERT = """
INSERT INTO events (id, account, amount, status, at)
SELECT g, (g %% 1000)::int, round((random() * 1000)::numeric, 2), (ARRAY['new', 'paid', 'shipped'])[1 + g %% 3], clock_timestamp()
FROM generate_series(%s::bigint, %s::bigint) AS g
"""
UPDATE = "UPDATE events SET amount = amount + 1, status = 'x' WHERE id = ANY(%s)"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# timers around lakesink's functions (this process only; restored afterwards)


class Probe:
    """What the wrapped functions saw during one capture_changes call."""

    def __init__(self) -> None:
        self.cells: dict[str, list[float]] = {name: [0.0, 0] for name in SPLIT}
        self.last_message: float | None = None
        self.first_message: float | None = None
        self.stream_started: float | None = None
        self.writes: list[dict[str, Any]] = []  # one per Sink.write: rows, seconds, merge seconds and metrics
        self.progress: list[tuple[float, int, int, int]] = []  # (perf_counter, changes, transactions, commits)

    def on_progress(self, report: CdcReport) -> None:
        self.progress.append((time.perf_counter(), report.changes, report.transactions, report.commits))

    def seconds(self, name: str) -> float:
        return self.cells[name][0]

    def calls(self, name: str) -> int:
        return int(self.cells[name][1])


def _timed(cell: list[float], fn: Callable[..., Any]) -> Callable[..., Any]:
    clock = time.perf_counter

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            cell[0] += clock() - started
            cell[1] += 1

    return wrapper


@contextmanager
def instrumented(*, per_message: bool) -> Iterator[Probe]:
    """Wrap the stages of the capture loop with timers; `per_message`: also read, decode and feed."""
    probe = Probe()
    clock = time.perf_counter
    patches: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, replacement: Callable[[Any], Any]) -> None:
        original = getattr(owner, name)
        patches.append((owner, name, original))
        setattr(owner, name, replacement(original))

    def stream(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if probe.stream_started is None:
                probe.stream_started = clock()
            return fn(*args, **kwargs)

        return wrapper

    def read(fn: Callable[..., Any]) -> Callable[..., Any]:
        receive, wait = probe.cells["receive"], probe.cells["wait"]

        @functools.wraps(fn)
        def wrapper(self: Any, timeout: float) -> Any:
            started = clock()
            message = fn(self, timeout)
            ended = clock()
            cell = wait if message is None else receive
            cell[0] += ended - started
            cell[1] += 1
            if message is not None:
                probe.last_message = ended
                if probe.first_message is None:
                    probe.first_message = ended
            return message

        return wrapper

    def write(fn: Callable[..., Any]) -> Callable[..., Any]:
        sink = probe.cells["sink"]

        @functools.wraps(fn)
        def wrapper(self: Any, data: Any, **kwargs: Any) -> Any:
            merges_before = len(probe.writes)
            merge_before = probe.cells["merge"][0]
            started = clock()
            result = fn(self, data, **kwargs)
            seconds = clock() - started
            merge = probe.cells["merge"][0] - merge_before
            sink[0] += seconds - merge
            sink[1] += 1
            metrics = [w for w in probe.writes[merges_before:] if w.get("kind") == "merge"]
            del probe.writes[merges_before:]
            rows = getattr(data, "num_rows", None)
            probe.writes.append({"kind": "write", "rows": rows, "seconds": round(seconds, 4), "merge_seconds": round(merge, 4),
                                 "merges": metrics})  # fmt: skip
            return result

        return wrapper

    def merge(fn: Callable[..., Any]) -> Callable[..., Any]:
        cell = probe.cells["merge"]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            metrics = fn(*args, **kwargs)
            seconds = clock() - started
            cell[0] += seconds
            cell[1] += 1
            kept = {k: metrics.get(k) for k in MERGE_METRICS} if isinstance(metrics, dict) else {}
            probe.writes.append({"kind": "merge", "seconds": round(seconds, 4), **kept})
            return metrics

        return wrapper

    try:
        patch(PostgresSource, "stream", stream)
        patch(TableChanges, "batch", functools.partial(_timed, probe.cells["arrow"]))
        patch(Sink, "write", write)
        patch(TableHandle, "merge", merge)
        if per_message:
            patch(ChangeStream, "read", read)
            patch(cdc_module, "decode", functools.partial(_timed, probe.cells["decode"]))
            patch(ChangeAssembler, "feed", functools.partial(_timed, probe.cells["assemble"]))
        yield probe
    finally:
        for owner, name, original in reversed(patches):
            setattr(owner, name, original)


def wrapper_cost(samples: int = 300_000) -> float:
    """Seconds one per-message timer adds to a call (median of 5 rounds, wrapped minus plain)."""

    def plain(x: object) -> object:
        return x

    wrapped = _timed([0.0, 0], plain)
    costs = []
    for _ in range(5):
        started = time.perf_counter()
        for i in range(samples):
            plain(i)
        bare = time.perf_counter() - started
        started = time.perf_counter()
        for i in range(samples):
            wrapped(i)
        costs.append((time.perf_counter() - started - bare) / samples)
    return max(0.0, statistics.median(costs))


# ---------------------------------------------------------------------------------------------
# the source workload


def setup_database(server: PostgresServer, dbname: str, rows: int) -> float:
    """A fresh database with `events` seeded with ids 1..rows and the publication; returns the seconds it took."""
    started = time.perf_counter()
    server.create_database(dbname)
    connection = workload_connection(server.dsn(dbname))
    try:
        with connection.cursor() as cursor:
            cursor.execute(SCHEMA)
            step = 250_000
            for first in range(1, rows + 1, step):
                cursor.execute(INSERT, (first, min(rows, first + step - 1)))
            cursor.execute("VACUUM ANALYZE events")
            cursor.execute(f"CREATE PUBLICATION {PUBLICATION} FOR TABLE events")
    finally:
        connection.close()
    return time.perf_counter() - started


def insert_workload(dsn: str, *, first_id: int, count: int, txn_rows: int) -> dict[str, Any]:
    connection = workload_connection(dsn)
    started = time.perf_counter()
    transactions = 0
    try:
        with connection.cursor() as cursor:
            for first in range(first_id, first_id + count, txn_rows):
                cursor.execute(INSERT, (first, min(first_id + count - 1, first + txn_rows - 1)))
                transactions += 1
    finally:
        connection.close()
    seconds = time.perf_counter() - started
    return {"changes": count, "transactions": transactions, "seconds": round(seconds, 3), "changes_per_s": round(count / seconds)}


def update_workload(dsn: str, *, max_id: int, count: int, txn_rows: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    connection = workload_connection(dsn)
    started = time.perf_counter()
    transactions = 0
    updated: set[int] = set()
    try:
        with connection.cursor() as cursor:
            left = count
            while left > 0:
                ids = rng.sample(range(1, max_id + 1), min(txn_rows, left))
                cursor.execute(UPDATE, (ids,))
                if cursor.rowcount != len(ids):
                    raise RuntimeError(f"an update matched {cursor.rowcount} rows of {len(ids)}")
                updated.update(ids)
                left -= len(ids)
                transactions += 1
    finally:
        connection.close()
    seconds = time.perf_counter() - started
    return {
        "changes": count, "transactions": transactions, "distinct_ids": len(updated), "seconds": round(seconds, 3),
        "changes_per_s": round(count / seconds),
    }  # fmt: skip


def produce(dsn: str, first_id: int, rate: float, seconds: float, txn_rows: int, out: str) -> None:
    """The lag run's producer (its own process): `txn_rows` rows every txn_rows/rate seconds, on an
    absolute schedule; writes each transaction's commit time (time.time(), after COMMIT returned) to `out`."""
    connection = workload_connection(dsn)
    period = txn_rows / rate
    transactions = round(seconds / period)
    commits: list[float] = []
    behind = 0
    try:
        with connection.cursor() as cursor:
            started = time.time()
            for i in range(transactions):
                due = started + i * period
                pause = due - time.time()
                if pause > 0:
                    time.sleep(pause)
                elif pause < -period:
                    behind += 1
                first = first_id + i * txn_rows
                cursor.execute(INSERT, (first, first + txn_rows - 1))
                commits.append(time.time())
    finally:
        connection.close()
    Path(out).write_text(json.dumps({"commits": commits, "behind": behind, "started": started, "txn_rows": txn_rows}))


# ---------------------------------------------------------------------------------------------
# the phases


def split_of(probe: Probe, busy: float, *, per_message: bool, overhead_per_call: float) -> dict[str, Any]:
    split: dict[str, float | None] = {name: round(probe.seconds(name), 3) for name in SPLIT}
    if not per_message:
        for name in ("receive", "wait", "decode", "assemble"):
            split[name] = None
    measured = sum(v for v in split.values() if v is not None)
    split["other"] = round(max(0.0, busy - measured), 3)
    calls = sum(probe.calls(n) for n in ("receive", "wait", "decode", "assemble")) if per_message else 0
    return {"split_s": split, "instrumentation_s": round(calls * overhead_per_call, 3)}


def merge_totals(writes: list[dict[str, Any]]) -> dict[str, Any]:
    merges = [m for w in writes for m in w.get("merges", [])]
    totals: dict[str, Any] = {"merges": len(merges)}
    for key in MERGE_METRICS:
        values = [m.get(key) for m in merges if isinstance(m.get(key), int)]
        totals[key] = sum(values) if values else None
    return totals


def table_state(uri: str, options: dict[str, str] | None, *, status_x: bool = False) -> dict[str, Any]:
    table = DeltaTable(uri, storage_options=options)
    dataset = table.to_pyarrow_dataset()
    state: dict[str, Any] = {"version": table.version(), "files": len(table.file_uris()), "rows": dataset.count_rows()}
    if status_x:
        status = dataset.to_table(columns=["status"]).column("status").cast(pa.string())
        state["status_x"] = pc.sum(pc.equal(status, "x")).as_py() or 0
    return state


def source_count(dsn: str, where: str = "TRUE") -> int:
    connection = workload_connection(dsn)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM events WHERE {where}")
            return int(cursor.fetchone()[0])
    finally:
        connection.close()


def snapshot_phase(dsn: str, root: str, options: dict[str, str] | None, *, rows: int) -> dict[str, Any]:
    with instrumented(per_message=False) as probe:
        started = time.perf_counter()
        report = capture_changes(
            dsn, root, app_id=APP_ID, slot=SLOT, publication=PUBLICATION, snapshot=True, until_idle=0.5,
            interval=DEFAULT_CDC_INTERVAL, storage_options=options, progress=probe.on_progress,
        )  # fmt: skip
    if probe.stream_started is None:
        raise RuntimeError("the snapshot run never started its stream")
    seconds = probe.stream_started - started
    if report.snapshot_rows != rows:
        raise RuntimeError(f"the snapshot copied {report.snapshot_rows} rows, not {rows}")
    merge = probe.seconds("merge")
    sink = probe.seconds("sink")
    return {
        "rows": report.snapshot_rows,
        "seconds": round(seconds, 3),
        "rows_per_s": round(report.snapshot_rows / seconds),
        "split_s": {
            "merge": round(merge, 3),
            "sink": round(sink, 3),
            "copy_and_convert": round(max(0.0, seconds - merge - sink), 3),
        },
        "writes": probe.writes,
        "merge_totals": merge_totals(probe.writes),
        "report": report.to_dict(),
    }


def apply_phase(
    dsn: str,
    root: str,
    options: dict[str, str] | None,
    *,
    transactions: int,
    changes: int,
    resumed: bool,
    per_message: bool,
    overhead: float,
) -> dict[str, Any]:
    """capture_changes until the `transactions` written since the last run are applied; the apply rate.

    `resumed`: the table's position is the commit LSN of a streamed transaction. PostgreSQL then
    sends that transaction again (a slot restarts at the commit record, not after it); lakesink
    skips it and does not count it.
    """
    replayed = 0
    with instrumented(per_message=per_message) as probe:
        started = time.perf_counter()
        report = capture_changes(
            dsn, root, app_id=APP_ID, slot=SLOT, publication=PUBLICATION, until_idle=SAFETY_IDLE, interval=DEFAULT_CDC_INTERVAL,
            storage_options=options, max_transactions=transactions + replayed, progress=probe.on_progress,
        )  # fmt: skip
        returned = time.perf_counter()
    if report.transactions != transactions + replayed or report.changes != changes:
        raise RuntimeError(
            f"applied {report.transactions} transactions / {report.changes} changes, expected {transactions} / {changes}"
        )
    last = min((p for p in probe.progress if p[1] == report.changes), key=lambda p: p[0])  # the commit that completed it
    busy = last[0] - started
    if report.stopped == "idle":  # should not happen: max_transactions stops it first
        busy -= SAFETY_IDLE
    result = {
        "changes": report.changes,
        "transactions": report.transactions,
        "commits": report.commits,
        "batches": sum(1 for w in probe.writes if w["kind"] == "write"),
        "seconds": round(busy, 3),
        "changes_per_s": round(report.changes / busy),
        "startup_s": round((probe.first_message or probe.stream_started or started) - started, 3),
        "after_last_commit_s": round(returned - last[0], 3),
        "stopped": report.stopped,
        **split_of(probe, busy, per_message=per_message, overhead_per_call=overhead),
        "writes": probe.writes,
        "merge_totals": merge_totals(probe.writes),
        "progress": [{"t": round(p[0] - started, 3), "changes": p[1], "transactions": p[2]} for p in probe.progress],
        "report": report.to_dict(),
    }
    return result


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def lag_phase(
    dsn: str, root: str, options: dict[str, str] | None, *, first_id: int, rate: float, seconds: float, txn_rows: int, tmp: Path
) -> dict[str, Any]:
    stop = threading.Event()
    visible: list[tuple[float, int]] = []  # (time.time(), changes applied so far)
    outcome: dict[str, Any] = {}

    def progress(report: CdcReport) -> None:
        visible.append((time.time(), report.changes))

    def capture() -> None:
        try:
            outcome["report"] = capture_changes(
                dsn, root, app_id=APP_ID, slot=SLOT, publication=PUBLICATION, interval=DEFAULT_CDC_INTERVAL,
                storage_options=options, stop=stop, progress=progress,
            )  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            outcome["error"] = exc

    with instrumented(per_message=False) as probe:
        thread = threading.Thread(target=capture, name="capture", daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while probe.stream_started is None and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the replication connection is up
        out = tmp / "producer.json"
        context = multiprocessing.get_context("spawn")
        producer = context.Process(target=produce, args=(dsn, first_id, rate, seconds, txn_rows, str(out)), name="producer")
        producer.start()
        producer.join()
        if producer.exitcode != 0:
            stop.set()
            thread.join()
            raise RuntimeError(f"the producer failed (exit {producer.exitcode})")
        produced = json.loads(out.read_text())
        commits: list[float] = produced["commits"]
        deadline = time.monotonic() + 300
        total = len(commits) * txn_rows
        while thread.is_alive() and (not visible or visible[-1][1] < total) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    report: CdcReport = outcome["report"]
    if report.changes != total:
        raise RuntimeError(f"applied {report.changes} changes of the {total} the producer committed")
    # Transaction k (its rows are the k-th block of txn_rows ids) is visible once the changes applied cover it.
    lags = []
    cursor = 0
    for k, committed in enumerate(commits):
        while visible[cursor][1] < (k + 1) * txn_rows:
            cursor += 1
        lags.append(visible[cursor][0] - committed)
    span = commits[-1] - produced["started"]
    merges = [w["merge_seconds"] for w in probe.writes if w["kind"] == "write"]
    batch_rows = [w["rows"] for w in probe.writes if w["kind"] == "write" and w["rows"]]
    return {
        "transactions": len(commits),
        "changes": report.changes,
        "producer_changes_per_s": round(len(commits) * txn_rows / span),
        "producer_late_transactions": produced["behind"],
        "lag_p50_s": round(percentile(lags, 0.50), 3),
        "lag_p99_s": round(percentile(lags, 0.99), 3),
        "lag_max_s": round(max(lags), 3),
        "lag_min_s": round(min(lags), 3),
        "batches": len(merges),
        "batch_rows_mean": round(statistics.mean(batch_rows)) if batch_rows else 0,
        "merge_s_mean": round(statistics.mean(merges), 3) if merges else None,
        "merge_s_max": round(max(merges), 3) if merges else None,
        "merge_totals": merge_totals(probe.writes),
        "report": report.to_dict(),
    }


PROFILE_STAGES = (
    ("receive", "ChangeStream.read", "postgres.py"),
    ("decode", "decode", "pgoutput.py"),
    ("assemble", "ChangeAssembler.feed", "pg_changes.py"),
    ("arrow", "TableChanges.batch", "pg_changes.py"),
    ("sink+merge", "Sink.write", "sink.py"),
    ("merge", "TableHandle.merge", "table.py"),
)


def profile_phase(
    dsn: str, root: str, options: dict[str, str] | None, *, first_id: int, max_id: int, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    """--inserts inserts and --updates updates more, applied in one capture_changes call under py-spy
    (attached to this process, --nonblocking, 250 samples/s; no per-message timers)."""
    inserted = insert_workload(dsn, first_id=first_id, count=args.inserts, txn_rows=args.txn_rows)
    updated = update_workload(dsn, max_id=max_id, count=args.updates, txn_rows=args.txn_rows, seed=SEED + 1)
    folded = tmp / "profile.folded"
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    command = [spy, "record", "--pid", str(os.getpid()), "--format", "raw", "--threads", "--rate", "250", "--nonblocking",
               "--output", str(folded)]  # fmt: skip
    recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # attached
        if recorder.poll() is not None:
            raise RuntimeError(f"py-spy exited: {recorder.stderr.read() if recorder.stderr else ''}")
        phase = apply_phase(
            dsn, root, options, transactions=inserted["transactions"] + updated["transactions"],
            changes=args.inserts + args.updates, resumed=True, per_message=False, overhead=0.0,
        )  # fmt: skip
    finally:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(timeout=60)
    summary = summarize_profile(folded.read_text())
    return {
        "changes": phase["changes"],
        "seconds": phase["seconds"],
        "changes_per_s": phase["changes_per_s"],
        "split_s": {k: v for k, v in phase["split_s"].items() if v is not None},
        **summary,
    }


def summarize_profile(folded: str, *, top: int = 15) -> dict[str, Any]:
    """The samples inside capture_changes: per stage (inclusive) and the functions they landed in (self)."""
    total = 0
    stages = {name: 0 for name, _, _ in PROFILE_STAGES}
    leaves: dict[str, int] = {}
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit() or "capture_changes (" not in stack:
            continue
        count = int(count_text)
        frames = [re.sub(r":\d+\)$", ")", frame.strip()) for frame in stack.split(";")]
        total += count
        for name, function, filename in PROFILE_STAGES:
            if any(f.startswith(f"{function} (") and f.endswith(f"{filename})") for f in frames):
                stages[name] += count
        leaves[frames[-1]] = leaves.get(frames[-1], 0) + count
    ranked = sorted(leaves.items(), key=lambda item: -item[1])[:top]
    return {
        "samples": total,
        "stage_share": {name: round(count / total, 3) if total else None for name, count in stages.items()},
        "top_self": [{"frame": frame, "samples": count, "share": round(count / total, 3)} for frame, count in ranked],
    }


# ---------------------------------------------------------------------------------------------
# one store


def run_store(
    store: str,
    server: PostgresServer,
    moto: MotoServer | None,
    args: argparse.Namespace,
    tmp: Path,
    overhead: float,
    *,
    profile: bool,
) -> dict[str, Any]:
    dbname = f"bench_{store}_{int(time.time())}"
    if store == "local":
        root = str(tmp / f"lake-{store}")
        options: dict[str, str] | None = None
    else:
        if moto is None:
            raise RuntimeError("no moto server")
        root = f"s3://{BUCKET}/{dbname}"
        options = moto.storage_options()
    uri = f"{root}/events"
    dsn = server.dsn(dbname)
    per_message = not args.no_split
    result: dict[str, Any] = {"store": store, "root": root}
    log(f"[{store}] seeding {args.rows:,} rows")
    result["seed_s"] = round(setup_database(server, dbname, args.rows), 3)
    try:
        log(f"[{store}] snapshot")
        result["snapshot"] = snapshot_phase(dsn, root, options, rows=args.rows)
        result["snapshot"]["table"] = table_state(uri, options)
        log(f"[{store}]   {result['snapshot']['rows_per_s']:,} rows/s; writing {args.inserts:,} inserts")

        workload = insert_workload(dsn, first_id=args.rows + 1, count=args.inserts, txn_rows=args.txn_rows)
        phase = apply_phase(dsn, root, options, transactions=workload["transactions"], changes=args.inserts, resumed=False,
                            per_message=per_message, overhead=overhead)  # fmt: skip
        phase["workload"] = workload
        phase["table"] = table_state(uri, options)
        expected = source_count(dsn)
        if phase["table"]["rows"] != expected:
            raise RuntimeError(f"the mirror holds {phase['table']['rows']} rows, the source {expected}")
        result["inserts"] = phase
        log(f"[{store}]   {phase['changes_per_s']:,} inserts/s; writing {args.updates:,} updates")

        max_id = args.rows + args.inserts
        workload = update_workload(dsn, max_id=max_id, count=args.updates, txn_rows=args.txn_rows, seed=SEED)
        phase = apply_phase(dsn, root, options, transactions=workload["transactions"], changes=args.updates, resumed=True,
                            per_message=per_message, overhead=overhead)  # fmt: skip
        phase["workload"] = workload
        phase["table"] = table_state(uri, options, status_x=True)
        expected = source_count(dsn, "status = 'x'")
        if phase["table"]["status_x"] != expected or phase["table"]["rows"] != max_id:
            raise RuntimeError(f"the mirror differs from the source after the updates: {phase['table']}, {expected} status x")
        result["updates"] = phase
        log(f"[{store}]   {phase['changes_per_s']:,} updates/s; lag run: {args.lag_rate:,.0f}/s for {args.lag_seconds:.0f} s")

        if args.lag_seconds > 0:
            phase = lag_phase(dsn, root, options, first_id=max_id + 1, rate=args.lag_rate, seconds=args.lag_seconds,
                              txn_rows=args.lag_txn_rows, tmp=tmp)  # fmt: skip
            result["lag"] = phase
            log(f"[{store}]   lag p50 {phase['lag_p50_s']} s, p99 {phase['lag_p99_s']} s")
        if profile:
            log(f"[{store}] profile: {args.inserts:,} inserts and {args.updates:,} updates more, applied under py-spy")
            first_id = max_id + 1 + (result["lag"]["changes"] if "lag" in result else 0)
            result["profile"] = profile_phase(dsn, root, options, first_id=first_id, max_id=max_id, args=args, tmp=tmp)
    finally:
        server.drop_database(dbname)
    return result


# ---------------------------------------------------------------------------------------------
# output


def _n(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return f"{value:,}"


def merge_files(t: dict[str, Any]) -> str:
    scanned, skipped = t["num_target_files_scanned"], t["num_target_files_skipped_during_scan"]
    return f"{_n(scanned)} / {_n(skipped)} / {_n(t['num_target_files_removed'])}"


def _mark(ok: bool) -> str:
    return "meets" if ok else "misses"


def run_label(config: dict[str, Any]) -> str:
    if config["quick"]:
        return "--quick run"
    same = all(config[k] == FULL[k] for k in ("rows", "inserts", "updates", "lag_seconds"))
    return "full run" if same else "custom sizes"


def markdown(result: dict[str, Any]) -> str:
    config = result["config"]
    lines = [
        f"# lakesink cdc apply rate ({run_label(config)})",
        "",
        f"{describe(result['machine'], packages=PACKAGES)}; load average at start {result['machine']['load_average_1_5_15']}.",
        f"Table of {config['rows']:,} rows; {config['inserts']:,} inserts then {config['updates']:,} updates in transactions "
        f"of {config['txn_rows']:,}; lag run {config['lag_rate']:,.0f} changes/s for {config['lag_seconds']:.0f} s "
        f"(transactions of {config['lag_txn_rows']}); commit interval 200,000 changes / 64 MB / 5 s (the default).",
        "",
        f"| store | snapshot rows/s | inserts/s (target ≥ {TARGETS['inserts_per_s']:,}) | "
        f"updates/s (target ≥ {TARGETS['updates_per_s']:,}) | lag p50 s | lag p99 s (target < {TARGETS['lag_p99_s']:.0f}) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for store in result["stores"]:
        snap, ins, upd, lag = (store.get(k) for k in ("snapshot", "inserts", "updates", "lag"))
        cells = [store["store"], _n(snap["rows_per_s"]) if snap else "-"]
        cells.append(f"{ins['changes_per_s']:,} ({_mark(ins['changes_per_s'] >= TARGETS['inserts_per_s'])})" if ins else "-")
        cells.append(f"{upd['changes_per_s']:,} ({_mark(upd['changes_per_s'] >= TARGETS['updates_per_s'])})" if upd else "-")
        cells.append(_n(lag["lag_p50_s"]) if lag else "-")
        cells.append(f"{lag['lag_p99_s']:,.2f} ({_mark(lag['lag_p99_s'] < TARGETS['lag_p99_s'])})" if lag else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Where the apply time goes (seconds; `sink` = lakesink's keyed-write preparation, `merge` = the delta-rs MERGE and "
        "its commit, `other` = the rest of the loop, opening the table and starting the stream; the timers' own cost is "
        "`instr.`, inside the stages it wraps):",
        "",
        "| store | phase | changes | batches | apply s | changes/s | receive | decode | assemble | Arrow | sink | MERGE | other "
        "| instr. | MERGE files scanned / skipped / rewritten | rows copied |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for store in result["stores"]:
        snap = store.get("snapshot")
        if snap:
            t = snap["merge_totals"]
            files = merge_files(t)
            lines.append(
                f"| {store['store']} | snapshot | {snap['rows']:,} | {len(snap['writes'])} | {snap['seconds']:.2f} "
                f"| {snap['rows_per_s']:,} "
                f"| copy+convert {snap['split_s']['copy_and_convert']:.2f} | - | - | - | {snap['split_s']['sink']:.2f} "
                f"| {snap['split_s']['merge']:.2f} | - | - | {files} | {_n(t['num_target_rows_copied'])} |"
            )
        for name in ("inserts", "updates"):
            phase = store.get(name)
            if not phase:
                continue
            s, t = phase["split_s"], phase["merge_totals"]
            files = merge_files(t)
            stages = " | ".join(
                "-" if s[k] is None else f"{s[k]:.2f}"
                for k in ("receive", "decode", "assemble", "arrow", "sink", "merge", "other")
            )
            lines.append(
                f"| {store['store']} | {name} | {phase['changes']:,} | {phase['batches']} | {phase['seconds']:.2f} | "
                f"{phase['changes_per_s']:,} | {stages} | {phase['instrumentation_s']:.2f} | {files} "
                f"| {_n(t['num_target_rows_copied'])} |"
            )
    lags = [s for s in result["stores"] if s.get("lag")]
    if lags:
        lines += [
            "",
            "Lag run (a producer process inserting on a fixed schedule while capture_changes runs):",
            "",
            "| store | transactions | producer changes/s | batches | rows per batch | MERGE s mean / max "
            "| lag min / p50 / p99 / max s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for store in lags:
            lag = store["lag"]
            lines.append(
                f"| {store['store']} | {lag['transactions']:,} | {lag['producer_changes_per_s']:,} | {lag['batches']} | "
                f"{lag['batch_rows_mean']:,} | {_n(lag['merge_s_mean'])} / {_n(lag['merge_s_max'])} | "
                f"{lag['lag_min_s']:.2f} / {lag['lag_p50_s']:.2f} / {lag['lag_p99_s']:.2f} / {lag['lag_max_s']:.2f} |"
            )
    for store in result["stores"]:
        prof = store.get("profile")
        if not prof:
            continue
        shares = ", ".join(f"{name} {100 * share:.0f}%" for name, share in prof["stage_share"].items() if share is not None)
        lines += [
            "",
            f"py-spy over one more apply ({store['store']}: {prof['changes']:,} changes, {prof['changes_per_s']:,}/s under the "
            f"profiler, {prof['samples']:,} samples in capture_changes). Share of samples inside each stage: {shares}. "
            "py-spy counts the Python thread's active samples only: the MERGE runs on delta-rs's own threads while this "
            "one waits, so its time is in the table above, not here. Where the samples landed (self):",
            "",
            "| samples | share | function |",
            "| ---: | ---: | --- |",
        ]
        lines += [f"| {row['samples']:,} | {100 * row['share']:.1f}% | `{row['frame']}` |" for row in prof["top_self"]]
    return "\n".join(lines) + "\n"


def write_outputs(result: dict[str, Any], path: Path) -> str:
    text = markdown(result)
    write_results(path, result)
    path.with_suffix(".md").write_text(text)
    return text


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100k-row table, 50k inserts, 20k updates, 10 s lag run, local only")
    parser.add_argument("--stores", default=None, help="comma-separated subset of local,s3 (default local,s3; --quick: local)")
    parser.add_argument("--rows", type=int, default=None, help="rows seeded and copied by the snapshot (default 1,000,000)")
    parser.add_argument("--inserts", type=int, default=None, help="inserts applied (default 500,000)")
    parser.add_argument("--updates", type=int, default=None, help="updates applied (default 200,000)")
    parser.add_argument("--txn-rows", type=int, default=1_000, help="changes per source transaction (default 1,000)")
    parser.add_argument("--lag-seconds", type=float, default=None, help="length of the lag run (default 30; 0 skips it)")
    parser.add_argument("--lag-rate", type=float, default=5_000, help="changes/s of the lag run's producer (default 5,000)")
    parser.add_argument("--lag-txn-rows", type=int, default=50, help="rows per transaction of the lag run (default 50)")
    parser.add_argument("--no-split", action="store_true", help="no per-message timers (read, decode, feed)")
    parser.add_argument(
        "--profile", action="store_true", help="on the first store, apply --inserts + --updates more under py-spy (top functions)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help=f"results JSON (default {DEFAULT_RESULTS}; --quick: {QUICK_RESULTS})"
    )
    parser.add_argument("--from-json", type=Path, default=None, help="only reprint the tables of a results JSON")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        print(write_outputs(json.loads(args.from_json.read_text()), args.out or args.from_json))
        return 0
    sizes = QUICK if args.quick else FULL
    for name in ("rows", "inserts", "updates", "lag_seconds", "stores"):
        if getattr(args, name) is None:
            setattr(args, name, sizes[name])
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    for store in stores:
        if store not in STORES:
            parser.error(f"unknown store {store!r}")
    if args.inserts % args.txn_rows or args.updates % args.txn_rows:
        parser.error("--inserts and --updates must be multiples of --txn-rows")
    out = args.out or (QUICK_RESULTS if args.quick else DEFAULT_RESULTS)
    interval = DEFAULT_CDC_INTERVAL
    config = {
        "quick": args.quick, "stores": stores, "rows": args.rows, "inserts": args.inserts, "updates": args.updates,
        "txn_rows": args.txn_rows, "lag_seconds": args.lag_seconds, "lag_rate": args.lag_rate, "lag_txn_rows": args.lag_txn_rows,
        "split": not args.no_split, "profile": args.profile,
        "interval": {"rows": interval.rows, "bytes": interval.bytes, "seconds": interval.seconds},
    }  # fmt: skip
    result: dict[str, Any] = {"machine": machine(packages=PACKAGES), "config": config, "stores": []}
    overhead = wrapper_cost()
    result["wrapper_cost_us"] = round(overhead * 1e6, 3)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lakesink-cdc-bench-") as folder:
        tmp = Path(folder)
        server = start_postgres(tmp / "postgres")
        moto = start_moto_server() if "s3" in stores else None
        try:
            if moto is not None:
                moto.create_bucket(BUCKET)
            for store in stores:
                profile = args.profile and store == stores[0]
                result["stores"].append(run_store(store, server, moto, args, tmp, overhead, profile=profile))
                if moto is not None:
                    moto.reset()
                    moto.create_bucket(BUCKET)
        finally:
            if moto is not None:
                moto.stop()
            server.stop()
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(write_outputs(result, out))
    log(f"wrote {out} and {out.with_suffix('.md')} in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
