"""`lakesink ingest --watch`: keep ingesting a landing zone as files arrive, exactly once, until stopped.

Each poll lists the source. A file is read once it is complete: its name is visible (names starting
with `.` or `_` are skipped, so a writer can upload under such a name and rename it when done) and
its size and modification time were the same at two polls in a row. Only the complete files up to
the first incomplete one, in name order, are read, so a file still being written never has a later
one ingested before it (the file contract: new files sort after ingested ones). Each round is an
ordinary `ingest` of that prefix: it commits by the commit interval and resumes from the table's
`txn`, so a SIGKILL at any moment is as safe as in a single run. `stop` ends the run at a commit
boundary.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lakesink.commit import compact
from lakesink.config import DEFAULT_MAX_RECORD_BYTES, DEFAULT_TARGET_FILE_BYTES, Shard, positive_int
from lakesink.delta.table import TableHandle
from lakesink.errors import ConfigError
from lakesink.ingest.report import IngestReport
from lakesink.ingest.run import ingest_files
from lakesink.ingest.shards import check_shard_layout
from lakesink.layout import shard_app_id
from lakesink.metrics import METRICS
from lakesink.sink import Sink
from lakesink.sources.files import FilePosition, FileSource, Format
from lakesink.storage.options import StorageOptions

log = logging.getLogger(__name__)

DEFAULT_POLL_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class WatchReport:
    """What a watch run did over all its rounds. `stopped` is "signal" or "rounds"."""

    source: str
    table_uri: str
    app_id: str
    rounds: int
    ingests: int
    files_read: int
    rows_written: int
    commits: int
    end_position: int | None
    stopped: str
    seconds: float
    last: IngestReport | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source, "table_uri": self.table_uri, "app_id": self.app_id, "rounds": self.rounds,
            "ingests": self.ingests, "files_read": self.files_read, "rows_written": self.rows_written,
            "commits": self.commits, "end_position": self.end_position, "stopped": self.stopped,
            "seconds": round(self.seconds, 3),
        }  # fmt: skip


def complete_prefix(listing: Sequence[tuple[str, int, int]], previous: dict[str, tuple[int, int]]) -> int:
    """How many files, from the first in name order, look complete: listed with the same size and
    modification time at the previous poll. The first file that changed (or is new) ends the prefix."""
    count = 0
    for path, size, mtime in listing:
        if previous.get(path) != (size, mtime):
            break
        count += 1
    return count


def watch(
    source: str,
    table_uri: str,
    *,
    app_id: str,
    stop: threading.Event,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    max_rounds: int | None = None,
    format: Format | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    storage_options: dict[str, str] | None = None,
    on_round: Callable[[WatchReport], None] | None = None,
    compact_every: int | None = None,
    shard: Shard | tuple[int, int] | str | None = None,
    **options: object,
) -> WatchReport:
    """Ingest the files at `source` into `table_uri` as they land, until `stop` is set (or after
    `max_rounds` polls); every stop is at a commit boundary. `options` are `ingest`'s (commit
    interval, write config, partitioning, bad records, schema, ...). With `compact_every`, the table's
    small files are compacted (lakesink.commit.compact, a commit of its own that changes no data)
    between rounds once this run made that many commits since the last compaction. With `shard`
    (I, N), only shard I of N of the files is watched, as `ingest` reads it: completeness and order
    are judged among that shard's files, and it commits under `<app_id>/shard-I-of-N`.

    Raises:
        as `ingest`; ConfigError for a poll interval that is not positive.
    """
    if not poll_seconds > 0:
        raise ConfigError(f"the poll interval must be positive, not {poll_seconds!r}")
    if max_rounds is not None:
        positive_int(max_rounds, what="max_rounds")
    if compact_every is not None:
        positive_int(compact_every, what="compact_every", unit="commits")
    split = Shard.of(shard) if shard is not None else None
    txn_app_id = shard_app_id(app_id, split.index, split.count) if split is not None else app_id
    compacted_at = 0
    resolved = StorageOptions.resolve(storage_options)
    started = time.monotonic()
    seen: dict[str, tuple[int, int]] = {}
    rounds = ingests = files_read = rows = commits = 0
    last: IngestReport | None = None
    position: int | None = None

    def report(stopped: str) -> WatchReport:
        return WatchReport(source, table_uri, txn_app_id, rounds, ingests, files_read, rows, commits, position, stopped,
                           time.monotonic() - started, last)  # fmt: skip

    with Sink(table_uri, app_id=txn_app_id, storage_options=dict(resolved.values)) as sink:
        check_shard_layout(sink, app_id=app_id, shard=split)  # at the start, not once files land
        position = sink.committed_position()
    while not stop.is_set():
        rounds += 1
        files = _listing(source, format, resolved, max_record_bytes)
        if files is not None and split is not None:
            files = files.sharded(split)
        listing = [(f.path, f.size, f.mtime_ns) for f in files.files] if files is not None else []
        ready = complete_prefix(listing, seen)
        seen = {path: (size, mtime) for path, size, mtime in listing}
        covered = FilePosition.decode(position).file_index if position is not None else 0
        if files is not None and ready > covered:
            log.info("watch: %d complete file(s) not ingested yet; ingesting", ready - covered)
            last = ingest_files(files.first(ready), table_uri, app_id=app_id, storage_options=resolved, stop=stop,
                                **options)  # type: ignore[arg-type]  # fmt: skip
            ingests += 1
            files_read += max(0, last.files_read - covered)
            rows += last.rows_written
            commits += last.commits
            position = last.end_position
        if compact_every is not None and commits - compacted_at >= compact_every:
            _compact(table_uri, resolved)
            compacted_at = commits
        covered = FilePosition.decode(position).file_index if position is not None else 0
        left = files.files[covered:] if files is not None else []
        METRICS.set("lakesink_source_lag_files", len(left), app_id=txn_app_id, table=table_uri)
        METRICS.set("lakesink_source_lag_bytes", sum(f.size for f in left), app_id=txn_app_id, table=table_uri)
        if on_round is not None:
            on_round(report(""))
        if max_rounds is not None and rounds >= max_rounds:
            return report("rounds")
        stop.wait(poll_seconds)
    return report("signal")


def _compact(table_uri: str, options: StorageOptions) -> None:
    handle = TableHandle.open(table_uri, options, writing=True)
    if handle is not None:
        target = int(str(handle.configuration().get("delta.targetFileSize", DEFAULT_TARGET_FILE_BYTES)))
        compact(handle, target_bytes=target)


def _listing(source: str, format: Format | None, options: StorageOptions, max_record_bytes: int) -> FileSource | None:
    """The source as listed now; None while it holds no file yet (a landing zone may start empty)."""
    try:
        return FileSource(source, format=format, storage_options=options, max_record_bytes=max_record_bytes)
    except ConfigError as exc:
        if "no files found" in str(exc):
            return None
        raise
