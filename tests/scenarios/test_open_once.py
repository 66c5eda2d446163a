"""Opening a table once: what lakesink reads of the log (lakesink.delta.snapshot) agrees with delta-rs,
and a run reads each log object at most once, counted at the wire (the fault proxy's request log).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from lakesink import Sink
from lakesink.delta.log_folder import open_log_folder
from lakesink.delta.snapshot import LogNotReadHere, read_snapshot
from lakesink.delta.table import TableHandle
from lakesink.storage.objects import open_store
from lakesink.storage.options import StorageOptions
from tests.support.checks import assert_exactly_once
from tests.support.fault_proxy import FaultProxy
from tests.support.moto_server import MotoServer


def _snapshot(uri: str, options: dict[str, str]) -> tuple[object, ...]:
    resolved = StorageOptions.resolve(options, environ={})
    snapshot = read_snapshot(open_log_folder(uri, resolved), open_store(uri, resolved))
    assert snapshot is not None
    return snapshot.version, snapshot.metadata.schema_string, snapshot.metadata.partition_columns, dict(
        snapshot.metadata.configuration
    ), snapshot.protocol.min_writer_version, snapshot.txns


def test_lakesinks_reading_of_the_log_agrees_with_delta_rs_across_checkpoints_other_writers_and_schema_changes(
    table_uri: str, storage_options: dict[str, str]
) -> None:
    """Commits from two app ids through lakesink, one from delta-rs with new columns and a table
    property, and checkpoints in between (interval 4): at every step, lakesink's snapshot has
    delta-rs's version, schema, partitioning, properties, writer version and every app id's txn."""
    apps = {"a": None, "b": None}
    for step in range(1, 12):
        app = "a" if step % 3 else "b"
        with Sink(table_uri, app_id=app, storage_options=storage_options, checkpoint_interval=4) as sink:
            sink.write(pa.table({"id": [step], "day": [f"d{step % 2}"]}), position=step)
        apps[app] = step  # type: ignore[assignment]
        if step == 6:
            write_deltalake(
                table_uri, pa.table({"id": [600], "day": ["d0"], "note": ["x"]}), mode="append", schema_mode="merge",
                storage_options=storage_options,
            )  # fmt: skip
            retention = {"delta.logRetentionDuration": "interval 60 days"}
            DeltaTable(table_uri, storage_options=storage_options).alter.set_table_properties(retention)
        table = DeltaTable(table_uri, storage_options=storage_options)
        version, schema, partitions, configuration, writer, txns = _snapshot(table_uri, storage_options)
        assert version == table.version()
        assert json.loads(str(schema)) == json.loads(table.schema().to_json())
        assert list(partitions) == list(table.metadata().partition_columns)  # type: ignore[call-overload]
        assert configuration == dict(table.metadata().configuration)
        assert writer == table.protocol().min_writer_version
        assert txns == {app: table.transaction_version(app) for app, done in apps.items() if done is not None}
    log = [p.name for p in Path(table_uri, "_delta_log").iterdir()] if "://" not in table_uri else None
    if log is not None:
        assert any(name.endswith(".checkpoint.parquet") for name in log)  # the reads above started from one


def test_without_last_checkpoint_and_the_entries_before_a_checkpoint_the_writer_starts_from_the_listed_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`_last_checkpoint` is only a hint (the protocol): with it gone and the entries before the
    checkpoint cleaned up, lakesink's reader finds the checkpoint in its LIST, reads on from it
    (delta-rs is not asked: it is made to fail here), and the next write commits exactly once."""
    uri = str(tmp_path / "table")
    with Sink(uri, app_id="job", checkpoint_interval=3) as sink:
        for position in range(1, 6):
            sink.write(pa.table({"id": [position]}), position=position)
    log = tmp_path / "table" / "_delta_log"
    checkpoints = sorted(p.name for p in log.iterdir() if p.name.endswith(".checkpoint.parquet"))
    assert checkpoints, "no checkpoint was written"
    newest = int(checkpoints[-1].split(".")[0])
    (log / "_last_checkpoint").unlink()
    for version in range(newest + 1):
        (log / f"{version:020d}.json").unlink()

    def no_delta_rs(*args: object, **kwargs: object) -> None:
        raise AssertionError("lakesink's reader gave the log to delta-rs")

    monkeypatch.setattr(TableHandle, "_read_by_delta_rs", no_delta_rs)
    with Sink(uri, app_id="job") as sink:
        assert sink.committed_position() == 5
        assert sink.write(pa.table({"id": [6]}), position=6).status == "committed"
    assert DeltaTable(uri).version() == 6
    assert_exactly_once(uri, {}, [1, 2, 3, 4, 5, 6])


def test_a_log_lakesinks_reader_leaves_to_delta_rs_is_read_and_written_on_through_delta_rs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever lakesink's reader does not read itself (a V2 checkpoint, say: delta-rs here cannot
    write one, so the reader is made to refuse every log) goes to delta-rs: positions are asked of
    it app id by app id, and writes commit exactly once on top."""
    uri = str(tmp_path / "table")
    with Sink(uri, app_id="a") as sink:
        sink.write(pa.table({"id": [1]}), position=1)
    with Sink(uri, app_id="b") as sink:
        sink.write(pa.table({"id": [2]}), position=7)

    def refuse(*args: object, **kwargs: object) -> None:
        raise LogNotReadHere("refused by the test")

    monkeypatch.setattr("lakesink.delta.table.read_snapshot", refuse)
    with Sink(uri, app_id="a") as sink:
        assert sink.committed_position() == 1
        assert sink.write(pa.table({"id": [1]}), position=1).status == "skipped"
        assert sink.write(pa.table({"id": [3]}), position=2).status == "committed"
        assert sink.committed_position() == 2
    with Sink(uri, app_id="b") as sink:
        assert sink.committed_position() == 7
    assert_exactly_once(uri, {}, [1, 2, 3])


@pytest.fixture
def proxied(moto_server: MotoServer, s3_bucket: str) -> Iterator[tuple[FaultProxy, dict[str, str], str]]:
    with FaultProxy(moto_server.endpoint) as proxy:
        yield proxy, {**moto_server.env(), "AWS_ENDPOINT_URL": proxy.endpoint}, f"s3://{s3_bucket}/events"


def _ingest(source: Path, uri: str, env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "lakesink", "ingest", str(source), uri, "--app-id", "job", "--json", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return report


def test_an_ingest_reads_each_log_object_at_most_once_and_makes_the_few_requests_a_delta_writer_needs(
    tmp_path: Path, proxied: tuple[FaultProxy, dict[str, str], str], s3_options: dict[str, str]
) -> None:
    """Counted at the wire on moto S3. A first run into a new table: `_last_checkpoint`, a LIST of the
    log and one of the location (empty?), entry 0 created, then the data file, the ledger and the
    entry of the one commit: 7 requests. A rerun with nothing new reads `_last_checkpoint`, LISTs the
    log, reads each entry once and the ledger it resumes from. A rerun with one more file adds the
    commit's three PUTs. No object of the log is ever read twice in a run."""
    proxy, env, uri = proxied
    source = tmp_path / "source"
    source.mkdir()
    (source / "a.ndjson").write_text("".join(json.dumps({"id": i}) + "\n" for i in range(100)))

    def requests_of_a_run() -> list[tuple[str, str]]:
        proxy.events.clear()
        _ingest(source, uri, env)
        seen = [(e.method, e.path if "list-type" in e.path else e.path.split("?")[0]) for e in proxy.events]
        reads = Counter(path for method, path in seen if method in ("GET", "HEAD") and "_delta_log/" in path)
        assert all(count == 1 for count in reads.values()), reads
        return seen

    first = requests_of_a_run()
    assert len(first) == 7, first
    assert [m for m, _ in first].count("PUT") == 4  # entry 0, the data file, the ledger, entry 1
    again = requests_of_a_run()
    log_reads = [p for m, p in again if m == "GET" and "_delta_log" in p]
    assert len(log_reads) == 4, again  # _last_checkpoint, the LIST, entries 0 and 1
    assert not [m for m, _ in again if m in ("PUT", "POST", "DELETE")]
    (source / "b.ndjson").write_text("".join(json.dumps({"id": i}) + "\n" for i in range(100, 150)))
    more = requests_of_a_run()
    assert [m for m, _ in more].count("PUT") == 3, more
    assert_exactly_once(uri, s3_options, list(range(150)))
