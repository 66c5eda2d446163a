"""Terminal conditions: lakesink stops with exit 1, a message that names the cause, and nothing written.

Wrong credentials (a moto server that checks them), a missing bucket, a location that is not a Delta
table, a table whose writer protocol lakesink's appends cannot honour, and a `txn` that expired
under `delta.setTransactionRetentionDuration` (re-ingesting from the start would duplicate every
record). "Nothing written" is checked by listing every object (file) before and after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlparse

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

import lakesink
from tests.support.checks import assert_exactly_once, lakesink_status, table_files, table_version
from tests.support.data import Dataset, write_ndjson_files
from tests.support.fault_proxy import FaultProxy
from tests.support.moto_server import MotoServer, start_moto_server

APP_ID = "job"
FAST = ("--storage-option", "max_retries=1", "--storage-option", "timeout=2s", "--storage-option", "retry_timeout=2s")
SCHEMA = {"type": "struct", "fields": [{"name": "id", "type": "long", "nullable": True, "metadata": {}}]}


@pytest.fixture
def dataset(tmp_path: Path) -> Dataset:
    return write_ndjson_files(tmp_path / "source", files=3, rows_per_file=5)


def ingest(source: Path, uri: str, env: Mapping[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lakesink", "ingest", str(source), uri, "--app-id", APP_ID, "--batch-rows", "5", "--json",
         *FAST, *extra],
        env=dict(env), capture_output=True, text=True, timeout=120,
    )


def assert_refused(done: subprocess.CompletedProcess[str], error: str, *mentions: str) -> str:
    """Exit 1 with a terminal error of type `error` whose message names each of `mentions`."""
    assert done.returncode == 1, f"exit {done.returncode}: {done.stdout} {done.stderr}"
    report = json.loads(done.stdout)
    assert (report["ok"], report["kind"], report["error"]) == (False, "terminal", error), report
    message = str(report["message"])
    for text in mentions:
        assert text in message, f"{text!r} not in {message!r}"
    assert "↳" not in message and "\x1b" not in message and "<unknown>" not in message, message
    print(f"exit 1, {error}: {message}")
    return message


def s3_client(options: Mapping[str, str]) -> object:
    return boto3.client(
        "s3",
        endpoint_url=options["AWS_ENDPOINT_URL"],
        aws_access_key_id=options["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=options["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )


def objects(uri: str, options: Mapping[str, str] | None) -> dict[str, int]:
    """Every object (file) under the table location, with its size."""
    if not uri.startswith("s3://"):
        root = Path(uri)
        return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()} if root.exists() else {}
    assert options is not None
    parsed = urlparse(uri)
    s3 = s3_client(options)
    found: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=parsed.netloc):  # type: ignore[attr-defined]
        found.update({item["Key"]: item["Size"] for item in page.get("Contents", [])})
    return found


def put(uri: str, options: Mapping[str, str] | None, relative: str, body: bytes) -> None:
    """Write one object (file) under the table location, as another tool would."""
    if not uri.startswith("s3://"):
        path = Path(uri) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        return
    assert options is not None
    parsed = urlparse(uri)
    s3_client(options).put_object(Bucket=parsed.netloc, Key=f"{parsed.path.strip('/')}/{relative}", Body=body)  # type: ignore[attr-defined]


def hand_written_table(uri: str, options: Mapping[str, str] | None, *, protocol: dict[str, object],
                       configuration: dict[str, str] | None = None, schema: dict[str, object] | None = None) -> None:
    """Version 0 of a table written by hand, as a newer Delta writer would have written it."""
    metadata = {"id": "7d3c1d8e-0000-4000-8000-000000000000", "format": {"provider": "parquet", "options": {}},
                "schemaString": json.dumps(schema or SCHEMA), "partitionColumns": [],
                "configuration": configuration or {}, "createdTime": 1_700_000_000_000}
    lines = [{"commitInfo": {"timestamp": 1_700_000_000_000, "operation": "CREATE TABLE"}}, {"protocol": protocol},
             {"metaData": metadata}]
    put(uri, options, "_delta_log/00000000000000000000.json", "\n".join(json.dumps(line) for line in lines).encode() + b"\n")


def cli_env(options: Mapping[str, str]) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **options}


# -- credentials ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checking_moto() -> Iterator[tuple[MotoServer, dict[str, str]]]:
    """A moto server of its own that checks credentials: with INITIAL_NO_AUTH_ACTION_COUNT=3 it lets the
    first three requests in unauthenticated (they create an IAM user, its policy and its key), and
    from then on checks every request's key id and signature."""
    server = start_moto_server(environment={"INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    try:
        iam = boto3.client("iam", endpoint_url=server.endpoint, aws_access_key_id="setup", aws_secret_access_key="setup",
                           region_name="us-east-1")
        iam.create_user(UserName="lakesink")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="lakesink", PolicyName="all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="lakesink")["AccessKey"]
        options = {"AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                   "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"], "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
        s3_client(options).create_bucket(Bucket="lake")  # type: ignore[attr-defined]
        with pytest.raises(Exception, match="InvalidAccessKeyId"):
            s3_client({**options, "AWS_ACCESS_KEY_ID": "AKIANOTAKEY"}).list_objects_v2(Bucket="lake")  # type: ignore[attr-defined]
        yield server, options
    finally:
        server.stop()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("wrong", "code"), [("AWS_ACCESS_KEY_ID", "InvalidAccessKeyId"),
                                             ("AWS_SECRET_ACCESS_KEY", "SignatureDoesNotMatch")])
def test_wrong_credentials_exit_1_naming_the_refusal_and_write_nothing(
    wrong: str, code: str, checking_moto: tuple[MotoServer, dict[str, str]], dataset: Dataset
) -> None:
    """moto checks credentials here (no simulation): a wrong key id or secret is a ConfigError, exit 1,
    for an existing table and for a new one; the bucket is unchanged."""
    _, options = checking_moto
    prefix = {"AWS_ACCESS_KEY_ID": "wrong-key", "AWS_SECRET_ACCESS_KEY": "wrong-signature"}[wrong]
    existing = f"s3://lake/{prefix}/existing"
    assert ingest(dataset.directory, existing, cli_env(options)).returncode == 0
    before = objects(existing, options)
    bad = cli_env({**options, wrong: "AKIANOTAKEY" if wrong == "AWS_ACCESS_KEY_ID" else "not-the-secret"})
    for uri in (existing, f"s3://lake/{prefix}/new"):
        started = time.monotonic()
        done = ingest(dataset.directory, uri, bad)
        assert_refused(done, "ConfigError", "refused the credentials", code, "Check AWS_* settings")
        assert time.monotonic() - started < 30
    assert objects(existing, options) == before
    assert_exactly_once(existing, options, dataset.ids)


@pytest.mark.timeout(120)
def test_credentials_refused_in_the_middle_of_a_run_stop_it_with_exit_1_and_a_rerun_finishes_exactly_once(
    proxy: FaultProxy, moto_server: MotoServer, s3_bucket: str, s3_options: dict[str, str], dataset: Dataset
) -> None:
    """Simulated at the proxy (moto's own check is all or nothing): from the second staged file on,
    uploads get 403 InvalidAccessKeyId, as when a key is revoked mid-run. pyarrow does not retry it;
    the run stops at once with exit 1 (ConfigError), the committed prefix is exact, and a rerun with
    working credentials finishes exactly once. One writer thread, so "the second staged file" is
    the second batch's (two threads may finish their files in either order); the groups sealed
    before the failure are still committed."""
    uri = f"s3://{s3_bucket}/table"
    proxy.fail_with(403, "InvalidAccessKeyId", r"\.parquet", method="PUT", times=1_000_000, after=1)
    env = {**moto_server.env(), "AWS_ENDPOINT_URL": proxy.endpoint}
    done = ingest(dataset.directory, uri, env, "--write-threads", "1")
    assert_refused(done, "ConfigError", "refused the credentials", "INVALID_ACCESS_KEY_ID")
    assert len([e for e in proxy.events if e.action.startswith("answered 403")]) == 1  # not retried
    with lakesink.Sink(uri, app_id=APP_ID, storage_options=s3_options) as sink:
        assert sink.committed_position() == dataset.batch_positions(5)[0]
    proxy.disarm()
    assert ingest(dataset.directory, uri, env).returncode == 0
    assert_exactly_once(uri, s3_options, dataset.ids)


@pytest.fixture
def proxy(moto_server: MotoServer) -> Iterator[FaultProxy]:
    with FaultProxy(moto_server.endpoint) as started:
        yield started


# -- bucket, location ---------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_missing_bucket_exits_1_and_creates_nothing(moto_server: MotoServer, dataset: Dataset) -> None:
    uri = "s3://no-such-bucket-for-lakesink/table"
    done = ingest(dataset.directory, uri, cli_env(moto_server.storage_options()))
    assert_refused(done, "ConfigError", "the bucket does not exist")
    buckets = s3_client(moto_server.storage_options()).list_buckets()["Buckets"]  # type: ignore[attr-defined]
    assert "no-such-bucket-for-lakesink" not in [b["Name"] for b in buckets]


@pytest.mark.timeout(60)
def test_a_location_of_plain_parquet_files_is_not_turned_into_a_delta_table(
    table_uri: str, storage_options: dict[str, str], dataset: Dataset
) -> None:
    """A folder/prefix of Parquet files without `_delta_log` (a Spark or pandas dataset): lakesink
    names what it found and writes nothing (no table, no staged file, no ledger) next to it."""
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"id": [1, 2, 3]}), sink)
    for name in ("part-0000.parquet", "part-0001.parquet", "_SUCCESS"):
        put(table_uri, storage_options, name, sink.getvalue().to_pybytes() if name.endswith(".parquet") else b"")
    before = objects(table_uri, storage_options)
    done = ingest(dataset.directory, table_uri, cli_env(storage_options))
    assert_refused(done, "TableError", "is not a Delta table", "no _delta_log", "part-0000.parquet")
    assert objects(table_uri, storage_options) == before


GARBAGE_LOGS = {
    "not JSON": b"this is not a Delta log entry\n",
    "no protocol or metadata": json.dumps({"commitInfo": {"operation": "WRITE"}}).encode() + b"\n",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("garbage", GARBAGE_LOGS)
def test_a_delta_log_with_garbage_is_refused_as_terminal_not_retried_as_transient(
    garbage: str, table_uri: str, storage_options: dict[str, str], dataset: Dataset
) -> None:
    put(table_uri, storage_options, "_delta_log/00000000000000000000.json", GARBAGE_LOGS[garbage])
    before = objects(table_uri, storage_options)
    done = ingest(dataset.directory, table_uri, cli_env(storage_options))
    assert_refused(done, "TableError", "the Delta log is not one lakesink can read")
    assert objects(table_uri, storage_options) == before


# -- protocol -------------------------------------------------------------------------------------------------

PROTOCOLS: dict[str, tuple[dict[str, object], dict[str, str], dict[str, object] | None, str]] = {
    # name: (protocol, configuration, schema, what the message must name)
    "unknown writer feature": ({"minReaderVersion": 1, "minWriterVersion": 7, "writerFeatures": ["someFutureFeature"]},
                               {}, None, "someFutureFeature"),
    "newer writer version": ({"minReaderVersion": 1, "minWriterVersion": 8}, {}, None, "writer version 8"),
    "a feature delta-rs cannot write": ({"minReaderVersion": 1, "minWriterVersion": 7, "writerFeatures": ["rowTracking"]},
                                        {}, None, "rowTracking"),
    "check constraints in use": ({"minReaderVersion": 1, "minWriterVersion": 3}, {"delta.constraints.positive": "id > 0"},
                                 None, "checkConstraints"),
    "generated columns in use": (
        {"minReaderVersion": 1, "minWriterVersion": 7, "writerFeatures": ["generatedColumns"]}, {},
        {"type": "struct", "fields": [{"name": "id", "type": "long", "nullable": True,
                                       "metadata": {"delta.generationExpression": "1"}}]},
        "generatedColumns"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", PROTOCOLS)
def test_a_table_whose_writer_protocol_lakesink_cannot_honour_is_refused_by_name_before_anything_is_written(
    case: str, moto_server: MotoServer, s3_bucket: str, s3_options: dict[str, str], dataset: Dataset
) -> None:
    """delta-rs would reject some of these only at commit time (as a conflict, which lakesink would
    retry as a concurrent writer), and would accept others (constraints, generated columns) without
    honouring them: lakesink checks the protocol when it opens the table, before staging anything.
    Reading the table (`lakesink status`) still works."""
    protocol, configuration, schema, named = PROTOCOLS[case]
    uri = f"s3://{s3_bucket}/table"
    hand_written_table(uri, s3_options, protocol=protocol, configuration=configuration, schema=schema)
    before = objects(uri, s3_options)
    done = ingest(dataset.directory, uri, cli_env(s3_options))
    assert_refused(done, "TableError", f"lakesink cannot write to {uri}", named, "Nothing was written")
    assert objects(uri, s3_options) == before
    assert lakesink_status(uri, moto_server.env())["table_version"] == 0


@pytest.mark.timeout(60)
def test_a_table_with_an_unknown_reader_feature_is_a_terminal_error_naming_it(
    s3_bucket: str, s3_options: dict[str, str], dataset: Dataset
) -> None:
    uri = f"s3://{s3_bucket}/table"
    protocol = {"minReaderVersion": 3, "minWriterVersion": 7, "readerFeatures": ["someFutureFeature"],
                "writerFeatures": ["someFutureFeature"]}
    hand_written_table(uri, s3_options, protocol=protocol)
    before = objects(uri, s3_options)
    assert_refused(ingest(dataset.directory, uri, cli_env(s3_options)), "TableError", "someFutureFeature")
    assert objects(uri, s3_options) == before


def test_writer_protocols_lakesink_appends_honour_are_accepted() -> None:
    from lakesink.delta.protocol import writer_protocol_problems

    plain = json.dumps(SCHEMA)
    assert writer_protocol_problems(2, None, {}, plain) == []  # what delta-rs and lakesink create
    assert writer_protocol_problems(4, None, {"delta.enableChangeDataFeed": "true"}, plain) == []  # Spark with CDF
    assert writer_protocol_problems(7, ["appendOnly", "deletionVectors", "checkConstraints", "columnMapping"],
                                    {"delta.columnMapping.mode": "none"}, plain) == []
    assert writer_protocol_problems(5, None, {"delta.columnMapping.mode": "name"}, plain) == [
        "the table uses columnMapping, which lakesink's appends would not honour"]


# -- expired txn ----------------------------------------------------------------------------------------------

RETENTION = "delta.setTransactionRetentionDuration"
SOURCE_SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string()), ("score", pa.float64())])
THREE_DAYS_AGO = -3 * 86400


def create_expiring_table(uri: str, options: Mapping[str, str] | None) -> None:
    DeltaTable.create(uri, schema=SOURCE_SCHEMA, configuration={RETENTION: "interval 2 days"},
                      storage_options=dict(options or {}))


@pytest.mark.timeout(120)
def test_an_expired_txn_stops_the_ingest_instead_of_ingesting_the_source_again(
    table_uri: str, storage_options: dict[str, str], dataset: Dataset
) -> None:
    """The table keeps txns for 2 days; the first run's commits carry lastUpdated 3 days ago (the
    injected clock), so readers now drop its txn. A rerun must not start over: exit 1 naming the app
    id and the property, nothing written. Raising the retention brings the txn back, and the rerun
    then adds nothing: every record once."""
    create_expiring_table(table_uri, storage_options)
    lakesink.ingest(str(dataset.directory), table_uri, app_id=APP_ID, batch_rows=5, storage_options=storage_options,
                    clock=lambda: time.time() + THREE_DAYS_AGO)
    assert DeltaTable(table_uri, storage_options=storage_options).transaction_version(APP_ID) is None  # expired
    before = objects(table_uri, storage_options)

    done = ingest(dataset.directory, table_uri, cli_env(storage_options))
    assert_refused(done, "TableError", f"the txn for app id {APP_ID!r} expired", RETENTION, "interval 2 days",
                   "the log still holds txn version", "nothing was written")
    assert objects(table_uri, storage_options) == before
    assert_exactly_once(table_uri, storage_options, dataset.ids)

    DeltaTable(table_uri, storage_options=storage_options).alter.set_table_properties({RETENTION: "interval 1000 weeks"})
    again = ingest(dataset.directory, table_uri, cli_env(storage_options))
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["rows_written"] == 0
    assert_exactly_once(table_uri, storage_options, dataset.ids)


@pytest.mark.timeout(60)
def test_an_expired_txn_a_checkpoint_dropped_is_still_caught_from_the_files_the_app_id_committed(
    tmp_path: Path, dataset: Dataset
) -> None:
    uri = str(tmp_path / "table")
    create_expiring_table(uri, None)
    lakesink.ingest(str(dataset.directory), uri, app_id=APP_ID, batch_rows=5, clock=lambda: time.time() + THREE_DAYS_AGO)
    table = DeltaTable(uri)
    table.create_checkpoint()  # written after expiry: the txn is left out of it for good
    table.alter.set_table_properties({RETENTION: "interval 1000 weeks"})
    assert DeltaTable(uri).transaction_version(APP_ID) is None
    version = table_version(uri, None)
    done = ingest(dataset.directory, uri, cli_env({}))
    assert_refused(done, "TableError", "expired", "data file(s) it committed", f"{len(table_files(uri, None))} data file(s)")
    assert table_version(uri, None) == version
    assert_exactly_once(uri, None, dataset.ids)


@pytest.mark.timeout(60)
def test_a_first_run_killed_before_its_first_commit_is_not_mistaken_for_an_expired_txn(
    tmp_path: Path, dataset: Dataset
) -> None:
    """On a table that expires txns, a ledger alone (staged before a commit that never happened) is
    no evidence: the rerun starts from the beginning and writes every record once."""
    uri = str(tmp_path / "table")
    create_expiring_table(uri, None)
    killed = ingest(dataset.directory, uri, {**cli_env({}), "LAKESINK_CRASH_AT": "before_commit"})
    assert killed.returncode == -9
    assert list((Path(uri) / "_lakesink" / "ledger").rglob("*.json")), "the killed run staged no ledger"
    done = ingest(dataset.directory, uri, cli_env({}))
    assert done.returncode == 0, done.stdout + done.stderr
    assert_exactly_once(uri, None, dataset.ids)
