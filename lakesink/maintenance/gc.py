"""Garbage collection: delete staged files that no version of the table references, and orphan ledgers.

A batch is staged (Parquet under the table root, plus its source ledger) before it is committed. A
writer killed in between, a commit that lost to a concurrent copy of the job, or a zombie staging
different rows for a position leaves files that no commit will ever name. They are invisible to
readers but cost storage; `collect_garbage` removes them.

What counts as referenced: every path in an `add` or `remove` action of every log file still on the
store (all JSON commits, every checkpoint, not only the last). A version is readable only from a
checkpoint at or before it plus the commits after that checkpoint (or from all commits since 0), so
every file any readable version contains is in that union. Files only *removed* by a later commit
(compaction, overwrite) stay: dropping them breaks time travel and is VACUUM's job. A file whose
every mention the log's own retention has already cleaned up is in no readable version.

What is never deleted:
- a file younger than the grace period (`older_than`, by its modification time in the store's
  listing against the injected clock), or one a log entry still under its temporary name (a local
  commit being linked into place) younger than that names: a writer may be between staging it and
  committing it. The
  grace period must exceed the longest stage-to-commit time of any writer, plus clock skew between
  this host and the store;
- a ledger at or below its app id's committed position: resuming reads the latest one;
- anything under a hidden directory (`_delta_log/`, `_change_data/`, `.x/`) or under another Delta
  table nested in this one's root, and non-Parquet files other than lakesink's own interrupted temp
  files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta

from lakesink.delta.log_reader import paths_named_in_log, txn_versions
from lakesink.delta.table import TableHandle
from lakesink.errors import ConfigError, TableError
from lakesink.layout import LOG_DIR, app_slug, is_data_file, is_log_entry_temp, log_entry_version, parse_ledger_path
from lakesink.storage.objects import ObjectInfo, ObjectStore, open_store
from lakesink.storage.options import StorageOptions
from lakesink.storage.uri import normalize_table_uri

DEFAULT_GRACE = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class GcReport:
    """What one `collect_garbage` run found and (unless `dry_run`) deleted.

    `orphan_files` and `orphan_ledgers` are unreferenced and older than the grace period: deleted,
    or what would be deleted in a dry run. `kept_young` counts unreferenced data files (and
    `kept_young_ledgers` uncommitted ledgers) left alone because they are younger than that.
    """

    table_uri: str
    table_version: int
    dry_run: bool
    older_than_seconds: float
    data_files: int
    referenced_files: int
    orphan_files: tuple[str, ...]
    orphan_ledgers: tuple[str, ...]
    orphan_bytes: int
    kept_young: int
    kept_young_ledgers: int
    deleted: tuple[str, ...]
    deleted_bytes: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        found = len(self.orphan_files) + len(self.orphan_ledgers)
        done = f"would delete {found}" if self.dry_run else f"deleted {len(self.deleted)} of {found}"
        return (
            f"{self.data_files} data files, {self.referenced_files} referenced; {len(self.orphan_files)} orphan files and "
            f"{len(self.orphan_ledgers)} orphan ledgers older than {_duration(self.older_than_seconds)}: {done} "
            f"({self.deleted_bytes if not self.dry_run else self.orphan_bytes} bytes); kept {self.kept_young} young "
            f"unreferenced files and {self.kept_young_ledgers} young ledgers"
        )


def collect_garbage(
    table_uri: str,
    *,
    older_than: timedelta = DEFAULT_GRACE,
    dry_run: bool = False,
    storage_options: dict[str, str] | None = None,
    clock: Callable[[], float] = time.time,
    store: ObjectStore | None = None,
) -> GcReport:
    """Delete staged Parquet files no log entry names, and uncommitted ledgers, older than `older_than`.

    Safe to run while writers commit, as long as `older_than` exceeds any writer's time from staging a
    file to committing it. Interrupted, it leaves nothing half-done: rerun it.

    Raises:
        ConfigError: `older_than` is negative.
        TableError: there is no Delta table at `table_uri`, its log cannot be parsed, or a commit that
            landed during the run names a file this run deleted (the grace period was too short).
        StorageUnavailable: the store did not answer (rerun).
    """
    if older_than < timedelta(0):
        raise ConfigError(f"older_than must not be negative (got {older_than})")
    uri = normalize_table_uri(table_uri)
    options = StorageOptions.resolve(storage_options)
    store = store or open_store(uri, options)
    grace = older_than.total_seconds()

    # List the files before reading the log: a file committed before the log is read is then seen
    # as referenced, and one committed later was staged after the listing or is past the grace period.
    listed = store.list_files("")
    handle = TableHandle.open_existing(uri, options)
    log_files = store.list_files(LOG_DIR)
    now = clock()
    # A log entry still under its temporary name names the files of a commit in flight, which
    # protects them; one older than the grace period is a killed writer's, and protects nothing.
    in_flight = [f for f in log_files if not (is_log_entry_temp(f.path) and _age(f, now) >= grace)]
    referenced = paths_named_in_log(store, in_flight, table_uri=uri)
    newest = max([v for v in (log_entry_version(f.path) for f in log_files) if v is not None], default=handle.version())
    committed = {app_slug(app): position for app, position in txn_versions(store, up_to=newest).items()}

    nested = _nested_table_roots(listed)
    data = [f for f in listed if is_data_file(f.path) and not f.path.startswith(nested)]
    is_referenced = [f.path in referenced for f in data]
    unreferenced = [f for f, ref in zip(data, is_referenced, strict=True) if not ref]
    orphan_files = [f for f in unreferenced if _age(f, now) >= grace]
    ledgers = [f for f in listed if _is_uncommitted_ledger(f.path, committed)]
    orphan_ledgers = [f for f in ledgers if _age(f, now) >= grace]
    kept_young = len(unreferenced) - len(orphan_files)
    kept_young_ledgers = len(ledgers) - len(orphan_ledgers)

    deleted: list[ObjectInfo] = []
    if not dry_run:
        for info in [*orphan_files, *orphan_ledgers]:
            if _delete_if_unchanged(store, info, now=clock(), grace=grace):
                deleted.append(info)
            elif info in orphan_files:
                kept_young += 1
            else:
                kept_young_ledgers += 1
        _check_no_new_commit_names(store, log_files, [d for d in deleted if d in orphan_files], table_uri=uri)
    return GcReport(
        table_uri=uri,
        table_version=newest,
        dry_run=dry_run,
        older_than_seconds=grace,
        data_files=len(data),
        referenced_files=sum(is_referenced),
        orphan_files=tuple(f.path for f in orphan_files),
        orphan_ledgers=tuple(f.path for f in orphan_ledgers),
        orphan_bytes=sum(f.size for f in [*orphan_files, *orphan_ledgers]),
        kept_young=kept_young,
        kept_young_ledgers=kept_young_ledgers,
        deleted=tuple(f.path for f in deleted),
        deleted_bytes=sum(f.size for f in deleted),
    )


def _nested_table_roots(listed: list[ObjectInfo]) -> tuple[str, ...]:
    """`sub/dir/` for every Delta table inside this one's root: its files are named by its own log."""
    roots = {f.path.split(f"/{LOG_DIR}/", 1)[0] + "/" for f in listed if f"/{LOG_DIR}/" in f.path}
    return tuple(sorted(roots))


def _is_uncommitted_ledger(path: str, committed: dict[str, int]) -> bool:
    ledger = parse_ledger_path(path)
    if ledger is None:
        return False  # not a ledger lakesink wrote: not ours to judge
    if ledger.temp:
        return True  # an interrupted write; the ledger itself, if any, is under the final name
    position = committed.get(ledger.slug)
    return position is None or ledger.position > position


def _age(info: ObjectInfo, now: float) -> float:
    # S3 listings have one-second resolution: an object may look up to a second older than it is,
    # which a grace period of minutes or hours absorbs.
    return now - info.mtime_ns / 1e9


def _delete_if_unchanged(store: ObjectStore, info: ObjectInfo, *, now: float, grace: float) -> bool:
    """Delete `info` unless it was rewritten since the listing (re-staged by a rerun about to commit it)."""
    current = store.info(info.path)
    if current is None:
        return False
    # Whole seconds: a HEAD's Last-Modified has no fraction where a listing may (MinIO), and a
    # re-staged file is newer by at least the grace period anyway.
    rewritten = current.mtime_ns // 10**9 != info.mtime_ns // 10**9 or current.size != info.size
    if rewritten or _age(current, now) < grace:
        return False
    store.delete(info.path)
    return True


def _check_no_new_commit_names(store: ObjectStore, seen: list[ObjectInfo], deleted: list[ObjectInfo], *, table_uri: str) -> None:
    """Raise if a log file that appeared during the run names a deleted file.

    Only a writer slower than the grace period between staging and committing (or one re-staging a
    file in the instant between our check and our delete) gets here; gc cannot undo it, but it must
    say so rather than report success.
    """
    if not deleted:
        return
    before = {f.path for f in seen}
    new_files = [f for f in store.list_files(LOG_DIR) if f.path not in before]
    lost = sorted({d.path for d in deleted} & paths_named_in_log(store, new_files, table_uri=table_uri))
    if lost:
        raise TableError(
            f"a commit that landed while gc ran references {len(lost)} file(s) gc deleted: {', '.join(lost[:10])}. "
            "A writer took longer than the grace period between staging and committing. Restore the files from "
            "bucket versioning or a backup, run `lakesink verify`, and use a longer older_than.",
            options=("older_than",),
        )


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
