#!/usr/bin/env python
"""What lakesink's file readers cost on top of pyarrow's own parse (CPU of reading only; no table, no commit).

    python benchmarks/reader_cost.py                          # NDJSON and CSV of the 20 x 375k data set, median of 3
    python benchmarks/reader_cost.py --formats ndjson --repeat 5
    python benchmarks/reader_cost.py --data /path/to/dataset  # a folder holding ndjson/ and csv/

For each format, two kinds of run over every file of the folder, interleaved (raw, lakesink,
raw, lakesink, ...) after one untimed raw pass (page cache), so drift on the machine spreads over both:

* `raw`: each file read whole by pyarrow's reader for its format (`pyarrow.json.read_json`,
  `pyarrow.csv.read_csv`, multi-threaded, default options), as benchmarks/_baselines.py does;
* `lakesink`: `FileSource(folder).chunks(FilePosition(0, 0), schema=None)`, every chunk consumed.

It prints the median seconds of each and the ratio lakesink / raw, in wall time and in CPU time
(the whole process's, all threads: less moved by other load on the machine than wall time), and
checks that both read the same number of rows. The data set is the one benchmarks/throughput.py generates
(benchmarks/_dataset.py); it must exist already (by default /tmp/lakesink-bench-data/v1-20x375000).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pyarrow.csv as pacsv  # noqa: E402
import pyarrow.json as pajson  # noqa: E402

from lakesink.sources.files import FilePosition, FileSource  # noqa: E402

DEFAULT_DATA = Path("/tmp/lakesink-bench-data/v1-20x375000")
_SUFFIX = {"ndjson": ".ndjson", "csv": ".csv"}


def raw_rows(folder: Path, fmt: str) -> int:
    rows = 0
    for path in sorted(folder.glob(f"*{_SUFFIX[fmt]}")):
        table = pajson.read_json(path) if fmt == "ndjson" else pacsv.read_csv(path)
        rows += table.num_rows
    return rows


def lakesink_rows(folder: Path) -> int:
    rows = 0
    for chunk in FileSource(str(folder)).chunks(FilePosition(0, 0), schema=None):
        rows += chunk.table.num_rows
    return rows


def timed(run: Callable[[], int]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of the whole process: every thread, pyarrow's included, rows)."""
    start, cpu = time.perf_counter(), time.process_time()
    rows = run()
    return time.perf_counter() - start, time.process_time() - cpu, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding ndjson/ and csv/")
    parser.add_argument("--formats", nargs="+", default=["ndjson", "csv"], choices=sorted(_SUFFIX))
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind; the median is reported")
    args = parser.parse_args()
    for fmt in args.formats:
        folder = args.data / fmt
        if not folder.is_dir():
            sys.exit(f"{folder} does not exist: generate the data set with benchmarks/throughput.py first")
        size = sum(p.stat().st_size for p in folder.glob(f"*{_SUFFIX[fmt]}"))
        raw_rows(folder, fmt)  # warm-up, untimed: the files into the page cache, pyarrow's pools primed
        times: dict[str, list[tuple[float, float]]] = {"raw": [], "lakesink": []}
        counts: set[tuple[str, int]] = set()
        for _ in range(args.repeat):
            for kind, run in (("raw", partial(raw_rows, folder, fmt)), ("lakesink", partial(lakesink_rows, folder))):
                wall, cpu, rows = timed(run)
                times[kind].append((wall, cpu))
                counts.add((kind, rows))
        if len({rows for _, rows in counts}) != 1:
            sys.exit(f"{fmt}: the readers disagree on the row count: {sorted(counts)}")
        rows = next(iter(counts))[1]
        wall = {kind: statistics.median(w for w, _ in runs) for kind, runs in times.items()}
        cpu = {kind: statistics.median(c for _, c in runs) for kind, runs in times.items()}
        print(f"{fmt}: {size / 1e6:.0f} MB, {rows:,} rows, median of {args.repeat}")
        for label, median in (("wall", wall), ("cpu", cpu)):
            runs = "; ".join(
                f"{kind} " + ", ".join(f"{run[0 if label == 'wall' else 1]:.2f}" for run in times[kind]) for kind in times
            )
            print(
                f"  {label:4}  raw pyarrow {median['raw']:6.2f} s  lakesink {median['lakesink']:6.2f} s  "
                f"ratio {median['lakesink'] / median['raw']:5.2f}   (runs: {runs})",
                flush=True,
            )


if __name__ == "__main__":
    main()
