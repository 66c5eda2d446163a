#!/usr/bin/env python
"""Throughput and peak memory of `lakesink ingest`, against the raw pyarrow speed limit and the peers.

    python benchmarks/throughput.py --quick       # 250k rows per format (~46 MB in all), one run each (~1 minute)
    python benchmarks/throughput.py               # 7.5M rows per format (~1.4 GB in all), median of 3 (~25 minutes)
    python benchmarks/throughput.py --rows-per-file 500000 --formats ndjson --stores local
    python benchmarks/throughput.py --profile     # also: py-spy over one lakesink NDJSON run (all threads)

Every measured run is a fresh process, timed and watched from here (see benchmarks/README.md):

* `lakesink`: the real CLI at its defaults, `lakesink ingest SRC TABLE --app-id bench --format F
  --json --no-progress` (commit interval, file size, in-flight budget and threads as lakesink
  sets them; `--lakesink-args "..."` adds options to every lakesink run); its time is the
  `seconds` the JSON report gives (the whole `ingest` call: listing, reading, encoding, commits),
  the process's wall time is kept as well;
* `raw`, `write_deltalake`, `dlt_arrow`, `dlt_dicts`: benchmarks/_baselines.py (what each does is
  in its docstring), timed the same way from inside, imports excluded. The write_deltalake loop
  commits once per source file (`--loop-batch-rows N`: every N rows instead).

Each runs against a local-disk table and a moto S3 table (a real moto server in its own process),
on the same seeded data (benchmarks/_dataset.py) in NDJSON, CSV and Parquet: 20 files per format.
Repetitions are interleaved (every kind once, then again), so drift and other load on the machine
spread over all of them. After every run the output is counted: it must hold every row.

Peak RSS is the process's high-water mark as the kernel keeps it (`ru_maxrss` from wait4, what
/proc/PID/status shows as VmHWM), taken by a small go-between (benchmarks/_peak_rss.py says why);
RSS is also sampled with psutil every 0.1 s, for a timeline and as a cross-check.
The memory series ingests the first 1, 5 and 20 files (1x, 5x, 20x) with the same options. The
full mode then runs benchmarks/memory_bound.py (5 GB of NDJSON against --in-flight; --no-memory-bound
skips it).

Output: benchmarks/results/throughput.json (machine, config, every run), throughput.md (the
tables, also printed) and throughput.png (the chart).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.fs as pafs  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from deltalake import DeltaTable  # noqa: E402

from benchmarks import _baselines  # noqa: E402
from benchmarks._dataset import FORMATS, DataSet, ensure  # noqa: E402
from benchmarks._machine import describe, machine, write_results  # noqa: E402
from tests.support.moto_server import MotoServer, start_moto_server  # noqa: E402

KINDS = ("raw", "lakesink", "write_deltalake", "dlt_arrow", "dlt_dicts")
LABELS = {
    "raw": "raw pyarrow -> Parquet",
    "lakesink": "lakesink ingest",
    "write_deltalake": "write_deltalake loop",
    "dlt_arrow": "dlt delta (arrow)",
    "dlt_dicts": "dlt delta (dicts)",
}
STORES = ("local", "s3")
FILES = 20
MEMORY_SCALES = (1, 5, 20)  # files of the data set: 1x, 5x, 20x
BUCKET = "bench-throughput"
PACKAGES = ("dlt", "polars", "psutil", "matplotlib")
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "lakesink-bench-data"
RUN_TIMEOUT_S = 3600
SAMPLE_EVERY_S = 0.1


@dataclass(frozen=True, slots=True)
class Mode:
    rows_per_file: int
    repeat: int
    dicts_files: int  # dlt with dict rows reads only the first files: ~16k rows/s would take the whole budget


QUICK = Mode(rows_per_file=12_500, repeat=1, dicts_files=1)
FULL = Mode(rows_per_file=375_000, repeat=3, dicts_files=1)


# ---------------------------------------------------------------------------------------------
# one measured process


@dataclass
class Run:
    """One measured process: what it did and what it cost."""

    kind: str
    format: str
    store: str
    repetition: int
    files: int
    rows_expected: int
    source_bytes: int
    seconds: float | None = None  # the work, as the process reports it (imports excluded)
    wall_s: float | None = None  # spawn to exit
    cpu_s: float | None = None  # user + system of the process, imports included
    peak_rss_bytes: int | None = None  # ru_maxrss at exit: exact
    peak_rss_sampled_bytes: int | None = None  # the largest RSS or VmHWM the sampler saw: a cross-check
    rows: int | None = None
    rows_in_output: int | None = None
    load_1m_at_start: float | None = None
    error: str | None = None
    rss_timeline: list[list[float]] = field(default_factory=list)  # [seconds since spawn, RSS MiB]
    report: dict[str, Any] = field(default_factory=dict)  # the JSON it printed last (lakesink: commits, files_written...)

    @property
    def ok(self) -> bool:
        return self.error is None and self.seconds is not None


def run_process(cmd: list[str], env: dict[str, str], run: Run, *, work_seconds: Callable[[dict[str, Any]], float]) -> None:
    """Run `cmd` to its end and fill in `run`: time, CPU, peak RSS, the JSON its last line prints."""
    run.load_1m_at_start = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="run-") as tmp:
        usage_file = Path(tmp) / "usage.json"
        wrapped = [sys.executable, "-S", str(Path(__file__).with_name("_peak_rss.py")), str(usage_file), *cmd]
        with (Path(tmp) / "stdout").open("w+b") as out, (Path(tmp) / "stderr").open("w+b") as err:
            start = time.perf_counter()
            # cwd outside the repository: `python -m` would put the working tree's lakesink/ first on sys.path.
            proc = subprocess.Popen(wrapped, env=env, cwd=tmp, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
            sampler = RssSampler(proc.pid, start)
            sampler.start()
            try:
                proc.wait(timeout=RUN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    child.kill()
                proc.wait()
            run.wall_s = round(time.perf_counter() - start, 4)
            sampler.stop()
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        usage = json.loads(usage_file.read_text()) if usage_file.exists() else {}
    run.rss_timeline = sampler.samples
    run.peak_rss_bytes = usage["peak_rss_kib"] * 1024 if "peak_rss_kib" in usage else None
    run.peak_rss_sampled_bytes = sampler.peak
    run.cpu_s = usage.get("cpu_s")
    lines = [line for line in stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        run.error = f"exit {proc.returncode}: {(stderr or stdout).strip()[-1500:]}"
        return
    try:
        report = json.loads(lines[-1])
    except ValueError:
        run.error = f"no JSON report: {lines[-1][-300:]}"
        return
    run.report = report
    run.seconds = work_seconds(report)
    run.rows = int(report.get("rows", report.get("rows_written", -1)))


class RssSampler(threading.Thread):
    """RSS (psutil) and VmHWM (/proc) of the measured process every SAMPLE_EVERY_S seconds, until it exits.

    The measured process is the child of the _peak_rss.py go-between whose pid this is given.
    `peak` (the largest RSS or VmHWM seen) cross-checks the exact figure `ru_maxrss` gives at exit.
    """

    def __init__(self, wrapper_pid: int, start: float) -> None:
        super().__init__(daemon=True)
        self.samples: list[list[float]] = []
        self.peak = 0
        self._wrapper_pid = wrapper_pid
        self._start = start
        self._done = threading.Event()

    def run(self) -> None:
        target: psutil.Process | None = None
        while not self._done.is_set():
            try:
                if target is None:
                    children = psutil.Process(self._wrapper_pid).children()
                    target = children[0] if children else None
                if target is not None:
                    rss = target.memory_info().rss
                    self.peak = max(self.peak, rss, _vm_hwm(target.pid))
                    self.samples.append([round(time.perf_counter() - self._start, 2), round(rss / 2**20, 1)])
            except psutil.Error:
                if target is not None:
                    return
            self._done.wait(SAMPLE_EVERY_S)

    def stop(self) -> None:
        self._done.set()
        self.join()


def _vm_hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


# ---------------------------------------------------------------------------------------------
# stores and the commands run against them


class Store:
    """Where a run writes: a fresh local folder or a fresh S3 prefix per run, emptied after it."""

    def __init__(self, name: str, scratch: Path, server: MotoServer | None) -> None:
        self.name, self.scratch, self.server = name, scratch, server
        self._count = 0

    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        base["RUNTIME__DLTHUB_TELEMETRY"] = "false"
        if self.server is not None:
            base.update(self.server.storage_options())
        return base

    def options(self) -> dict[str, str]:
        return self.server.storage_options() if self.server is not None else {}

    @contextmanager
    def destination(self) -> Iterator[str]:
        self._count += 1
        if self.server is not None:
            self.server.create_bucket(BUCKET)
            try:
                yield f"s3://{BUCKET}/run-{self._count}"
            finally:
                self.server.reset()  # moto keeps objects in memory: drop them before the next run
        else:
            folder = self.scratch / f"run-{self._count}"
            try:
                yield str(folder)
            finally:
                shutil.rmtree(folder, ignore_errors=True)


def lakesink_options(fmt: str, extra: list[str], *, app_id: str = "bench") -> list[str]:
    """The options of every lakesink run: lakesink's defaults, plus `extra` (--lakesink-args)."""
    return ["--app-id", app_id, "--format", fmt, *extra, "--json", "--no-progress"]


def lakesink_command(source: Path, table: str, fmt: str, extra: list[str], *, app_id: str = "bench") -> list[str]:
    script = Path(sys.executable).with_name("lakesink")
    program = [str(script)] if script.exists() else [sys.executable, "-m", "lakesink"]
    return [*program, "ingest", str(source), table, *lakesink_options(fmt, extra, app_id=app_id)]


def baseline_command(kind: str, source: Path, dest: str, fmt: str, loop_batch_rows: int | None, work_dir: Path) -> list[str]:
    script = Path(_baselines.__file__)
    options = ["--format", fmt, "--work-dir", str(work_dir)]
    if loop_batch_rows is not None:
        options += ["--batch-rows", str(loop_batch_rows)]
    return [sys.executable, str(script), kind, str(source), dest, *options]


def rows_in_output(kind: str, dest: str, options: dict[str, str]) -> int:
    """Rows the run left in its output (a Delta table, or raw's Parquet files)."""
    if kind == "raw":
        fs, root = _baselines.output_filesystem(dest, options)
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        return sum(pq.ParquetFile(fs.open_input_file(i.path)).metadata.num_rows for i in infos if i.path.endswith(".parquet"))
    uri = f"{dest}/bench/{_baselines.DLT_TABLE}" if kind.startswith("dlt") else dest
    adds = pa.table(DeltaTable(uri, storage_options=options or None).get_add_actions(flatten=True))
    return int(pc.sum(adds.column("num_records")).as_py() or 0)


def measure(
    kind: str, data: DataSet, store: Store, repetition: int, lakesink_args: list[str], loop_batch_rows: int | None
) -> Run:
    """One run of `kind` over `data` into a fresh destination on `store`, checked afterwards."""
    run = Run(kind, data.format, store.name, repetition, len(data.files), data.rows, data.bytes)
    with store.destination() as dest:
        if kind == "lakesink":
            cmd = lakesink_command(data.folder, dest, data.format, lakesink_args)
            run_process(cmd, store.env(), run, work_seconds=lambda r: float(r.get("seconds") or run.wall_s or 0))
        else:
            with tempfile.TemporaryDirectory(prefix="dlt-work-", dir=store.scratch) as work:
                cmd = baseline_command(kind, data.folder, dest, data.format, loop_batch_rows, Path(work))
                run_process(cmd, store.env(), run, work_seconds=lambda r: float(r["seconds"]))
        if run.ok:
            try:
                run.rows_in_output = rows_in_output(kind, dest, store.options())
            except Exception as exc:  # noqa: BLE001 - reported with the run, not raised mid-benchmark
                run.error = f"could not count the output: {exc}"
            if run.rows_in_output != data.rows and run.error is None:
                run.error = f"output holds {run.rows_in_output} rows, expected {data.rows}"
    return run


# ---------------------------------------------------------------------------------------------
# statistics and report


def summarize(runs: list[Run]) -> dict[str, Any] | None:
    """Median and spread of the good runs of one (kind, format, store)."""
    good = [r for r in runs if r.ok]
    if not good:
        return None
    seconds = [r.seconds for r in good if r.seconds is not None]
    rows, size = good[0].rows_expected, good[0].source_bytes
    median_s = statistics.median(seconds)

    def reported(key: str) -> float | None:
        values = [r.report[key] for r in good if isinstance(r.report.get(key), int | float)]
        return statistics.median(values) if values else None

    return {
        "runs": len(good),
        "failed": len(runs) - len(good),
        "files": good[0].files,
        "rows": rows,
        "source_mb": round(size / 1e6, 2),
        "seconds_median": round(median_s, 3),
        "seconds_min": round(min(seconds), 3),
        "seconds_max": round(max(seconds), 3),
        "rows_per_s": round(rows / median_s),
        "rows_per_s_min": round(rows / max(seconds)),
        "rows_per_s_max": round(rows / min(seconds)),
        "mb_per_s": round(size / 1e6 / median_s, 2),
        "mb_per_s_min": round(size / 1e6 / max(seconds), 2),
        "mb_per_s_max": round(size / 1e6 / min(seconds), 2),
        "wall_s_median": round(statistics.median(r.wall_s for r in good if r.wall_s is not None), 3),
        "cpu_s_median": round(statistics.median(r.cpu_s for r in good if r.cpu_s is not None), 3),
        "peak_rss_mib_median": round(statistics.median(r.peak_rss_bytes for r in good if r.peak_rss_bytes) / 2**20, 1),
        "peak_rss_mib_max": round(max(r.peak_rss_bytes for r in good if r.peak_rss_bytes) / 2**20, 1),
        "commits_median": reported("commits"),
        "files_written_median": reported("files_written"),
    }


def ratios(summary: dict[str, dict[str, dict[str, Any] | None]]) -> dict[str, float | None]:
    """lakesink's rows/s divided by each other kind's, for one (format, store): >1 means lakesink is faster."""
    mine = summary.get("lakesink")
    out: dict[str, float | None] = {}
    for kind in KINDS:
        other = summary.get(kind)
        if kind == "lakesink":
            continue
        out[kind] = round(mine["rows_per_s"] / other["rows_per_s"], 2) if mine and other else None
    return out


def _fmt_rate(s: dict[str, Any] | None) -> str:
    return "failed" if s is None else f"{s['rows_per_s']:,}"


def _mib(s: dict[str, Any] | None) -> str:
    return "n/a" if s is None else f"{s['peak_rss_mib_median']:.0f} MiB"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _count(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _lakesink_desc(cfg: dict[str, Any]) -> str:
    if "batch_rows" in cfg:  # results written before lakesink's commit interval
        return f"`--batch-rows {cfg['batch_rows']:,}`"
    extra = cfg.get("lakesink_args") or []
    return "lakesink's defaults" + (f" plus `{' '.join(extra)}`" if extra else "")


def commits_per(cfg: dict[str, Any]) -> str:
    """What each tool commits per, in words, for the table's header."""
    if "batch_rows" in cfg:  # results written before lakesink's commit interval
        return f"lakesink and the write_deltalake loop commit every {cfg['batch_rows']:,} rows (`--batch-rows`)."
    defaults = cfg.get("lakesink_defaults") or {}
    interval = defaults.get("--commit-interval", "?")
    extra = cfg.get("lakesink_args") or []
    mine = (
        f"lakesink runs at its defaults (commits per `--commit-interval {interval}`, files of "
        f"`--target-file-size {defaults.get('--target-file-size', '?')}`, `--in-flight {defaults.get('--in-flight', '?')}`, "
        f"`--write-threads {defaults.get('--write-threads', '?')}`)"
        + (f" plus `{' '.join(extra)}`" if extra else "")
    )
    loop = cfg.get("loop_batch_rows")
    theirs = (
        "the write_deltalake loop commits once per source file (its natural unit: each file read whole, then written)"
        if loop is None
        else f"the write_deltalake loop commits every {loop:,} rows (`--loop-batch-rows`)"
    )
    return f"{mine}; {theirs}."


def markdown(result: dict[str, Any]) -> str:
    cfg, summary, memory = result["config"], result["summary"], result["memory"]
    sizes = ", ".join(f"{fmt} {mb:.0f} MB" for fmt, mb in cfg["source_mb"].items())
    reps = f"median of {cfg['repeat']} runs" if cfg["repeat"] > 1 else "one run each"
    loads = [r["load_1m_at_start"] for r in result["runs"] if r.get("load_1m_at_start") is not None] or [0.0]
    load = f"1-minute load average at the runs' starts: median {statistics.median(loads):.1f}, max {max(loads):.1f}"
    lines = [
        f"Measured {result['when']} ({cfg['mode']} mode) on {describe(result['machine'], packages=PACKAGES)}; "
        f"{load} (above {result['machine']['cores']}, the cores' count, other work shared the machine).",
        "",
        f"{cfg['rows']:,} rows per format in {FILES} files ({sizes}); {reps}, interleaved. {commits_per(cfg)} "
        f"dlt commits once per load; with dict rows it reads the first {cfg['dicts_files']} files only "
        f"({cfg['dicts_rows']:,} rows). Ratios are lakesink's rows/s over the other's (above 1: lakesink is faster).",
        "",
        "| source | store | lakesink rows/s | lakesink MB/s | vs raw pyarrow | vs dlt (arrow) | vs dlt (dicts) "
        "| vs write_deltalake loop | lakesink peak RSS |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for fmt in cfg["formats"]:
        for store in cfg["stores"]:
            s = summary[fmt].get(store, {})
            mine = s.get("lakesink")
            r = result["ratios"][fmt].get(store, {})
            lines.append(
                f"| {fmt} | {store} | {_fmt_rate(mine)} | {mine['mb_per_s'] if mine else 'n/a'} | {_x(r.get('raw'))} "
                f"| {_x(r.get('dlt_arrow'))} | {_x(r.get('dlt_dicts'))} | {_x(r.get('write_deltalake'))} "
                f"| {_mib(mine)} |"
            )
    lines += [
        "",
        "Every run (seconds: median, min-max; rows/s and MB/s of source bytes at the median; peak RSS: median; "
        "CPU: user + system of the whole process, imports included; commits and files: as the run reports them, median):",
        "",
        "| source | store | run | rows | MB | seconds | rows/s | MB/s | peak RSS MiB | CPU s | commits | files |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for fmt in cfg["formats"]:
        for store in cfg["stores"]:
            for kind in cfg["kinds"]:
                s = summary[fmt].get(store, {}).get(kind)
                if s is None:
                    failed = [r for r in result["runs"] if (r["format"], r["store"], r["kind"]) == (fmt, store, kind)]
                    if failed:
                        why = (failed[0].get("error") or "").splitlines()[-1:] or [""]
                        lines.append(f"| {fmt} | {store} | {LABELS[kind]} | | | failed: {why[0][:80]} | | | | | | |")
                    continue
                lines.append(
                    f"| {fmt} | {store} | {LABELS[kind]} | {s['rows']:,} | {s['source_mb']:.0f} "
                    f"| {s['seconds_median']:.2f} ({s['seconds_min']:.2f}-{s['seconds_max']:.2f}) | {s['rows_per_s']:,} "
                    f"| {s['mb_per_s']:.1f} | {s['peak_rss_mib_median']:.0f} | {s['cpu_s_median']:.1f} "
                    f"| {_count(s.get('commits_median'))} | {_count(s.get('files_written_median'))} |"
                )
    if memory:
        scales = cfg["memory_scales"]
        lines += [
            "",
            f"Peak RSS of `lakesink ingest` (local table, {_lakesink_desc(cfg)}) against input size:",
            "",
            "| source | " + " | ".join(f"{k}x" for k in scales) + " |",
            "| --- | " + " | ".join("---:" for _ in scales) + " |",
        ]
        for fmt, points in memory.items():
            cells = []
            for k in scales:
                p = points.get(str(k))
                point = f"{p['peak_rss_mib_median']:.0f} MiB ({p['source_mb']:.0f} MB, {p['rows']:,} rows)" if p else "n/a"
                cells.append(point)
            lines.append(f"| {fmt} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, summary = result["config"], result["summary"]
    fig, (bars, mem, timeline) = plt.subplots(1, 3, figsize=(17, 5.6), gridspec_kw={"width_ratios": [2.2, 1, 1]})
    groups = [(fmt, store) for fmt in cfg["formats"] for store in cfg["stores"]]
    width = 0.8 / len(cfg["kinds"])
    for i, kind in enumerate(cfg["kinds"]):
        xs, ys, lo, hi = [], [], [], []
        for g, (fmt, store) in enumerate(groups):
            s = summary[fmt].get(store, {}).get(kind)
            if s is None:
                continue
            xs.append(g + (i - (len(cfg["kinds"]) - 1) / 2) * width)
            ys.append(s["rows_per_s"] / 1000)
            lo.append((s["rows_per_s"] - s["rows_per_s_min"]) / 1000)
            hi.append((s["rows_per_s_max"] - s["rows_per_s"]) / 1000)
        bars.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=LABELS[kind])
    bars.set_xticks(range(len(groups)), [f"{fmt}\n{store}" for fmt, store in groups])
    bars.set_ylabel("thousand rows/s (median; error bars: min-max)")
    bars.set_title(f"Throughput, same {cfg['rows']:,} rows per format (local disk, moto S3)")
    bars.legend(fontsize=8)
    bars.grid(axis="y", alpha=0.3)

    for fmt, points in result["memory"].items():
        ordered = sorted(points.values(), key=lambda p: p["source_mb"])
        mem.plot([p["source_mb"] for p in ordered], [p["peak_rss_mib_median"] for p in ordered], marker="o", label=fmt)
        for k, p in sorted(points.items(), key=lambda kv: int(kv[0])):
            where = (p["source_mb"], p["peak_rss_mib_median"])
            mem.annotate(f"{k}x", where, textcoords="offset points", xytext=(3, 4), fontsize=7)
    mem.set_xscale("log")
    mem.set_ylim(bottom=0)
    mem.set_xlabel("input size, MB (log)")
    mem.set_ylabel("peak RSS, MiB")
    mem.set_title(f"lakesink ingest peak RSS, {_lakesink_desc(cfg).replace('`', '')}")
    mem.legend(fontsize=8)
    mem.grid(alpha=0.3)

    for run in result["runs"]:
        if run["kind"] == "lakesink" and run["store"] == "local" and run["repetition"] == 0 and run["files"] == FILES:
            t = run["rss_timeline"]
            timeline.plot([p[0] for p in t], [p[1] for p in t], label=run["format"])
    timeline.set_ylim(bottom=0)
    timeline.set_xlabel("seconds since the process started")
    timeline.set_ylabel("RSS, MiB (psutil, every 0.1 s)")
    timeline.set_title(f"lakesink ingest RSS over a {FILES}-file run (local)")
    timeline.legend(fontsize=8)
    timeline.grid(alpha=0.3)

    fig.suptitle(f"{describe(result['machine'], packages=PACKAGES)} - {cfg['mode']} mode, {result['when']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(result: dict[str, Any], out: Path) -> None:
    """The Markdown tables (printed, and written beside `out`) and the chart."""
    table = markdown(result)
    out.with_suffix(".md").write_text(table)
    chart(result, out.with_suffix(".png"))
    print()
    print(table)


class Progress:
    def __init__(self, total: int) -> None:
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def tick(self, run: Run) -> None:
        self.done += 1
        rate = f"{run.rows_expected / run.seconds:,.0f} rows/s" if run.ok and run.seconds else f"FAILED {run.error!s:.200}"
        print(
            f"  [{self.done}/{self.total}, {time.perf_counter() - self.start:.0f} s] {run.format} {run.store} {run.kind}"
            f" #{run.repetition + 1} ({run.files} files): {rate}, peak RSS {(run.peak_rss_bytes or 0) / 2**20:.0f} MiB,"
            f" load {run.load_1m_at_start}",
            file=sys.stderr,
            flush=True,
        )


# ---------------------------------------------------------------------------------------------


def snapshot_lakesink(into: Path) -> dict[str, Any]:
    """Copy lakesink/ as it is now into `into`, for every run to import; say which lakesink that is.

    The CLI would otherwise import lakesink/ from the working tree at each run, and an edit made
    during the benchmark (others work in this tree) would be measured halfway. Put on PYTHONPATH,
    the copy comes before the editable install's finder, which sits at the end of sys.meta_path.
    """
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    shutil.copytree(ROOT / "lakesink", into / "lakesink", ignore=shutil.ignore_patterns("__pycache__"))
    return {
        "commit": git("rev-parse", "HEAD") or None,
        "uncommitted_changes": bool(git("status", "--porcelain", "--", "lakesink")),
        "sources_sha256": sources_digest(into / "lakesink"),
    }


def measure_a_copy(scratch: Path) -> dict[str, Any]:
    """Copy `lakesink/` into `scratch` and make every run started from now on import that copy
    (PYTHONPATH, processes started in `scratch`), so an edit made during the benchmark is not
    measured halfway; what was copied (commit, digests) is returned for the results."""
    measured = snapshot_lakesink(scratch / "measured")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(scratch / "measured"), os.environ.get("PYTHONPATH")]))
    check = [sys.executable, "-c", "import lakesink.cli; print(lakesink.cli.__file__)"]
    imported = subprocess.run(check, cwd=scratch, capture_output=True, text=True, check=True).stdout.strip()
    if not imported.startswith(str(scratch / "measured")):
        raise SystemExit(f"the runs would import lakesink from {imported}, not from the copy taken now")
    return measured


def sources_digest(package: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def lakesink_defaults(cwd: Path) -> dict[str, str]:
    """`--option: default` as the measured lakesink's `ingest --help` gives them (e.g. --commit-interval: 1GB,60s)."""
    cmd = [sys.executable, "-m", "lakesink", "ingest", "--help"]
    text = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False, env={**os.environ, "COLUMNS": "200"}).stdout
    defaults = {}
    for entry in re.split(r"\n\s{2}(?=-)", text):
        flat = " ".join(entry.split())
        found = re.search(r"\[default: ([^;\]]+)", flat)
        if flat.startswith("--") and found:
            defaults[flat.split()[0].split("/")[0]] = found.group(1).strip()
    return defaults


def profile_ndjson(data: DataSet, scratch: Path, lakesink_args: list[str], out: Path) -> None:
    """py-spy over one `lakesink ingest` of the NDJSON data set (local table), every thread sampled.

    lakesink's work runs on its pipeline's threads (reader, encoders), which pyinstrument, a
    main-thread profiler, does not see. py-spy samples each thread's Python stack; time inside
    pyarrow shows as the Python call that entered it, and pyarrow's own pool threads (JSON parsing)
    are not Python threads, so their CPU is in the process total only. Written: `out` (per thread,
    the frames where samples landed, most first) and the raw folded stacks beside it.
    """
    table = scratch / "profiled"
    folded = out.with_suffix(".folded")
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    ingest = [sys.executable, "-m", "lakesink", "ingest", str(data.folder), str(table), "--app-id", "bench", *lakesink_args,
              "--no-progress"]  # fmt: skip
    cmd = [spy, "record", "--format", "raw", "--threads", "--rate", "100", "--output", str(folded), "--", *ingest]
    started = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=scratch)
    wall = time.monotonic() - started
    shutil.rmtree(table, ignore_errors=True)
    out.write_text(summarize_folded(folded.read_text(), wall=wall))
    print(f"profile: {out}", file=sys.stderr)


def summarize_folded(folded: str, *, wall: float, top: int = 12) -> str:
    """Per thread: samples, and the leaf frames (where time was spent or waited on) with the most."""
    threads: dict[str, dict[str, int]] = {}
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        name = frames[0].split(": ", 1)[-1] if ": " in frames[0] else frames[0]
        leaves = threads.setdefault(name, {})
        leaves[frames[-1]] = leaves.get(frames[-1], 0) + int(count)
    lines = [f"py-spy, 100 samples/s per thread, active samples only; run took {wall:.1f} s wall", ""]
    for name, leaves in sorted(threads.items(), key=lambda item: -sum(item[1].values())):
        total = sum(leaves.values())
        lines.append(f"{name}: {total} samples ({total / 100:.1f} s)")
        for frame, count in sorted(leaves.items(), key=lambda item: -item[1])[:top]:
            lines.append(f"  {count:6d}  {100 * count / total:5.1f}%  {frame}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.rows_per_file:,} rows per file, one run each")
    parser.add_argument("--rows-per-file", type=int, help=f"default {FULL.rows_per_file:,} ({FILES} files per format)")
    parser.add_argument("--repeat", type=int, help=f"runs of each kind (default {FULL.repeat}; --quick {QUICK.repeat})")
    parser.add_argument(
        "--lakesink-args",
        default="",
        help='extra options for every lakesink ingest run, e.g. "--write-threads 2" (default: none)',
    )
    parser.add_argument(
        "--loop-batch-rows",
        type=int,
        help="rows per write_deltalake call in the loop baseline (default: one call per source file)",
    )
    parser.add_argument(
        "--no-memory-bound", action="store_true", help="full mode: skip benchmarks/memory_bound.py (5 GB NDJSON) at the end"
    )
    parser.add_argument("--dicts-files", type=int, help=f"files dlt with dict rows reads (default {FULL.dicts_files} of {FILES})")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated subset of ndjson,csv,parquet")
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated subset of local,s3")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    parser.add_argument("--no-memory", action="store_true", help="skip the 1x/5x/20x memory series")
    parser.add_argument("--profile", action="store_true", help="also profile one lakesink NDJSON run with py-spy (all threads)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"generated data (default {DEFAULT_CACHE})")
    parser.add_argument(
        "--out", type=Path, help="results JSON; .md and .png beside it (default results/throughput.json, or -quick.json)"
    )
    parser.add_argument("--from-json", type=Path, help="only render the tables and chart of an earlier results JSON")
    args = parser.parse_args(argv)
    if args.from_json:
        rendered = json.loads(args.from_json.read_text())
        report(rendered, args.from_json)
        return 0
    mode = QUICK if args.quick else FULL
    args.out = args.out or RESULTS / ("throughput-quick.json" if args.quick else "throughput.json")
    rows_per_file = args.rows_per_file or mode.rows_per_file
    repeat = args.repeat or mode.repeat
    dicts_files = min(args.dicts_files or mode.dicts_files, FILES)
    formats = [f for f in args.formats.split(",") if f]
    stores = [s for s in args.stores.split(",") if s]
    kinds = [k for k in args.kinds.split(",") if k]
    lakesink_args = shlex.split(args.lakesink_args)
    for name, chosen, allowed in (("format", formats, FORMATS), ("store", stores, STORES), ("kind", kinds, KINDS)):
        if unknown := set(chosen) - set(allowed):
            parser.error(f"unknown {name}(s): {', '.join(sorted(unknown))}")

    started = time.perf_counter()
    pythonpath_before = os.environ.get("PYTHONPATH")
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    print(f"data: {FILES} files x {rows_per_file:,} rows per format in {args.cache}", file=sys.stderr, flush=True)
    datasets = ensure(args.cache, files=FILES, rows_per_file=rows_per_file)
    memory_scales = [k for k in MEMORY_SCALES if k <= FILES] if not args.no_memory and "lakesink" in kinds else []
    runs: list[Run] = []
    total = len(formats) * repeat * (len(stores) * len(kinds) + len([k for k in memory_scales if k < FILES]))
    progress = Progress(total)
    server = start_moto_server() if "s3" in stores else None
    try:
        with tempfile.TemporaryDirectory(prefix="lakesink-throughput-") as tmp:
            scratch = Path(tmp)
            measured = measure_a_copy(scratch)
            defaults = lakesink_defaults(scratch)
            store_by_name = {name: Store(name, scratch, server if name == "s3" else None) for name in stores}
            local = store_by_name.get("local") or Store("local", scratch, None)
            for fmt in formats:
                full = datasets[fmt]
                subsets = {k: full.first(k, scratch / "inputs" / f"{fmt}-{k}") for k in memory_scales if k < FILES}
                dicts_data = full.first(dicts_files, scratch / "inputs" / f"{fmt}-dicts") if dicts_files < FILES else full
                for rep in range(repeat):
                    for store in stores:
                        for kind in kinds:
                            data = dicts_data if kind == "dlt_dicts" else full
                            run = measure(kind, data, store_by_name[store], rep, lakesink_args, args.loop_batch_rows)
                            runs.append(run)
                            progress.tick(run)
                    for data in subsets.values():
                        run = measure("lakesink", data, local, rep, lakesink_args, args.loop_batch_rows)
                        run.store = "local"
                        runs.append(run)
                        progress.tick(run)
            if args.profile and "ndjson" in formats:
                profile_ndjson(datasets["ndjson"], scratch, lakesink_args, args.out.with_name("throughput_profile.txt"))
    finally:
        if server is not None:
            server.stop()

    tree_at_end = sources_digest(ROOT / "lakesink")
    if tree_at_end != measured["sources_sha256"]:
        print("note: lakesink/ changed during the run; the copy taken at the start was measured", file=sys.stderr)
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for fmt in formats:
        summary[fmt] = {}
        for store in stores:
            summary[fmt][store] = {}
            for kind in kinds:
                chosen = [r for r in runs if (r.format, r.store, r.kind) == (fmt, store, kind)]
                if kind == "lakesink":
                    chosen = [r for r in chosen if r.files == FILES]
                summary[fmt][store][kind] = summarize(chosen)
    memory: dict[str, dict[str, Any]] = {}
    for fmt in formats:
        points = {}
        for k in memory_scales:
            chosen = [r for r in runs if (r.format, r.store, r.kind, r.files) == (fmt, "local", "lakesink", k)]
            s = summarize(chosen)
            if s is not None:
                points[str(k)] = s
        if points:
            memory[fmt] = points
    result = {
        "benchmark": "throughput",
        "when": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": {**machine(packages=PACKAGES), "load_average_at_start": load_at_start},
        "lakesink_measured": {**measured, "working_tree_sha256_at_end": tree_at_end},
        "config": {
            "mode": "quick" if args.quick else "full",
            "files": FILES,
            "rows_per_file": rows_per_file,
            "rows": rows_per_file * FILES,
            "repeat": repeat,
            "lakesink_args": lakesink_args,
            "lakesink_options": lakesink_options("FORMAT", lakesink_args),
            "lakesink_defaults": defaults,
            "loop_batch_rows": args.loop_batch_rows,
            "loop_commits_per": "source file" if args.loop_batch_rows is None else f"{args.loop_batch_rows} rows",
            "dicts_files": dicts_files,
            "dicts_rows": rows_per_file * dicts_files,
            "formats": formats,
            "stores": stores,
            "kinds": kinds,
            "memory_scales": memory_scales,
            "source_mb": {fmt: round(datasets[fmt].bytes / 1e6, 1) for fmt in formats},
            "seconds_total": round(time.perf_counter() - started, 1),
        },
        "summary": summary,
        "ratios": {fmt: {store: ratios(summary[fmt][store]) for store in stores} for fmt in formats},
        "memory": memory,
        "runs": [asdict(r) for r in runs],
    }
    write_results(args.out, result)
    report(result, args.out)
    failed = [r for r in runs if not r.ok]
    for r in failed:
        print(f"FAILED: {r.format} {r.store} {r.kind} #{r.repetition + 1}: {r.error}", file=sys.stderr)
    outputs = ", ".join(str(p) for p in (args.out, args.out.with_suffix(".md"), args.out.with_suffix(".png")))
    print(f"results: {outputs} ({time.perf_counter() - started:.0f} s)")
    code = 1 if failed else 0
    if not args.quick and not args.no_memory_bound and "lakesink" in kinds:
        cmd = [sys.executable, str(Path(__file__).with_name("memory_bound.py")), "--lakesink-args", args.lakesink_args]
        print(f"memory bound: {shlex.join(cmd)}", file=sys.stderr, flush=True)
        env = {**os.environ}
        if pythonpath_before is None:
            env.pop("PYTHONPATH", None)
        else:
            env["PYTHONPATH"] = pythonpath_before
        code = max(code, subprocess.run(cmd, env=env, check=False).returncode)
    return code


if __name__ == "__main__":
    sys.exit(main())
