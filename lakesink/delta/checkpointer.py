"""Checkpoints written off the commit path: one worker thread per open table, on its own delta-rs table.

A checkpoint of a long table costs far more than a commit (on S3 at 5,000 commits, ~620 ms against
~5 ms; benchmarks/README.md, "commit_cost.py"), so no commit waits for one:

1. `checkpoint(version)` records the request and returns. At most one checkpoint is in flight; the
   requests that arrive meanwhile coalesce into one of the newest version (an older checkpoint
   would be replaced at once).
2. The worker brings its own `DeltaTable` (never the writer's: PyO3 refuses a second mutable
   borrow of one object, and the writer's snapshot moves under lakesink's own commits) to exactly
   the version asked for, which exists (a commit made it), and writes the checkpoint of it. delta-rs
   PUTs the checkpoint Parquet first and `_last_checkpoint` after it, so a process killed in
   between leaves a checkpoint no reader is pointed at, and readers list the log as before.
   Another writer checkpointing the same version writes the same content; the protocol allows it.
3. With the request's `cleanup_expired_logs`, the worker then deletes the expired log entries
   (delta-rs keeps every entry at or after the version `_last_checkpoint` names).
4. A failure is logged as a warning and dropped: a missing checkpoint only makes the log longer to
   read until the next interval's.
5. `close` waits, up to a bound, for the worker to finish what it holds, then stops it. The thread
   is a daemon, so a store that stops answering never holds a process that means to exit; a
   process killed mid-checkpoint is safe by 2.

The worker is a thread, never a process: forking after delta-rs started its runtime panics.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from typing import Protocol

from deltalake import DeltaTable

from lakesink.delta.errors import translate
from lakesink.storage.options import StorageOptions

log = logging.getLogger(__name__)

# How long `close` (and the interpreter's exit) waits for a checkpoint being written.
CLOSE_TIMEOUT_SECONDS = 30.0
# An idle worker keeps its table (the next checkpoint reads only the entries since) this long,
# then exits, so a writer that was never closed leaves no thread behind for good.
IDLE_SECONDS = 60.0


class Checkpointer(Protocol):
    """Where lakesink.commit sends the checkpoint a commit made due (a seam for tests)."""

    def checkpoint(self, version: int, *, cleanup_expired_logs: bool) -> None:
        """Have version `version` (which exists) checkpointed; never raises for a failed checkpoint."""

    def close(self, *, timeout: float | None = None) -> bool:
        """Finish or give up the pending checkpoints within `timeout`; True if none is left running."""


class BackgroundCheckpointer:
    """Writes the checkpoints of one table in a worker thread, newest version first (module doc)."""

    def __init__(
        self,
        uri: str,
        options: StorageOptions,
        *,
        close_timeout: float = CLOSE_TIMEOUT_SECONDS,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self.uri = uri
        self.options = options
        self.close_timeout = close_timeout
        self._idle_seconds = idle_seconds
        self._changed = threading.Condition()
        self._pending: int | None = None
        self._pending_cleanup = False
        self._running: int | None = None  # the version being checkpointed
        self._worker: threading.Thread | None = None
        self._stopping = False
        self.last_checkpointed: int | None = None
        """The newest version this checkpointer wrote a checkpoint of (None: none yet)."""
        self.failures = 0
        """How many checkpoints failed (each was logged as a warning)."""
        _OPEN.add(self)

    def __repr__(self) -> str:
        return f"BackgroundCheckpointer({self.uri!r}, last_checkpointed={self.last_checkpointed})"

    def checkpoint(self, version: int, *, cleanup_expired_logs: bool) -> None:
        with self._changed:
            if self._pending is None or version > self._pending:
                if self._pending is not None:
                    log.debug("checkpoint of %s version %d replaced by version %d", self.uri, self._pending, version)
                self._pending = version
            # A cleanup asked for with an older version still runs, after the newer checkpoint.
            self._pending_cleanup = self._pending_cleanup or cleanup_expired_logs
            self._stopping = False
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name=f"lakesink-checkpoint {self.uri}", daemon=True)
                self._worker.start()
            self._changed.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no checkpoint is pending or running; False if `timeout` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._pending is not None or self._running is not None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def close(self, *, timeout: float | None = None) -> bool:
        """Let the worker finish the checkpoint it writes and the one pending, for up to `timeout`
        seconds (default `close_timeout`), then stop it; a later `checkpoint` starts a new one.

        Returns False if a checkpoint was still being written at the deadline: it goes on in the
        daemon thread until it ends or the process exits (which is safe: module doc, step 2).
        """
        idle = self.wait_idle(self.close_timeout if timeout is None else timeout)
        with self._changed:
            self._stopping = True
            self._pending, self._pending_cleanup = None, False  # not started by the deadline: dropped
            self._changed.notify_all()
            if not idle:
                log.warning(
                    "closing %s while its checkpoint of version %s is still being written; it goes on in the "
                    "background until the process exits (an unfinished checkpoint is never used)",
                    self.uri,
                    self._running,
                )
        return idle

    def _run(self) -> None:
        table: DeltaTable | None = None  # this thread's own: never the writer's, never shared
        while True:
            with self._changed:
                idle_since = time.monotonic()
                while self._pending is None and not self._stopping:
                    left = self._idle_seconds - (time.monotonic() - idle_since)
                    if left <= 0:
                        break
                    self._changed.wait(left)
                if self._pending is None:
                    self._worker = None
                    self._changed.notify_all()
                    return
                version, cleanup = self._pending, self._pending_cleanup
                self._pending, self._pending_cleanup = None, False
                self._running = version
            try:
                table = self._write(table, version, cleanup=cleanup)
            finally:
                with self._changed:
                    self._running = None
                    self._changed.notify_all()

    def _write(self, table: DeltaTable | None, version: int, *, cleanup: bool) -> DeltaTable | None:
        """Checkpoint `version` (and clean up); the table to keep for the next one (None: reload)."""
        started = time.monotonic()
        doing = f"checkpoint version {version} of {self.uri}"
        try:
            if table is None:
                table = DeltaTable(self.uri, version=version, storage_options=self.options.for_delta())
            else:
                table.load_as_version(version)  # reads only the entries since its last version
            if table.version() != version:
                log.warning("did not %s: the table loaded as version %d; the next interval tries again", doing, table.version())
                return None
            table.create_checkpoint()
            if cleanup:
                table.cleanup_metadata()
        except Exception as exc:  # noqa: BLE001 - the worker must outlive any failure of one checkpoint
            # The commits landed; a missing checkpoint only makes the log longer to read until the next one.
            error = translate(exc, self.options, doing=doing)
            with self._changed:
                self.failures += 1
            log.warning("could not %s (%s); the next interval tries again", doing, error)
            return None
        with self._changed:
            self.last_checkpointed = max(version, self.last_checkpointed or version)
        log.debug(
            "checkpointed %s at version %d%s in %.3f s",
            self.uri, version, " and cleaned up expired log entries" if cleanup else "", time.monotonic() - started,
        )  # fmt: skip
        return table


# Checkpointers of this process: the exit waits (bounded) for their checkpoints, as `close` does.
_OPEN: weakref.WeakSet[BackgroundCheckpointer] = weakref.WeakSet()


@atexit.register
def _finish_at_exit() -> None:
    for checkpointer in list(_OPEN):
        checkpointer.close()
