"""Query a lakesink table with DuckDB's delta extension (local path, or s3:// with the AWS_* settings)."""

import os
import sys

import duckdb

table = sys.argv[1]  # e.g. ./lake/events or s3://lake/events
con = duckdb.connect()
con.execute("INSTALL delta; LOAD delta")  # offline: `pip install duckdb-extensions duckdb-extension-delta` (see below)
if table.startswith("s3://"):
    con.execute("INSTALL httpfs; LOAD httpfs")
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "").removeprefix("http://").removeprefix("https://")
    con.execute(
        "CREATE SECRET lake (TYPE S3, KEY_ID ?, SECRET ?, REGION ?"
        + (", ENDPOINT ?, URL_STYLE 'path', USE_SSL false)" if endpoint else ")"),
        [os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"], os.environ.get("AWS_REGION", "us-east-1")]
        + ([endpoint] if endpoint else []),
    )
rows, ids = con.execute("SELECT count(*), count(DISTINCT id) FROM delta_scan(?)", [table]).fetchone()
print(f"duckdb: {rows} rows, {ids} distinct ids")
