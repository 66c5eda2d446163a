"""`lakesink ingest --watch`: files ingested as they land (complete files only), SIGKILLs mixed in,
SIGTERM at a commit boundary with exit 0; every id exactly once, read by two readers."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from lakesink.sink import Sink
from lakesink.sources.files import FilePosition
from tests.support.checks import assert_exactly_once, assert_prefix_exactly_once
from tests.support.data import write_ndjson_files

ROWS = 60


def watch_args(source: Path, table: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lakesink", "ingest", str(source), str(table), "--app-id", "landing", "--watch",
            "--poll", "0.3s", "--batch-rows", "45", *extra]  # fmt: skip


def committed(table: Path) -> int | None:
    if not (table / "_delta_log").exists():
        return None
    with Sink(str(table), app_id="landing") as sink:
        return sink.committed_position()


def land(staging: Path, landing: Path, index: int, rng: random.Random) -> None:
    """File `index` (ids index*ROWS ..) lands: renamed into place whole, or written in pieces in place."""
    write_ndjson_files(staging / str(index), files=1, rows_per_file=ROWS, first_id=index * ROWS)
    body = (staging / str(index) / "part-00000.ndjson").read_bytes()
    final = landing / f"part-{index:05d}.ndjson"
    if rng.random() < 0.5:
        hidden = landing / f"_part-{index:05d}.ndjson.tmp"  # hidden until renamed: never read half-written
        hidden.write_bytes(body)
        hidden.rename(final)
    else:  # appended in place in three pieces: complete only once its size held over two polls
        with final.open("wb") as out:
            for piece in (body[: len(body) // 3], body[len(body) // 3 : 2 * len(body) // 3], body[2 * len(body) // 3 :]):
                out.write(piece)
                out.flush()
                time.sleep(0.05)


def test_a_watch_run_ingests_files_as_they_land_through_kills_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    rng = random.Random(3)
    landing, staging, table = tmp_path / "landing", tmp_path / "staging", tmp_path / "table"
    landing.mkdir()
    files = 24
    done = threading.Event()

    def writer() -> None:
        for index in range(files):
            land(staging, landing, index, rng)
            time.sleep(rng.uniform(0.0, 0.4))
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    kills = 0
    try:
        while not done.is_set():
            run = subprocess.Popen(watch_args(landing, table), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(rng.uniform(0.8, 2.5))
            run.send_signal(signal.SIGKILL)
            _, err = run.communicate()
            assert run.returncode == -signal.SIGKILL, err[-2000:]
            kills += 1
            position = committed(table)
            if position is not None:  # between kills: the committed prefix, each id once
                at = FilePosition.decode(position)
                assert_prefix_exactly_once(str(table), None, range(at.file_index * ROWS + at.row))
    finally:
        thread.join()
    final = subprocess.Popen([*watch_args(landing, table), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = FilePosition(files, 0).encode()
    deadline = time.monotonic() + 60
    while committed(table) != end and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)  # the earlier runs may have committed it all: let this one reach its polling loop first
    final.send_signal(signal.SIGTERM)
    out, err = final.communicate(timeout=60)
    assert final.returncode == 0, err[-2000:]
    report = json.loads(out)
    assert report["ok"] and report["stopped"] == "signal" and report["end_position"] == end
    assert kills >= 2
    assert_exactly_once(str(table), None, range(files * ROWS))


def test_sigterm_in_the_middle_of_a_backlog_commits_what_was_read_and_exits_0(tmp_path: Path) -> None:
    landing, table = tmp_path / "landing", tmp_path / "table"
    dataset = write_ndjson_files(landing, files=30, rows_per_file=3000)
    run = subprocess.Popen([*watch_args(landing, table), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env={**os.environ, "LAKESINK_LOG": ""})  # fmt: skip
    deadline = time.monotonic() + 60
    while committed(table) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err[-2000:]
    stopped_at = json.loads(out)["end_position"]
    assert stopped_at is not None and stopped_at < dataset.end_position  # it did stop early
    assert_exactly_once(str(table), None, dataset.ids_before(stopped_at))
    # status decodes the position (file, record) and says what is left of the source.
    status = subprocess.run([sys.executable, "-m", "lakesink", "status", str(table), "--source", str(landing), "--json"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    (app,) = json.loads(status.stdout)["apps"]
    at = FilePosition.decode(stopped_at)
    assert (app["app_id"], app["position"], app["file_index"], app["record"]) == ("landing", stopped_at, at.file_index, at.row)
    left = sorted(landing.iterdir())[at.file_index :]
    assert (app["lag_files"], app["lag_bytes"]) == (len(left), sum(p.stat().st_size for p in left))
    assert app["last_commit"] and app["last_file"]
    # The next run carries on from there.
    again = subprocess.run([sys.executable, "-m", "lakesink", "ingest", str(landing), str(table), "--app-id", "landing"],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert_exactly_once(str(table), None, dataset.ids)


def test_a_watch_run_compacts_between_polls_every_n_commits(tmp_path: Path) -> None:
    from lakesink.ingest.watch import watch
    from tests.support.checks import table_files

    dataset = write_ndjson_files(tmp_path / "landing", files=8, rows_per_file=50)
    table = tmp_path / "table"
    report = watch(str(dataset.directory), str(table), app_id="landing", stop=threading.Event(), poll_seconds=0.05,
                   max_rounds=3, batch_rows=20, compact_every=5)  # fmt: skip
    assert report.stopped == "rounds" and report.commits == 20 and report.end_position == dataset.end_position
    assert len(table_files(str(table), None)) == 1  # 20 small files compacted into one
    assert_exactly_once(str(table), None, dataset.ids)
