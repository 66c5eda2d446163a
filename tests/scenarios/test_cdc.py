"""`lakesink cdc` against a real PostgreSQL 15: every Delta mirror equals `SELECT * FROM` its source
table (read by delta-rs and DuckDB) after kills at random moments, replays, a cut connection, a
dropped slot, TRUNCATE, a transaction larger than a commit and a new column."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from lakesink.config import CommitInterval
from lakesink.ingest import cdc as cdc_module
from lakesink.ingest.cdc import capture_changes, cdc_status
from lakesink.sink import Sink
from lakesink.sources import pg_changes
from lakesink.sources.pg_changes import ChangeAssembler
from lakesink.sources.pgoutput import decode
from lakesink.sources.postgres import PostgresSource, parse_lsn
from tests.support.cdc import SCHEMA, TABLES, Workload, differences, mirror_rows, source_rows, workload_connection
from tests.support.tcp_proxy import TcpProxy

FAST = CommitInterval(rows=200, bytes=8 << 20, seconds=0.5)


def cdc_args(dsn: str, root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lakesink", "cdc", dsn, str(root), "--app-id", "shop", "--slot", "lakesink_shop",
            "--publication", "shop", *extra]  # fmt: skip


def capture(dsn: str, root: Path, **options: Any) -> Any:
    """`capture_changes` for the tests' job: app id shop, slot lakesink_shop, publication shop."""
    return capture_changes(dsn, str(root), app_id="shop", slot="lakesink_shop", publication="shop", **options)


def wait_for_slot(connection: Any, slot: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND active_pid IS NOT NULL", (slot,))
            if cursor.fetchone():
                return
            time.sleep(0.05)
    raise AssertionError(f"slot {slot} did not start streaming in {timeout} s")


def assert_mirrors_equal_sources(connection: Any, root: Path) -> dict[str, int]:
    counts = {}
    for table, key in TABLES.items():
        source = source_rows(connection, table)
        for reader in ("deltalake", "duckdb"):
            found = differences(source, mirror_rows(str(root / table), None, reader), key)
            assert not any(found.values()), f"{table} read by {reader}: {found}"
        counts[table] = len(source)
    return counts


def test_mirrors_equal_their_sources_after_random_kills(pg_database: str, tmp_path: Path) -> None:
    """The acceptance test: hundreds of transactions on three tables, `lakesink cdc` SIGKILLed at random
    moments and at named points (between the tables' commits, between commit and acknowledgement,
    inside a commit), rerun each time; at the end every table equals its source, row for row."""
    rng = random.Random(int(os.environ.get("LAKESINK_CDC_SEED", "11")))
    connection = workload_connection(pg_database)
    with connection.cursor() as cursor:
        cursor.execute(SCHEMA)
    workload = Workload(connection, seed=rng.randint(0, 10**6))
    workload.seed_rows(60)  # rows before the slot exists: copied by --snapshot
    root = tmp_path / "lake"
    done = threading.Event()
    transactions = int(os.environ.get("LAKESINK_CDC_TRANSACTIONS", "400"))

    def produce() -> None:
        writer = workload_connection(pg_database)
        load = Workload(writer, seed=rng.randint(0, 10**6))
        load.next_id = dict(workload.next_id)
        load.items = set(workload.items)
        for _ in range(transactions):
            load.transaction()
            time.sleep(rng.random() * 0.02)
        done.set()

    armed = ["cdc_between_tables", "cdc_before_ack", "before_commit:2", "after_commit:3", None, None, None]
    producer = threading.Thread(target=produce)
    started = False
    kills = 0
    try:
        while not done.is_set() or not started:
            # The first run dies after copying its first table: the rerun must copy them all again.
            point = rng.choice(armed) if started else "cdc_snapshot_table"

            env = {**os.environ, **({"LAKESINK_CRASH_AT": point} if point else {})}
            run = subprocess.Popen(cdc_args(pg_database, root, "--snapshot", "--commit-interval", "150rows,300ms"),
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
            if not started:
                producer.start()  # the first run may be killed inside its snapshot: changes race it
                started = True
            try:
                run.wait(timeout=rng.uniform(0.3, 2.5))
            except subprocess.TimeoutExpired:
                run.send_signal(signal.SIGKILL)
                run.wait()
            _, err = run.communicate()
            assert run.returncode in (-signal.SIGKILL, 75), f"exit {run.returncode}: {err[-2000:]}"
            kills += 1
    finally:
        producer.join()
    # With --snapshot as every run: on a loaded machine every killed run may have died inside its
    # snapshot, and only a run that may copy finishes one (without it, the tables' rows are refused).
    final = subprocess.run(
        cdc_args(pg_database, root, "--snapshot", "--until-idle", "3s", "--json"), capture_output=True, text=True,
        timeout=300,
    )
    assert final.returncode == 0, final.stderr[-3000:]
    report = json.loads(final.stdout)
    assert report["ok"] and report["stopped"] == "idle"
    counts = assert_mirrors_equal_sources(connection, root)
    assert kills >= 3 and all(counts.values()), (kills, counts)
    status = cdc_status(pg_database, str(root), app_id="shop", slot="lakesink_shop", publication="shop")
    assert status["lag_bytes"] is not None and len(status["tables"]) == 3  # type: ignore[arg-type]
    assert {t["committed_lsn"] for t in status["tables"]} == {report["acknowledged_lsn"]}  # type: ignore[attr-defined,index]


def replay_slot(dsn: str, slot: str, root: Path, *, app_id: str) -> int:
    """Apply every change a second slot holds, again, under another app id (positions the tables
    have never seen, so the txn check does not skip them): only row order can keep them out."""
    source = PostgresSource(dsn, slot=slot, publication="shop")
    tables = source.tables()
    peeked = source.query(
        "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, 'proto_version', '1', 'publication_names', 'shop')",
        (slot,),
    )
    source.close()
    assembler = ChangeAssembler(tables, {})
    for (payload,) in peeked:
        assembler.feed(decode(bytes(payload)))
    position, changes = assembler.take()
    assert position is not None
    applied = 0
    for table in tables:
        if table.qualified in changes:
            rows, mode = changes[table.qualified].batch()
            with Sink(str(root / table.name), app_id=app_id) as sink:
                assert sink.write(rows, position=position, mode=mode).status == "committed"
            applied += rows.num_rows
    return applied


def test_replaying_applied_changes_and_overlapping_snapshot_change_nothing(pg_database: str, tmp_path: Path) -> None:
    connection = workload_connection(pg_database)
    with connection.cursor() as cursor:
        cursor.execute(SCHEMA)
        cursor.execute("SELECT pg_create_logical_replication_slot('replay', 'pgoutput')")
    workload = Workload(connection, seed=3)
    workload.seed_rows(40)
    root = tmp_path / "lake"
    # The snapshot is taken after the replay slot started: the replay overlaps the snapshot's rows.
    capture(pg_database, root, snapshot=True, until_idle=1.0)
    for _ in range(150):
        workload.transaction()
    capture(pg_database, root, until_idle=1.5, interval=FAST)
    assert_mirrors_equal_sources(connection, root)
    before = {t: sorted(map(repr, mirror_rows(str(root / t), None, "deltalake"))) for t in TABLES}
    assert replay_slot(pg_database, "replay", root, app_id="replayer") > 500
    assert_mirrors_equal_sources(connection, root)
    after = {t: sorted(map(repr, mirror_rows(str(root / t), None, "deltalake"))) for t in TABLES}
    assert before == after
    # The job itself, rerun, finds nothing to do (PostgreSQL sends the last transaction again: a slot
    # resumes at the commit LSN acknowledged, which is that transaction's; every table skips it).
    again = capture(pg_database, root, until_idle=1.0)
    assert again.changes == 0 and again.commits == 0 and again.transactions == 0


def test_a_cut_connection_and_a_rerun_lose_and_duplicate_nothing(pg_database: str, tmp_path: Path, postgres: Any) -> None:
    connection = workload_connection(pg_database)
    with connection.cursor() as cursor:
        cursor.execute(SCHEMA)
    proxy = TcpProxy(postgres.port)
    proxied = pg_database.replace(f"port={postgres.port}", f"port={proxy.port}")
    root = tmp_path / "lake"
    workload = Workload(connection, seed=8)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            capture_changes(proxied, str(root), app_id="shop", slot="lakesink_shop", publication="shop", interval=FAST, stop=stop)
        except Exception as exc:  # noqa: BLE001 - the test inspects what the cut raised
            errors.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    wait_for_slot(connection, "lakesink_shop")  # no --snapshot: changes count from the slot's creation on
    for _ in range(80):
        workload.transaction()
    time.sleep(1.0)
    assert proxy.cut() >= 1
    runner.join(timeout=60)
    assert errors and getattr(errors[0], "retryable", False), errors  # transient: rerun as is (exit 75)
    for _ in range(80):
        workload.transaction()
    capture_changes(proxied, str(root), app_id="shop", slot="lakesink_shop", publication="shop", until_idle=2.0, interval=FAST)
    proxy.close()
    assert_mirrors_equal_sources(connection, root)


def test_a_dropped_slot_is_a_clear_error_never_a_silent_resync(pg_database: str, tmp_path: Path) -> None:
    connection = workload_connection(pg_database)
    with connection.cursor() as cursor:
        cursor.execute(SCHEMA)
    root = tmp_path / "lake"
    workload = Workload(connection, seed=4)
    workload.seed_rows(10)
    capture_changes(pg_database, str(root), app_id="shop", slot="lakesink_shop", publication="shop", until_idle=1.0)
    with connection.cursor() as cursor:
        for _ in range(100):  # the walsender of the finished run may not have noticed its connection closed yet
            cursor.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'lakesink_shop'")
            if cursor.fetchone()[0] is None:
                break
            time.sleep(0.1)
        cursor.execute("SELECT pg_drop_replication_slot('lakesink_shop')")
    workload.seed_rows(10)
    versions = {t: len(os.listdir(root / t / "_delta_log")) for t in TABLES}
    run = subprocess.run(cdc_args(pg_database, root, "--until-idle", "1s"), capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "replication slot 'lakesink_shop' does not exist" in run.stderr and "holds changes up to" in run.stderr
    assert "--snapshot" in run.stderr  # the message says how to re-sync
    assert {t: len(os.listdir(root / t / "_delta_log")) for t in TABLES} == versions  # nothing written


def test_truncate_a_transaction_larger_than_a_commit_and_a_new_column(
    pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny Arrow chunks: the 1,000-row transaction and the new column span many of them.
    monkeypatch.setattr(pg_changes, "CHUNK_BYTES", 4096)
    connection = workload_connection(pg_database)
    with connection.cursor() as cursor:
        cursor.execute(SCHEMA)
    root = tmp_path / "lake"
    workload = Workload(connection, seed=6)
    workload.seed_rows(30)
    small = CommitInterval(rows=10, bytes=None, seconds=None)
    capture(pg_database, root, snapshot=True, until_idle=1.0)
    with connection.cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute("INSERT INTO orders SELECT g, 1, g * 1.5, 'bulk', current_date FROM generate_series(1000, 1999) g")
        cursor.execute("COMMIT")
        cursor.execute("TRUNCATE items")
        cursor.execute("INSERT INTO items VALUES ('after-truncate', 1, 5)")
    orders_log = len(os.listdir(root / "orders" / "_delta_log"))
    report = capture_changes(pg_database, str(root), app_id="shop", slot="lakesink_shop", publication="shop", until_idle=1.0,
                             interval=small)  # fmt: skip
    assert report.transactions == 3
    # The 1,000-row transaction is never split: it is one commit although the interval is 10 rows.
    from deltalake import DeltaTable

    merges = [c for c in DeltaTable(str(root / "orders")).history() if c.get("version", 0) >= orders_log]
    inserted = [int(c.get("operationMetrics", {}).get("num_target_rows_inserted", 0)) for c in merges]
    assert 1000 in inserted, merges
    assert_mirrors_equal_sources(connection, root)
    assert mirror_rows(str(root / "items"), None, "duckdb") == [{"sku": "after-truncate", "shop": 1, "qty": 5}]

    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE orders ADD COLUMN coupon text")
        cursor.execute("UPDATE orders SET coupon = 'WINTER' WHERE id = 1000")
    refused = subprocess.run(cdc_args(pg_database, root, "--until-idle", "1s"), capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "'coupon'" in refused.stderr and "--evolve-schema" in refused.stderr
    capture_changes(pg_database, str(root), app_id="shop", slot="lakesink_shop", publication="shop", until_idle=1.0,
                    evolve_schema=True)  # fmt: skip
    assert_mirrors_equal_sources(connection, root)


@pytest.mark.parametrize("identity", ["DEFAULT", "FULL"])
def test_unchanged_toast_values_are_kept_with_either_replica_identity(pg_database: str, tmp_path: Path, identity: str) -> None:
    connection = workload_connection(pg_database)
    with connection.cursor() as cursor:
        cursor.execute(SCHEMA)
        cursor.execute(f"ALTER TABLE accounts REPLICA IDENTITY {identity}")
    root = tmp_path / "lake"
    workload = Workload(connection, seed=9)
    capture_changes(pg_database, str(root), app_id="shop", slot="lakesink_shop", publication="shop", until_idle=0.5)
    note = "".join(random.Random(1).choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(20000))
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO accounts VALUES (1, 'a', 1, now(), %s)", (note,))
    capture_changes(pg_database, str(root), app_id="shop", slot="lakesink_shop", publication="shop", until_idle=0.5)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE accounts SET balance = 2 WHERE id = 1")  # note: unchanged, not sent
        cursor.execute("BEGIN")
        cursor.execute("UPDATE accounts SET balance = 3 WHERE id = 1")  # twice in one batch
        cursor.execute("COMMIT")
    del workload
    capture_changes(pg_database, str(root), app_id="shop", slot="lakesink_shop", publication="shop", until_idle=0.5)
    rows = mirror_rows(str(root / "accounts"), None, "deltalake")
    assert len(rows) == 1 and rows[0]["note"] == note and str(rows[0]["balance"]) == "3.00"


def test_sigterm_stops_at_a_commit_boundary_with_exit_0(pg_database: str, tmp_path: Path) -> None:
    connection = workload_connection(pg_database)
    with connection.cursor() as cursor:
        cursor.execute(SCHEMA)
    workload = Workload(connection, seed=12)
    workload.seed_rows(20)
    root = tmp_path / "lake"
    run = subprocess.Popen(
        cdc_args(pg_database, root, "--snapshot", "--json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for_slot(connection, "lakesink_shop")
    for _ in range(60):
        workload.transaction()
    time.sleep(1.0)
    run.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err[-2000:]
    report = json.loads(out)
    assert report["stopped"] == "signal" and report["snapshot_rows"] == 20
    capture(pg_database, root, until_idle=1.0)
    assert_mirrors_equal_sources(connection, root)


def test_a_refused_connection_is_terminal_and_never_shows_the_password(postgres: Any, tmp_path: Path) -> None:
    dsn = f"host=127.0.0.1 port={postgres.port} user=postgres password=CANARY-s3cr3t dbname=no_such_database"
    args = cdc_args(dsn, tmp_path / "lake")
    args.insert(3, "-v")  # lakesink -v cdc ...: the log too must not show it
    run = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stderr
    assert "no_such_database" in run.stderr and "does not exist" in run.stderr
    assert "CANARY" not in run.stderr + run.stdout


def test_on_s3_lost_commit_answers_and_a_timed_out_store_lose_and_duplicate_nothing(
    pg_database: str, moto_server: Any, s3_bucket: str
) -> None:
    """The mirrors on (moto) S3 behind the fault proxy: merge commits whose answers are lost after they
    were applied, 503 bursts, and a log write black-holed until the client times out."""
    from tests.support.fault_proxy import DELTA_LOG_ENTRY, FaultProxy

    connection = workload_connection(pg_database)
    with connection.cursor() as cursor:
        cursor.execute(SCHEMA)
    workload = Workload(connection, seed=21)
    workload.seed_rows(30)
    root = f"s3://{s3_bucket}/shop"
    with FaultProxy(moto_server.endpoint) as proxy:
        options = {**moto_server.storage_options(), "AWS_ENDPOINT_URL": proxy.endpoint, "timeout": "2s",
                   "retry_timeout": "3s", "max_retries": "2"}  # fmt: skip
        capture_changes(pg_database, root, app_id="shop", slot="lakesink_shop", publication="shop", snapshot=True,
                        until_idle=1.0, storage_options=options)  # fmt: skip
        for round_ in range(3):
            for _ in range(40):
                workload.transaction()
            if round_ == 0:
                proxy.drop_response_after_apply(DELTA_LOG_ENTRY, times=2)
            elif round_ == 1:
                proxy.slow_down(".", method="PUT", times=6)
            else:
                proxy.black_hole(DELTA_LOG_ENTRY, method="PUT", times=1)
            for _attempt in range(5):
                try:
                    capture_changes(pg_database, root, app_id="shop", slot="lakesink_shop", publication="shop",
                                    until_idle=1.0, storage_options=options, interval=FAST)  # fmt: skip
                    break
                except Exception as exc:  # noqa: BLE001 - a transient error is the promise: rerun as is
                    assert getattr(exc, "retryable", False), exc
            else:
                raise AssertionError("the rerun never finished")
            assert not proxy.armed()
        s3 = moto_server.storage_options()
        for table, key in TABLES.items():
            source = source_rows(connection, table)
            for reader in ("deltalake", "duckdb"):
                found = differences(source, mirror_rows(f"{root}/{table}", s3, reader), key)
                assert not any(found.values()), f"{table} read by {reader}: {found}"


def test_the_change_log_holds_every_change_exactly_once_across_kills(pg_database: str, tmp_path: Path) -> None:
    """`--changelog`: each change of the stream is one row of `<table>_changes` (key, op, LSN), however
    often the job was killed; compared with every change a second slot saw."""
    from deltalake import DeltaTable

    rng = random.Random(31)
    connection = workload_connection(pg_database)
    with connection.cursor() as cursor:
        cursor.execute(SCHEMA)
        cursor.execute("SELECT pg_create_logical_replication_slot('witness', 'pgoutput')")
    workload = Workload(connection, seed=32)
    root = tmp_path / "lake"
    first = subprocess.Popen(cdc_args(pg_database, root, "--changelog"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_slot(connection, "lakesink_shop")  # the job's slot exists: from here on every change must be logged
    first.send_signal(signal.SIGKILL)
    first.wait()
    for round_ in range(6):
        for _ in range(40):
            workload.transaction()
        point = rng.choice(["cdc_between_tables", "cdc_before_ack", "after_commit:2", None])
        env = {**os.environ, **({"LAKESINK_CRASH_AT": point} if point else {})}
        run = subprocess.run([*cdc_args(pg_database, root, "--changelog", "--commit-interval", "60rows,200ms"), "--until-idle",
                              "1s"], env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert run.returncode in (0, -signal.SIGKILL), (round_, point, run.stderr[-2000:])
    final = subprocess.run([*cdc_args(pg_database, root, "--changelog"), "--until-idle", "1s"], capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-2000:]
    assert_mirrors_equal_sources(connection, root)

    source = PostgresSource(pg_database, slot="witness", publication="shop")
    tables = {t.name: t for t in source.tables()}
    peeked = source.query(
        "SELECT data FROM pg_logical_slot_peek_binary_changes('witness', NULL, NULL, 'proto_version', '1', "
        "'publication_names', 'shop')"
    )
    source.close()
    assembler = ChangeAssembler(tables.values(), {})
    for (payload,) in peeked:
        assembler.feed(decode(bytes(payload)))
    _, seen = assembler.take()
    for name, key in TABLES.items():
        expected = seen[f"public.{name}"].change_log()
        logged = DeltaTable(str(root / f"{name}_changes")).to_pyarrow_dataset().to_table()
        assert len(expected) > 50
        assert key_op_lsn(logged, key) == key_op_lsn(expected, key), name


def key_op_lsn(table: Any, key: tuple[str, ...]) -> list[tuple[Any, ...]]:
    columns = [table.column(c).to_pylist() for c in (*key, "_op", "_lsn")]
    return sorted(zip(*columns, strict=True), key=repr)


def test_a_quiet_publication_does_not_make_postgresql_keep_wal(
    pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes outside the publication: while idle, every table moves to where PostgreSQL's decoding is
    and that is acknowledged, so the slot's WAL does not pile up; later changes still all arrive."""
    monkeypatch.setattr(cdc_module, "IDLE_CATCH_UP_BYTES", 1 << 20)
    connection = workload_connection(pg_database)
    with connection.cursor() as cursor:
        cursor.execute(SCHEMA)
        cursor.execute("CREATE TABLE other (id int, pad text)")
    root = tmp_path / "lake"
    workload = Workload(connection, seed=41)
    workload.seed_rows(10)
    capture(pg_database, root, snapshot=True, until_idle=1.0)
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO other SELECT g, repeat('x', 400) FROM generate_series(1, 20000) g")
        cursor.execute("SELECT pg_current_wal_lsn()::text")
        written = parse_lsn(cursor.fetchone()[0])
    report = capture(pg_database, root, until_idle=3.0)
    assert report.changes == 0 and report.acknowledged_lsn is not None and report.acknowledged_lsn >= written
    status = cdc_status(pg_database, str(root), app_id="shop", slot="lakesink_shop", publication="shop")
    assert parse_lsn(str(status["confirmed_flush_lsn"])) >= written
    for _ in range(30):
        workload.transaction()
    capture(pg_database, root, until_idle=1.0)
    assert_mirrors_equal_sources(connection, root)
