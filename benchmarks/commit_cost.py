#!/usr/bin/env python
"""Per-commit cost of `lakesink.Sink.write` as the table's history grows.

    python benchmarks/commit_cost.py              # 420 commits per run
    python benchmarks/commit_cost.py --quick      # 120 commits per run
    python benchmarks/commit_cost.py --commits 200

Three runs, in one process, one after the other:

* lakesink on S3 (a real moto server in its own process): one open `Sink`, N writes of a
  1,000-row table at position = commit number;
* the same on a local-disk table;
* a baseline: `deltalake.write_deltalake(uri, table, mode="append")` by URI on S3, N times
  (every call loads the table from its last checkpoint and replays the log after it).

Each write's wall time is recorded. The report compares the early window (commits 1-30) with
the late window (commits 386-415, or the last 30 when --commits is smaller): median, p90, ratio.
For the lakesink runs the time of each write is also split into phases (stage, refresh,
txn lookup, commit incl. the post-commit checkpoint hook), and commits that wrote a checkpoint
are reported apart. Results go to benchmarks/results/commit_cost.json.
"""

from __future__ import annotations

import argparse
import functools
import os
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
from benchmarks._machine import machine, write_results  # noqa: E402
from lakesink.table import DEFAULT_CHECKPOINT_INTERVAL, TableHandle  # noqa: E402
from tests.support.moto_server import start_moto_server  # noqa: E402

ROWS_PER_COMMIT = 1_000
WINDOW = 30
LATE_CENTER = 400
GOAL_RATIO = 1.5
DEFAULT_RESULTS = ROOT / "benchmarks" / "results" / "commit_cost.json"


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


def windows(n: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(first, last) commit numbers, 1-based and inclusive, of the early and late windows."""
    early = (1, min(WINDOW, n))
    late_first = LATE_CENTER - WINDOW // 2 + 1  # 386..415
    late_last = late_first + WINDOW - 1
    if n < late_last:
        late_first, late_last = max(1, n - WINDOW + 1), n
    return early, (late_first, late_last)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def pick(values: list[float], window: tuple[int, int]) -> list[float]:
    return values[window[0] - 1 : window[1]]


def summarize(series: list[list[float]], early: tuple[int, int], late: tuple[int, int]) -> dict[str, Any]:
    """Window statistics over the same commits of every repetition, pooled."""
    e = [t for times in series for t in pick(times, early)]
    l_ = [t for times in series for t in pick(times, late)]
    early_median, late_median = statistics.median(e), statistics.median(l_)
    return {
        "early_window": list(early),
        "late_window": list(late),
        "repetitions": len(series),
        "early_median_s": early_median,
        "early_p90_s": percentile(e, 90),
        "late_median_s": late_median,
        "late_p90_s": percentile(l_, 90),
        "ratio_median": late_median / early_median,
        "ratio_p90": percentile(l_, 90) / percentile(e, 90),
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
        (DeltaTable, "create_write_transaction", "commit"),
    ]
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in targets]
    try:
        for owner, attr, name in targets:
            setattr(owner, attr, phases.wrap(name, getattr(owner, attr)))
        yield
    finally:
        for owner, attr, original in saved:
            setattr(owner, attr, original)


def phase_summary(reps: list[dict[str, Any]], early: tuple[int, int], late: tuple[int, int]) -> dict[str, Any]:
    """Per-phase medians of the windows (pooled over repetitions), and the checkpoint commits apart."""
    names = sorted({k for rep in reps for p in rep["per_write"] for k in p})
    out: dict[str, Any] = {}
    for label, window in (("early", early), ("late", late)):
        rows = [p for rep in reps for p in pick(rep["per_write"], window)]
        out[label] = {name: statistics.median([r.get(name, 0.0) for r in rows]) for name in names}
    # `checkpoints` are the versions the post-commit hook wrote a checkpoint for (listed after the run).
    ckpt: list[float] = []
    plain: list[float] = []
    late_ckpt: list[float] = []
    firsts: list[float] = []
    lasts: list[float] = []
    # delta-rs's commit and refresh work grows with the log entries after the last checkpoint:
    # median commit + refresh of the plain commits, by commits since the last checkpoint.
    by_distance: dict[int, list[float]] = defaultdict(list)
    late_versions = set(range(late[0], late[1] + 1))
    for rep in reps:
        checkpoints: set[int] = rep["checkpoints"]
        rep_ckpt = []
        for i, (p, v) in enumerate(zip(rep["per_write"], rep["versions"], strict=True), start=1):
            commit = p.get("commit", 0.0)
            if v in checkpoints:
                rep_ckpt.append(commit)
                if i in late_versions:
                    late_ckpt.append(commit)
                continue
            plain.append(commit)
            last = max((c for c in checkpoints if c < v), default=0)
            by_distance[(v - last) // 5 * 5].append(commit + p.get("refresh", 0.0))
        ckpt += rep_ckpt
        if rep_ckpt:
            firsts.append(rep_ckpt[0])
            lasts.append(rep_ckpt[-1])
    out["commit_with_checkpoint"] = {
        "versions": sorted(reps[0]["checkpoints"]),
        "count": len(reps[0]["checkpoints"]),
        "median_s": statistics.median(ckpt) if ckpt else None,
        "late_window_median_s": statistics.median(late_ckpt) if late_ckpt else None,
        "first_s": statistics.median(firsts) if firsts else None,
        "last_s": statistics.median(lasts) if lasts else None,
    }
    out["commit_without_checkpoint_median_s"] = statistics.median(plain) if plain else None
    out["commit_and_refresh_by_commits_since_checkpoint_s"] = {
        f"{d}-{d + 4}": statistics.median(values) for d, values in sorted(by_distance.items())
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
# runs


def run_lakesink(uri: str, options: dict[str, str], n: int, label: str, *, checkpoint_interval: int) -> dict[str, Any]:
    """N writes through one open Sink: wall time and phases of each, table versions, checkpoints."""
    phases = Phases()
    times: list[float] = []
    per_write: list[dict[str, float]] = []
    versions: list[int] = []
    progress = Progress(label, n)
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
                raise RuntimeError(f"{label}: commit {commit} was {result.status}: {result.reason}")
            times.append(elapsed)
            per_write.append(spent)
            versions.append(result.table_version)
            progress.tick(commit, elapsed)
        committed = sink.committed_position()
        checkpoints = checkpoint_versions(sink.store)
    check_table(uri, options, n, label)
    if committed != n:
        raise RuntimeError(f"{label}: committed position {committed}, expected {n}")
    return {"times": times, "per_write": per_write, "versions": versions, "checkpoints": checkpoints}


def lakesink_report(reps: list[dict[str, Any]], n: int, checkpoint_interval: int) -> dict[str, Any]:
    early, late = windows(n)
    out = summarize([rep["times"] for rep in reps], early, late)
    out["checkpoint_interval"] = checkpoint_interval
    out["per_repetition"] = [
        {
            k: v
            for k, v in summarize([rep["times"]], early, late).items()
            if k not in ("early_window", "late_window", "repetitions")
        }
        for rep in reps
    ]
    out["phases_median_s"] = phase_summary(reps, early, late)
    out["per_commit_s"] = [_rounded(rep["times"]) for rep in reps]
    names = sorted({k for rep in reps for p in rep["per_write"] for k in p})
    out["per_commit_phases_s"] = [
        {name: _rounded([p.get(name, 0.0) for p in rep["per_write"]]) for name in names} for rep in reps
    ]
    return out


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 6) for v in values]


def run_baseline(uri: str, options: dict[str, str], n: int, label: str) -> dict[str, Any]:
    times: list[float] = []
    progress = Progress(label, n)
    for commit in range(1, n + 1):
        data = batch(commit)
        start = time.perf_counter()
        write_deltalake(uri, data, mode="append", storage_options=options)
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        progress.tick(commit, elapsed)
    check_table(uri, options, n, label)
    early, late = windows(n)
    out = summarize([times], early, late)
    table = DeltaTable(uri, storage_options=options)
    out["checkpoint_interval"] = int(table.metadata().configuration.get("delta.checkpointInterval", "100"))
    out["per_commit_s"] = _rounded(times)
    return out


def check_table(uri: str, options: dict[str, str], n: int, label: str) -> None:
    """The table holds exactly n files of 1,000 rows: nothing lost, nothing doubled."""
    table = DeltaTable(uri, storage_options=options)
    adds = table.get_add_actions(flatten=True)
    files = adds.num_rows
    rows = sum(adds.column("num_records").to_pylist())
    if files != n or rows != n * ROWS_PER_COMMIT:
        raise RuntimeError(f"{label}: table has {files} files / {rows} rows, expected {n} / {n * ROWS_PER_COMMIT}")


class Progress:
    def __init__(self, label: str, n: int) -> None:
        self.label, self.n, self.start = label, n, time.perf_counter()

    def tick(self, commit: int, elapsed: float) -> None:
        if commit % 50 == 0 or commit == self.n:
            print(
                f"  {self.label}: {commit}/{self.n} commits, last {elapsed * 1000:.0f} ms, "
                f"{time.perf_counter() - self.start:.0f} s so far",
                file=sys.stderr,
                flush=True,
            )


# ---------------------------------------------------------------------------------------------
# report


def print_table(runs: dict[str, dict[str, Any]]) -> None:
    first = next(iter(runs.values()))
    e, l_ = first["early_window"], first["late_window"]
    head = f"{'run':<16} {'median ' + f'{e[0]}-{e[1]}':>14} {'median ' + f'{l_[0]}-{l_[1]}':>16} {'ratio':>6}"
    head += f" {'p90 early':>10} {'p90 late':>9} {'p90 ratio':>9} {'total':>8}"
    print(head)
    print("-" * len(head))
    for name, r in runs.items():
        print(
            f"{name:<16} {r['early_median_s'] * 1000:>11.1f} ms {r['late_median_s'] * 1000:>13.1f} ms {r['ratio_median']:>5.2f}x"
            f" {r['early_p90_s'] * 1000:>7.1f} ms {r['late_p90_s'] * 1000:>6.1f} ms {r['ratio_p90']:>8.2f}x {r['total_s']:>7.1f}s"
        )
    for name, r in runs.items():
        phases = r.get("phases_median_s")
        if not phases:
            continue
        reps = r.get("per_repetition", [])
        print(
            f"\n{name}: {len(reps)} repetitions pooled; ratio of medians per repetition: "
            + ", ".join(f"{rep['ratio_median']:.2f}x" for rep in reps)
        )
        print(f"{name} phases (median per write, ms)       early    late")
        for phase in phases["early"]:
            print(f"  {phase:<36} {phases['early'][phase] * 1000:>7.1f} {phases['late'][phase] * 1000:>7.1f}")
        spread = phases["commit_and_refresh_by_commits_since_checkpoint_s"]
        print(
            "  commit + refresh by commits since the last checkpoint: "
            + ", ".join(f"{k}: {v * 1000:.1f}" for k, v in spread.items())
        )
        ck = phases["commit_with_checkpoint"]
        if ck["count"]:
            print(
                f"  commit with checkpoint: {ck['count']} commits, median {ck['median_s'] * 1000:.1f} ms "
                f"(first {ck['first_s'] * 1000:.1f}, last {ck['last_s'] * 1000:.1f}); "
                f"without: median {phases['commit_without_checkpoint_median_s'] * 1000:.1f} ms"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=None, help="commits per run (default 420)")
    parser.add_argument("--quick", action="store_true", help="120 commits per run")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="lakesink runs per target, each on a new table; the windows pool them (default 3; the baseline runs once)",
    )
    parser.add_argument(
        "--checkpoint-interval",
        type=int,
        default=DEFAULT_CHECKPOINT_INTERVAL,
        help=f"delta.checkpointInterval of the lakesink tables (default {DEFAULT_CHECKPOINT_INTERVAL})",
    )
    parser.add_argument("--runs", default="s3,local,baseline", help="comma-separated subset of s3,local,baseline")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS, help=f"results JSON (default {DEFAULT_RESULTS})")
    args = parser.parse_args(argv)
    n = args.commits if args.commits is not None else (120 if args.quick else 420)
    if n < 2:
        parser.error("--commits must be at least 2")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    wanted = [r.strip() for r in args.runs.split(",") if r.strip()]
    early, late = windows(n)
    print(f"{n} commits per run of {ROWS_PER_COMMIT} rows; windows {early[0]}-{early[1]}, {late[0]}-{late[1]}", file=sys.stderr)

    load_at_start = [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, dict[str, Any]] = {}
    server = start_moto_server() if {"s3", "baseline"} & set(wanted) else None
    try:
        with tempfile.TemporaryDirectory(prefix="lakesink-bench-") as tmp:
            for name in wanted:
                if name == "s3":
                    assert server is not None
                    reps = []
                    for rep in range(args.repeat):
                        server.create_bucket(f"bench-lakesink-{rep}")
                        reps.append(
                            run_lakesink(
                                f"s3://bench-lakesink-{rep}/events",
                                server.storage_options(),
                                n,
                                f"lakesink s3 #{rep + 1}",
                                checkpoint_interval=args.checkpoint_interval,
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
                        )
                        for rep in range(args.repeat)
                    ]
                    runs["lakesink_local"] = lakesink_report(reps, n, args.checkpoint_interval)
                elif name == "baseline":
                    assert server is not None
                    server.create_bucket("bench-baseline")
                    runs["write_deltalake_s3"] = run_baseline(
                        "s3://bench-baseline/events", server.storage_options(), n, "write_deltalake s3"
                    )
                else:
                    parser.error(f"unknown run {name!r}")
    finally:
        if server is not None:
            server.stop()

    print()
    print_table(runs)
    s3 = runs.get("lakesink_s3")
    if s3 is not None:
        met = s3["ratio_median"] <= GOAL_RATIO
        verdict = "MET" if met else "NOT MET"
        print(f"\ngoal: lakesink S3 median late/early <= {GOAL_RATIO}x: {s3['ratio_median']:.2f}x -> {verdict}")
    result = {
        "benchmark": "commit_cost",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**machine(), "load_average_at_start": load_at_start},
        "config": {
            "commits": n,
            "rows_per_commit": ROWS_PER_COMMIT,
            "window": WINDOW,
            "early_window": list(early),
            "late_window": list(late),
            "lakesink_checkpoint_interval": args.checkpoint_interval,
            "lakesink_repetitions": args.repeat,
            "goal": f"lakesink_s3 ratio_median <= {GOAL_RATIO}",
        },
        "goal_met": (s3["ratio_median"] <= GOAL_RATIO) if s3 else None,
        "runs": runs,
    }
    write_results(args.out, result)
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
