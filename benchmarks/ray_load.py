#!/usr/bin/env python
"""A bulk load through Ray Data with lakesink.ray.DeltaSink, against `lakesink ingest` of the same files and
against Ray Data's own writers (`write_parquet`, and `write_delta` where the installed Ray has it).

    python benchmarks/ray_load.py                 # 1 GB of NDJSON (20 files) and the same rows as Parquet
    python benchmarks/ray_load.py --gb 5          # 5 GB of NDJSON (20 files of ~250 MB)
    python benchmarks/ray_load.py --quick         # 0.1 GB: a smoke test (results in ray_load-quick.*)
    python benchmarks/ray_load.py --rerun         # also time DeltaSink's rerun of the same load (skipped)

Every measured run is a fresh process writing a fresh local table (or folder), on the seeded rows of
benchmarks/_dataset.py (`id`, `user`, `event`, `amount`, `ts`) as NDJSON and as Parquet:

* `ray_deltasink`: `ray.init(num_cpus=2)`, then `ray.data.read_json|read_parquet(SRC)
  .write_datasink(lakesink.ray.DeltaSink(TABLE, app_id="bench", position=1))`: one commit;
* `ray_write_delta`: the same dataset, `ds.write_delta(TABLE)` (Ray's own Delta writer, a prototype
  in Ray 2.60: files named per task and block, numRecords-only statistics, no txn);
* `ray_write_parquet`: the same dataset, `ds.write_parquet(DIR)`: Parquet files, no table (a ceiling);
* `lakesink_ingest`: `lakesink ingest SRC TABLE --app-id bench --format F --json --no-progress`
  at its defaults (one process, its own reader and encoder threads).

Time is what the process reports for its own work: for the Ray runs from just before the read to
the return of the write (the commit included; `ray.init`, ~5-10 s, is kept apart as `init_s`: a
cluster is up before a load), for `lakesink ingest` the `seconds` of its JSON report. GB/s are of
source bytes; rows/s of rows written. Ratios are taken within one results file (the same machine,
minutes apart): compare those, not absolute rates, on a loaded machine (the load average is noted
at the start of every run). Every run's output is counted afterwards (Delta numRecords, Parquet
footers): a run that lost or doubled rows FAILs. Runs are interleaved by repetition.

Output: benchmarks/results/ray_load.json and ray_load.md (also printed); `--gb N` (N != 1) writes
ray_load-<N>gb.*, `--quick` ray_load-quick.*; with a subset of `--kinds` or `--formats`, `-subset` is added.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # after PYTHONPATH: the measured runs import the copy of lakesink/ (measure_a_copy)

from benchmarks._dataset import DataSet, ensure  # noqa: E402
from benchmarks._machine import describe, machine, write_results  # noqa: E402
from benchmarks.throughput import measure_a_copy  # noqa: E402

KINDS = ("ray_deltasink", "ray_write_delta", "ray_write_parquet", "lakesink_ingest")
LABELS = {
    "ray_deltasink": "Ray Data -> lakesink.ray.DeltaSink",
    "ray_write_delta": "Ray Data -> ds.write_delta (Ray's)",
    "ray_write_parquet": "Ray Data -> ds.write_parquet (no table)",
    "lakesink_ingest": "lakesink ingest (one process)",
}
FORMATS = ("ndjson", "parquet")
FILES = 20
ROWS_PER_GB = 10_000_000  # NDJSON rows of _dataset.py are ~100 bytes: 20 files x 500,000 rows ~ 1 GB
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "lakesink-bench-data"
RUN_TIMEOUT_S = 3600
PACKAGES = ("ray", "polars")


# ---------------------------------------------------------------------------------------------
# one measured process (this script with --child)


def child(kind: str, fmt: str, source: str, target: str, rerun: bool) -> dict[str, Any]:
    """Run one Ray load in this process and report its times."""
    import logging

    import ray

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    init_s = time.perf_counter() - started

    def dataset() -> Any:
        if fmt == "ndjson":
            return ray.data.read_json(source, file_extensions=["ndjson"])
        return ray.data.read_parquet(source)

    report: dict[str, Any] = {"init_s": init_s}
    begin = time.perf_counter()
    if kind == "ray_deltasink":
        import lakesink
        from lakesink.ray import DeltaSink

        report["lakesink_from"] = str(Path(lakesink.__file__).parent)
        sink = DeltaSink(target, app_id="bench", position=1)
        dataset().write_datasink(sink)
        assert sink.result is not None
        report.update(status=sink.result.status, files=sink.result.files, table_version=sink.result.table_version)
    elif kind == "ray_write_delta":
        dataset().write_delta(target)
    elif kind == "ray_write_parquet":
        dataset().write_parquet(target)
    else:
        raise SystemExit(f"unknown kind {kind}")
    report["seconds"] = time.perf_counter() - begin
    if rerun and kind == "ray_deltasink":
        again = DeltaSink(target, app_id="bench", position=1)
        begin = time.perf_counter()
        dataset().write_datasink(again)
        report["rerun_s"] = time.perf_counter() - begin
        report["rerun_status"] = again.result.status if again.result else None
    ray.shutdown()
    return report


# ---------------------------------------------------------------------------------------------
# the driver


def run_one(kind: str, data: DataSet, scratch: Path, rerun: bool) -> dict[str, Any]:
    target = scratch / f"out-{kind}-{data.format}"
    if target.exists():
        shutil.rmtree(target)
    load = os.getloadavg()[0]
    if kind == "lakesink_ingest":
        cmd = [sys.executable, "-m", "lakesink", "ingest", str(data.folder), str(target), "--app-id", "bench",
               "--format", data.format, "--json", "--no-progress"]  # fmt: skip
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, data.format, str(data.folder), str(target)]
        cmd += ["--rerun"] if rerun else []
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=scratch, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    wall_s = time.perf_counter() - started
    run: dict[str, Any] = {"kind": kind, "format": data.format, "load_1m": round(load, 2), "wall_s": round(wall_s, 2)}
    if done.returncode != 0:
        run.update(ok=False, error=(done.stderr or done.stdout)[-2000:])
        return run
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if kind == "lakesink_ingest":
        report = {"seconds": report["seconds"], "files": report.get("files_written"), "commits": report.get("commits")}
    run.update(report)
    if not str(report.get("lakesink_from", scratch)).startswith(str(scratch)):
        raise SystemExit(f"{kind} imported lakesink from {report['lakesink_from']}, not from the copy in {scratch}")
    rows = count_rows(kind, target)
    run["rows"] = rows
    run["ok"] = rows == data.rows
    if not run["ok"]:
        run["error"] = f"wrote {rows} rows, expected {data.rows}"
    run["output_bytes"] = sum(f.stat().st_size for f in target.rglob("*.parquet"))
    shutil.rmtree(target, ignore_errors=True)
    return run


def count_rows(kind: str, target: Path) -> int:
    import pyarrow.parquet as pq

    if kind == "ray_write_parquet":
        return sum(pq.ParquetFile(f).metadata.num_rows for f in target.rglob("*.parquet"))
    from deltalake import DeltaTable

    return int(DeltaTable(str(target)).to_pyarrow_dataset().count_rows())


def summarize(runs: list[dict[str, Any]], datasets: dict[str, DataSet]) -> list[dict[str, Any]]:
    rows = []
    for fmt, data in datasets.items():
        by_kind = {}
        for kind in KINDS:
            ok = [r for r in runs if r["kind"] == kind and r["format"] == fmt and r.get("ok")]
            failed = [r for r in runs if r["kind"] == kind and r["format"] == fmt and not r.get("ok")]
            if not ok:
                by_kind[kind] = {"kind": kind, "format": fmt, "failed": len(failed)}
                continue
            seconds = statistics.median(r["seconds"] for r in ok)
            by_kind[kind] = {
                "kind": kind, "format": fmt, "runs": len(ok), "failed": len(failed), "seconds": round(seconds, 2),
                "min_s": round(min(r["seconds"] for r in ok), 2), "max_s": round(max(r["seconds"] for r in ok), 2),
                "gb_per_s": round(data.bytes / seconds / 1e9, 4), "rows_per_s": round(data.rows / seconds),
                "files": ok[0].get("files"), "output_mb": round(ok[0]["output_bytes"] / 1e6, 1),
                "init_s": round(statistics.median(r["init_s"] for r in ok), 2) if "init_s" in ok[0] else None,
                "rerun_s": round(statistics.median(r["rerun_s"] for r in ok), 2) if "rerun_s" in ok[0] else None,
                "load_1m": [r["load_1m"] for r in ok],
            }  # fmt: skip
        ours = by_kind.get("ray_deltasink", {}).get("seconds")
        for entry in by_kind.values():
            if ours and entry.get("seconds"):
                entry["deltasink_speed_ratio"] = round(entry["seconds"] / ours, 2)  # > 1: DeltaSink is faster
            rows.append(entry)
    return rows


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    config = result["config"]
    lines = [
        f"# Ray Data bulk load: {config['gb']} GB of NDJSON ({config['files']} files, {config['rows']:,} rows) "
        "and the same rows as Parquet",
        "",
        f"{describe(m, packages=PACKAGES)}; load average at the start {m['load_average_1_5_15']}; "
        f"{config['repeat']} run(s) per configuration, median; Ray runs on `ray.init(num_cpus=2)`, local tables.",
        "",
        "| source | configuration | seconds (min-max) | GB/s | rows/s | ratio (its time / DeltaSink's) | files | output MB "
        "| 1-min load at start |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in result["summary"]:
        fmt = s["format"]
        size = f"{fmt} {result['datasets'][fmt]['bytes'] / 1e9:.2f} GB"
        if "seconds" not in s:
            lines.append(f"| {size} | {LABELS[s['kind']]} | FAILED ({s['failed']}) | | | | | | |")
            continue
        lines.append(
            f"| {size} | {LABELS[s['kind']]} | {s['seconds']} ({s['min_s']}-{s['max_s']}) | {s['gb_per_s']:.3f} | "
            f"{s['rows_per_s']:,} | {s.get('deltasink_speed_ratio', '')} | {s.get('files') or ''} | {s['output_mb']} | "
            f"{', '.join(str(x) for x in s['load_1m'])} |"
        )
    inits = [s["init_s"] for s in result["summary"] if s.get("init_s") is not None]
    reruns = [(s["format"], s["rerun_s"]) for s in result["summary"] if s.get("rerun_s") is not None]
    lines.append("")
    if inits:
        lines.append(f"`ray.init(num_cpus=2)` (not in the times above): {min(inits)}-{max(inits)} s.")
    for fmt, seconds in reruns:
        lines.append(
            f"DeltaSink rerun of the same load ({fmt}: skipped, nothing staged, Ray reads the input again): {seconds} s."
        )
    failed = [r for r in result["runs"] if not r.get("ok")]
    for r in failed:
        lines.append(f"FAILED {r['kind']} {r['format']}: {r.get('error', '')[-400:]}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0, help="NDJSON input in GB (default 1; its rows as Parquet: ~5x smaller)")
    parser.add_argument("--quick", action="store_true", help="0.1 GB, one run each")
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration, interleaved (default 1)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    parser.add_argument("--formats", default=",".join(FORMATS), help="ndjson,parquet (default both)")
    parser.add_argument("--rerun", action="store_true", help="also time DeltaSink's rerun of the same load (skipped)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"generated data (default {DEFAULT_CACHE})")
    parser.add_argument("--child", nargs=4, metavar=("KIND", "FORMAT", "SRC", "TARGET"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, rerun=args.rerun)))
        return 0

    gb = 0.1 if args.quick else args.gb
    rows_per_file = int(gb * ROWS_PER_GB / FILES)
    kinds = [k for k in args.kinds.split(",") if k]
    formats = [f for f in args.formats.split(",") if f]
    print(f"data: {FILES} files x {rows_per_file:,} rows as {formats} in {args.cache}", file=sys.stderr, flush=True)
    datasets = ensure(args.cache, files=FILES, rows_per_file=rows_per_file, formats=FORMATS)
    name = "ray_load-quick" if args.quick else ("ray_load" if gb == 1 else f"ray_load-{gb:g}gb")
    if kinds != list(KINDS) or formats != list(FORMATS):
        name += "-subset"  # never overwrite the full results a README quotes
    runs: list[dict[str, Any]] = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="lakesink-ray-load-") as tmp:
        scratch = Path(tmp)
        measured = measure_a_copy(scratch)
        for repetition in range(args.repeat):
            for fmt in formats:
                for kind in kinds:
                    run = run_one(kind, datasets[fmt], scratch, args.rerun)
                    run["repetition"] = repetition
                    runs.append(run)
                    error = "" if run.get("ok") else f"  {run.get('error', '')[-300:]}"
                    line = (
                        f"{kind:>18} {fmt:>7}: {run.get('seconds', 0):7.2f} s  ok={run.get('ok')}  load={run['load_1m']}{error}"
                    )
                    print(line, file=sys.stderr, flush=True)
    result = {
        "machine": machine(packages=PACKAGES),
        "config": {
            "gb": gb,
            "files": FILES,
            "rows_per_file": rows_per_file,
            "rows": rows_per_file * FILES,
            "repeat": args.repeat,
            "kinds": kinds,
            "formats": formats,
            "rerun": args.rerun,
        },
        "measured": measured,
        "datasets": {f: {"bytes": datasets[f].bytes, "rows": datasets[f].rows} for f in FORMATS},
        "elapsed_s": round(time.time() - started, 1),
        "runs": runs,
    }
    result["summary"] = summarize(runs, {f: datasets[f] for f in formats})
    write_results(RESULTS / f"{name}.json", result)
    text = markdown(result)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)
    return 0 if all(r.get("ok") for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
