#!/usr/bin/env python
"""Per-commit cost of `lakesink.Sink.write` as the table's history grows, to 5,000 commits.

    python benchmarks/commit_cost.py              # full: 5,000 commits per lakesink run (~25 min on 2 cores)
    python benchmarks/commit_cost.py --quick      # 150 commits per run, one repetition (< 2 min)
    python benchmarks/commit_cost.py --commits 1200 --runs s3,local --repeat 2

Runs, in one process, one after the other:

* lakesink on S3 (a real moto server in its own process): one open `Sink`, N writes of a
  1,000-row table at position = commit number;
* the same on a local-disk table;
* baselines: `deltalake.write_deltalake(uri, table, mode="append")` by URI, on S3 and on local
  disk (every call loads the table from its last checkpoint and replays the log after it). They are
  capped at `--baseline-commits` (default 1,000): on moto a call at ~1,000 commits takes most of a
  second, so 5,000 of them would not fit the benchmark's budget. The cap is in the output.

Each write's wall time is recorded. The report compares windows of 30 commits: 1-30 against
986-1,015 (~1,000) and 4,971-5,000 (~5,000), the windows that fit N (or the last 30 commits when
none does): median, p90, p99 and mean (the mean and p99 include the commits that made a checkpoint
due: the amortised cost and the tail), and the ratio of each window's median, mean and p99 to the
first's (the goal: at most 1.2x for each). Right after each lakesink window the same 30
writes also go to a new, empty table on the same store: on a shared machine whose load changes over
a 20-minute run, the window's median over that fresh table's (`ratio_to_fresh_table`) is the growth
due to history alone. For the lakesink runs each write is also split
into phases (stage, refresh, txn lookup, commit: the log entry's create, and on every 20th version handing
the checkpoint to the background worker, lakesink.delta.checkpointer), commits that
wrote a checkpoint are reported apart, and at the end of every window the benchmark probes what
the store's LIST costs at that size (moto's ListObjectsV2 of `_delta_log/` with start-after, as
delta-rs sends it; the number of `_delta_log` entries on local disk): a checkpoint commit lists the
log, a plain one no longer does (before lakesink created log entries itself, delta-rs sent three
LISTs per commit). After the local run, 60 more writes go to two copies of its `_delta_log`, as it
is and cut at its last checkpoint (what the expired-log cleanup does once entries pass the log
retention): same live files, different log length (`log_size_attribution`). Results go to
benchmarks/results/commit_cost.json (`--quick`: commit_cost-quick.json), with a Markdown table
(.md) and a chart (.png) next to it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
from deltalake import DeltaTable, write_deltalake  # noqa: E402

import lakesink  # noqa: E402
import lakesink.sink  # noqa: E402
from benchmarks._machine import describe, machine, write_results  # noqa: E402
from lakesink.commit import CLEANUP_EVERY, Committer  # noqa: E402
from lakesink.delta.table import DEFAULT_CHECKPOINT_INTERVAL, TableHandle  # noqa: E402
from tests.support.moto_server import start_moto_server  # noqa: E402

ROWS_PER_COMMIT = 1_000
WINDOW = 30
# The late windows: the 30 commits ending at ~1,000 and at 5,000 (the full run's last commit).
LATE_WINDOWS = ((986, 1015), (4971, 5000))
FULL_COMMITS = 5_000
QUICK_COMMITS = 150
BASELINE_CAP = 1_000
GOAL_RATIO = 1.2
RUNS = ("s3", "local", "baseline_s3", "baseline_local")
DEFAULT_RESULTS = ROOT / "benchmarks" / "results" / "commit_cost.json"
QUICK_RESULTS = ROOT / "benchmarks" / "results" / "commit_cost-quick.json"


# ---------------------------------------------------------------------------------------------
# data and statistics


def batch(commit: int) -> pa.Table:
    """1,000 rows for commit number `commit` (ids never repeat across commits)."""
    start = commit * ROWS_PER_COMMIT
    ids = pa.array(range(start, start + ROWS_PER_COMMIT), pa.int64())
    return pa.table(
        {
            "id": ids,
            "user": pa.array([f"user-{i % 97:03d}" for i in range(start, start + ROWS_PER_COMMIT)], pa.string()),
            "amount": pa.array([(i % 1000) * 0.25 for i in range(start, start + ROWS_PER_COMMIT)], pa.float64()),
        }
    )


Window = tuple[int, int]


def windows(n: int) -> list[Window]:
    """(first, last) commit numbers, 1-based and inclusive: 1-30, then every late window that fits n
    (or the last 30 commits when none does)."""
    early = (1, min(WINDOW, n))
    late = [w for w in LATE_WINDOWS if w[1] <= n]
    if not late and n > WINDOW:
        late = [(max(1, n - WINDOW + 1), n)]
    return [early, *late]


def label(window: Window | list[int]) -> str:
    return f"{window[0]}-{window[1]}"


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def pick(values: list[Any], window: Window | list[int]) -> list[Any]:
    return values[window[0] - 1 : window[1]]


def summarize(series: list[list[float]], wins: list[Window]) -> dict[str, Any]:
    """Window statistics over the same commits of every repetition, pooled; ratios against the first window."""
    stats = []
    for window in wins:
        pooled = [t for times in series for t in pick(times, window)]
        stats.append(
            {
                "window": list(window),
                "median_s": statistics.median(pooled),
                "p90_s": percentile(pooled, 90),
                "p99_s": percentile(pooled, 99),
                "mean_s": statistics.mean(pooled),
            }
        )
    for s in stats:
        s["ratio_median"] = s["median_s"] / stats[0]["median_s"]
        s["ratio_p90"] = s["p90_s"] / stats[0]["p90_s"]
        s["ratio_mean"] = s["mean_s"] / stats[0]["mean_s"]
        s["ratio_p99"] = s["p99_s"] / stats[0]["p99_s"]
    last = stats[-1]
    return {
        "commits": min(len(times) for times in series),
        "repetitions": len(series),
        "windows": stats,
        # The first window against the last (the longest history measured), kept flat for quick reading.
        "early_median_s": stats[0]["median_s"],
        "late_window": last["window"],
        "late_median_s": last["median_s"],
        "ratio_median": last["ratio_median"],
        "ratio_p90": last["ratio_p90"],
        "ratio_mean": last["ratio_mean"],
        "ratio_p99": last["ratio_p99"],
        "total_s": statistics.median(sum(times) for times in series),
    }


# ---------------------------------------------------------------------------------------------
# phase timing (wraps the calls a write makes; the wrappers cost microseconds)


class Phases:
    """Accumulates the wall time of named calls during one write."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def take(self) -> tuple[dict[str, float], dict[str, int]]:
        out, calls = dict(self.current), dict(self.calls)
        self.current.clear()
        self.calls.clear()
        return out, calls

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[name] += time.perf_counter() - start
                self.calls[name] += 1

        return timed


@contextmanager
def instrumented(phases: Phases) -> Iterator[None]:
    targets: list[tuple[Any, str, str]] = [
        (lakesink.sink, "stage_batch", "stage"),
        (TableHandle, "refresh", "refresh"),
        (TableHandle, "committed_position", "committed_position"),
        (DeltaTable, "update_incremental", "update_incremental"),
        (DeltaTable, "transaction_version", "transaction_version"),
        # The whole commit protocol (lakesink.commit): the log entry's create, and every interval
        # handing the checkpoint to the background worker (which writes it off this timer).
        (Committer, "commit", "commit"),
    ]
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in targets]
    try:
        for owner, attr, name in targets:
            setattr(owner, attr, phases.wrap(name, getattr(owner, attr)))
        yield
    finally:
        for owner, attr, original in saved:
            setattr(owner, attr, original)


def phase_summary(reps: list[dict[str, Any]], wins: list[Window]) -> dict[str, Any]:
    """Per-phase medians of each window (pooled over repetitions), and the checkpoint commits apart."""
    names = sorted({k for rep in reps for p in rep["per_write"] for k in p})
    out: dict[str, Any] = {"windows": {}}
    for window in wins:
        rows = [p for rep in reps for p in pick(rep["per_write"], window)]
        out["windows"][label(window)] = {name: statistics.median([r.get(name, 0.0) for r in rows]) for name in names}
    # `checkpoints` are the versions a checkpoint was written for (listed after the run).
    # Commit number i made version i (version 0 is the CREATE TABLE of the first write).
    ckpt_by_window: dict[str, list[float]] = defaultdict(list)
    firsts: list[float] = []
    lasts: list[float] = []
    plain_by_window: dict[str, list[float]] = defaultdict(list)
    # delta-rs's commit and refresh work grows with the log entries after the last checkpoint:
    # median commit + refresh of the plain commits near the last window, by commits since the last checkpoint.
    by_distance: dict[int, list[float]] = defaultdict(list)
    last_window = wins[-1]
    for rep in reps:
        checkpoints: set[int] = rep["checkpoints"]
        rep_ckpt = []
        for i, (p, v) in enumerate(zip(rep["per_write"], rep["versions"], strict=True), start=1):
            commit = p.get("commit", 0.0)
            # checkpoint commits are 1 in 20: widen each window by 100 commits before it to see several
            near = [label(w) for w in wins if w[0] - 100 <= i <= w[1]]
            if v in checkpoints:
                rep_ckpt.append(commit)
                for name in near:
                    ckpt_by_window[name].append(commit)
                continue
            for name in near:
                plain_by_window[name].append(commit)
            if last_window[0] - 300 <= i <= last_window[1]:
                last = max((c for c in checkpoints if c < v), default=0)
                by_distance[(v - last) // 5 * 5].append(commit + p.get("refresh", 0.0))
        if rep_ckpt:
            firsts.append(rep_ckpt[0])
            lasts.append(rep_ckpt[-1])
    out["commit_with_checkpoint"] = {
        "count": len(reps[0]["checkpoints"]),
        "first_s": statistics.median(firsts) if firsts else None,
        "last_s": statistics.median(lasts) if lasts else None,
        "median_by_window_s": {
            label(w): statistics.median(ckpt_by_window[label(w)]) if ckpt_by_window[label(w)] else None for w in wins
        },
        "versions": sorted(reps[0]["checkpoints"]),
    }
    out["commit_without_checkpoint_median_by_window_s"] = {
        label(w): statistics.median(plain_by_window[label(w)]) if plain_by_window[label(w)] else None for w in wins
    }
    out["commit_and_refresh_by_commits_since_checkpoint_s"] = {
        "near_commits": [max(1, last_window[0] - 300), last_window[1]],
        **{f"{d}-{d + 4}": statistics.median(values) for d, values in sorted(by_distance.items())},
    }
    return out


def checkpoint_versions(store: Any) -> set[int]:
    """Versions with a checkpoint in the table's `_delta_log`."""
    found = set()
    for info in store.list_files("_delta_log"):
        name = info.path.rsplit("/", 1)[-1]
        if ".checkpoint." in name and name.endswith(".parquet"):
            found.add(int(name.split(".", 1)[0]))
    return found


# ---------------------------------------------------------------------------------------------
# what a LIST costs at the table's size (delta-rs sends one when lakesink has it checkpoint, all of
# `_delta_log/` with start-after its snapshot's version; it sent three per commit when it committed)


def _median_ms(fn: Callable[[], Any], times: int = 10) -> float:
    samples = []
    for _ in range(times):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def s3_probe(server: Any, bucket: str, prefix: str) -> Callable[[int], dict[str, Any]]:
    s3 = server.client()

    def probe(version: int) -> dict[str, Any]:
        log_prefix = f"{prefix}/_delta_log/"
        after = f"{log_prefix}{version:020d}.json"
        keys = sum(page.get("KeyCount", 0) for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket))
        return {
            "bucket_keys": keys,
            # moto answers a ListObjectsV2 by scanning and sorting every key of the bucket, so its
            # cost grows with the table (data files included); S3's does not with start-after.
            "list_log_start_after_ms": _median_ms(lambda: s3.list_objects_v2(Bucket=bucket, Prefix=log_prefix, StartAfter=after)),
            "head_log_entry_ms": _median_ms(lambda: s3.head_object(Bucket=bucket, Key=after)),
        }

    return probe


def local_probe(path: Path) -> Callable[[int], dict[str, Any]]:
    def probe(version: int) -> dict[str, Any]:
        log_dir = path / "_delta_log"

        def listing() -> int:
            # object_store's LocalFileSystem lists with an offset by walking the whole directory
            # (a stat per entry) and filtering: the cost grows with the entries kept in `_delta_log`.
            return sum(1 for entry in os.scandir(log_dir) if _still_there(entry))

        return {"log_entries": listing(), "scandir_stat_log_ms": _median_ms(listing)}

    return probe


def _still_there(entry: os.DirEntry[str]) -> bool:
    # A background checkpoint renames its temporary file into place while the probe lists.
    try:
        return entry.stat().st_size >= 0
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------------------------------------
# runs


def run_lakesink(
    uri: str,
    options: dict[str, str],
    n: int,
    label_: str,
    *,
    checkpoint_interval: int,
    probe: Callable[[int], dict[str, Any]] | None = None,
    control: Callable[[str], list[float]] | None = None,
) -> dict[str, Any]:
    """N writes through one open Sink: wall time and phases of each, table versions, checkpoints."""
    phases = Phases()
    times: list[float] = []
    per_write: list[dict[str, float]] = []
    versions: list[int] = []
    probes: dict[str, dict[str, Any]] = {}
    controls: dict[str, list[float]] = {}
    probe_at = {w[1] for w in windows(n)}
    progress = Progress(label_, n)
    with (
        instrumented(phases),
        lakesink.Sink(uri, app_id="bench", storage_options=options, checkpoint_interval=checkpoint_interval) as sink,
    ):
        for commit in range(1, n + 1):
            data = batch(commit)
            phases.take()
            start = time.perf_counter()
            result = sink.write(data, position=commit)
            elapsed = time.perf_counter() - start
            spent, _ = phases.take()
            if result.status != "committed":
                raise RuntimeError(f"{label_}: commit {commit} was {result.status}: {result.reason}")
            times.append(elapsed)
            per_write.append(spent)
            versions.append(result.table_version)
            progress.tick(commit, elapsed)
            if probe is not None and commit in probe_at:
                probes[str(commit)] = probe(result.table_version)
            if control is not None and commit in probe_at:
                # The same 30 writes on a fresh table, right now: the machine's load at this moment,
                # without the history. On a shared machine this is the fairer yardstick for a late window.
                controls[str(commit)] = control(f"{label_} after {commit}")
        committed = sink.committed_position()
        checkpoints = checkpoint_versions(sink.store)
    check_table(uri, options, n, label_)
    if committed != n:
        raise RuntimeError(f"{label_}: committed position {committed}, expected {n}")
    return {
        "times": times,
        "per_write": per_write,
        "versions": versions,
        "checkpoints": checkpoints,
        "probes": probes,
        "controls": controls,
    }


def log_size_attribution(table: Path, n: int, *, commits: int, checkpoint_interval: int) -> dict[str, Any]:
    """Where a late commit's extra time goes, on local disk: the log's length or the live files.

    After a local run of n commits, `commits` more plain writes through a new Sink on two copies of
    the table's `_delta_log` (the data files are not read by a commit, so they are not copied): as it
    is, and with the entries before the last checkpoint removed, which is what the expired-log
    cleanup does once they are older than `delta.logRetentionDuration` (30 days by default). Both
    copies hold the same n live files; only the number of `_delta_log` entries differs, which
    mattered when delta-rs committed (its local LIST walks every entry, three times a commit); with
    lakesink creating the entries itself the two should match.
    """
    out: dict[str, Any] = {"after_commits": n, "commits": commits}
    for variant in ("log_as_is", "log_before_last_checkpoint_removed"):
        copy = table.parent / f"{table.name}-{variant}"
        shutil.copytree(table / "_delta_log", copy / "_delta_log")
        log_dir = copy / "_delta_log"
        if variant != "log_as_is":
            last = json.loads((log_dir / "_last_checkpoint").read_text())["version"]
            for entry in log_dir.iterdir():
                if entry.name[:20].isdigit() and int(entry.name[:20]) < last:
                    entry.unlink()
        entries = sum(1 for _ in log_dir.iterdir())
        phases = Phases()
        times: list[float] = []
        per_write: list[dict[str, float]] = []
        with (
            instrumented(phases),
            lakesink.Sink(str(copy), app_id="bench", checkpoint_interval=checkpoint_interval) as sink,
        ):
            for position in range(n + 1, n + commits + 1):
                data = batch(position)
                phases.take()
                start = time.perf_counter()
                result = sink.write(data, position=position)
                times.append(time.perf_counter() - start)
                per_write.append(phases.take()[0])
                if result.status != "committed":
                    raise RuntimeError(f"attribution {variant}: position {position} was {result.status}")
        shutil.rmtree(copy)
        out[variant] = {
            "log_entries": entries,
            "median_s": statistics.median(times),
            "phases_median_s": {
                name: statistics.median([p.get(name, 0.0) for p in per_write]) for name in ("stage", "commit", "refresh")
            },
        }
    return out


def fresh_table_control(
    new_location: Callable[[str], str], options: dict[str, str], checkpoint_interval: int
) -> Callable[[str], list[float]]:
    """WINDOW writes through a new Sink on a new, empty table: their wall times."""

    def control(tag: str) -> list[float]:
        uri = new_location(tag)
        times = []
        with lakesink.Sink(uri, app_id="bench", storage_options=options, checkpoint_interval=checkpoint_interval) as sink:
            for position in range(1, WINDOW + 1):
                data = batch(position)
                start = time.perf_counter()
                result = sink.write(data, position=position)
                times.append(time.perf_counter() - start)
                if result.status != "committed":
                    raise RuntimeError(f"control {tag}: position {position} was {result.status}")
        return times

    return control


_control_buckets = iter(range(1_000_000))


def _fresh_bucket(server: Any) -> str:
    bucket = f"bench-control-{next(_control_buckets)}"
    server.create_bucket(bucket)
    return f"s3://{bucket}/events"


def lakesink_report(reps: list[dict[str, Any]], n: int, checkpoint_interval: int) -> dict[str, Any]:
    wins = windows(n)
    out = summarize([rep["times"] for rep in reps], wins)
    out["checkpoint_interval"] = checkpoint_interval
    out["per_repetition"] = [
        {k: v for k, v in summarize([rep["times"]], wins).items() if k not in ("repetitions", "commits")} for rep in reps
    ]
    out["phases_median_s"] = phase_summary(reps, wins)
    out["store_probe_after_commit"] = [rep["probes"] for rep in reps]
    for w in out["windows"]:
        pooled = [t for rep in reps for t in rep["controls"].get(str(w["window"][1]), [])]
        if pooled:
            w["fresh_table_median_s"] = statistics.median(pooled)
            w["ratio_to_fresh_table"] = w["median_s"] / w["fresh_table_median_s"]
    last = out["windows"][-1]
    out["ratio_to_fresh_table"] = last.get("ratio_to_fresh_table")
    out["per_commit_s"] = [_rounded(rep["times"]) for rep in reps]
    names = sorted({k for rep in reps for p in rep["per_write"] for k in p})
    out["per_commit_phases_s"] = [
        {name: _rounded([p.get(name, 0.0) for p in rep["per_write"]]) for name in names} for rep in reps
    ]
    return out


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 6) for v in values]


def run_baseline(uri: str, options: dict[str, str], n: int, label_: str, *, cap_note: str) -> dict[str, Any]:
    times: list[float] = []
    progress = Progress(label_, n)
    for commit in range(1, n + 1):
        data = batch(commit)
        start = time.perf_counter()
        write_deltalake(uri, data, mode="append", storage_options=options)
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        progress.tick(commit, elapsed)
    check_table(uri, options, n, label_)
    out = summarize([times], windows(n))
    table = DeltaTable(uri, storage_options=options)
    out["checkpoint_interval"] = int(table.metadata().configuration.get("delta.checkpointInterval", "100"))
    out["capped"] = cap_note
    out["per_commit_s"] = [_rounded(times)]
    return out


def check_table(uri: str, options: dict[str, str], n: int, label_: str) -> None:
    """The table holds exactly n files of 1,000 rows: nothing lost, nothing doubled."""
    table = DeltaTable(uri, storage_options=options)
    adds = table.get_add_actions(flatten=True)
    files = adds.num_rows
    rows = sum(adds.column("num_records").to_pylist())
    if files != n or rows != n * ROWS_PER_COMMIT:
        raise RuntimeError(f"{label_}: table has {files} files / {rows} rows, expected {n} / {n * ROWS_PER_COMMIT}")


class Progress:
    def __init__(self, label_: str, n: int) -> None:
        self.label, self.n, self.start = label_, n, time.perf_counter()
        self.every = 50 if n <= 1000 else 250

    def tick(self, commit: int, elapsed: float) -> None:
        if commit % self.every == 0 or commit == self.n:
            print(
                f"  {self.label}: {commit}/{self.n} commits, last {elapsed * 1000:.0f} ms, "
                f"{time.perf_counter() - self.start:.0f} s so far",
                file=sys.stderr,
                flush=True,
            )


# ---------------------------------------------------------------------------------------------
# report

RUN_TITLES = {
    "lakesink_s3": "lakesink, moto S3",
    "lakesink_local": "lakesink, local disk",
    "write_deltalake_s3": "write_deltalake loop, moto S3",
    "write_deltalake_local": "write_deltalake loop, local disk",
}


def report_lines(result: dict[str, Any]) -> list[str]:
    """The Markdown report: window medians and ratios, phases, checkpoint commits, store probes."""
    runs = result["runs"]
    m = result["machine"]
    lines = [
        "# Commit cost as the table's history grows",
        "",
        f"`benchmarks/commit_cost.py`, {result['when']}; {describe(m)}; load average at start "
        f"{m.get('load_average_at_start')}. Every commit writes 1,000 rows (one file); lakesink tables checkpoint "
        f"every {result['config']['lakesink_checkpoint_interval']} commits, the write_deltalake tables every 100 "
        "(delta-rs's default). Windows are 30 commits; a window's ratio is its median over the median of commits 1-30. "
        "Right after each lakesink window the same 30 writes also go to a new, empty table on the same store (a fresh "
        "table at the same moment, so at the machine's load of that moment): the second ratio is the window's median "
        "over that one, the growth due to history alone on a shared machine.",
        "",
        "| run | commits | reps | late windows | "
        + " | ".join(f"median {c}" for c in _all_windows(runs))
        + " | ratios to 1-30 (median) | ratios to a fresh table right after the window | mean (amortised) first / last window "
        "| p99 first / last window | last over 1-30: mean, p99 |",
        "| --- | ---: | ---: | --- | " + " | ".join("---:" for _ in _all_windows(runs)) + " | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in runs.items():
        by = {_nominal(w["window"], i): w for i, w in enumerate(r["windows"])}
        cells = [f"{by[c]['median_s'] * 1000:.1f} ms" if c in by else "-" for c in _all_windows(runs)]
        ratios = " / ".join(f"{w['ratio_median']:.2f}x" for w in r["windows"][1:]) or "-"
        late = ", ".join(label(w["window"]) for w in r["windows"][1:])
        fresh = (
            " / ".join(
                f"{w['ratio_to_fresh_table']:.2f}x ({w['fresh_table_median_s'] * 1000:.1f} ms)"
                for w in r["windows"][1:]
                if "ratio_to_fresh_table" in w
            )
            or "-"
        )
        title = RUN_TITLES.get(name, name) + (f" (capped at {r['commits']:,})" if r.get("capped") else "")
        lines.append(
            f"| {title} | {r['commits']:,} | {r['repetitions']} | {late} | "
            + " | ".join(cells)
            + f" | {ratios} | {fresh} | {r['windows'][0]['mean_s'] * 1000:.1f} / {r['windows'][-1]['mean_s'] * 1000:.1f} ms"
            f" | {r['windows'][0]['p99_s'] * 1000:.1f} / {r['windows'][-1]['p99_s'] * 1000:.1f} ms"
            f" | {r['windows'][-1]['ratio_mean']:.2f}x, {r['windows'][-1]['ratio_p99']:.2f}x |"
        )
    for name, r in runs.items():
        phases = r.get("phases_median_s")
        if not phases:
            continue
        wins = [label(w["window"]) for w in r["windows"]]
        lines += [
            "",
            f"## {RUN_TITLES.get(name, name)}: phases (median per write, ms)",
            "",
            "| phase | " + " | ".join(wins) + " |",
            "| --- | " + " | ".join("---:" for _ in wins) + " |",
        ]
        for phase in phases["windows"][wins[0]]:
            lines.append(f"| {phase} | " + " | ".join(f"{phases['windows'][w][phase] * 1000:.1f}" for w in wins) + " |")
        ck = phases["commit_with_checkpoint"]
        plain = phases["commit_without_checkpoint_median_by_window_s"]
        lines.append("| commit, plain commits (window and the 100 before) | " + " | ".join(_ms(plain[w]) for w in wins) + " |")
        lines.append(
            "| commit, checkpoint commits (window and the 100 before) | "
            + " | ".join(_ms(ck["median_by_window_s"][w]) for w in wins)
            + " |"
        )
        probes = r.get("store_probe_after_commit") or []
        if probes and probes[0]:
            keys = sorted({k for rep in probes for p in rep.values() for k in p})
            lines += ["", "Store probe at the end of each window (first repetition):", ""]
            lines.append("| after commit | " + " | ".join(keys) + " |")
            lines.append("| ---: | " + " | ".join("---:" for _ in keys) + " |")
            for commit, p in probes[0].items():
                lines.append(f"| {int(commit):,} | " + " | ".join(_num(p.get(k)) for k in keys) + " |")
        split = checkpoint_split(r, result["config"])
        if split:
            lines += ["", split]
        att = r.get("log_size_attribution")
        if att:
            lines += ["", _attribution_text(att)]
        spread = phases["commit_and_refresh_by_commits_since_checkpoint_s"]
        lines += [
            "",
            f"{ck['count']} checkpoint commits (first {_ms(ck['first_s'])} ms, last {_ms(ck['last_s'])} ms). "
            f"Commit + refresh by commits since the last checkpoint (commits {label(spread['near_commits'])}): "
            + ", ".join(f"{k}: {_ms(v)} ms" for k, v in spread.items() if k != "near_commits")
            + ".",
        ]
    return lines


def _attribution_text(att: dict[str, Any]) -> str:
    parts = []
    for variant, title in (("log_as_is", "log as is"), ("log_before_last_checkpoint_removed", "log cut at its last checkpoint")):
        v = att[variant]
        ph = v["phases_median_s"]
        parts.append(
            f"{title} ({v['log_entries']:,} entries): {v['median_s'] * 1000:.1f} ms "
            f"(commit {ph['commit'] * 1000:.1f}, refresh {ph['refresh'] * 1000:.1f}, stage {ph['stage'] * 1000:.1f})"
        )
    return (
        f"Attribution after {att['after_commits']:,} commits ({att['commits']} more writes on copies of the log, "
        f"same {att['after_commits']:,} live files): " + "; ".join(parts) + "."
    )


def checkpoint_split(r: dict[str, Any], config: dict[str, Any]) -> str:
    """The checkpoint commits near each window's end, those that also ran the expired-log cleanup apart.

    lakesink checkpoints version v when v % interval == 0 and runs the cleanup with it when
    v % (interval x cleanup_every) == 0; commit number i made version i here (one writer).
    """
    phases = r.get("per_commit_phases_s")
    if not phases or "phases_median_s" not in r:
        return ""
    interval = r.get("checkpoint_interval", config.get("lakesink_checkpoint_interval"))
    every = config.get("lakesink_cleanup_every_checkpoints", 1)
    checkpoints = set(r["phases_median_s"]["commit_with_checkpoint"]["versions"])
    commit_times = phases[0]["commit"]
    parts = []
    for w in r["windows"]:
        end = w["window"][1]
        with_cleanup = [v for v in sorted(checkpoints) if v <= end and v % (interval * every) == 0][-3:]
        without = [v for v in sorted(checkpoints) if end - 200 < v <= end and v % (interval * every) != 0]
        a = statistics.median(commit_times[v - 1] for v in with_cleanup) if with_cleanup else None
        b = statistics.median(commit_times[v - 1] for v in without) if without else None
        parts.append(
            f"up to commit {end:,}: {_ms(a)} ms with the cleanup ({len(with_cleanup)}), {_ms(b)} ms without ({len(without)})"
        )
    return (
        f"Checkpoint commits (log entry + delta-rs checkpoint; cleanup on one checkpoint in {every}), median: "
        + "; ".join(parts)
        + "."
    )


def _all_windows(runs: dict[str, dict[str, Any]]) -> list[str]:
    """The table's columns: 1-30, then each late window by the history it stands for (~1,000, ~5,000)."""
    seen: dict[str, int] = {}
    for r in runs.values():
        for i, w in enumerate(r["windows"]):
            seen.setdefault(_nominal(w["window"], i), w["window"][1])
    return sorted(seen, key=lambda k: seen[k])


def _nominal(window: list[int], index: int) -> str:
    if index == 0 or window[1] < 900:
        return label(window)
    return f"~{round(window[1] / 1000) * 1000:,}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def chart(result: dict[str, Any], path: Path) -> None:
    """Rolling median of the per-commit time by commit number, every run; lakesink phases beside it;
    then each run's mean and p99 per window (the commits that made a checkpoint due included)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def rolling(values: list[float], width: int = 51) -> list[float]:
        half = width // 2
        return [statistics.median(values[max(0, i - half) : i + half + 1]) * 1000 for i in range(len(values))]

    runs = result["runs"]
    fig, axes = plt.subplots(1, 3, figsize=(19, 4.8))
    for name, r in runs.items():
        series = r["per_commit_s"][0]
        axes[0].plot(range(1, len(series) + 1), rolling(series), label=RUN_TITLES.get(name, name), linewidth=1.2)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("commit number")
    axes[0].set_ylabel("ms per commit (rolling median of 51, log scale)")
    axes[0].set_title("per-commit wall time")
    axes[0].legend(fontsize=8)
    for name, style in (("lakesink_s3", "-"), ("lakesink_local", "--")):
        r = runs.get(name)
        if not r:
            continue
        phases = r["per_commit_phases_s"][0]
        for phase in ("commit", "refresh", "stage"):
            if phase in phases:
                axes[1].plot(
                    range(1, len(phases[phase]) + 1), rolling(phases[phase]), style,
                    label=f"{RUN_TITLES[name]}: {phase}", linewidth=1.1,
                )  # fmt: skip
    axes[1].set_xlabel("commit number")
    axes[1].set_ylabel("ms (rolling median of 51)")
    axes[1].set_title("lakesink phases (rolling median: checkpoint commits drop out)")
    axes[1].legend(fontsize=7)
    columns = _all_windows(runs)
    for index, (name, r) in enumerate(runs.items()):
        xs = [columns.index(_nominal(w["window"], i)) + index * 0.08 for i, w in enumerate(r["windows"])]
        color = f"C{index}"
        title = RUN_TITLES.get(name, name)
        axes[2].plot(xs, [w["mean_s"] * 1000 for w in r["windows"]], "o-", color=color, label=f"{title}: mean", linewidth=1.1)
        axes[2].plot(xs, [w["p99_s"] * 1000 for w in r["windows"]], "s--", color=color, label=f"{title}: p99", linewidth=1.1)
    axes[2].set_xticks(range(len(columns)), [f"commits {w}" for w in columns])
    axes[2].set_yscale("log")
    axes[2].set_ylabel("ms per commit (log scale)")
    axes[2].set_title("mean and p99 per window of 30 commits")
    axes[2].legend(fontsize=7)
    fig.suptitle(f"commit cost vs history ({describe(result['machine'])})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(runs: dict[str, dict[str, Any]], config: dict[str, Any]) -> None:
    for name, r in runs.items():
        cells = ", ".join(
            f"{label(w['window'])}: {w['median_s'] * 1000:.1f} ms ({w['ratio_median']:.2f}x; mean {w['mean_s'] * 1000:.1f}"
            f" {w['ratio_mean']:.2f}x; p99 {w['p99_s'] * 1000:.1f} {w['ratio_p99']:.2f}x"
            + (
                f"; fresh table then {w['fresh_table_median_s'] * 1000:.1f} ms: {w['ratio_to_fresh_table']:.2f}x)"
                if "ratio_to_fresh_table" in w
                else ")"
            )
            for w in r["windows"]
        )
        cap = f" [capped at {r['commits']}]" if r.get("capped") else ""
        print(f"{name}{cap}: {cells}; total {r['total_s']:.0f} s")
    for name, r in runs.items():
        phases = r.get("phases_median_s")
        if not phases:
            continue
        reps = r.get("per_repetition", [])
        print(
            f"\n{name}: {len(reps)} repetition(s) pooled; last/first window ratio per repetition: "
            + ", ".join(f"{rep['ratio_median']:.2f}x" for rep in reps)
        )
        wins = list(phases["windows"])
        print(f"{name} phases (median per write, ms)  " + " ".join(f"{w:>10}" for w in wins))
        for phase in phases["windows"][wins[0]]:
            print(f"  {phase:<34} " + " ".join(f"{phases['windows'][w][phase] * 1000:>10.1f}" for w in wins))
        ck = phases["commit_with_checkpoint"]
        print(
            f"  checkpoint commits: {ck['count']}, by window: "
            + ", ".join(f"{w}: {_ms(v)}" for w, v in ck["median_by_window_s"].items())
            + " ms; plain commits: "
            + ", ".join(f"{w}: {_ms(v)}" for w, v in phases["commit_without_checkpoint_median_by_window_s"].items())
            + " ms"
        )
        att = r.get("log_size_attribution")
        if att:
            print(f"  {_attribution_text(att)}")
        split = checkpoint_split(r, config)
        if split:
            print(f"  {split}")
        for rep, probes in enumerate(r.get("store_probe_after_commit") or []):
            for commit, p in probes.items():
                print(f"  probe #{rep + 1} after commit {commit}: {p}")


def write_outputs(result: dict[str, Any], out: Path) -> None:
    write_results(out, result)
    md = out.with_suffix(".md")
    md.write_text("\n".join(report_lines(result)) + "\n")
    try:
        chart(result, out.with_suffix(".png"))
    except ImportError:
        print("matplotlib is not installed: no chart (pip install -e '.[bench]')", file=sys.stderr)
    print(f"results: {out}, {md}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=None, help=f"commits per lakesink run (default {FULL_COMMITS:,})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_COMMITS} commits per run, one repetition")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="lakesink runs per target, each on a new table; the windows pool them (default 1; the baselines run once)",
    )
    parser.add_argument(
        "--baseline-commits",
        type=int,
        default=BASELINE_CAP,
        help=f"commits of the write_deltalake runs, at most --commits (default {BASELINE_CAP:,})",
    )
    parser.add_argument(
        "--checkpoint-interval",
        type=int,
        default=DEFAULT_CHECKPOINT_INTERVAL,
        help=f"delta.checkpointInterval of the lakesink tables (default {DEFAULT_CHECKPOINT_INTERVAL})",
    )
    parser.add_argument(
        "--runs", default=",".join(RUNS), help=f"comma-separated subset of {','.join(RUNS)} (baseline: both baselines)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help=f"results JSON (default {DEFAULT_RESULTS}; --quick: {QUICK_RESULTS})"
    )
    parser.add_argument("--from-json", type=Path, default=None, help="only rewrite the Markdown and chart of a results JSON")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        result = __import__("json").loads(args.from_json.read_text())
        write_outputs(result, args.out or args.from_json)
        return 0
    n = args.commits if args.commits is not None else (QUICK_COMMITS if args.quick else FULL_COMMITS)
    out = args.out or (QUICK_RESULTS if args.quick else DEFAULT_RESULTS)
    if n < 2:
        parser.error("--commits must be at least 2")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    wanted = [r.strip() for r in args.runs.split(",") if r.strip()]
    wanted = [x for r in wanted for x in (("baseline_s3", "baseline_local") if r == "baseline" else (r,))]
    for r in wanted:
        if r not in RUNS:
            parser.error(f"unknown run {r!r}")
    base_n = min(n, args.baseline_commits)
    cap_note = f"{base_n} of {n} commits (--baseline-commits)" if base_n < n else ""
    # A rough budget from earlier runs on 2 cores: lakesink ~0.1 s a commit on moto, ~0.03 s local
    # (both rising with history); write_deltalake ~0.6 s on moto, ~0.05 s local, near 1,000 commits.
    estimate = args.repeat * n * (0.11 * ("s3" in wanted) + 0.03 * ("local" in wanted))
    estimate += base_n * (0.6 * ("baseline_s3" in wanted) + 0.05 * ("baseline_local" in wanted))
    print(
        f"{n} commits per lakesink run ({args.repeat} repetition(s)), {base_n} per write_deltalake run, "
        f"{ROWS_PER_COMMIT} rows each; windows {', '.join(label(w) for w in windows(n))}; "
        f"rough estimate {estimate / 60:.0f} min",
        file=sys.stderr,
    )

    load_at_start = [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, dict[str, Any]] = {}
    server = start_moto_server() if {"s3", "baseline_s3"} & set(wanted) else None
    try:
        with tempfile.TemporaryDirectory(prefix="lakesink-bench-") as tmp:
            for name in wanted:
                if name == "s3":
                    assert server is not None
                    reps = []
                    for rep in range(args.repeat):
                        bucket = f"bench-lakesink-{rep}"
                        server.create_bucket(bucket)
                        reps.append(
                            run_lakesink(
                                f"s3://{bucket}/events",
                                server.storage_options(),
                                n,
                                f"lakesink s3 #{rep + 1}",
                                checkpoint_interval=args.checkpoint_interval,
                                probe=s3_probe(server, bucket, "events"),
                                control=fresh_table_control(
                                    lambda tag: _fresh_bucket(server), server.storage_options(), args.checkpoint_interval
                                ),
                            )
                        )
                    runs["lakesink_s3"] = lakesink_report(reps, n, args.checkpoint_interval)
                elif name == "local":
                    reps = [
                        run_lakesink(
                            str(Path(tmp) / f"events-{rep}"),
                            {},
                            n,
                            f"lakesink local #{rep + 1}",
                            checkpoint_interval=args.checkpoint_interval,
                            probe=local_probe(Path(tmp) / f"events-{rep}"),
                            control=fresh_table_control(
                                lambda tag: tempfile.mkdtemp(prefix="control-", dir=tmp), {}, args.checkpoint_interval
                            ),
                        )
                        for rep in range(args.repeat)
                    ]
                    runs["lakesink_local"] = lakesink_report(reps, n, args.checkpoint_interval)
                    if n >= 2 * args.checkpoint_interval:
                        print(
                            "  attribution: the same commits on the log as is and on the log cut at its checkpoint",
                            file=sys.stderr,
                        )
                        runs["lakesink_local"]["log_size_attribution"] = log_size_attribution(
                            Path(tmp) / "events-0",
                            n,
                            commits=3 * args.checkpoint_interval,
                            checkpoint_interval=args.checkpoint_interval,
                        )
                elif name == "baseline_s3":
                    assert server is not None
                    server.create_bucket("bench-baseline")
                    runs["write_deltalake_s3"] = run_baseline(
                        "s3://bench-baseline/events", server.storage_options(), base_n, "write_deltalake s3", cap_note=cap_note
                    )
                elif name == "baseline_local":
                    runs["write_deltalake_local"] = run_baseline(
                        str(Path(tmp) / "baseline"), {}, base_n, "write_deltalake local", cap_note=cap_note
                    )
    finally:
        if server is not None:
            server.stop()

    config = {
        "commits": n,
        "baseline_commits": base_n,
        "rows_per_commit": ROWS_PER_COMMIT,
        "window": WINDOW,
        "windows": [list(w) for w in windows(n)],
        "lakesink_checkpoint_interval": args.checkpoint_interval,
        "lakesink_cleanup_every_checkpoints": CLEANUP_EVERY,
        "lakesink_repetitions": args.repeat,
        "goal": f"lakesink ratio_median (last window / 1-30) <= {GOAL_RATIO}",
    }
    print()
    print_table(runs, config)
    verdicts = {}
    for name in ("lakesink_s3", "lakesink_local"):
        if name in runs:
            r = runs[name]
            verdicts[name] = r["ratio_median"] <= GOAL_RATIO
            print(
                f"goal: {name} median {label(r['late_window'])} / 1-30 <= {GOAL_RATIO}x: {r['ratio_median']:.2f}x -> "
                + ("MET" if verdicts[name] else "NOT MET")
                + (
                    f" (against a fresh table written right after that window: {r['ratio_to_fresh_table']:.2f}x)"
                    if r.get("ratio_to_fresh_table")
                    else ""
                )
            )
    result = {
        "benchmark": "commit_cost",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**machine(), "load_average_at_start": load_at_start},
        "config": config,
        "goal_met": verdicts,
        "runs": runs,
    }
    write_outputs(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
