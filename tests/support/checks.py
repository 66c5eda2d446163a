"""Count every record id in a table with two independent readers: zero lost, zero duplicated.

The readers are delta-rs (the `deltalake` package lakesink writes with) and DuckDB's delta
extension (delta-kernel-rs, a separate implementation of the protocol), so a log that only one
implementation reads "right" is caught too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse


@dataclass(frozen=True)
class IdCount:
    """What one reader found, against the expected ids."""

    reader: str
    rows: int
    lost: list[int] = field(default_factory=list)
    duplicated: dict[int, int] = field(default_factory=dict)  # id -> times seen (> 1)
    extra: list[int] = field(default_factory=list)  # ids that were never in the source

    @property
    def exact(self) -> bool:
        return not (self.lost or self.duplicated or self.extra)

    def describe(self) -> str:
        def head(items: Iterable[object]) -> str:
            listed = list(items)
            return f"{len(listed)} {listed[:10]}{' ...' if len(listed) > 10 else ''}"

        return (
            f"{self.reader}: {self.rows} rows, lost {head(self.lost)}, "
            f"duplicated {head(sorted(self.duplicated.items()))}, extra {head(self.extra)}"
        )


def count_ids(reader: str, ids: Iterable[int], expected: Iterable[int]) -> IdCount:
    seen = Counter(ids)
    wanted = set(expected)
    return IdCount(
        reader=reader,
        rows=sum(seen.values()),
        lost=sorted(wanted - seen.keys()),
        duplicated={i: n for i, n in sorted(seen.items()) if n > 1},
        extra=sorted(seen.keys() - wanted),
    )


def read_ids_deltalake(uri: str, storage_options: Mapping[str, str] | None = None, *, column: str = "id") -> list[int]:
    """The column's values in the table's current snapshot, read by delta-rs."""
    from deltalake import DeltaTable

    table = DeltaTable(uri, storage_options=dict(storage_options or {}))
    # to_pyarrow_dataset, not to_pyarrow_table: the latter can abort the interpreter at exit on S3.
    data = table.to_pyarrow_dataset().to_table(columns=[column], use_threads=False)
    return [int(v) for v in data.column(column).to_pylist()]


def read_column_deltalake(uri: str, storage_options: Mapping[str, str] | None, columns: list[str]) -> list[dict[str, object]]:
    """Rows (as dicts of `columns`) of the table's current snapshot, read by delta-rs."""
    from deltalake import DeltaTable

    table = DeltaTable(uri, storage_options=dict(storage_options or {}))
    return table.to_pyarrow_dataset().to_table(columns=columns, use_threads=False).to_pylist()  # type: ignore[no-any-return]


def read_ids_duckdb(uri: str, storage_options: Mapping[str, str] | None = None, *, column: str = "id") -> list[int]:
    """The column's values in the table's current snapshot, read by DuckDB's delta extension."""
    return [int(r[0]) for r in query_duckdb(uri, column, storage_options)]


def query_duckdb(
    uri: str, columns: str, storage_options: Mapping[str, str] | None = None, *, where: str = ""
) -> list[tuple[Any, ...]]:
    """`SELECT columns FROM delta_scan(uri) [WHERE where]` through DuckDB's delta extension (httpfs for S3)."""
    import duckdb
    import duckdb_extensions

    con = duckdb.connect()
    try:
        duckdb_extensions.import_extension("delta", con=con)
        if uri.startswith("s3://"):
            duckdb_extensions.import_extension("httpfs", con=con)
            con.execute(_duckdb_s3_secret(storage_options or {}))
        condition = f" WHERE {where}" if where else ""
        return con.execute(f"SELECT {columns} FROM delta_scan(?){condition}", [uri]).fetchall()  # type: ignore[no-any-return]
    finally:
        con.close()


def _duckdb_s3_secret(options: Mapping[str, str]) -> str:
    endpoint = urlparse(options["AWS_ENDPOINT_URL"])
    use_ssl = "true" if endpoint.scheme == "https" else "false"

    def quoted(value: str) -> str:
        return "'" + value.replace("'", "''") + "'"

    return (
        "CREATE OR REPLACE SECRET lake (TYPE S3, "
        f"KEY_ID {quoted(options['AWS_ACCESS_KEY_ID'])}, SECRET {quoted(options['AWS_SECRET_ACCESS_KEY'])}, "
        f"REGION {quoted(options.get('AWS_REGION', 'us-east-1'))}, ENDPOINT {quoted(endpoint.netloc)}, "
        f"URL_STYLE 'path', USE_SSL {use_ssl})"
    )


def check_table(uri: str, storage_options: Mapping[str, str] | None, expected: Iterable[int]) -> list[IdCount]:
    """Count the table's ids with delta-rs and with DuckDB."""
    wanted = list(expected)
    return [
        count_ids("deltalake", read_ids_deltalake(uri, storage_options), wanted),
        count_ids("duckdb", read_ids_duckdb(uri, storage_options), wanted),
    ]


def assert_exactly_once(uri: str, storage_options: Mapping[str, str] | None, expected: Iterable[int]) -> int:
    """Assert both readers see every expected id exactly once and nothing else; return the ids checked."""
    wanted = list(expected)
    counts = check_table(uri, storage_options, wanted)
    bad = [c for c in counts if not c.exact]
    assert not bad, f"{uri} is not exactly-once:\n" + "\n".join(c.describe() for c in counts)
    print(f"exactly-once: {uri}: {len(wanted)} ids, each exactly once ({', '.join(c.reader for c in counts)})")
    return len(wanted)


def assert_prefix_exactly_once(uri: str, storage_options: Mapping[str, str] | None, expected: Iterable[int]) -> None:
    """A cheaper check for between kills: delta-rs alone, every id of the committed prefix exactly once."""
    count = count_ids("deltalake", read_ids_deltalake(uri, storage_options), expected)
    assert count.exact, f"{uri} is not exactly-once for its committed position: {count.describe()}"


def log_operations(uri: str, storage_options: Mapping[str, str] | None) -> list[str]:
    """The operation of every commit in the log, oldest first ("CREATE TABLE", "WRITE", ...)."""
    from deltalake import DeltaTable

    history = DeltaTable(uri, storage_options=dict(storage_options or {})).history()
    return [str(entry.get("operation")) for entry in sorted(history, key=lambda e: int(e["version"]))]


def table_version(uri: str, storage_options: Mapping[str, str] | None) -> int:
    from deltalake import DeltaTable

    return int(DeltaTable(uri, storage_options=dict(storage_options or {})).version())


def table_files(uri: str, storage_options: Mapping[str, str] | None) -> list[str]:
    """The data files the current snapshot references, as full URIs."""
    from deltalake import DeltaTable

    return sorted(DeltaTable(uri, storage_options=dict(storage_options or {})).file_uris())


def parquet_files_on_store(uri: str, storage_options: Mapping[str, str] | None) -> list[str]:
    """Every `.parquet` object under the table root outside `_delta_log`, as full URIs (listed with boto3 or os)."""
    if uri.startswith("s3://"):
        import boto3

        options = dict(storage_options or {})
        parsed = urlparse(uri)
        s3 = boto3.client(
            "s3",
            endpoint_url=options["AWS_ENDPOINT_URL"],
            aws_access_key_id=options["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=options["AWS_SECRET_ACCESS_KEY"],
            region_name=options.get("AWS_REGION", "us-east-1"),
        )
        prefix = parsed.path.strip("/") + "/"
        keys: list[str] = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=parsed.netloc, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        found = [f"s3://{parsed.netloc}/{k}" for k in keys]
    else:
        found = [os.path.join(d, f) for d, _, files in os.walk(uri) for f in files]
    return sorted(f for f in found if f.endswith(".parquet") and "/_delta_log/" not in f)


def assert_only_orphans_left_and_gc_clears_them(
    uri: str, storage_options: Mapping[str, str] | None, env: Mapping[str, str] | None = None
) -> int:
    """After crashes: every Parquet object the snapshot does not name is an orphan that `lakesink gc`
    (no grace period: no writer runs) deletes, leaving exactly the referenced files, all readable.
    Returns how many orphans there were."""
    referenced = table_files(uri, storage_options)
    on_store = parquet_files_on_store(uri, storage_options)
    assert set(referenced) <= set(on_store), f"referenced files missing from the store: {set(referenced) - set(on_store)}"
    done = subprocess.run(
        [sys.executable, "-m", "lakesink", "gc", uri, "--older-than", "0s", "--json"],
        capture_output=True,
        text=True,
        env=dict(env if env is not None else os.environ),
        timeout=120,
    )
    assert done.returncode == 0, f"lakesink gc {uri} exited {done.returncode}: {done.stdout}{done.stderr}"
    left = parquet_files_on_store(uri, storage_options)
    assert left == referenced, (
        f"after gc: not referenced {sorted(set(left) - set(referenced))}, referenced but gone "
        f"{sorted(set(referenced) - set(left))}; gc said {done.stdout.strip()}"
    )
    return len(on_store) - len(referenced)


def lakesink_status(uri: str, env: Mapping[str, str] | None = None, timeout: float = 120) -> dict[str, object]:
    """`lakesink status URI --json`, run as a real subprocess."""
    done = subprocess.run(
        [sys.executable, "-m", "lakesink", "status", uri, "--json"],
        capture_output=True,
        text=True,
        env=dict(env if env is not None else os.environ),
        timeout=timeout,
    )
    assert done.returncode == 0, f"lakesink status {uri} exited {done.returncode}: {done.stdout}{done.stderr}"
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def table_exists(uri: str, storage_options: Mapping[str, str] | None) -> bool:
    from deltalake import DeltaTable

    return bool(DeltaTable.is_deltatable(uri, storage_options=dict(storage_options or {})))


def duckdb_rows(uri: str, storage_options: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Every row of the table's current snapshot as dicts, read by DuckDB's delta extension."""
    import duckdb
    import duckdb_extensions

    con = duckdb.connect()
    try:
        duckdb_extensions.import_extension("delta", con=con)
        con.execute("SET TimeZone = 'UTC'")
        if uri.startswith("s3://"):
            duckdb_extensions.import_extension("httpfs", con=con)
            con.execute(_duckdb_s3_secret(storage_options or {}))
        cursor = con.execute("SELECT * FROM delta_scan(?)", [uri])
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        con.close()
