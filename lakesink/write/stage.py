"""Stage a batch: Arrow rows → Parquet files on the store, with Delta stats, under deterministic names.

A file's name is derived from (app id, position, part, content digest) (lakesink.layout). Re-staging
the same batch after a crash therefore overwrites the same object with the same bytes and never
adds a copy, and a zombie writer staging *different* rows for the same position can never overwrite
a file that a committed log entry already points to (its digest differs, so its name differs).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from lakesink.crashpoints import crash_point
from lakesink.delta.log_entry import StagedFile
from lakesink.layout import data_file_path
from lakesink.storage.objects import ObjectStore
from lakesink.write.partitions import split_by_partition
from lakesink.write.stats import stats_from_parquet


def stage_batch(
    store: ObjectStore,
    data: pa.Table,
    *,
    app_id: str,
    position: int,
    partition_by: Sequence[str] = (),
) -> list[StagedFile]:
    """Write `data` (already fitted to the table schema) as one Parquet file per partition.

    Raises:
        SchemaMismatch: a partition column of a type Delta cannot partition by.
        StorageUnavailable: the store refused or timed out.
    """
    if data.num_rows == 0:
        return []  # the commit still records the position; an empty Parquet file would only cost reads
    staged = []
    for part, (values, rows) in enumerate(split_by_partition(data, partition_by)):
        if part == 1:
            crash_point("mid_stage")  # the first file is on the store, the rest are not
        body, metadata = _parquet_bytes(rows)
        digest = hashlib.sha256(body).hexdigest()[:16]
        object_path = data_file_path(values, position=position, part=part, app_id=app_id, tag=digest)
        store.write_bytes(object_path, body)
        staged.append(
            StagedFile(
                path=object_path,
                size=len(body),
                partition_values=values,
                stats=stats_from_parquet(metadata, rows.schema),
                num_records=rows.num_rows,
            )
        )
    return staged


def _parquet_bytes(rows: pa.Table) -> tuple[bytes, pq.FileMetaData]:
    sink = pa.BufferOutputStream()
    writer = pq.ParquetWriter(sink, rows.schema, compression="snappy", write_statistics=True)
    writer.write_table(rows)
    writer.close()
    return sink.getvalue().to_pybytes(), writer.writer.metadata
