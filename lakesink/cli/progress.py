"""Progress of a long ingest: a bar on a terminal, a line every few seconds in a log."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Generic, TypeVar

import click

if TYPE_CHECKING:
    from lakesink.ingest.report import IngestProgress


R = TypeVar("R")


class Heartbeat(Generic[R]):
    """A line on stderr after a batch commits, at most every `every` seconds: a long-running job's
    heartbeat (`lakesink cdc`, `lakesink kafka`); `describe` says what the report holds."""

    def __init__(self, describe: Callable[[R], str], every: float = 10.0) -> None:
        self._describe = describe
        self._every = every
        self._last = 0.0

    def __call__(self, report: R) -> None:
        now = time.monotonic()
        if now - self._last < self._every:
            return
        self._last = now
        click.echo(self._describe(report), err=True)


class ProgressLines:
    """Progress for a log (stderr not a terminal, e.g. a Kubernetes pod): a line now and then."""

    def __init__(self, every: float = 10.0) -> None:
        self._every = every
        self._last: float | None = None

    def __call__(self, p: IngestProgress) -> None:
        now = time.monotonic()
        if self._last is not None and now - self._last < self._every:
            return
        self._last = now
        share = f"{100 * p.bytes_done / p.bytes_total:.0f}% " if p.bytes_total else ""
        click.echo(
            f"ingest: {share}({p.bytes_done:,} of {p.bytes_total:,} bytes), {p.records_read:,} records read, "
            f"{p.rows_written:,} rows committed in {p.commits} commits",
            err=True,
        )


@contextmanager
def progress_bar() -> Iterator[Callable[[IngestProgress], None]]:
    """A rich bar on stderr (bytes of source read, records read, rows committed), as an `on_progress` callback."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]ingest"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[read]:,} records read, {task.fields[rows]:,} committed"),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task("ingest", total=None, rows=0, read=0)

        def update(p: IngestProgress) -> None:
            bar.update(task, total=p.bytes_total, completed=p.bytes_done, rows=p.rows_written, read=p.records_read)

        yield update
