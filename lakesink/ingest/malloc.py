"""Keep glibc from returning the reader's block buffers to the kernel after every block.

The file readers allocate a buffer of up to 8 MiB per block. With glibc's defaults such a buffer
is mmapped and unmapped each time, or the freed heap top is trimmed, so every block faults its
pages in again; page faults and unmaps take the process's memory-map lock, which stalls the
pipeline's other threads (benchmarks/README.md, "Figures behind the defaults", has the figures).

`ingest` applies these settings once per process: allocations below 64 MiB come from the heap,
and up to 256 MiB of free heap top is kept for reuse rather than trimmed. A process that sets
MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ itself keeps its own settings; on other C
libraries (musl, macOS) nothing changes.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 256 << 20
_applied: bool | None = None


def keep_block_buffers() -> bool:
    """Apply the thresholds above (once); True if they are in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        # The symbols the process has loaded already (libc among them): find_library("c") would
        # run /sbin/ldconfig in a subprocess on every ingest.
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False  # not glibc
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("glibc malloc thresholds: mmap %d, trim %d (applied: %s)", MMAP_THRESHOLD, TRIM_THRESHOLD, _applied)
    return _applied
