"""The throughput benchmark's input: the same seeded rows as NDJSON, CSV and Parquet files.

Every file holds `rows_per_file` rows; file i is generated from seed (SEED, i) alone, so a data
set of 20 files starts with the same 5 files as a data set of 5 (the memory series takes its
1x/5x/20x inputs as the first 1, 5 and 20 files). Columns:

    id      int64, 0.. across the whole data set (file i holds i * rows_per_file ..)
    user    string, "user-00042" (100,000 distinct)
    event   string, one of six names
    amount  float64, two decimals
    ts      string, "2024-03-01T12:34:56.789Z" (a timestamp as events carry it; pyarrow's CSV
            reader types it as a timestamp, its JSON reader keeps it a string)

Generated data sets are kept under a cache folder keyed by their shape and GENERATOR_VERSION.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

FORMATS = ("ndjson", "csv", "parquet")
SEED = 20_241_128
GENERATOR_VERSION = 1
_EVENTS = pa.array(["view", "click", "add_to_cart", "purchase", "signup", "logout"])
_START_MS = 1_709_251_200_000  # 2024-03-01T00:00:00Z


@dataclass(frozen=True, slots=True)
class DataSet:
    """One format's files, in name order, and what they hold."""

    format: str
    folder: Path
    files: tuple[Path, ...]
    rows_per_file: int

    @property
    def rows(self) -> int:
        return self.rows_per_file * len(self.files)

    @property
    def bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def first(self, count: int, into: Path) -> DataSet:
        """A data set of the first `count` files (hard links in `into`, so nothing is copied)."""
        if into.exists():
            shutil.rmtree(into)
        into.mkdir(parents=True)
        linked = []
        for f in self.files[:count]:
            target = into / f.name
            try:
                target.hardlink_to(f)
            except OSError:
                shutil.copyfile(f, target)
            linked.append(target)
        return DataSet(self.format, into, tuple(linked), self.rows_per_file)


def rows(file_index: int, rows_per_file: int) -> pa.Table:
    """File `file_index`'s rows: the same for a given (index, rows_per_file) on every machine."""
    rng = np.random.default_rng([SEED, file_index])
    first = file_index * rows_per_file
    ids = np.arange(first, first + rows_per_file, dtype=np.int64)
    users = pc.utf8_lpad(pa.array(rng.integers(0, 100_000, rows_per_file)).cast(pa.string()), width=5, padding="0")
    millis = _START_MS + ids * 37 + rng.integers(0, 37, rows_per_file)
    return pa.table(
        {
            "id": pa.array(ids),
            "user": pc.binary_join_element_wise("user-", users, ""),
            "event": _EVENTS.take(pa.array(rng.integers(0, len(_EVENTS), rows_per_file))),
            "amount": pa.array(np.round(rng.lognormal(3.0, 1.0, rows_per_file), 2)),
            "ts": pc.strftime(pa.array(millis, pa.timestamp("ms", tz="UTC")), format="%Y-%m-%dT%H:%M:%SZ"),
        }
    )


def ensure(cache: Path, *, files: int, rows_per_file: int, formats: tuple[str, ...] = FORMATS) -> dict[str, DataSet]:
    """The data set in `formats` (default: all), generated unless the cache already holds it complete."""
    key = f"v{GENERATOR_VERSION}-{files}x{rows_per_file}" + ("" if formats == FORMATS else "-" + "-".join(formats))
    root = cache / key
    done = root / "complete.json"
    if not done.exists():
        if root.exists():
            shutil.rmtree(root)
        for fmt in formats:
            (root / fmt).mkdir(parents=True)
        for i in range(files):
            table = rows(i, rows_per_file)
            stem = f"part-{i:05d}"
            if "ndjson" in formats:
                pl.from_arrow(table).write_ndjson(root / "ndjson" / f"{stem}.ndjson")
            if "csv" in formats:
                pacsv.write_csv(table, root / "csv" / f"{stem}.csv")
            if "parquet" in formats:
                pq.write_table(table, root / "parquet" / f"{stem}.parquet", compression="snappy")
        done.write_text(json.dumps({"files": files, "rows_per_file": rows_per_file, "seed": SEED}) + "\n")
    return {
        fmt: DataSet(fmt, root / fmt, tuple(sorted((root / fmt).glob(f"*.{fmt}"))), rows_per_file) for fmt in formats
    }
