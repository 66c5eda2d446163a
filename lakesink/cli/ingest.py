"""`lakesink ingest`: files into a table, each record exactly once."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lakesink.cli.metrics import METRICS_HELP_FILE, METRICS_HELP_HOST, METRICS_HELP_PORT, MetricsExport
from lakesink.cli.output import STORAGE_HELP, fail, parse_storage_options, stop_on_signals
from lakesink.cli.progress import ProgressLines, progress_bar
from lakesink.config import (
    DEFAULT_MAX_RECORD_BYTES,
    DEFAULT_WRITE_THREADS,
    CommitInterval,
    Shard,
    WriteConfig,
    parse_duration,
    parse_schema,
    parse_size,
)
from lakesink.errors import ConfigError, LakesinkError

if TYPE_CHECKING:
    import pyarrow as pa

    from lakesink.ingest.report import IngestProgress, IngestReport
    from lakesink.ingest.watch import WatchReport
    from lakesink.sources.records import Format


@click.command("ingest")
@click.argument("source")
@click.argument("table")
@click.option(
    "--app-id", required=True, help="Names this job (one per source partition). Its committed position lives in the table's txn."
)
@click.option(
    "--shard", "shard_text", metavar="I/N",
    help="Ingest only shard I of N of SOURCE (0 <= I < N): the files whose path below SOURCE hashes to I. Run N processes "
    "with the same SOURCE, TABLE and --app-id and the shards 0/N .. N-1/N, on any machines; each commits under "
    "ID/shard-I-of-N. N cannot change for a job (refused).",
)  # fmt: skip
@click.option(
    "--format", "fmt", type=click.Choice(["ndjson", "csv", "parquet"]), help="Source format; default: from each file's extension."
)
@click.option(
    "--commit-interval",
    metavar="LIMITS",
    default="1GB,60s",
    show_default=True,
    help="Commit once the records read since the last commit reach any of these limits: records (500000rows), "
    "size of the rows in memory (512MB) or time (30s); join several with commas. Bigger commits cost less per row; "
    "smaller ones show rows sooner and leave less to redo after a crash.",
)
@click.option(
    "--batch-rows", type=click.IntRange(min=1), metavar="N",
    help="Records per commit: like adding Nrows to --commit-interval (which must then set no records limit).",
)
@click.option(
    "--target-file-size", metavar="SIZE", default="128MB", show_default=True,
    help="Parquet file size to aim for; a commit smaller than this writes smaller files (one per partition).",
)
@click.option(
    "--in-flight", "in_flight", metavar="SIZE", default="256MB", show_default=True,
    help="Rows read but not yet written to the store that memory may hold; peak memory stays near this plus a constant.",
)
@click.option(
    "--write-threads", type=click.IntRange(min=1), default=DEFAULT_WRITE_THREADS, show_default=True,
    help="Threads encoding and uploading Parquet while the source is read; each writes its own files.",
)
@click.option(
    "--schema",
    "schema_text",
    metavar="COLUMNS|@FILE",
    help="Declare the new table's columns, e.g. 'id BIGINT, amount DOUBLE, day DATE, ts TIMESTAMP' (TIMESTAMP is UTC, "
    "TIMESTAMP_NTZ has no zone; also DECIMAL(p,s), ARRAY<T>, STRUCT<a: T>, MAP<K,V>, NOT NULL), or @FILE holding that "
    "or a Delta schema's JSON. Every format is read into it; without it, types are inferred from a sample across the files.",
)
@click.option("--partition-by", multiple=True, help="Partition column (repeatable); only when creating the table.")
@click.option("--evolve-schema", is_flag=True, help="Add new input columns to the table as nullable columns instead of failing.")
@click.option(
    "--bad-records",
    metavar="PATH",
    help="Quarantine records that cannot be parsed or do not fit the table in this Delta table (local path or "
    "s3://...) with file, line, reason and text, and commit the rest, instead of failing. Exactly once, like TABLE.",
)
@click.option(
    "--max-record-bytes",
    type=click.IntRange(min=1),
    metavar="BYTES",
    default=DEFAULT_MAX_RECORD_BYTES,
    help=f"Longest NDJSON line or CSV row to read (the reader's block size); default {DEFAULT_MAX_RECORD_BYTES} (8 MiB).",
)
@click.option("--storage-option", "storage_pairs", multiple=True, metavar="KEY=VALUE", help=STORAGE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object on stdout.")
@click.option(
    "--watch", is_flag=True,
    help="Keep running: ingest new files as they land (complete once their size held over two polls; or write "
    "them under a name starting with '.' or '_' and rename), until SIGTERM/SIGINT, which stops at a commit boundary (exit 0).",
)  # fmt: skip
@click.option("--poll", metavar="DURATION", default="10s", show_default=True, help="With --watch: how often to list SOURCE.")
@click.option(
    "--compact-every", type=click.IntRange(min=1), metavar="N",
    help="With --watch: compact the table's small files between polls once this run made N commits since the last time.",
)  # fmt: skip
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), metavar="PORT", help=METRICS_HELP_PORT)
@click.option("--metrics-host", default="127.0.0.1", show_default=True, metavar="ADDRESS", help=METRICS_HELP_HOST)
@click.option("--metrics-file", metavar="PATH", help=METRICS_HELP_FILE)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress on stderr: a bar on a terminal, a line every 10 s otherwise (default: on when stderr is a terminal).",
)
def ingest_command(
    source: str,
    table: str,
    app_id: str,
    shard_text: str | None,
    fmt: Format | None,
    commit_interval: str,
    batch_rows: int | None,
    target_file_size: str,
    in_flight: str,
    write_threads: int,
    schema_text: str | None,
    partition_by: tuple[str, ...],
    evolve_schema: bool,
    bad_records: str | None,
    max_record_bytes: int,
    storage_pairs: tuple[str, ...],
    as_json: bool,
    watch: bool,
    poll: str,
    compact_every: int | None,
    metrics_port: int | None,
    metrics_host: str,
    metrics_file: str | None,
    progress: bool | None,
) -> None:
    """Ingest the files at SOURCE into the Delta table TABLE, each record exactly once.

    \b
    SOURCE: a folder, a glob ('data/*.ndjson') or s3://bucket/prefix of immutable files,
    read in name order. Formats: .ndjson/.jsonl/.json, .csv, .parquet.
    TABLE: a local path or s3://bucket/prefix; created on the first commit.

    \b
    Rerun the same command after a crash: it continues after the last commit. Rerun it after
    success: it adds nothing. New files must sort after ingested ones; ingested files must not
    change (both are checked).

    \b
    Example:
      lakesink ingest ./events/ ./lake/events --app-id events --partition-by day
      lakesink ingest s3://landing/events s3://lake/events --app-id events --shard 0/4   # and 1/4, 2/4, 3/4

    \b
    Speed: reading, Parquet encoding and uploading overlap; memory stays near --in-flight
    however large SOURCE is. Each commit holds up to --commit-interval of records in files
    of about --target-file-size.
    """
    try:
        interval = CommitInterval.parse(commit_interval)
        if batch_rows is not None:
            if interval.rows is not None:
                raise ConfigError(
                    f"--batch-rows {batch_rows} and --commit-interval {commit_interval!r} both set the records per "
                    "commit: give one"
                )
            interval = replace(interval, rows=batch_rows)
        write = WriteConfig(
            interval=interval,
            target_file_bytes=parse_size(target_file_size, what="--target-file-size"),
            in_flight_bytes=parse_size(in_flight, what="--in-flight"),
            write_threads=write_threads,
        )
        schema = _declared(schema_text) if schema_text is not None else None
    except LakesinkError as exc:
        raise click.BadParameter(str(exc)) from exc
    try:
        shard = Shard.parse(shard_text) if shard_text is not None else None
    except LakesinkError as exc:
        raise click.BadParameter(str(exc), param_hint="--shard") from exc
    storage_options = parse_storage_options(storage_pairs)
    show = sys.stderr.isatty() if progress is None else progress
    with ExitStack() as exports:
        try:
            exports.enter_context(MetricsExport(port=metrics_port, host=metrics_host, textfile=metrics_file))
        except LakesinkError as exc:
            fail(exc, as_json)
        if watch:
            _watch(source, table, app_id=app_id, poll=poll, as_json=as_json, fmt=fmt, write=write, partition_by=partition_by,
                   evolve_schema=evolve_schema, bad_records=bad_records, schema=schema, storage_options=storage_options,
                   max_record_bytes=max_record_bytes, compact_every=compact_every, shard=shard)  # fmt: skip
        else:
            _ingest_once(source, table, app_id=app_id, as_json=as_json, show=show, fmt=fmt, write=write,
                         partition_by=partition_by, evolve_schema=evolve_schema, bad_records=bad_records,
                         max_record_bytes=max_record_bytes, schema=schema, storage_options=storage_options,
                         shard=shard)  # fmt: skip


def _ingest_once(source: str, table: str, *, app_id: str, as_json: bool, show: bool, fmt: Format | None,
                 **options: Any) -> None:  # fmt: skip
    """One run over SOURCE, with a progress bar on a terminal (or lines), then the report."""
    from lakesink.ingest.run import ingest

    def run(on_progress: Callable[[IngestProgress], None] | None) -> IngestReport:
        return ingest(source, table, app_id=app_id, format=fmt, on_progress=on_progress, **options)

    try:
        if show and sys.stderr.isatty() and not as_json:
            with progress_bar() as update:
                report = run(update)
        else:
            report = run(ProgressLines() if show else None)
    except LakesinkError as exc:
        fail(exc, as_json)
    if as_json:
        click.echo(json.dumps({"ok": True, **report.to_dict()}))
    else:
        click.echo(report.summary())


def _declared(text: str) -> pa.Schema:
    """`--schema`: the columns, or @FILE holding them (or a Delta schema's JSON)."""
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the schema file {text[1:]!r}: {exc.strerror}") from exc
    return parse_schema(text)


def _watch(source: str, table: str, *, app_id: str, poll: str, as_json: bool, fmt: Format | None,
           storage_options: dict[str, str], **options: Any) -> None:  # fmt: skip
    """`--watch`: rounds of ingest until SIGTERM/SIGINT, then the report (exit 0)."""
    from lakesink.ingest.watch import watch

    try:
        seconds = parse_duration(poll, what="--poll")
    except LakesinkError as exc:
        raise click.BadParameter(str(exc)) from exc
    stop = stop_on_signals()

    def on_round(report: WatchReport) -> None:
        if report.ingests and not as_json:
            click.echo(f"watching: {report.rows_written} rows in {report.commits} commits so far", err=True)

    try:
        report = watch(source, table, app_id=app_id, stop=stop, poll_seconds=seconds, format=fmt,
                       storage_options=storage_options, on_round=on_round, **options)  # fmt: skip
    except LakesinkError as exc:
        fail(exc, as_json)
    if as_json:
        click.echo(json.dumps({"ok": True, **report.to_dict()}))
    else:
        click.echo(f"watched {report.rounds} polls: {report.rows_written} rows in {report.commits} commits; "
                   f"stopped by {report.stopped}")  # fmt: skip
