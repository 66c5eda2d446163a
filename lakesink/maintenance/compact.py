"""`lakesink compact`: rewrite a table's small files into large ones, while writers keep committing."""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass

from lakesink.commit import compact
from lakesink.config import DEFAULT_TARGET_FILE_BYTES, positive_int
from lakesink.delta.table import TableHandle
from lakesink.display import dataclass_html
from lakesink.errors import ConfigError, TableError
from lakesink.storage.options import StorageOptions
from lakesink.storage.uri import normalize_table_uri

_CONDITION = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=|!=|<=|>=|<|>)\s*(?:'([^']*)'|\"([^\"]*)\"|([^\s,']+))\s*")


@dataclass(frozen=True, slots=True)
class CompactReport:
    """What a compaction did: live files before and after, files rewritten and written."""

    table_uri: str
    files_before: int
    files_after: int
    files_removed: int
    files_added: int
    table_version: int
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def _repr_html_(self) -> str:
        return dataclass_html(self)

    def summary(self) -> str:
        return (
            f"compacted {self.table_uri}: {self.files_removed} files rewritten into {self.files_added}; "
            f"{self.files_before} -> {self.files_after} live files (version {self.table_version}, {self.seconds:.1f} s)"
        )


def parse_partition_filter(text: str) -> list[tuple[str, str, str]]:
    """`day = 2026-11-01 AND region != 'eu'` (or comma-joined) as delta-rs partition filters.

    Raises:
        ConfigError: a part that is not `column OP value` (OP: = != < <= > >=).
    """
    filters = []
    for part in re.split(r"(?i)\s+and\s+|,", text.strip()):
        match = _CONDITION.fullmatch(part)
        if match is None:
            raise ConfigError(f"cannot read {part.strip()!r} in where={text!r}: use e.g. \"day = '2026-11-01' AND region = eu\"")
        column, op, *values = match.groups()
        filters.append((column, op, next(v for v in values if v is not None)))
    return filters


def compact_table(
    table_uri: str,
    *,
    target_bytes: int = DEFAULT_TARGET_FILE_BYTES,
    where: str | None = None,
    storage_options: dict[str, str] | None = None,
) -> CompactReport:
    """Rewrite the table's small files (in the partitions `where` selects) into files of about
    `target_bytes`, in one commit that changes no data (`dataChange=false`). Safe while ingest jobs
    commit to the table: their appends are kept as they are, and none of their commits fails
    because of it; readers see the same rows before and after.

    Raises:
        TableError: no Delta table at `table_uri`, or one lakesink cannot write.
        ConfigError: a `where` that cannot be read, or that names a column that is not a partition column.
        CommitConflict (transient): another compaction removed the same files first; rerun.
    """
    positive_int(target_bytes, what="target_bytes", unit="bytes")
    uri = normalize_table_uri(table_uri)
    options = StorageOptions.resolve(storage_options)
    handle = TableHandle.open(uri, options, writing=True)
    if handle is None:
        raise TableError(f"no Delta table at {uri}: check the path", options=("storage_options",))
    filters = parse_partition_filter(where) if where else None
    if filters:
        unknown = sorted({c for c, _, _ in filters} - set(handle.partition_columns()))
        if unknown:
            raise ConfigError(
                f"where={where!r} names {unknown}, which {'is not a' if len(unknown) == 1 else 'are not'} partition "
                f"column(s) of {uri} (partitioned by {handle.partition_columns() or 'nothing'})",
                options=("where",),
            )
    started = time.monotonic()
    before = handle.add_actions().num_rows
    metrics = compact(handle, target_bytes=target_bytes, partition_filters=filters)
    return CompactReport(
        table_uri=uri,
        files_before=before,
        files_after=handle.add_actions().num_rows,
        files_removed=int(metrics.get("numFilesRemoved", 0)),
        files_added=int(metrics.get("numFilesAdded", 0)),
        table_version=handle.version(),
        seconds=round(time.monotonic() - started, 3),
    )
