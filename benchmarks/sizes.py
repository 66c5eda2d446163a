#!/usr/bin/env python
"""Fast at every size: whole-process wall time of `lakesink ingest` and of every baseline, start-up
included, from 10 MB to 5 GB of NDJSON and on 10,000 small files, on local disk and moto S3.

    python benchmarks/sizes.py                  # every case, both stores (~35-45 minutes on 2 cores)
    python benchmarks/sizes.py --quick          # 10 MB, 187 MB and the small files, one run each (~5 minutes)
    python benchmarks/sizes.py --cases 10MB,small --stores local --repeat 5
    python benchmarks/sizes.py --from-json benchmarks/results/sizes.json   # redraw the tables only

A cron job that ingests what landed since its last run pays lakesink's fixed costs (imports,
opening the table, the first and last group of the pipeline) every time, so this benchmark times
what the user waits for: the process from spawn to exit (throughput.py's `wall_s`), imports
included, for every kind (benchmarks/_baselines.py: each baseline is a fresh Python process too).
The runs, their checks (every row in the output) and the stores are throughput.py's; the data is
benchmarks/_dataset.py's rows, NDJSON only:

| case | files | rows per file | about |
| --- | ---: | ---: | ---: |
| 10MB | 20 | 5,000 | 10 MB |
| 187MB | 20 | 93,750 | 187 MB (20 files of ~9.3 MB) |
| 750MB | 20 | 375,000 | 744 MB |
| 5GB | 20 | 2,500,000 | 5 GB (one repetition: ~5 minutes a round) |
| small | 10,000 | 200 | 200 MB in files of ~20 KB |

The write_deltalake loop commits once per source file, except on the small files, where it commits
every 100,000 rows (10,000 commits by URI would take the benchmark's whole budget; the note in the
results says so). dlt with dict rows reads the first files up to 100,000 rows: its rate is Python
per row and does not depend on size.

Ratios are lakesink's rows per wall-clock second over the other kind's (above 1: lakesink is faster).
Output: benchmarks/results/sizes.json and sizes.md (`--quick`: sizes-quick.*).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._dataset import DataSet, ensure  # noqa: E402
from benchmarks._machine import describe, machine, write_results  # noqa: E402
from benchmarks.throughput import (  # noqa: E402
    DEFAULT_CACHE,
    KINDS,
    LABELS,
    PACKAGES,
    RESULTS,
    Run,
    Store,
    lakesink_defaults,
    measure,
    measure_a_copy,
    sources_digest,
)
from tests.support.moto_server import start_moto_server  # noqa: E402


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    files: int
    rows_per_file: int
    repeat: int
    loop_batch_rows: int | None = None  # None: the loop commits once per source file


CASES = (
    Case("10MB", 20, 5_000, 3),
    Case("187MB", 20, 93_750, 3),
    Case("750MB", 20, 375_000, 3),
    Case("5GB", 20, 2_500_000, 1),
    Case("small", 10_000, 200, 3, loop_batch_rows=100_000),
)
QUICK_CASES = ("10MB", "187MB", "small")
STORES = ("local", "s3")
DICTS_ROWS = 100_000
# The targets, lakesink over each kind in rows per wall-clock second.
TARGETS = {"raw": {"local": 1.3, "s3": 1.0}, "dlt_arrow": 3.0, "dlt_dicts": 30.0}
SMALL_TARGET_RAW = 1.0  # at 10 MB and on the small files, both stores


def wall_summary(runs: list[Run]) -> dict[str, Any] | None:
    good = [r for r in runs if r.ok and r.wall_s is not None]
    if not good:
        return None
    walls = sorted(r.wall_s for r in good if r.wall_s is not None)
    median = walls[len(walls) // 2] if len(walls) % 2 else (walls[len(walls) // 2 - 1] + walls[len(walls) // 2]) / 2
    inner = sorted(r.seconds for r in good if r.seconds is not None)
    rows, size = good[0].rows_expected, good[0].source_bytes
    return {
        "runs": len(good),
        "failed": len(runs) - len(good),
        "files": good[0].files,
        "rows": rows,
        "source_mb": round(size / 1e6, 2),
        "wall_s_median": round(median, 3),
        "wall_s_min": round(walls[0], 3),
        "wall_s_max": round(walls[-1], 3),
        "work_s_median": round(inner[len(inner) // 2], 3),  # as the process reports it, imports excluded
        "rows_per_s": round(rows / median),
        "mb_per_s": round(size / 1e6 / median, 2),
        "cpu_s_median": round(sorted(r.cpu_s for r in good if r.cpu_s is not None)[len(good) // 2], 3),
        "peak_rss_mib_median": round(sorted(r.peak_rss_bytes or 0 for r in good)[len(good) // 2] / 2**20, 1),
        "commits": good[0].report.get("commits"),
    }


# Leaf frames where a thread waits rather than works (py-spy samples idle threads too, with --idle off
# it still reports a thread blocked in Python-level waits).
IDLE_LEAVES = ("Condition.wait", "_worker", "Queue.get", "Event.wait", "Thread.join", "_wait_for_tstate_lock", "select")
# The main thread's phases, by the outermost lakesink frame on its stack.
PHASES = (
    ("imports", "_find_and_load"),
    ("schema sample", "_Run._infer"),
    ("open or create the table", "ensure_table"),
    ("open or create the table", "Sink.__init__"),
    ("list the source", "FileSource.__init__"),
    ("resume point", "_Run.resume_point"),
    ("wait for the pipeline", "Pipeline.sealed"),
    ("commit", "Sink.commit_files"),
    ("close", "Sink.close"),
)


def profile_case(data: DataSet, scratch: Path, name: str, rate: int = 1000) -> str:
    """py-spy (every thread, `rate` samples/s) over one `lakesink ingest` of `data` into a local
    table: per thread its busy and waiting samples, and the main thread's phases."""
    folded = scratch / f"profile-{name}.folded"
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    table = scratch / f"profiled-{name}"
    ingest = [sys.executable, "-m", "lakesink", "ingest", str(data.folder), str(table), "--app-id", "bench", "--no-progress"]
    cmd = [spy, "record", "--format", "raw", "--threads", "--rate", str(rate), "--output", str(folded), "--", *ingest]
    started = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=scratch)
    wall = time.monotonic() - started
    shutil.rmtree(table, ignore_errors=True)
    threads: dict[str, list[int]] = {}
    phases: dict[str, int] = {}
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        raw = stack.split(";")
        thread = raw[0].split(": ", 1)[-1] if ": " in raw[0] else "(unnamed)"
        frames = [f.split(" (")[0] for f in raw]
        thread = thread.rsplit("_", 1)[0] if thread.startswith("lakesink-read-small") else thread
        idle = frames[-1].startswith(IDLE_LEAVES)
        busy_idle = threads.setdefault(thread, [0, 0])
        busy_idle[1 if idle else 0] += int(count)
        if thread == "MainThread":
            phase = next((label for label, frame in PHASES if frame in frames), "other (CLI, ingest setup)")
            phases[phase] = phases.get(phase, 0) + int(count)
    shape = f"{data.bytes / 1e6:.0f} MB in {len(data.files):,} files"
    lines = [f"{name}: {shape}; py-spy at {rate}/s; {wall:.2f} s wall under py-spy"]
    for thread, (busy, waiting) in sorted(threads.items(), key=lambda item: -item[1][0]):
        lines.append(f"  {thread:28s} busy {busy / rate:6.2f} s   waiting {waiting / rate:6.2f} s")
    lines.append("  main thread by phase:")
    for phase, samples in sorted(phases.items(), key=lambda item: -item[1]):
        lines.append(f"    {phase:32s} {samples / rate:6.2f} s")
    return "\n".join(lines)


def _repeat_note(cases: list[Case], repeat: int | None, *, quick: bool) -> str:
    counts = {c.name: repeat or (1 if quick else c.repeat) for c in cases}
    most = max(set(counts.values()), key=list(counts.values()).count)
    others = [f"{name}: {n} run{'s' if n > 1 else ''}" for name, n in counts.items() if n != most]
    return f"{most} run{'s' if most > 1 else ''}" + (f" ({', '.join(others)})" if others else "")


def target_for(case: str, store: str, kind: str) -> float | None:
    if kind == "raw":
        return SMALL_TARGET_RAW if case in ("10MB", "small") else TARGETS["raw"][store]  # type: ignore[index]
    target = TARGETS.get(kind)
    return target if isinstance(target, float) else None


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        describe(result["machine"]),
        "",
        "NDJSON; every run a fresh process; **wall time from spawn to exit, imports included**; median of "
        f"{cfg['repeat_note']}. lakesink at its defaults. Ratios: lakesink's rows per wall-clock second over the "
        "other's (above 1: lakesink is faster); the target, where the issue sets one, in brackets (met: ✓).",
        "",
        "| case | store | lakesink wall s | MB/s | vs raw pyarrow | vs write_deltalake loop | vs dlt (arrow) | vs dlt (dicts) "
        "| lakesink work s | commits | peak RSS |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case in cfg["cases"]:
        for store in cfg["stores"]:
            summary = result["summary"].get(case, {}).get(store, {})
            mine = summary.get("lakesink")
            if not mine:
                continue
            cells = []
            for kind in ("raw", "write_deltalake", "dlt_arrow", "dlt_dicts"):
                ratio = result["ratios"][case][store].get(kind)
                target = target_for(case, store, kind)
                if ratio is None:
                    cells.append("")
                elif target is None:
                    cells.append(f"{ratio:.2f}x")
                else:
                    cells.append(f"{ratio:.2f}x ({target:g}x{' ✓' if ratio >= target else ''})")
            lines.append(
                f"| {case} | {store} | {mine['wall_s_median']:.2f} ({mine['wall_s_min']:.2f}-{mine['wall_s_max']:.2f}) "
                f"| {mine['mb_per_s']:.1f} | {' | '.join(cells)} | {mine['work_s_median']:.2f} | {mine['commits']} "
                f"| {mine['peak_rss_mib_median']:.0f} MiB |"
            )
    lines += [
        "",
        "Every run (wall seconds: median, min-max; MB/s of source bytes at the median wall time):",
        "",
        "| case | store | run | files | rows | MB | wall s | MB/s | work s | CPU s | peak RSS MiB |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case in cfg["cases"]:
        for store in cfg["stores"]:
            for kind in cfg["kinds"]:
                s = result["summary"].get(case, {}).get(store, {}).get(kind)
                if not s:
                    continue
                lines.append(
                    f"| {case} | {store} | {LABELS[kind]} | {s['files']:,} | {s['rows']:,} | {s['source_mb']:,.0f} "
                    f"| {s['wall_s_median']:.2f} ({s['wall_s_min']:.2f}-{s['wall_s_max']:.2f}) | {s['mb_per_s']:.1f} "
                    f"| {s['work_s_median']:.2f} | {s['cpu_s_median']:.1f} | {s['peak_rss_mib_median']:.0f} |"
                )
    if cfg.get("notes"):
        lines += ["", *[f"* {note}" for note in cfg["notes"]]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"cases {','.join(QUICK_CASES)}, one run each")
    parser.add_argument("--cases", help=f"comma-separated subset of {','.join(c.name for c in CASES)}")
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated subset of local,s3")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    parser.add_argument("--repeat", type=int, help="runs of each kind in every case (default: the case's, 1 with --quick)")
    parser.add_argument("--lakesink-args", default="", help="extra options for every lakesink ingest run")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"generated data (default {DEFAULT_CACHE})")
    parser.add_argument("--out", type=Path, help="results JSON (default results/sizes.json, or sizes-quick.json)")
    parser.add_argument("--from-json", type=Path, help="only render the tables of an earlier results JSON")
    parser.add_argument(
        "--profile-only", action="store_true",
        help="no runs: py-spy over one lakesink ingest of each case (local table), written to results/sizes_profile.txt",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.from_json:
        rendered = json.loads(args.from_json.read_text())
        args.from_json.with_suffix(".md").write_text(markdown(rendered))
        print(markdown(rendered))
        return 0
    names = args.cases.split(",") if args.cases else (list(QUICK_CASES) if args.quick else [c.name for c in CASES])
    cases = [c for c in CASES if c.name in names]
    if unknown := set(names) - {c.name for c in cases}:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    stores = [s for s in args.stores.split(",") if s]
    kinds = [k for k in args.kinds.split(",") if k]
    args.out = args.out or RESULTS / ("sizes-quick.json" if args.quick else "sizes.json")
    lakesink_args = args.lakesink_args.split()
    started = time.perf_counter()
    load_at_start = [round(x, 2) for x in os.getloadavg()]

    datasets: dict[str, DataSet] = {}
    for case in cases:
        shape = f"{case.files:,} files x {case.rows_per_file:,} rows"
        print(f"data: {case.name}: {shape} in {args.cache}", file=sys.stderr, flush=True)
        data = ensure(args.cache, files=case.files, rows_per_file=case.rows_per_file, formats=("ndjson",))["ndjson"]
        datasets[case.name] = data
    if args.profile_only:
        with tempfile.TemporaryDirectory(prefix="lakesink-sizes-profile-") as tmp:
            text = "\n\n".join(profile_case(datasets[c.name], Path(tmp), c.name) for c in cases)
        (RESULTS / "sizes_profile.txt").write_text(text + "\n")
        print(text)
        return 0
    runs: list[tuple[str, Run]] = []
    server = start_moto_server() if "s3" in stores else None
    try:
        with tempfile.TemporaryDirectory(prefix="lakesink-sizes-") as tmp:
            scratch = Path(tmp)
            measured = measure_a_copy(scratch)
            defaults = lakesink_defaults(scratch)
            store_by_name = {name: Store(name, scratch, server if name == "s3" else None) for name in stores}
            for case in cases:
                full = datasets[case.name]
                dicts_files = max(1, min(case.files, DICTS_ROWS // case.rows_per_file))
                dicts = full.first(dicts_files, scratch / "inputs" / f"{case.name}-dicts") if dicts_files < case.files else full
                repeat = args.repeat or (1 if args.quick else case.repeat)
                for rep in range(repeat):
                    for store in stores:
                        for kind in kinds:
                            data = dicts if kind == "dlt_dicts" else full
                            run = measure(kind, data, store_by_name[store], rep, lakesink_args, case.loop_batch_rows)
                            runs.append((case.name, run))
                            status = "ok" if run.ok else f"FAILED: {run.error}"
                            print(
                                f"[{time.perf_counter() - started:6.0f} s] {case.name} {store} {kind} #{rep + 1}: "
                                f"wall {run.wall_s} s {status}", file=sys.stderr, flush=True,
                            )  # fmt: skip
    finally:
        if server is not None:
            server.stop()

    summary: dict[str, dict[str, dict[str, Any]]] = {}
    ratios: dict[str, dict[str, dict[str, float | None]]] = {}
    for case in cases:
        summary[case.name], ratios[case.name] = {}, {}
        for store in stores:
            chosen = [r for c, r in runs if c == case.name and r.store == store]
            summary[case.name][store] = {kind: wall_summary([r for r in chosen if r.kind == kind]) for kind in kinds}
            mine = summary[case.name][store].get("lakesink")
            ratios[case.name][store] = {
                kind: round(mine["rows_per_s"] / other["rows_per_s"], 2) if mine and other else None
                for kind, other in summary[case.name][store].items()
                if kind != "lakesink"
            }
    result = {
        "benchmark": "sizes",
        "when": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": {**machine(packages=PACKAGES), "load_average_at_start": load_at_start},
        "lakesink_measured": {**measured, "working_tree_sha256_at_end": sources_digest(ROOT / "lakesink")},
        "config": {
            "cases": [c.name for c in cases],
            "case_shapes": [asdict(c) for c in cases],
            "stores": stores,
            "kinds": kinds,
            "lakesink_args": lakesink_args,
            "lakesink_defaults": defaults,
            "dicts_rows": DICTS_ROWS,
            "repeat_note": _repeat_note(cases, args.repeat, quick=args.quick),
            "notes": [
                "small: the write_deltalake loop commits every 100,000 rows (20 commits), not per file (10,000 commits).",
                f"dlt (dicts) reads the first files up to {DICTS_ROWS:,} rows of each case.",
            ],
            "seconds_total": round(time.perf_counter() - started, 1),
        },
        "summary": summary,
        "ratios": ratios,
        "runs": [{"case": c, **asdict(r), "rss_timeline": []} for c, r in runs],
    }
    write_results(args.out, result)
    text = markdown(result)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    failed = [(c, r) for c, r in runs if not r.ok]
    for c, r in failed:
        print(f"FAILED: {c} {r.store} {r.kind} #{r.repetition + 1}: {r.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
