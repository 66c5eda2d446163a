"""Fixtures: one real moto S3 server per test session (fresh bucket per test), local table dirs,
and a helper to run the real `lakesink` CLI in a subprocess."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.localstack_server import start_localstack_server
from tests.support.moto_server import MotoServer, start_moto_server
from tests.support.postgres import PostgresServer, PostgresUnavailable, start_postgres

_bucket_ids = itertools.count()
_S3_SERVER = os.environ.get("LAKESINK_TEST_S3", "moto")
if _S3_SERVER not in ("moto", "localstack"):
    raise pytest.UsageError(f"LAKESINK_TEST_S3 must be moto or localstack, not {_S3_SERVER!r}")


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """The session's S3 server: moto, or LocalStack when LAKESINK_TEST_S3=localstack (tests/support/localstack_server.py)."""
    server = start_localstack_server() if _S3_SERVER == "localstack" else start_moto_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(moto_server: MotoServer) -> str:
    """A new, empty bucket on the session's moto server."""
    name = f"lake-{os.getpid()}-{next(_bucket_ids)}"
    moto_server.create_bucket(name)
    return name


@pytest.fixture
def s3_options(moto_server: MotoServer) -> dict[str, str]:
    return moto_server.storage_options()


@pytest.fixture(params=["local", "s3"])
def table_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A table location on local disk, then on the moto S3 server."""
    if request.param == "local":
        return str(tmp_path / "table")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/table"


@pytest.fixture
def storage_options(table_uri: str, moto_server: MotoServer) -> dict[str, str]:
    return moto_server.storage_options() if table_uri.startswith("s3://") else {}


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `python -m lakesink.cli ARGS` as a real subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "lakesink", *args],
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
        timeout=timeout,
    )


_database_ids = itertools.count()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One real PostgreSQL 15 server (logical replication on) for the session; fails, never skips, without PostgreSQL."""
    try:
        server = start_postgres(tmp_path_factory.mktemp("postgres"))
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_database(postgres: PostgresServer) -> Iterator[str]:
    """The DSN of a new, empty database on the session's server; dropped (with its replication slots) afterwards."""
    name = f"lakesink_test_{os.getpid()}_{next(_database_ids)}"
    postgres.create_database(name)
    try:
        yield postgres.dsn(name)
    finally:
        postgres.drop_database(name)


# Kafka (tests/support/kafka.py) is imported where used: confluent-kafka is only needed by the Kafka tests.
if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.support.kafka import KafkaBroker

_topic_ids = itertools.count()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """One noida-db Kafka broker for the session (tests/support/kafka.py); fails, never skips, without noida-db.

    Shared: tests must not restart or kill it (those start their own with start_kafka(tmp_path)).
    """
    from tests.support.kafka import KafkaUnavailable, start_kafka

    try:
        broker = start_kafka(tmp_path_factory.mktemp("kafka"))
    except KafkaUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def kafka_topic(kafka_broker: KafkaBroker) -> Callable[..., str]:
    """`make(partitions=6, **config) -> name`: a new topic with a unique name on the session's broker."""

    def make(partitions: int = 6, **config: str | int) -> str:
        return kafka_broker.create_topic(f"t-{os.getpid()}-{next(_topic_ids)}", partitions, **config)

    return make
