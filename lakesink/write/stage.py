"""Stage a batch: Arrow rows → Parquet files on the store, with Delta stats, under deterministic names.

A file's name is derived from (app id, position, part, content digest) (lakesink.layout). Re-staging
the same batch after a crash therefore finds the same object and never adds a copy (nor rewrites a
file a commit names: it is created only if absent), and a zombie writer staging *different* rows for
the same position gets other names (its digest differs).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from lakesink.crashpoints import crash_point
from lakesink.delta.log_entry import StagedFile
from lakesink.errors import SchemaMismatch
from lakesink.layout import data_file_path
from lakesink.storage.objects import ObjectStore
from lakesink.write.partitions import split_by_partition
from lakesink.write.stats import (
    DEFAULT_STATS_COLUMNS,
    FloatColumns,
    StatsColumns,
    parquet_statistics_columns,
    stats_from_parquet,
)


def stage_batch(
    store: ObjectStore,
    data: pa.Table,
    *,
    app_id: str,
    position: int,
    partition_by: Sequence[str] = (),
    stats: StatsColumns = DEFAULT_STATS_COLUMNS,
    existing: list[tuple[str, bytes]] | None = None,
) -> list[StagedFile]:
    """Write `data` (already fitted to the table schema) as one Parquet file per partition.

    With `existing`, a file already on the store (a commit may name it: never overwrite it) is
    left as it is, and its path and bytes are added to `existing` for the caller to decide.

    Raises:
        SchemaMismatch: a partition column of a type Delta cannot partition by, or a value the
            table does not take (a null where it requires a value).
        StorageUnavailable: the store refused or timed out.
    """
    if data.num_rows == 0:
        return []  # the commit still records the position; an empty Parquet file would only cost reads
    staged = []
    for part, (values, rows) in enumerate(split_by_partition(data, partition_by)):
        if part == 1:
            crash_point("mid_stage")  # the first file is on the store, the rest are not
        body, metadata = _parquet_bytes(rows)
        floats = FloatColumns()
        floats.add(rows)
        digest = hashlib.sha256(body).hexdigest()[:16]
        object_path = data_file_path(values, position=position, part=part, app_id=app_id, tag=digest)
        if existing is None:
            store.write_bytes(object_path, body)
        elif not store.create_bytes(object_path, body):
            existing.append((object_path, body))
        staged.append(
            StagedFile(
                path=object_path,
                size=len(body),
                partition_values=values,
                stats=stats_from_parquet(metadata, rows.schema, floats=floats, columns=stats),
                num_records=rows.num_rows,
            )
        )
    return staged


def _parquet_bytes(rows: pa.Table) -> tuple[bytes, pq.FileMetaData]:
    sink = pa.BufferOutputStream()
    writer = parquet_writer(sink, rows.schema)
    try:
        writer.write_table(rows)
    except pa.ArrowInvalid as exc:
        raise not_writable(exc) from exc
    writer.close()
    return sink.getvalue().to_pybytes(), writer.writer.metadata


def not_writable(exc: pa.ArrowInvalid) -> SchemaMismatch:
    """What the Parquet writer refused in rows already fitted to the table: a null the table forbids."""
    return SchemaMismatch(
        f"{exc}: the table requires a value there (a field declared not nullable). Fill it in the input, "
        "or write to a table whose field is nullable; nothing was committed from this batch."
    )


def parquet_writer(sink: pa.NativeFile | pa.BufferOutputStream, schema: pa.Schema) -> pq.ParquetWriter:
    """A Parquet writer as lakesink writes every data file: snappy, statistics for all but floats."""
    return pq.ParquetWriter(sink, schema, compression="snappy", write_statistics=parquet_statistics_columns(schema))
