#!/usr/bin/env python
"""What lakesink's throughput is compared with, one run per process (throughput.py starts it):

    python benchmarks/_baselines.py KIND SOURCE_DIR DEST --format F [--batch-rows N] [--work-dir DIR]

KIND is one of:

* `raw`: the speed limit of reading and writing: each source file is read whole with pyarrow's
  reader for its format (`pyarrow.json.read_json`, `pyarrow.csv.read_csv`, `pyarrow.parquet.read_table`,
  multi-threaded, default options) and written as one Parquet file (snappy) to DEST; no Delta log,
  no commit.
* `write_deltalake`: the plain delta-rs loop: the files are read the same way, and each file's
  table goes to `deltalake.write_deltalake(DEST, table, mode="append")`, one commit per source
  file; with `--batch-rows N`, every N rows instead (slices of files joined), one commit each.
* `dlt_arrow`: dlt's filesystem destination with `table_format="delta"`, fed by a resource that
  yields each file as the pyarrow table that reader returns.
* `dlt_dicts`: the same destination fed with plain dict rows as a Python user makes them:
  `json.loads` per NDJSON line, `csv.DictReader` rows (with column type hints, so dlt types them
  as the other runs do), Parquet record batches `to_pylist()`; yielded in pages of 10,000.

DEST is a local folder or an `s3://bucket/prefix` URI; S3 settings come from the AWS_* variables
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP), as for
`lakesink`. The last line printed is JSON: {"rows": N, "seconds": S, "commits": C}, where S is the time from
just before the first file is opened (dlt: before the pipeline is made) to the last commit,
imports excluded, as `lakesink ingest --json` reports its own `seconds`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq

KINDS = ("raw", "write_deltalake", "dlt_arrow", "dlt_dicts")
DICT_PAGE_ROWS = 10_000
# The column types the other runs get from pyarrow's readers; dlt coerces CSV's strings to them.
DLT_COLUMN_HINTS = {"id": {"data_type": "bigint"}, "amount": {"data_type": "double"}}
DLT_TABLE = "events"


def read_file(path: Path, fmt: str) -> pa.Table:
    """The whole file through pyarrow's reader for its format (multi-threaded, default options)."""
    if fmt == "ndjson":
        return pajson.read_json(path)
    if fmt == "csv":
        return pacsv.read_csv(path)
    return pq.read_table(path)


def dict_rows(path: Path, fmt: str) -> Iterator[list[dict[str, Any]]]:
    """The file's rows as dicts, the way a Python user without pyarrow would make them, in pages."""
    if fmt == "parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=DICT_PAGE_ROWS):
            yield batch.to_pylist()
        return
    with path.open(newline="" if fmt == "csv" else None) as f:
        lines = (json.loads(line) for line in f if line.strip())
        records: Iterator[dict[str, Any]] = csv.DictReader(f) if fmt == "csv" else lines
        page: list[dict[str, Any]] = []
        for record in records:
            page.append(record)
            if len(page) == DICT_PAGE_ROWS:
                yield page
                page = []
        if page:
            yield page


def storage_options() -> dict[str, str]:
    names = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ALLOW_HTTP")
    return {name: os.environ[name] for name in names if name in os.environ}


def output_filesystem(dest: str, options: dict[str, str]) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem for DEST (S3 as `options` say), and the path on it."""
    if not dest.startswith("s3://"):
        Path(dest).mkdir(parents=True, exist_ok=True)
        return pafs.LocalFileSystem(), dest
    endpoint = urlparse(options["AWS_ENDPOINT_URL"]) if "AWS_ENDPOINT_URL" in options else None
    fs = pafs.S3FileSystem(
        access_key=options.get("AWS_ACCESS_KEY_ID"),
        secret_key=options.get("AWS_SECRET_ACCESS_KEY"),
        region=options.get("AWS_REGION", "us-east-1"),
        endpoint_override=endpoint.netloc if endpoint else None,
        scheme=endpoint.scheme if endpoint else "https",
    )
    return fs, dest.removeprefix("s3://")


def run_raw(files: list[Path], fmt: str, dest: str) -> int:
    fs, root = output_filesystem(dest, storage_options())
    rows = 0
    for path in files:
        table = read_file(path, fmt)
        pq.write_table(table, f"{root}/{path.stem}.parquet", filesystem=fs, compression="snappy")
        rows += table.num_rows
    return rows


def run_write_deltalake(files: list[Path], fmt: str, dest: str, batch_rows: int | None) -> tuple[int, int]:
    """Rows written and commits made: one commit per file, or per `batch_rows` rows when given."""
    from deltalake import write_deltalake

    options = storage_options() if dest.startswith("s3://") else None
    pending: list[pa.Table] = []
    pending_rows = rows = commits = 0

    def commit() -> None:
        nonlocal pending, pending_rows, rows, commits
        write_deltalake(dest, pa.concat_tables(pending), mode="append", storage_options=options)
        rows += pending_rows
        commits += 1
        pending, pending_rows = [], 0

    for path in files:
        table = read_file(path, fmt)
        if batch_rows is None:
            pending, pending_rows = [table], table.num_rows
            commit()
            continue
        start = 0
        while start < table.num_rows:
            take = min(table.num_rows - start, batch_rows - pending_rows)
            pending.append(table.slice(start, take))
            pending_rows += take
            start += take
            if pending_rows == batch_rows:
                commit()
    if pending:
        commit()
    return rows, commits


def run_dlt(files: list[Path], fmt: str, dest: str, work_dir: Path, *, dicts: bool) -> int:
    import dlt
    from dlt.common.configuration.specs import AwsCredentials

    if dest.startswith("s3://"):
        options = storage_options()
        credentials: Any = AwsCredentials(
            aws_access_key_id=options.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=options.get("AWS_SECRET_ACCESS_KEY"),
            region_name=options.get("AWS_REGION", "us-east-1"),
            endpoint_url=options.get("AWS_ENDPOINT_URL"),
        )
        # dlt derives the delta-rs options from the credentials; moto speaks plain http.
        destination = dlt.destinations.filesystem(
            bucket_url=dest,
            credentials=credentials,
            deltalake_storage_options={"AWS_ALLOW_HTTP": options.get("AWS_ALLOW_HTTP", "false")},
        )
    else:
        destination = dlt.destinations.filesystem(bucket_url=Path(dest).resolve().as_uri())

    hints = DLT_COLUMN_HINTS if dicts else None

    @dlt.resource(name=DLT_TABLE, table_format="delta", write_disposition="append", columns=hints)
    def events() -> Iterator[Any]:
        for path in files:
            if dicts:
                yield from dict_rows(path, fmt)
            else:
                yield read_file(path, fmt)

    pipeline = dlt.pipeline(
        pipeline_name=f"bench_{'dicts' if dicts else 'arrow'}",
        destination=destination,
        dataset_name="bench",
        pipelines_dir=str(work_dir),
    )
    info = pipeline.run(events(), loader_file_format="parquet")
    info.raise_on_failed_jobs()
    trace = pipeline.last_trace
    rows = trace.last_normalize_info.row_counts.get(DLT_TABLE, 0) if trace and trace.last_normalize_info else 0
    return int(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("source", type=Path, help="folder of source files (all of them are read, in name order)")
    parser.add_argument("dest", help="output folder or s3://bucket/prefix (dlt: its bucket_url)")
    parser.add_argument("--format", required=True, choices=("ndjson", "csv", "parquet"))
    parser.add_argument("--batch-rows", type=int, help="rows per write_deltalake call (default: one call per source file)")
    parser.add_argument("--work-dir", type=Path, default=None, help="dlt's pipelines_dir (default: DEST/../dlt-work)")
    args = parser.parse_args(argv)
    files = sorted(p for p in args.source.iterdir() if p.is_file() and not p.name.startswith((".", "_")))
    # Imports are not timed (lakesink's own `seconds` starts inside `ingest`, after its imports).
    if args.kind.startswith("dlt"):
        os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
        import dlt  # noqa: F401
    elif args.kind == "write_deltalake":
        import deltalake  # noqa: F401
    if args.format == "parquet":
        import pyarrow.dataset  # noqa: F401  (pq.read_table imports it on first use: ~0.3-1 s on 2 cores)
    started = time.perf_counter()
    commits = None
    if args.kind == "raw":
        rows = run_raw(files, args.format, args.dest)
    elif args.kind == "write_deltalake":
        rows, commits = run_write_deltalake(files, args.format, args.dest, args.batch_rows)
    else:
        work_dir = args.work_dir or Path(args.dest).parent / "dlt-work"
        rows = run_dlt(files, args.format, args.dest, work_dir, dicts=args.kind == "dlt_dicts")
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": rows, "seconds": round(seconds, 4), "commits": commits}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
