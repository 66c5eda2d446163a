"""The overlapped write path: decode ‖ Parquet encode + upload ‖ commit, in bounded memory.

    reader thread ──rows, seals──▶ encoder threads ──files of a sealed group──▶ caller (commits)

The reader decodes the source and cuts it into commit groups; it sends each group as row-group
sized tables, then a seal saying where the group ends. Each encoder writes the rows it gets as
Parquet files straight to the store (lakesink.write.file_writer) and, at a seal, finishes them. The
caller gets a sealed group once every encoder has finished its files of it, and commits it while
the next groups are being read and written.

Memory: the reader may only hand on rows while the bytes handed on and not yet written stay under
`in_flight_bytes`, so a slow store or a slow encoder stops the reader instead of filling memory.
pyarrow's readers and Parquet writers run their work outside the GIL, so the threads overlap on
separate cores.

Nothing here decides what is committed: a crash anywhere leaves at most uncommitted files.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

import pyarrow as pa

from lakesink.delta.log_entry import StagedFile
from lakesink.metrics import METRICS
from lakesink.write.file_writer import GroupFiles

log = logging.getLogger(__name__)

S = TypeVar("S")  # what a seal carries for the caller (positions, bad records, ...)


@dataclass(frozen=True, slots=True)
class _Rows:
    table: pa.Table
    group_start: int


@dataclass(frozen=True, slots=True)
class _Seal(Generic[S]):
    info: S
    index: int


@dataclass(frozen=True, slots=True)
class Sealed(Generic[S]):
    """A group whose files are all on the store, ready to commit."""

    info: S
    files: list[StagedFile]


class _Stopped(Exception):
    """The pipeline was closed while a thread was still working."""


class _Budget:
    """Bytes handed on by the reader and not yet written by an encoder."""

    def __init__(self, limit: int, stop: threading.Event) -> None:
        self._limit = limit
        self._used = 0
        self._stop = stop
        self._cond = threading.Condition()

    def acquire(self, amount: int) -> None:
        with self._cond:
            # One item larger than the whole budget still passes when nothing else is in flight.
            while self._used and self._used + amount > self._limit:
                if self._stop.is_set():
                    raise _Stopped
                self._cond.wait(0.1)
            self._used += amount
        METRICS.add("lakesink_in_flight_bytes", amount)

    def release(self, amount: int) -> None:
        with self._cond:
            self._used -= amount
            self._cond.notify_all()
        METRICS.add("lakesink_in_flight_bytes", -amount)


class Emitter(Generic[S]):
    """What the reader thread's `produce` hands its output to."""

    def __init__(self, pipeline: Pipeline[S]) -> None:
        self._pipeline = pipeline
        self._seals = 0

    def rows(self, table: pa.Table, *, group_start: int) -> None:
        """Rows of the open group (fitted to the table's schema): one row group per partition.

        Blocks while the in-flight budget is spent. `group_start` is the position the group
        continues from (-1 at the start of the source); it names the group's files.
        """
        self._pipeline._send_rows(_Rows(table, group_start))

    def seal(self, info: S) -> None:
        """The open group ends here; `info` comes back with its files."""
        self._pipeline._send_seal(_Seal(info, self._seals))
        self._seals += 1


class Pipeline(Generic[S]):
    """Runs `produce(emitter)` on a reader thread and `encoders` writer threads; iterate for sealed groups.

    `produce` hands rows and seals to the emitter; it must seal every group it starts.
    `new_group(start)` makes the file writer of a group.

        with Pipeline(produce, new_group, encoders=2, in_flight_bytes=256 << 20) as pipe:
            for sealed in pipe.sealed():
                commit(sealed)

    Leaving the block early (an error, or the caller deciding to re-read from elsewhere) stops
    the threads; files they were writing are left uncommitted.
    """

    def __init__(
        self,
        produce: Callable[[Emitter[S]], None],
        new_group: Callable[[int], GroupFiles],
        *,
        encoders: int,
        in_flight_bytes: int,
        idle_every: float = 0.5,
    ) -> None:
        self._produce = produce
        self._new_group = new_group
        self._stop = threading.Event()
        self._budget = _Budget(in_flight_bytes, self._stop)
        self._inboxes: list[queue.Queue[_Rows | _Seal[S] | None]] = [queue.Queue() for _ in range(max(1, encoders))]
        self._out: queue.Queue[tuple[int, int, list[StagedFile], S] | BaseException | None] = queue.Queue()
        self._idle_every = idle_every
        self._reader_error: BaseException | None = None
        self._next = 0
        self._threads = [threading.Thread(target=self._read, name="lakesink-read", daemon=True)]
        self._threads += [
            threading.Thread(target=self._encode, args=(i,), name=f"lakesink-encode-{i}", daemon=True)
            for i in range(len(self._inboxes))
        ]

    def __enter__(self) -> Pipeline[S]:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        for inbox in self._inboxes:
            inbox.put(None)
        for thread in self._threads:
            thread.join()

    def sealed(self, on_idle: Callable[[], None] | None = None) -> Iterator[Sealed[S]]:
        """Sealed groups in order, as their files are finished; then raises what a thread raised.

        Every group whose files were all finished before an error is still yielded, so the caller
        can commit it: the reader's error (a bad record, say) comes after every group it sealed
        before it, an encoder's after the groups every encoder had finished.
        """
        reports: dict[int, list[tuple[list[StagedFile], S]]] = {}
        wanted = 0
        finished_encoders = 0
        error: BaseException | None = None
        while True:
            try:
                item = self._out.get(timeout=self._idle_every)
            except queue.Empty:
                if on_idle is not None:
                    on_idle()
                continue
            if isinstance(item, BaseException):
                error = error or item
                continue
            if item is None:
                finished_encoders += 1
                if finished_encoders == len(self._inboxes):
                    failure = error or self._reader_error
                    if failure is not None:
                        raise failure
                    return
                continue
            index, _, files, info = item
            reports.setdefault(index, []).append((files, info))
            while len(reports.get(wanted, ())) == len(self._inboxes):
                group = reports.pop(wanted)
                yield Sealed(info=group[0][1], files=[f for files_of, _ in group for f in files_of])
                wanted += 1

    def _read(self) -> None:
        try:
            self._produce(Emitter(self))
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            # Raised after the groups sealed before it: they are whole and may be committed.
            self._reader_error = exc
        for inbox in self._inboxes:
            inbox.put(None)

    def _send_seal(self, item: _Seal[S]) -> None:
        if self._stop.is_set():
            raise _Stopped
        for inbox in self._inboxes:
            inbox.put(item)

    def _send_rows(self, item: _Rows) -> None:
        if self._stop.is_set():
            raise _Stopped
        self._budget.acquire(item.table.nbytes)
        # Round robin: each encoder writes its own files, so no file is shared between threads.
        self._inboxes[self._next].put(item)
        self._next = (self._next + 1) % len(self._inboxes)

    def _encode(self, number: int) -> None:
        inbox = self._inboxes[number]
        group: GroupFiles | None = None
        dropped = False  # rows were left unwritten after a stop: no later seal may be reported
        try:
            while True:
                item = inbox.get()
                if item is None:
                    break
                if isinstance(item, _Rows):
                    try:
                        if self._stop.is_set() or dropped:
                            dropped = True
                            continue
                        if group is None:
                            group = self._new_group(item.group_start)
                        group.write(item.table)
                    finally:
                        self._budget.release(item.table.nbytes)
                elif not dropped:
                    # Every row of the group this encoder got came before the seal in its inbox,
                    # and all were written: its files are whole, even after a stop.
                    files = group.close() if group is not None else []
                    group = None
                    self._out.put((item.index, number, files, item.info))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            self._out.put(exc)
            self._stop.set()
        finally:
            if group is not None:
                group.abort()
            self._out.put(None)
