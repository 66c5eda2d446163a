"""Source data for the exactly-once proofs: NDJSON files whose records carry unique int ids."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lakesink.sources.files import FilePosition


@dataclass(frozen=True)
class Dataset:
    """`files` NDJSON files of `rows_per_file` records each; record k (in source order) has id k."""

    directory: Path
    files: int
    rows_per_file: int

    @property
    def total(self) -> int:
        return self.files * self.rows_per_file

    @property
    def ids(self) -> list[int]:
        return list(range(self.total))

    @property
    def end_position(self) -> int:
        """The txn position a finished ingest of every file commits."""
        return FilePosition(self.files, 0).encode()

    def batch_positions(self, batch_rows: int) -> list[int]:
        """The txn position after each batch `lakesink ingest --batch-rows batch_rows` commits, in order.

        Batches span files; one ending exactly at the end of a file ends at (next file, row 0).
        """
        ends = [*range(batch_rows, self.total, batch_rows), self.total]
        return [FilePosition(*divmod(end, self.rows_per_file)).encode() for end in ends]

    def ids_before(self, position: int | None) -> list[int]:
        """The ids an ingest has committed once its txn holds `position` (None: nothing yet)."""
        if position is None:
            return []
        at = FilePosition.decode(position)
        return list(range(at.file_index * self.rows_per_file + at.row))


def write_ndjson_files(directory: Path, *, files: int, rows_per_file: int, first_id: int = 0) -> Dataset:
    """Write `files` files `part-00000.ndjson`, ... (so they sort in id order) with ids from `first_id` on.

    `Dataset`'s id arithmetic assumes `first_id` 0; other callers use only the files.

    Each record also has a string and a float column, so the Parquet files are not trivial.
    """
    directory.mkdir(parents=True, exist_ok=True)
    next_id = first_id
    for index in range(files):
        lines = []
        for _ in range(rows_per_file):
            lines.append(json.dumps({"id": next_id, "name": f"record-{next_id:08d}", "score": next_id / 7}))
            next_id += 1
        (directory / f"part-{index:05d}.ndjson").write_text("\n".join(lines) + "\n")
    return Dataset(directory=directory, files=files, rows_per_file=rows_per_file)
