"""A file source's position: (file index, record) packed into the int64 a Delta `txn` holds.

    position = file_index << 40 | row        (2**40 records per file, 2**23 files)
"""

from __future__ import annotations

from dataclasses import dataclass

ROW_BITS = 40
_ROW_MASK = (1 << ROW_BITS) - 1


@dataclass(frozen=True, slots=True, order=True)
class FilePosition:
    """Progress through a sorted file list: all of files[0..file_index) plus `row` records of the next."""

    file_index: int
    row: int

    def encode(self) -> int:
        return (self.file_index << ROW_BITS) | self.row

    @classmethod
    def decode(cls, value: int) -> FilePosition:
        return cls(file_index=value >> ROW_BITS, row=value & _ROW_MASK)

    def covered_files(self) -> int:
        """How many files contributed records up to this position."""
        return self.file_index + (1 if self.row else 0)
