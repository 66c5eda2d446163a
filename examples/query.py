"""Read the demo table back with Polars and show counts per day and kind."""

from __future__ import annotations

import sys

import polars as pl

table = sys.argv[1] if len(sys.argv) > 1 else "demo/lake/events"
frame = pl.read_delta(table)
print(f"{frame.height} rows, {frame['id'].n_unique()} distinct ids")
print(frame.group_by("day", "kind").agg(pl.len().alias("events"), pl.col("amount").sum().round(2)).sort("day", "kind"))
