"""The one case where a missing position must not mean "start from the beginning": an expired `txn`."""

from __future__ import annotations

from urllib.parse import unquote

from lakesink.delta.log_reader import txn_versions
from lakesink.delta.table import TXN_RETENTION
from lakesink.errors import TableError
from lakesink.layout import LEDGER_DIR, app_slug, data_file_positions
from lakesink.sink import Sink


def refuse_if_txn_expired(sink: Sink) -> None:
    """Called when the table holds no `txn` for the sink's app id: is that a first run, or an expired txn?

    A table that sets `delta.setTransactionRetentionDuration` lets readers drop every `txn` whose
    lastUpdated is older than that (delta-rs hides it when it loads the snapshot, and a checkpoint
    then leaves it out for good). A job paused longer than that would find no position and ingest
    its source again from the start: every record twice. So on such a table a missing `txn` is
    trusted only when nothing shows this app id committed before: no `txn` for it in the log
    itself, and no data file it staged in the snapshot.

    Raises:
        TableError: the app id has committed to this table, but its `txn` expired.
    """
    handle = sink.handle
    if handle is None:
        return
    retention = handle.configuration().get(TXN_RETENTION)
    if not retention:
        return
    in_log = txn_versions(sink.store, up_to=handle.version()).get(sink.app_id)
    paths = [unquote(p) for p in handle.add_actions().column("path").to_pylist()]
    positions = data_file_positions(paths, sink.app_id)
    if in_log is None and not positions:
        return  # a first run (or one whose every earlier attempt failed before its first commit)
    evidence = (
        f"the log still holds txn version {in_log} for it" if in_log is not None
        else f"the table holds {len(positions)} data file(s) it committed (named by positions up to {max(positions)})"
    )
    raise TableError(
        f"the txn for app id {sink.app_id!r} expired: {sink.uri} sets {TXN_RETENTION}={retention!r}, and {evidence} "
        f"(ledgers under {LEDGER_DIR}/{app_slug(sink.app_id)}/), but no txn a reader keeps. Ingesting from the start would write "
        f"every record again, so nothing was written. Set {TXN_RETENTION} longer than the longest pause between runs, "
        "or unset it, then rerun: the txn comes back unless a checkpoint has dropped it since; if it does not, "
        "ingest into a new table."
    )
