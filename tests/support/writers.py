"""Writers that run in their own processes (multiprocessing 'spawn': never fork after deltalake started).

Each writer opens its own `lakesink.Sink` and reports what every write returned in a JSON file,
so the test can match the positions each writer reports committed against the rows in the table.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

ROWS_PER_POSITION = 3


def position_ids(position: int) -> list[int]:
    """The ids a writer writes for `position` (the same for every writer: they replay one stream)."""
    return [position * 1000 + i for i in range(ROWS_PER_POSITION)]


def write_positions(
    uri: str,
    storage_options: dict[str, str],
    app_id: str,
    writer: str,
    positions: list[int],
    barrier: Any,
    out_path: str,
) -> None:
    """Write `positions` in order with one Sink; rows carry this writer's name; results go to `out_path`."""
    import pyarrow as pa

    from lakesink import Sink

    results: list[dict[str, object]] = []
    error = None
    try:
        sink = Sink(uri, app_id=app_id, storage_options=storage_options)
        barrier.wait(timeout=120)
        for position in positions:
            ids = position_ids(position)
            rows = pa.table({"id": pa.array(ids, pa.int64()), "writer": pa.array([writer] * len(ids), pa.string())})
            result = sink.write(rows, position=position)
            results.append(
                {
                    "position": position,
                    "status": result.status,
                    "reason": result.reason,
                    "committed_position": result.committed_position,
                    "table_version": result.table_version,
                }
            )
        sink.close()
    except BaseException as exc:  # noqa: BLE001 - reported to the test, which asserts on it
        error = {"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()}
    Path(out_path).write_text(json.dumps({"writer": writer, "results": results, "error": error}))


def create_table(uri: str, storage_options: dict[str, str], barrier: Any, out_path: str) -> None:
    """Race `lakesink.commit.create_table` (what a Sink's first write calls) against other processes."""
    import pyarrow as pa

    from lakesink.commit import create_table
    from lakesink.delta.table import DEFAULT_CHECKPOINT_INTERVAL
    from lakesink.storage.options import StorageOptions

    error = None
    version = None
    try:
        options = StorageOptions.resolve(storage_options)
        schema = pa.schema([("id", pa.int64()), ("writer", pa.string())])
        barrier.wait(timeout=120)
        handle = create_table(uri, options, schema=schema, partition_by=[], checkpoint_interval=DEFAULT_CHECKPOINT_INTERVAL)
        version = handle.version()
    except BaseException as exc:  # noqa: BLE001 - reported to the test, which asserts on it
        error = {"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()}
    Path(out_path).write_text(json.dumps({"version": version, "error": error}))
