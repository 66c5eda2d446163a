#!/usr/bin/env python
"""The commit-rate ceiling of one table: commits/s and rows/s with 1, 2, 4 and 8 writer processes
appending to it at once, each with its own app id (as `lakesink ingest --shard I/N` runs), on local
disk and on a moto S3 server.

    python benchmarks/commit_rate.py               # 1, 2, 4, 8 writers x local, s3; 20 s each (~4 min)
    python benchmarks/commit_rate.py --quick       # 1, 2, 4 writers, 8 s each
    python benchmarks/commit_rate.py --writers 1,8 --stores s3 --seconds 30 --rows 1000

Each writer is a real process with one open `lakesink.Sink`, writing batches of `--rows` rows at
growing positions as fast as it can for `--seconds` (all start at the same instant). Every commit is a
create-only write of the next log entry; two writers racing for one version make one of them read
the winner's entry and try the next version (a conflict), so the table's commit rate is bounded by
one log entry at a time, whatever the number of writers. Reported per configuration: commits/s and
rows/s of the whole table, conflicts per commit, and each writer's commit latency (p50, p99), from
lakesink's own metrics. Results: benchmarks/results/commit_rate.json / .md / .png (`--quick`:
commit_rate-quick.*). The table is checked afterwards: every writer's rows once, versions contiguous.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"


def worker(uri: str, index: int, rows: int, seconds: float, start_at: float, options: dict[str, str]) -> dict[str, Any]:
    """One writer: commits until the time is up; its figures as JSON."""
    import pyarrow as pa

    from lakesink import Sink
    from lakesink.metrics import METRICS

    app_id = f"writer-{index}"
    with Sink(uri, app_id=app_id, storage_options=options) as sink:
        base = index * 1_000_000_000
        batches = [pa.table({"id": pa.array(range(base + k * rows, base + (k + 1) * rows), pa.int64()),
                             "writer": pa.array([index] * rows, pa.int32())}) for k in range(2)]  # fmt: skip
        time.sleep(max(0.0, start_at - time.time()))
        deadline = time.monotonic() + seconds
        latencies: list[float] = []
        position = 0
        while time.monotonic() < deadline:
            position += 1
            batch = batches[position % 2]
            ids = pa.array(range(base + position * rows, base + (position + 1) * rows), pa.int64())
            began = time.monotonic()
            result = sink.write(batch.set_column(0, "id", ids), position=position)
            latencies.append(time.monotonic() - began)
            assert result.committed, result
        labels = {"app_id": app_id, "table": sink.uri}
        return {
            "writer": index,
            "commits": position,
            "rows": position * rows,
            "conflicts": METRICS.value("lakesink_commit_conflicts_total", **labels),
            "retries": METRICS.value("lakesink_commit_retries_total", **labels),
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * sorted(latencies)[int(0.99 * (len(latencies) - 1))],
        }


def run(store: str, writers: int, *, rows: int, seconds: float, moto: Any, workdir: Path) -> dict[str, Any]:
    import pyarrow as pa

    from lakesink import Sink

    if store == "local":
        uri, options = str(workdir / f"table-{store}-{writers}"), {}
    else:
        bucket = f"rate-{writers}-{int(time.time() * 1000) % 10**9}"
        moto.create_bucket(bucket)
        uri, options = f"s3://{bucket}/table", moto.storage_options()
    with Sink(uri, app_id="setup", storage_options=options) as setup:  # the table exists before the race
        setup.ensure_table(pa.schema([pa.field("id", pa.int64()), pa.field("writer", pa.int32())]))
    start_at = time.time() + 4.0  # every worker has imported and opened the table by then
    args = [sys.executable, __file__, "--worker", uri, "--rows", str(rows), "--seconds", str(seconds),
            "--start-at", str(start_at), "--options", json.dumps(options)]  # fmt: skip
    procs = [subprocess.Popen([*args, "--index", str(i)], stdout=subprocess.PIPE, text=True) for i in range(writers)]
    outputs = [p.communicate(timeout=seconds + 300)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a writer failed: {[p.returncode for p in procs]}")
    each = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    commits = sum(w["commits"] for w in each)
    checked = check(uri, options, each, rows=rows)
    return {
        "store": store,
        "writers": writers,
        "seconds": seconds,
        "rows_per_commit": rows,
        "commits": commits,
        "commits_per_s": commits / seconds,
        "rows_per_s": commits * rows / seconds,
        "conflicts": sum(w["conflicts"] for w in each),
        "conflicts_per_commit": sum(w["conflicts"] for w in each) / max(1, commits),
        "retries": sum(w["retries"] for w in each),
        "p50_ms": statistics.median(w["p50_ms"] for w in each),
        "p99_ms": max(w["p99_ms"] for w in each),
        "per_writer_commits": [w["commits"] for w in each],
        "check": checked,
    }


def check(uri: str, options: dict[str, str], each: list[dict[str, Any]], *, rows: int) -> str:
    """Every writer's rows once and the log's versions contiguous, or a SystemExit saying what is wrong."""
    from deltalake import DeltaTable

    table = DeltaTable(uri, storage_options=options or None)
    ids = table.to_pyarrow_table(columns=["id"]).column("id").to_pylist()
    expected = {w["writer"] * 1_000_000_000 + k for w in each for k in range(rows, (w["commits"] + 1) * rows)}
    if len(ids) != len(expected) or set(ids) != expected:
        raise SystemExit(f"{uri}: {len(ids)} rows, {len(set(ids))} distinct, {len(expected)} expected")
    versions = [entry["version"] for entry in table.history()]
    if sorted(versions) != list(range(table.version() + 1)):
        raise SystemExit(f"{uri}: versions not contiguous")
    return f"{len(ids)} rows once, versions 0..{table.version()}"


def report(results: list[dict[str, Any]], name: str, load: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"load": load, "results": results}, indent=2))
    lines = [
        f"# Commit rate of one table ({load})", "",
        "| store | writers | commits/s | rows/s | conflicts/commit | p50 ms | p99 ms | commits per writer | check |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]  # fmt: skip
    for r in results:
        lines.append(
            f"| {r['store']} | {r['writers']} | {r['commits_per_s']:.1f} | {r['rows_per_s']:,.0f} | "
            f"{r['conflicts_per_commit']:.2f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['per_writer_commits']} | "
            f"{r['check']} |"
        )
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for store in sorted({r["store"] for r in results}):
        mine = [r for r in results if r["store"] == store]
        ax.plot([r["writers"] for r in mine], [r["commits_per_s"] for r in mine], marker="o", label=store)
    ax.set_xlabel("writer processes")
    ax.set_ylabel("commits/s (whole table)")
    ax.set_title("Commit rate of one table")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--writers", default=None, help="comma-separated writer counts (default 1,2,4,8)")
    parser.add_argument("--stores", default="local,s3")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--rows", type=int, default=1000, help="rows per commit")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        out = worker(args.worker, args.index, args.rows, args.seconds, args.start_at, json.loads(args.options))
        print(json.dumps(out))
        return
    counts = [int(w) for w in (args.writers or ("1,2,4" if args.quick else "1,2,4,8")).split(",")]
    seconds = args.seconds or (8.0 if args.quick else 20.0)
    from tests.support.moto_server import start_moto_server

    moto = start_moto_server() if "s3" in args.stores else None
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for store in args.stores.split(","):
                for writers in counts:
                    result = run(store, writers, rows=args.rows, seconds=seconds, moto=moto, workdir=Path(tmp))
                    print(json.dumps(result), flush=True)
                    results.append(result)
    finally:
        if moto is not None:
            moto.stop()
    load = f"load average {os.getloadavg()[0]:.1f} at the end, {os.cpu_count()} cores"
    report(results, "commit_rate-quick" if args.quick else "commit_rate", load)


if __name__ == "__main__":
    main()
