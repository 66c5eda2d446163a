#!/usr/bin/env python
"""How long does the `lakesink` command take to start, and to reach the first byte of its source?

    python benchmarks/startup.py                           # 7 runs of each command
    python benchmarks/startup.py --quick                   # 3 runs
    python benchmarks/startup.py --save-as startup-before  # results/startup-before.{json,md}
    python benchmarks/startup.py --baseline startup-before # adds a before/after table from that file
    python benchmarks/startup.py --rev 0089968 --save-as startup-before   # lakesink/ as committed there

Each run is a fresh process of the installed `lakesink` script (the one beside this Python), run
against a copy of lakesink/ taken at the start: the working tree's, or as committed at `--rev` (as
in throughput.py: others edit this tree). The copy is put first on PYTHONPATH and byte-compiled at
once, so no run compiles lakesink's sources; a discarded warm-up run of each command comes first.
It measures, from outside, without instrumenting lakesink:

(a) `lakesink --version`: wall time of the process;
(b) `lakesink --help`: wall time;
(c) `lakesink ingest --help`: wall time;
(d) `lakesink ingest SRC TABLE --app-id a --json --no-progress`, SRC one NDJSON file of 100
    records, TABLE a fresh local table each run: wall time without tracing; and, in a separate run
    under `strace -f --seccomp-bpf -ttt -e trace=execve,openat`, the time from the execve of the
    script to the first openat of SRC (the listing opens the folder) and to the first openat of a
    file under SRC (its first byte is read right after). strace slows each traced syscall (every
    module file opened is one), so those figures are somewhat high; the untraced wall time is
    the plain figure.
(f) `PYTHONPROFILEIMPORTTIME=1` (what `python -X importtime` prints) for each command, once: the
    sum of every module's own import time, the top 15 modules by cumulative time, and which heavy
    third-party modules were imported at all.
(e) `python -c pass` and `python -c "import click"`: the floor any Python CLI pays.

Output: benchmarks/results/startup.json and startup.md (also printed); `--quick` writes
startup-quick.*; `--save-as NAME` writes NAME.*. Medians, min and max over the runs, in ms.
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import json
import os
import re
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
    sys.path.insert(0, str(ROOT))

from benchmarks._machine import describe, machine, write_results  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
RUNS, QUICK_RUNS = 7, 3
RECORDS = 100
TOP = 15
# Modules the start of a command should not pay for unless it uses them (issue 15).
HEAVY = (
    "pyarrow",
    "pyarrow.compute",
    "pyarrow.dataset",
    "pyarrow.parquet",
    "numpy",
    "deltalake",
    "polars",
    "pandas",
    "boto3",
    "botocore",
    "psycopg2",
    "prometheus_client",
    "rich",
)
STRACE = shutil.which("strace") or "/usr/bin/strace"


def lakesink_program() -> list[str]:
    script = Path(sys.executable).with_name("lakesink")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lakesink"]


def write_source(folder: Path) -> Path:
    src = folder / "src"
    src.mkdir()
    lines = [json.dumps({"id": i, "user": f"u{i % 7}", "amount": i * 1.5, "day": "2024-03-01"}) for i in range(RECORDS)]
    (src / "part-000.ndjson").write_text("\n".join(lines) + "\n")
    return src


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    return (time.perf_counter() - started) * 1e3, done


def check(done: subprocess.CompletedProcess[str], what: str) -> None:
    if done.returncode != 0:
        raise SystemExit(f"{what} failed ({done.returncode}): {done.stderr[-2000:]}")


_LINE = re.compile(r"^(?:\d+\s+)?(?P<ts>\d+\.\d+)\s+(?P<call>execve|openat)\((?P<args>.*)$")


def first_opens(trace: str, src: Path) -> tuple[float | None, float | None]:
    """(ms from the first execve to the first openat of SRC, ... of a file under SRC) in an strace -f -ttt log."""
    start = first_src = first_file = None
    prefix = str(src)
    for line in trace.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        ts = float(m["ts"])
        if m["call"] == "execve":
            start = ts if start is None else start
            continue
        path = re.search(r'"((?:[^"\\]|\\.)*)"', m["args"])
        if start is None or path is None or "= -1" in m["args"]:
            continue
        name = path[1]
        if name == prefix or name.startswith(prefix + "/"):
            first_src = (ts - start) * 1e3 if first_src is None else first_src
            if name != prefix and "O_DIRECTORY" not in m["args"]:
                first_file = (ts - start) * 1e3
                break
    return first_src, first_file


def importtime(cmd: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    done = subprocess.run(cmd, env={**env, "PYTHONPROFILEIMPORTTIME": "1"}, cwd=cwd, capture_output=True, text=True, check=False)
    check(done, " ".join(cmd))
    rows = []
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)", line)
        if m:
            rows.append((int(m[1]), int(m[2]), (len(m[3]) - 1) // 2, m[4]))
    names = {name for _, _, _, name in rows}
    top = sorted(rows, key=lambda r: -r[1])[:TOP]
    return {
        "modules": len(rows),
        "self_total_ms": round(sum(r[0] for r in rows) / 1e3, 1),
        "top_cumulative": [
            {"module": n, "cumulative_ms": round(c / 1e3, 1), "self_ms": round(s / 1e3, 1), "depth": d} for s, c, d, n in top
        ],
        "heavy_imported": [h for h in HEAVY if h in names],
        "lakesink_modules": sorted(n for n in names if n.startswith("lakesink")),
    }


def stats(values: list[float | None]) -> dict[str, Any]:
    xs = [v for v in values if v is not None]
    if not xs:
        return {"median_ms": None, "min_ms": None, "max_ms": None, "runs_ms": []}
    return {
        "median_ms": round(statistics.median(xs), 1),
        "min_ms": round(min(xs), 1),
        "max_ms": round(max(xs), 1),
        "runs_ms": [round(x, 1) for x in values if x is not None],
    }


def snapshot(into: Path, rev: str | None) -> dict[str, Any]:
    """lakesink/ as it is now (or at git revision `rev`) copied into `into`, byte-compiled; which lakesink that is."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    if rev is None:
        shutil.copytree(ROOT / "lakesink", into / "lakesink", ignore=shutil.ignore_patterns("__pycache__"))
    else:
        into.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", "--format=tar", rev, "lakesink"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    # Bytecode now, as an install has it: runs must not compile (PYTHONDONTWRITEBYTECODE may be set).
    compileall.compile_dir(into / "lakesink", quiet=1)
    digest = hashlib.sha256()
    for path in sorted((into / "lakesink").rglob("*.py")):
        digest.update(path.relative_to(into).as_posix().encode() + b"\0" + path.read_bytes())
    return {
        "commit": git("rev-parse", rev or "HEAD") or None,
        "uncommitted_changes_in_lakesink": False if rev else bool(git("status", "--porcelain", "--", "lakesink")),
        "sources_sha256": digest.hexdigest()[:16],
    }


def run(runs: int, rev: str | None) -> dict[str, Any]:
    program = lakesink_program()
    with tempfile.TemporaryDirectory(prefix="lakesink-startup-") as tmp:
        scratch = Path(tmp)
        measured = snapshot(scratch / "measured", rev)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(scratch / "measured"), os.environ.get("PYTHONPATH")])),
        }
        env.pop("PYTHONPROFILEIMPORTTIME", None)
        src = write_source(scratch)
        version, help_ = [*program, "--version"], [*program, "--help"]
        ingest_help = [*program, "ingest", "--help"]

        def ingest(i: int, tag: str) -> list[str]:
            return [*program, "ingest", str(src), str(scratch / f"table-{tag}-{i}"), "--app-id", "a", "--json", "--no-progress"]

        for cmd in (version, help_, ingest_help, ingest(0, "warm")):  # compiles the copy's bytecode
            check(subprocess.run(cmd, env=env, cwd=scratch, capture_output=True, text=True, check=False), " ".join(cmd))
        floor_pass: list[float | None] = []
        floor_click: list[float | None] = []
        t_version: list[float | None] = []
        t_help: list[float | None] = []
        t_ingest_help: list[float | None] = []
        t_ingest: list[float | None] = []
        t_traced: list[float | None] = []
        t_src: list[float | None] = []
        t_file: list[float | None] = []
        for i in range(runs):
            floor_pass.append(timed([sys.executable, "-c", "pass"], env, scratch)[0])
            floor_click.append(timed([sys.executable, "-c", "import click"], env, scratch)[0])
            for cmd, into in ((version, t_version), (help_, t_help), (ingest_help, t_ingest_help)):
                ms, done = timed(cmd, env, scratch)
                check(done, " ".join(cmd))
                into.append(ms)
            ms, done = timed(ingest(i, "plain"), env, scratch)
            check(done, "ingest")
            if json.loads(done.stdout.strip().splitlines()[-1]).get("rows_written") != RECORDS:
                raise SystemExit(f"ingest did not write {RECORDS} rows: {done.stdout}")
            t_ingest.append(ms)
            log = scratch / f"strace-{i}.txt"
            ms, done = timed(
                [STRACE, "-f", "--seccomp-bpf", "-ttt", "-e", "trace=execve,openat", "-o", str(log), *ingest(i, "traced")],
                env,
                scratch,
            )
            check(done, "strace ingest")
            t_traced.append(ms)
            first_src, first_file = first_opens(log.read_text(), src)
            t_src.append(first_src)
            t_file.append(first_file)
            print(
                f"run {i + 1}/{runs}: --version {t_version[-1]:.0f} ms, --help {t_help[-1]:.0f} ms, "
                f"ingest {t_ingest[-1]:.0f} ms, "
                f"first source file opened at {first_file or float('nan'):.0f} ms (traced)",
                file=sys.stderr,
                flush=True,
            )
        imports = {
            "version": importtime(version, env, scratch),
            "help": importtime(help_, env, scratch),
            "ingest_help": importtime(ingest_help, env, scratch),
            "ingest": importtime(ingest(0, "importtime"), env, scratch),
        }
    return {
        "lakesink_measured": measured,
        "commands": {
            "version": " ".join(["lakesink", "--version"]),
            "help": "lakesink --help",
            "ingest_help": "lakesink ingest --help",
            "ingest": f"lakesink ingest SRC TABLE --app-id a --json --no-progress (SRC: 1 NDJSON file, {RECORDS} records)",
        },
        "wall": {
            "python_pass": stats(floor_pass),
            "python_import_click": stats(floor_click),
            "version": stats(t_version),
            "help": stats(t_help),
            "ingest_help": stats(t_ingest_help),
            "ingest": stats(t_ingest),
            "ingest_traced": stats(t_traced),
        },
        "ingest_traced": {
            "note": "strace -f --seccomp-bpf -ttt -e trace=execve,openat; ms from the script's execve; "
            "strace slows syscalls a little",
            "first_open_of_src": stats(t_src),
            "first_open_of_source_file": stats(t_file),
        },
        "importtime": imports,
    }


ROWS = (
    ("python -c pass (floor)", ("wall", "python_pass")),
    ('python -c "import click" (floor)', ("wall", "python_import_click")),
    ("`lakesink --version`", ("wall", "version")),
    ("`lakesink --help`", ("wall", "help")),
    ("`lakesink ingest --help`", ("wall", "ingest_help")),
    ("`lakesink ingest` (100 records), whole run", ("wall", "ingest")),
    ("`lakesink ingest`, first open of a source file (strace)", ("ingest_traced", "first_open_of_source_file")),
    ("`lakesink ingest`, whole run under strace", ("wall", "ingest_traced")),
)


def _fmt(s: dict[str, Any]) -> str:
    return "-" if s.get("median_ms") is None else f"{s['median_ms']:.0f} ({s['min_ms']:.0f}-{s['max_ms']:.0f})"


def markdown(result: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    m = result["lakesink_measured"]
    lines = [
        f"Measured {result['when']} on {describe(result['machine'])}; load average at start "
        f"{result['machine']['load_average_1_5_15']}; lakesink at {(m['commit'] or '?')[:10]}"
        f"{' + uncommitted changes' if m['uncommitted_changes_in_lakesink'] else ''} (sources {m['sources_sha256']}); "
        f"{result['config']['runs']} runs of each, fresh process each; ms, median (min-max).",
        "",
    ]
    if baseline is not None:
        b = baseline["lakesink_measured"]
        lines += [
            f"Before: {baseline['label']} ({baseline['when']}, lakesink at {(b['commit'] or '?')[:10]}"
            f"{' + uncommitted changes' if b['uncommitted_changes_in_lakesink'] else ''}).",
            "",
            "| command | before | after | change (medians) |",
            "| --- | ---: | ---: | ---: |",
        ]
        for label, (group, key) in ROWS:
            before, after = baseline[group][key], result[group][key]
            change = "-"
            if before.get("median_ms") and after.get("median_ms"):
                change = f"{after['median_ms'] - before['median_ms']:+.0f} ms"
            lines.append(f"| {label} | {_fmt(before)} | {_fmt(after)} | {change} |")
    else:
        lines += ["| command | ms |", "| --- | ---: |"] + [f"| {label} | {_fmt(result[g][k])} |" for label, (g, k) in ROWS]
    lines += ["", "strace slows each traced syscall a little: the first-open figures are slightly high.", ""]
    for name, imp in result["importtime"].items():
        lines += [
            f"`{result['commands'][name]}`, PYTHONPROFILEIMPORTTIME (one run): {imp['modules']} modules, "
            f"{imp['self_total_ms']:.0f} ms of imports in all; "
            f"heavy modules imported: {', '.join(imp['heavy_imported']) or 'none'}.",
            "",
            "| module (top by cumulative) | cumulative ms | self ms |",
            "| --- | ---: | ---: |",
            *[
                f"| {'&nbsp;' * 2 * t['depth']}{t['module']} | {t['cumulative_ms']:.1f} | {t['self_ms']:.1f} |"
                for t in imp["top_cumulative"]
            ],
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} runs instead of {RUNS}")
    parser.add_argument("--runs", type=int, help="runs of each command")
    parser.add_argument("--save-as", metavar="NAME", help="write results/NAME.json and .md (default startup[-quick])")
    parser.add_argument("--label", help="a label kept in the JSON (default: the --save-as name)")
    parser.add_argument("--rev", help="measure lakesink/ as committed at this git revision (default: the working tree)")
    parser.add_argument("--baseline", metavar="NAME", help="compare with results/NAME.json (e.g. startup-before)")
    args = parser.parse_args(argv)
    runs = args.runs or (QUICK_RUNS if args.quick else RUNS)
    name = args.save_as or ("startup-quick" if args.quick else "startup")
    baseline = json.loads((RESULTS / f"{args.baseline}.json").read_text()) if args.baseline else None
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "startup",
        "label": args.label or name,
        "when": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine(),
        "config": {"runs": runs, "records": RECORDS, "program": lakesink_program()},
    }
    result.update(run(runs, args.rev))
    if baseline is not None:
        result["baseline"] = {k: baseline[k] for k in ("label", "when", "lakesink_measured", "wall", "ingest_traced")}
        result["baseline"]["importtime"] = {
            k: {"self_total_ms": v["self_total_ms"], "heavy_imported": v["heavy_imported"]}
            for k, v in baseline["importtime"].items()
        }
    result["config"]["seconds_total"] = round(time.perf_counter() - started, 1)
    out = RESULTS / f"{name}.json"
    write_results(out, result)
    table = markdown(result, baseline)
    out.with_suffix(".md").write_text(table)
    print()
    print(table)
    print(f"results: {out}, {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
