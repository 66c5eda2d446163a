"""Named crash points for tests: `LAKESINK_CRASH_AT=after_commit` SIGKILLs the process there.

`LAKESINK_CRASH_AT=name:n` kills on the n-th time the point is reached (1-based). Unarmed (the
variable unset), a crash point is one comparison against None.

Points, in the order a write reaches them:
    mid_stage          a batch of several partitions: its first Parquet file is on the store, the rest are not
    after_stage        Parquet files (and the source ledger) are on the store, nothing committed
    before_commit      about to send the commit
    after_commit       the commit landed; the process has not seen the answer's consequences yet

`lakesink cdc` adds:
    cdc_snapshot_table  a table's initial copy is committed, the next table's is not
    cdc_between_tables  a batch is committed to some tables, not yet to the others
    cdc_before_ack      every table committed the batch; PostgreSQL has not been told
"""

from __future__ import annotations

import os
import signal

_ARMED = os.environ.get("LAKESINK_CRASH_AT") or None
_counts: dict[str, int] = {}


def crash_point(name: str) -> None:
    """SIGKILL this process if the environment armed `name` (and this is the armed hit)."""
    if _ARMED is None:
        return
    point, _, nth = _ARMED.partition(":")
    if point != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
