#!/usr/bin/env python
"""Does `lakesink ingest` keep its memory bounded by --in-flight, however large the input is?

    python benchmarks/memory_bound.py             # 5 GB of NDJSON (20 files of ~250 MB), --in-flight 256MB
    python benchmarks/memory_bound.py --quick     # 0.5 GB (2 files): for development
    python benchmarks/memory_bound.py --gigabytes 2 --in-flight 128MB --lakesink-args "--write-threads 2"

The check (issue 4): peak RSS for a 5 GB input must stay within 2x the configured in-flight bytes
plus a constant,

    peak <= 2 * in_flight + constant

where `constant` is what the same command costs on a tiny input (one file of 1,000 rows): the
interpreter, pyarrow, deltalake and lakesink loaded, one commit made. Both figures are the
kernel's high-water mark of the `lakesink` process (`ru_maxrss`, taken by benchmarks/_peak_rss.py,
which says why a go-between is needed). The constant is the median of 3 tiny runs.

The input is generated once (seeded, vectorised with numpy and polars, ~3 s per 250 MB file on
a quiet machine) and cached under --cache (default $TMPDIR/lakesink-bench-data/memory-v1-...): rows
shaped like benchmarks/_dataset.py's (id, user, event, amount, ts). Each run ingests into a fresh
local table in a temporary folder, removed after the run (the data set stays cached). After each
run the table's rows are counted (`DeltaTable.to_pyarrow_dataset().count_rows()`): a run that lost
or doubled rows fails the check too.

lakesink runs from a copy of lakesink/ taken at the start (as in throughput.py), with its
defaults except `--in-flight` (and whatever --lakesink-args adds): `lakesink ingest SRC TABLE
--app-id bench-memory --format ndjson --in-flight SIZE --json --no-progress`.

Output: benchmarks/results/memory_bound.json (machine, config, every run with its RSS timeline)
and memory_bound.md (also printed); --quick writes memory_bound-quick.*. Exit status 1 on FAIL.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from benchmarks._machine import describe, machine, write_results  # noqa: E402
from benchmarks.throughput import Run, lakesink_command, run_process, snapshot_lakesink, sources_digest  # noqa: E402

GENERATOR_VERSION = 1
SEED = 20_241_129
BYTES_PER_ROW = 99  # NDJSON bytes of one generated row (measured: 253 MB for 2.56M rows)
TINY_ROWS = 1_000
TINY_REPEAT = 3
DEFAULT_GIGABYTES = 5.0
QUICK_GIGABYTES = 0.5
DEFAULT_FILE_MB = 250
DEFAULT_IN_FLIGHT = "256MB"
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "lakesink-bench-data"
PACKAGES = ("polars", "psutil")
_EVENTS = ["view", "click", "add_to_cart", "purchase", "signup", "logout"]
_START_MS = 1_709_251_200_000  # 2024-03-01T00:00:00Z
_BYTES = {"b": 1, "kb": 1 << 10, "kib": 1 << 10, "mb": 1 << 20, "mib": 1 << 20, "gb": 1 << 30, "gib": 1 << 30}


def parse_size(text: str) -> int:
    """`256MB` as lakesink reads it (powers of 1024: MB = MiB)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib)?", text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"cannot read size {text!r}: use e.g. 256MB")
    return int(float(match.group(1)) * _BYTES[match.group(2) or "b"])


# ---------------------------------------------------------------------------------------------
# the input


def frame(file_index: int, rows: int, first_id: int) -> pl.DataFrame:
    """One file's rows, seeded by (SEED, file_index); the columns of benchmarks/_dataset.py, built faster."""
    rng = np.random.default_rng([SEED, file_index])
    ids = np.arange(first_id, first_id + rows, dtype=np.int64)
    millis = _START_MS + ids * 37 + rng.integers(0, 37, rows)
    return pl.DataFrame(
        {
            "id": ids,
            "user": "user-" + pl.Series(rng.integers(0, 100_000, rows)).cast(pl.String).str.zfill(5),
            "event": pl.Series(_EVENTS)[rng.integers(0, len(_EVENTS), rows)],
            "amount": np.round(rng.lognormal(3.0, 1.0, rows), 2),
            "ts": pl.Series(millis).cast(pl.Datetime("ms")).dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"),
        }
    )


def ensure_data(cache: Path, *, files: int, rows_per_file: int) -> Path:
    """A folder of `files` NDJSON files of `rows_per_file` rows each, generated unless cached complete."""
    root = cache / f"memory-v{GENERATOR_VERSION}-{files}x{rows_per_file}"
    done = root / "complete.json"
    if done.exists():
        return root / "ndjson"
    if root.exists():
        shutil.rmtree(root)
    (root / "ndjson").mkdir(parents=True)
    started = time.perf_counter()
    for i in range(files):
        target = root / "ndjson" / f"part-{i:05d}.ndjson"
        frame(i, rows_per_file, i * rows_per_file).write_ndjson(target)
        print(f"  generated {target.name} ({target.stat().st_size / 1e6:.0f} MB)", file=sys.stderr, flush=True)
    done.write_text(json.dumps({"files": files, "rows_per_file": rows_per_file, "seed": SEED}) + "\n")
    print(f"data: {files} files in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return root / "ndjson"


# ---------------------------------------------------------------------------------------------
# the runs


def measure(source: Path, rows: int, scratch: Path, in_flight: str, extra: list[str], label: str) -> Run:
    """One `lakesink ingest` of `source` into a fresh local table, counted, then removed."""
    files = sorted(p for p in source.iterdir() if p.is_file())
    run = Run("lakesink", "ndjson", "local", 0, len(files), rows, sum(f.stat().st_size for f in files))
    table = scratch / f"table-{label}"
    try:
        cmd = lakesink_command(source, str(table), "ndjson", ["--in-flight", in_flight, *extra], app_id="bench-memory")
        run_process(cmd, {**os.environ}, run, work_seconds=lambda r: float(r.get("seconds") or run.wall_s or 0))
        if run.ok:
            from deltalake import DeltaTable

            try:
                run.rows_in_output = DeltaTable(str(table)).to_pyarrow_dataset().count_rows()
            except Exception as exc:  # noqa: BLE001 - reported with the run
                run.error = f"could not count the output: {exc}"
            if run.error is None and run.rows_in_output != rows:
                run.error = f"output holds {run.rows_in_output} rows, expected {rows}"
    finally:
        shutil.rmtree(table, ignore_errors=True)
    report = run.report
    print(
        f"  {label}: {run.seconds or 0:.1f} s, peak RSS {(run.peak_rss_bytes or 0) / 2**20:.0f} MiB, "
        f"{report.get('commits')} commits, {report.get('files_written')} files, load {run.load_1m_at_start}"
        + (f", FAILED {run.error}" if run.error else ""),
        file=sys.stderr,
        flush=True,
    )
    return run


def markdown(result: dict[str, Any]) -> str:
    cfg, v = result["config"], result["verdict"]
    big = result["runs"]["big"]
    rep = big.get("report") or {}
    mib = 2**20
    loads = [r["load_1m_at_start"] for r in [big, *result["runs"]["tiny"]] if r.get("load_1m_at_start") is not None] or [0.0]
    lines = [
        f"Measured {result['when']} ({cfg['mode']} mode) on {describe(result['machine'], packages=PACKAGES)}; "
        f"1-minute load average at the runs' starts: max {max(loads):.1f}.",
        "",
        f"`lakesink ingest` of {cfg['source_gb']:.2f} GB of NDJSON ({cfg['files']} files, {cfg['rows']:,} rows) into a "
        f"local table: `{' '.join(cfg['lakesink_options'])}` (the rest at lakesink's defaults). "
        f"The constant is the median peak of {TINY_REPEAT} runs of the same command on one file of {TINY_ROWS:,} rows.",
        "",
        "| in-flight | constant (tiny input) | bound: 2 x in-flight + constant | peak RSS | peak - constant | result |",
        "| ---: | ---: | ---: | ---: | ---: | --- |",
        f"| {v['in_flight_bytes'] / mib:.0f} MiB | {v['constant_bytes'] / mib:.0f} MiB | {v['bound_bytes'] / mib:.0f} MiB "
        f"| {v['peak_bytes'] / mib:.0f} MiB | {(v['peak_bytes'] - v['constant_bytes']) / v['in_flight_bytes']:.2f} x in-flight "
        f"| **{'PASS' if v['pass'] else 'FAIL'}** |",
        "",
        f"Big run: {big['seconds'] or 0:.1f} s ({cfg['source_gb'] * 1e3 / (big['seconds'] or float('inf')):.0f} MB/s), "
        f"CPU {big['cpu_s'] or 0:.0f} s, {rep.get('commits')} commits, {rep.get('files_written')} files written "
        f"({(rep.get('bytes_written') or 0) / 1e6:.0f} MB), rows in the table {big['rows_in_output']}"
        f" of {cfg['rows']:,}; sampled peak (psutil, every 0.1 s) {(big['peak_rss_sampled_bytes'] or 0) / mib:.0f} MiB."
        + (f" Error: {big['error']}" if big.get("error") else ""),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_GIGABYTES} GB instead of {DEFAULT_GIGABYTES}")
    parser.add_argument("--gigabytes", type=float, help=f"input size, GB (default {DEFAULT_GIGABYTES})")
    parser.add_argument("--file-mb", type=int, default=DEFAULT_FILE_MB, help="size of each input file, MB")
    parser.add_argument("--in-flight", default=DEFAULT_IN_FLIGHT, help="lakesink --in-flight (default %(default)s)")
    parser.add_argument("--lakesink-args", default="", help='extra lakesink ingest options, e.g. "--write-threads 2"')
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"generated data (default {DEFAULT_CACHE})")
    parser.add_argument("--out", type=Path, help="results JSON; .md beside it (default results/memory_bound[-quick].json)")
    args = parser.parse_args(argv)
    in_flight_bytes = parse_size(args.in_flight)
    extra = shlex.split(args.lakesink_args)
    gigabytes = args.gigabytes or (QUICK_GIGABYTES if args.quick else DEFAULT_GIGABYTES)
    out = args.out or RESULTS / ("memory_bound-quick.json" if args.quick else "memory_bound.json")
    rows_per_file = args.file_mb * 1_000_000 // BYTES_PER_ROW
    files = max(1, round(gigabytes * 1e9 / (rows_per_file * BYTES_PER_ROW)))

    started = time.perf_counter()
    print(f"data: {files} files x {rows_per_file:,} rows (~{args.file_mb} MB each) in {args.cache}", file=sys.stderr)
    source = ensure_data(args.cache, files=files, rows_per_file=rows_per_file)
    tiny = ensure_data(args.cache, files=1, rows_per_file=TINY_ROWS)
    with tempfile.TemporaryDirectory(prefix="lakesink-memory-") as tmp:
        scratch = Path(tmp)
        measured = snapshot_lakesink(scratch / "measured")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(scratch / "measured"), os.environ.get("PYTHONPATH")]))
        tiny_runs = [measure(tiny, TINY_ROWS, scratch, args.in_flight, extra, f"tiny-{i + 1}") for i in range(TINY_REPEAT)]
        big = measure(source, files * rows_per_file, scratch, args.in_flight, extra, "big")
    constants = [r.peak_rss_bytes for r in tiny_runs if r.ok and r.peak_rss_bytes]
    constant = int(statistics.median(constants)) if constants else 0
    peak = big.peak_rss_bytes or 0
    bound = 2 * in_flight_bytes + constant
    ok = big.ok and bool(constants) and peak <= bound
    result = {
        "benchmark": "memory_bound",
        "when": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": {**machine(packages=PACKAGES), "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
        "lakesink_measured": {**measured, "working_tree_sha256_at_end": sources_digest(ROOT / "lakesink")},
        "config": {
            "mode": "quick" if args.quick else "full",
            "source_gb": round(big.source_bytes / 1e9, 3),
            "files": files,
            "rows_per_file": rows_per_file,
            "rows": files * rows_per_file,
            "in_flight": args.in_flight,
            "lakesink_args": extra,
            "lakesink_options": ["--in-flight", args.in_flight, *extra],
            "seconds_total": round(time.perf_counter() - started, 1),
        },
        "verdict": {
            "pass": ok,
            "rule": "peak <= 2 * in_flight + constant",
            "in_flight_bytes": in_flight_bytes,
            "constant_bytes": constant,
            "constant_runs_bytes": constants,
            "bound_bytes": bound,
            "peak_bytes": peak,
            "peak_over_constant_in_in_flights": round((peak - constant) / in_flight_bytes, 3),
        },
        "runs": {"big": asdict(big), "tiny": [asdict(r) for r in tiny_runs]},
    }
    write_results(out, result)
    table = markdown(result)
    out.with_suffix(".md").write_text(table)
    print()
    print(table)
    print(f"results: {out}, {out.with_suffix('.md')} ({time.perf_counter() - started:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
