"""`lakesink vacuum`: delete the files that later commits removed from a table, once old enough.

`vacuum` and `gc` clear different files. gc deletes files that no commit ever named (staged by a
writer that crashed or lost a race). vacuum deletes files a commit did name and a later commit
removed (by compaction, a MERGE, a delete); older versions of the table still read them until then,
hence the retention.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lakesink.commit import vacuum
from lakesink.delta.table import TableHandle
from lakesink.errors import ConfigError, TableError
from lakesink.storage.options import StorageOptions
from lakesink.storage.uri import normalize_table_uri

DEFAULT_RETENTION_SECONDS = 7 * 86400.0
"""Delta's default `delta.deletedFileRetentionDuration`: readers of a version up to 7 days old keep working."""


@dataclass(frozen=True, slots=True)
class VacuumReport:
    table_uri: str
    retention_hours: int
    dry_run: bool
    files: list[str]
    table_version: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        return f"{verb} {len(self.files)} file(s) removed from {self.table_uri} more than {self.retention_hours} h ago"


def vacuum_table(
    table_uri: str,
    *,
    retention_seconds: float = DEFAULT_RETENTION_SECONDS,
    dry_run: bool = False,
    allow_short_retention: bool = False,
    storage_options: dict[str, str] | None = None,
) -> VacuumReport:
    """Delete (or only list, with `dry_run`) the files of `table_uri` that a commit removed more than
    `retention_seconds` ago (whole hours, as Delta counts them). A retention below the table's
    `delta.deletedFileRetentionDuration` is refused unless `allow_short_retention`: a reader or
    writer still on an older version would find its files gone.

    Raises:
        TableError: no Delta table at `table_uri`.
        ConfigError: a negative retention, or one below the table's minimum without `allow_short_retention`.
    """
    if retention_seconds < 0:
        raise ConfigError(f"retention must not be negative, not {retention_seconds!r}", options=("retention",))
    uri = normalize_table_uri(table_uri)
    options = StorageOptions.resolve(storage_options)
    handle = TableHandle.open(uri, options, writing=True)
    if handle is None:
        raise TableError(f"no Delta table at {uri}: check the path", options=("storage_options",))
    hours = int(retention_seconds // 3600)
    files = vacuum(handle, retention_hours=hours, dry_run=dry_run, enforce_retention=not allow_short_retention)
    version = handle.version()
    return VacuumReport(table_uri=uri, retention_hours=hours, dry_run=dry_run, files=sorted(files), table_version=version)
