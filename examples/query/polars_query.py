"""Query a lakesink table with Polars (lazily: only the columns and files a query needs are read)."""

import os
import sys

import polars as pl

table = sys.argv[1]
options = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}  # s3://: endpoint, keys, region
frame = pl.scan_delta(table, storage_options=options or None)
summary = frame.select(pl.len().alias("rows"), pl.col("id").n_unique().alias("ids")).collect()
print(f"polars: {summary['rows'][0]} rows, {summary['ids'][0]} distinct ids")
