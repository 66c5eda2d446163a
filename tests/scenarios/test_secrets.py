"""A canary secret never leaves lakesink: not in any output, log, error, repr or object it writes.

The canary is the AWS secret key and session token of real `lakesink` subprocesses (and of the
Python API) with every log on (`-vv`, `RUST_LOG=debug`). The session's moto server does not check
credentials, so the canary is accepted as it is, and the runs go through their normal paths
(create, commit, checkpoint, quarantine, status, verify, gc) and two failing ones (a missing bucket,
a bad record). Afterwards every output is searched, and so is every byte of every object in the
bucket: the Delta logs, checkpoints, Parquet data and lakesink's ledgers.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path

import boto3
import pyarrow as pa
import pytest

import lakesink
from tests.support.moto_server import MotoServer

SECRET = "CanarySecret-7f3e9b2d41a6c058"
TOKEN = "CanaryToken-d93a7c1e5b80f2e4"
CANARIES = (SECRET, TOKEN)
LAKESINK_KEYS = {"lakesink.version", "lakesink.appId", "lakesink.position", "lakesink.writeId"}
# Delta's standard commitInfo keys, as delta-rs 1.x (create, add columns, checkpoints) and lakesink's own log entries write them.
DELTA_RS_KEYS = {
    "timestamp", "operation", "operationParameters", "operationMetrics", "clientVersion", "engineInfo",
    "readVersion", "isBlindAppend", "isolationLevel", "userMetadata", "txnId",
}  # fmt: skip
GOOD_ROWS = 25  # one commit per row: past delta.checkpointInterval (20), so a checkpoint is written


def assert_no_canary(text: str | bytes, where: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    for canary in CANARIES:
        for needle in (canary, canary[-12:]):  # whole, or its random tail
            assert needle.encode() not in data, f"the canary {needle!r} leaked into {where}"


def write_source(directory: Path) -> Path:
    directory.mkdir()
    (directory / "a.ndjson").write_text("".join(json.dumps({"id": i, "name": f"n{i}"}) + "\n" for i in range(GOOD_ROWS)))
    (directory / "b.ndjson").write_text('{"id": 100, "name": "ok"}\n{"id": not json\n')
    return directory


def run(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lakesink", "-vv", *args], env=dict(env), capture_output=True, text=True, timeout=300
    )


def bucket_objects(endpoint: str, bucket: str) -> dict[str, bytes]:
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="reader", aws_secret_access_key="reader", region_name="us-east-1"
    )
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            found[item["Key"]] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def commit_infos(objects: Mapping[str, bytes]) -> list[dict[str, object]]:
    infos = []
    for key, body in objects.items():
        if "/_delta_log/" in key and key.endswith(".json") and not key.endswith("_last_checkpoint"):
            infos += [json.loads(line)["commitInfo"] for line in body.splitlines() if line.startswith(b'{"commitInfo"')]
    return infos


@pytest.mark.timeout(600)
def test_a_canary_secret_reaches_no_output_log_error_or_object_of_any_cli_run(
    moto_server: MotoServer, s3_bucket: str, tmp_path: Path
) -> None:
    source = write_source(tmp_path / "source")
    env = {**moto_server.env(), "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": TOKEN, "RUST_LOG": "debug"}
    table, bad = f"s3://{s3_bucket}/events", f"s3://{s3_bucket}/events_bad"
    runs = {
        "ingest": run(env, "ingest", str(source), table, "--app-id", "events", "--batch-rows", "1", "--bad-records", bad,
                      "--json"),
        "ingest again (text)": run(env, "ingest", str(source), table, "--app-id", "events", "--bad-records", bad),
        "status": run(env, "status", table, "--json"),
        "status (text)": run(env, "status", table),
        "verify": run(env, "verify", table, "--key", "id", "--json"),
        "gc --dry-run": run(env, "gc", table, "--dry-run", "--older-than", "1s", "--json"),
        "ingest into a missing bucket": run(env, "ingest", str(source), f"s3://no-such-bucket-{s3_bucket}/t",
                                            "--app-id", "events", "--json"),
        "ingest of a bad record": run(env, "ingest", str(source), f"s3://{s3_bucket}/strict", "--app-id", "strict",
                                      "--json"),
    }  # fmt: skip
    expected_exit = {"ingest into a missing bucket": 1, "ingest of a bad record": 1}
    searched_chars = 0
    for name, done in runs.items():
        assert done.returncode == expected_exit.get(name, 0), f"{name}: {done.returncode}\n{done.stdout}{done.stderr[-3000:]}"
        assert_no_canary(done.stdout, f"the stdout of {name}")
        assert_no_canary(done.stderr, f"the stderr of {name}")
        searched_chars += len(done.stdout) + len(done.stderr)
        if name.endswith("(text)") or name == "ingest again (text)":
            continue
        report = json.loads(done.stdout)
        assert_no_canary(json.dumps(report), f"the JSON output of {name}")
    # The logs were on, so their silence about the canary means something.
    ingest_log = runs["ingest"].stderr
    assert "DEBUG lakesink.commit: committed" in ingest_log and "INFO lakesink.commit: created table" in ingest_log
    assert "DEBUG deltalake_core" in ingest_log and "***" in ingest_log  # delta-rs's own log, options redacted
    assert json.loads(runs["ingest into a missing bucket"].stdout)["error"] == "ConfigError"
    assert json.loads(runs["ingest of a bad record"].stdout)["error"] == "BadRecord"
    assert json.loads(runs["ingest"].stdout)["rows_quarantined"] == 1

    objects = bucket_objects(moto_server.endpoint, s3_bucket)
    for key, body in objects.items():
        assert_no_canary(body, f"the object {key}")
    kinds = {
        "log": [k for k in objects if "/_delta_log/" in k and k.endswith(".json")],
        "checkpoint": [k for k in objects if k.endswith(".checkpoint.parquet")],
        "data": [k for k in objects if "/_delta_log/" not in k and k.endswith(".parquet")],
        "ledger": [k for k in objects if "/_lakesink/" in k],
    }
    assert all(kinds.values()), {kind: len(keys) for kind, keys in kinds.items()}
    assert any(k.startswith("events_bad/") for k in kinds["data"])  # the quarantine table was searched too
    infos = commit_infos(objects)
    assert infos
    for info in infos:
        assert set(info) <= LAKESINK_KEYS | DELTA_RS_KEYS, sorted(set(info) - LAKESINK_KEYS - DELTA_RS_KEYS)
        assert_no_canary(json.dumps(info), "commitInfo")
    assert any(set(info) >= LAKESINK_KEYS for info in infos)
    print(
        f"searched {len(runs)} runs ({searched_chars} characters of output) and {len(objects)} objects "
        f"({sum(map(len, objects.values()))} bytes: {', '.join(f'{len(v)} {k}' for k, v in kinds.items())}), "
        f"{len(infos)} commitInfos"
    )


def test_rust_log_is_turned_on_by_minus_vv_and_still_shows_no_secret(moto_server: MotoServer, s3_bucket: str) -> None:
    env = {k: v for k, v in moto_server.env().items() if k != "RUST_LOG"}
    env.update({"AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": TOKEN})
    lakesink.Sink(f"s3://{s3_bucket}/t", app_id="job", storage_options=moto_server.storage_options()).write(
        pa.table({"id": [1]}), position=1
    )
    done = run(env, "status", f"s3://{s3_bucket}/t", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DEBUG deltalake_core" in done.stderr and "INFO lakesink.delta.table: opened table" in done.stderr
    assert_no_canary(done.stdout + done.stderr, "the output of status -vv")


def test_the_python_api_keeps_the_canary_out_of_errors_chained_causes_reprs_and_logs(
    moto_server: MotoServer, s3_bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="lakesink")
    options = {**moto_server.storage_options(), "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": TOKEN}
    texts: dict[str, str] = {"StorageOptions": repr(lakesink.StorageOptions.resolve(options))}

    # Sink.write on a bucket that vanished after the Sink was opened (it creates the table on write).
    gone = f"gone-{s3_bucket}"
    moto_server.create_bucket(gone)
    sink = lakesink.Sink(f"s3://{gone}/t", app_id="job", storage_options=options)
    boto3.client(
        "s3", endpoint_url=moto_server.endpoint, aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1"
    ).delete_bucket(Bucket=gone)
    with pytest.raises(lakesink.LakesinkError) as failure:
        sink.write(pa.table({"id": [1]}), position=1)
    exc = failure.value
    assert exc.__cause__ is not None
    texts.update({
        "Sink": repr(sink), "error": str(exc), "repr(error)": repr(exc), "cause": str(exc.__cause__),
        "repr(cause)": repr(exc.__cause__), "traceback": "".join(traceback.format_exception(exc)),
    })  # fmt: skip
    with pytest.raises(lakesink.ConfigError, match="bucket does not exist") as opening:
        lakesink.Sink(f"s3://no-such-{s3_bucket}/t", app_id="job", storage_options=options)
    texts["error opening"] = "".join(traceback.format_exception(opening.value))

    source = write_source(tmp_path / "source")
    table = f"s3://{s3_bucket}/events"
    with lakesink.Sink(table, app_id="api", storage_options=options) as writer:
        texts["WriteResult"] = repr(writer.write(pa.table({"id": [1], "name": ["a"]}), position=1))
    texts["IngestReport"] = repr(
        lakesink.ingest(str(source), table, app_id="events", batch_rows=10, bad_records=f"{table}_bad", storage_options=options)
    )
    texts["TableStatus"] = repr(lakesink.table_status(table, storage_options=options))
    texts["VerifyReport"] = repr(lakesink.verify_table(table, storage_options=options))
    texts["GcReport"] = repr(lakesink.collect_garbage(table, dry_run=True, storage_options=options))
    texts["log records"] = caplog.text
    assert "storage options StorageOptions(" in caplog.text  # options were logged, redacted
    for where, text in texts.items():
        assert_no_canary(text, where)
    for key, body in bucket_objects(moto_server.endpoint, s3_bucket).items():
        assert_no_canary(body, f"the object {key}")
