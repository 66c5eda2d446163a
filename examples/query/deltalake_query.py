"""Query a lakesink table with delta-rs (the `deltalake` package): history, positions, and a filtered read."""

import os
import sys

import pyarrow.compute as pc
from deltalake import DeltaTable

table = sys.argv[1]
options = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
dt = DeltaTable(table, storage_options=options or None)
dataset = dt.to_pyarrow_dataset()  # a pyarrow dataset: filters prune files by their Delta statistics
ids = dataset.to_table(columns=["id"], use_threads=False).column("id")
print(f"deltalake: version {dt.version()}, {len(ids)} rows, {len(pc.unique(ids))} distinct ids")
small = dataset.to_table(columns=["id"], filter=pc.field("id") < 100, use_threads=False)
print(f"pyarrow: {small.num_rows} rows with id < 100")
