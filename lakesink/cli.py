"""The `lakesink` command: a thin layer over the Python API.

Exit codes (for scripts): 0 done; 1 terminal error (fix the input or config, then rerun);
2 usage error; 75 transient error (storage unavailable, outcome unknown: rerun as is, nothing is
lost or duplicated by rerunning).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from datetime import timedelta
from typing import Any, NoReturn

import click

from lakesink import (
    CommitInterval,
    IngestProgress,
    LakesinkError,
    TransientError,
    WriteConfig,
    collect_garbage,
    ingest,
    table_status,
    verify_table,
)
from lakesink.ingest import DEFAULT_WRITE_THREADS, parse_size

EXIT_TERMINAL = 1
EXIT_TRANSIENT = 75

_STORAGE_HELP = (
    "KEY=VALUE passed to the object store (repeatable), e.g. AWS_ENDPOINT_URL=http://127.0.0.1:9000. "
    "Overrides the AWS_* environment variables."
)


def _parse_options(pairs: tuple[str, ...]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair.split('=')[0]!r}=...", param_hint="--storage-option")
        options[key.strip()] = value
    return options


def _fail(exc: LakesinkError, as_json: bool) -> NoReturn:
    code = EXIT_TRANSIENT if isinstance(exc, TransientError) else EXIT_TERMINAL
    kind = "transient" if isinstance(exc, TransientError) else "terminal"
    if as_json:
        click.echo(json.dumps({"ok": False, "error": type(exc).__name__, "kind": kind, "message": str(exc)}))
    else:
        hint = "rerun the same command; nothing was lost or duplicated" if code == EXIT_TRANSIENT else "fix the cause, then rerun"
        click.echo(f"error ({type(exc).__name__}): {exc}\n({kind}: {hint})", err=True)
    sys.exit(code)


# delta-rs reads RUST_LOG once, when it is imported (before any option is parsed); this is what
# -vv sets, unless RUST_LOG is set already. Its S3 client prints credentials as "******".
_DELTA_RS_DEBUG = "deltalake_core=debug,deltalake_aws=debug,object_store=debug"


def _verbosity(args: list[str]) -> int:
    """How many -v the group options (those before the command name) give."""
    count = 0
    for arg in args:
        if arg == "--verbose":
            count += 1
        elif re.fullmatch(r"-v+", arg):
            count += len(arg) - 1
        elif not arg.startswith("-"):
            break
    return count


class _Main(click.Group):
    def main(self, *args: Any, **kwargs: Any) -> Any:
        # Only when run as a program (args from sys.argv), never inside a test's CliRunner: re-run
        # this process with RUST_LOG set, since delta-rs has read it already.
        given = kwargs.get("args", args[0] if args else None)
        if given is None and "RUST_LOG" not in os.environ and _verbosity(sys.argv[1:]) >= 2:
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, "RUST_LOG": _DELTA_RS_DEBUG})
        return super().main(*args, **kwargs)


def _configure_logging(verbose: int) -> None:
    logger = logging.getLogger("lakesink")
    for old in [h for h in logger.handlers if h.get_name() == "lakesink-cli"]:
        logger.removeHandler(old)  # an earlier command in this process (tests) had its own stderr
    if verbose <= 0:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("lakesink-cli")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lakesink")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Log to stderr: -v what each run decides (table, resume point, retries), -vv each batch too, and "
    "delta-rs's own debug log (RUST_LOG, unless set). Secrets are never logged.",
)
def main(verbose: int) -> None:
    """Move records into a Delta Lake table exactly once.

    \b
    Tables are local paths (the default; nothing to set up) or s3://bucket/prefix.
    S3 settings come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_REGION and AWS_ALLOW_HTTP=true (for an http endpoint), or --storage-option.

    \b
    Exit codes: 0 ok, 1 fix and rerun, 2 usage, 75 transient (rerun as is).
    """
    _configure_logging(verbose)


@main.command("ingest")
@click.argument("source")
@click.argument("table")
@click.option(
    "--app-id", required=True, help="Names this job (one per source partition). Its committed position lives in the table's txn."
)
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
    "--batch-rows", type=click.IntRange(min=1), metavar="N", help="Records per commit: like adding Nrows to --commit-interval."
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
    help="Longest NDJSON line or CSV row to read (the reader's block size); default 8388608 (8 MiB).",
)
@click.option("--storage-option", "storage_pairs", multiple=True, metavar="KEY=VALUE", help=_STORAGE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object on stdout.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress on stderr: a bar on a terminal, a line every 10 s otherwise (default: on when stderr is a terminal).",
)
def ingest_command(
    source: str,
    table: str,
    app_id: str,
    fmt: Any,
    commit_interval: str,
    batch_rows: int | None,
    target_file_size: str,
    in_flight: str,
    write_threads: int,
    partition_by: tuple[str, ...],
    evolve_schema: bool,
    bad_records: str | None,
    max_record_bytes: int | None,
    storage_pairs: tuple[str, ...],
    as_json: bool,
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

    \b
    Speed: reading, Parquet encoding and uploading overlap; memory stays near --in-flight
    however large SOURCE is. Each commit holds up to --commit-interval of records in files
    of about --target-file-size.
    """
    try:
        write = WriteConfig(
            target_file_bytes=parse_size(target_file_size), in_flight_bytes=parse_size(in_flight), write_threads=write_threads
        )
        interval = CommitInterval.parse(commit_interval)
    except LakesinkError as exc:
        raise click.BadParameter(str(exc)) from exc
    options: dict[str, Any] = {
        "app_id": app_id,
        "format": fmt,
        "batch_rows": batch_rows,
        "commit_interval": interval,
        "write": write,
        "partition_by": partition_by,
        "evolve_schema": evolve_schema,
        "bad_records": bad_records,
        "storage_options": _parse_options(storage_pairs),
    }
    if max_record_bytes is not None:
        options["max_record_bytes"] = max_record_bytes
    show = sys.stderr.isatty() if progress is None else progress
    try:
        if show and sys.stderr.isatty() and not as_json:
            report = _ingest_with_bar(source, table, options)
        elif show:
            report = ingest(source, table, on_progress=_ProgressLines(), **options)
        else:
            report = ingest(source, table, **options)
    except LakesinkError as exc:
        _fail(exc, as_json)
    if as_json:
        click.echo(json.dumps({"ok": True, **report.to_dict()}))
    else:
        click.echo(report.summary())


class _ProgressLines:
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


def _ingest_with_bar(source: str, table: str, options: dict[str, Any]) -> Any:
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

        return ingest(source, table, on_progress=update, **options)


@main.command("status")
@click.argument("table")
@click.option("--storage-option", "storage_pairs", multiple=True, metavar="KEY=VALUE", help=_STORAGE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: table_version, files, rows, positions, ...")
def status_command(table: str, storage_pairs: tuple[str, ...], as_json: bool) -> None:
    """Show TABLE's version, files, rows and every app id's committed position."""
    try:
        status = table_status(table, storage_options=_parse_options(storage_pairs))
    except LakesinkError as exc:
        _fail(exc, as_json)
    if as_json:
        click.echo(json.dumps(status.to_dict()))
        return
    click.echo(f"table      {status.table_uri}")
    click.echo(f"version    {status.table_version}")
    click.echo(f"files      {status.files}  ({status.bytes} bytes)")
    click.echo(f"rows       {status.rows}")
    if status.partition_columns:
        click.echo(f"partitions {', '.join(status.partition_columns)}")
    click.echo("positions  " + (", ".join(f"{k}={v}" for k, v in status.positions.items()) or "(none)"))


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _parse_duration(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
    """`90s`, `30m`, `1h`, `7d`, `1h30m` (or plain seconds) as a timedelta."""
    text = value.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return timedelta(seconds=float(text))
    if not text or _DURATION_PART.sub("", text):
        raise click.BadParameter(f"{value!r} is not a duration: use e.g. 90s, 30m, 1h, 7d or 1h30m")
    return timedelta(seconds=sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text)))


@main.command("gc")
@click.argument("table")
@click.option(
    "--older-than",
    default="1h",
    metavar="DURATION",
    callback=_parse_duration,
    show_default=True,
    help="Grace period: never delete a file younger than this (a writer may be about to commit it). "
    "Must exceed any writer's time from staging to committing.",
)
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@click.option("--storage-option", "storage_pairs", multiple=True, metavar="KEY=VALUE", help=_STORAGE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object on stdout.")
def gc_command(table: str, older_than: timedelta, dry_run: bool, storage_pairs: tuple[str, ...], as_json: bool) -> None:
    """Delete staged files of TABLE that no version references (left by crashed or losing writers).

    \b
    Deletes Parquet files under TABLE that no add/remove action in the log names, and source
    ledgers above their app id's committed position, when older than --older-than. Files removed by
    a later commit (still needed for time travel) are VACUUM's job and stay. Safe while writers run.

    \b
    Example:
      lakesink gc ./lake/events --older-than 6h --dry-run
    """
    try:
        report = collect_garbage(table, older_than=older_than, dry_run=dry_run, storage_options=_parse_options(storage_pairs))
    except LakesinkError as exc:
        _fail(exc, as_json)
    if as_json:
        click.echo(json.dumps({"ok": True, **report.to_dict()}))
        return
    verb = "would delete" if dry_run else "deleted"
    for path in report.orphan_files + report.orphan_ledgers:
        if dry_run or path in report.deleted:
            click.echo(f"{verb}  {path}")
    click.echo(report.summary())


@main.command("verify")
@click.argument("table")
@click.option("--key", "keys", multiple=True, metavar="COL", help="Report key values that occur more than once (repeatable).")
@click.option("--storage-option", "storage_pairs", multiple=True, metavar="KEY=VALUE", help=_STORAGE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object on stdout.")
def verify_command(table: str, keys: tuple[str, ...], storage_pairs: tuple[str, ...], as_json: bool) -> None:
    """Check that every file TABLE references is present, whole and readable; exit 1 if not.

    \b
    Each referenced file must exist, have the size the log recorded and a readable Parquet footer
    with the recorded row count. With --key, key values that occur more than once are reported too.

    \b
    Example:
      lakesink verify s3://lake/events --key id
    """
    try:
        report = verify_table(table, key_columns=keys, storage_options=_parse_options(storage_pairs))
    except LakesinkError as exc:
        _fail(exc, as_json)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        click.echo("\n".join(report.lines()))
    if not report.ok:
        sys.exit(EXIT_TERMINAL)
