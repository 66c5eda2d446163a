"""`lakesink status`, `gc`, `verify`, `compact` and `vacuum`: commands on an existing table."""

from __future__ import annotations

import json
import sys
from datetime import timedelta

import click

from lakesink.cli.output import EXIT_TERMINAL, STORAGE_HELP, fail, parse_storage_options
from lakesink.config import parse_duration, parse_size
from lakesink.errors import LakesinkError

# Each command imports what it runs when it runs: `lakesink <command> --help` loads no pyarrow or deltalake.


def _older_than(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
    try:
        return timedelta(seconds=parse_duration(value, what="--older-than", allow_zero=True))
    except LakesinkError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command("status")
@click.argument("table")
@click.option("--source", metavar="SOURCE", help="The file source the table's jobs ingest: show each one's lag behind it.")
@click.option(
    "--kafka", "bootstrap", metavar="HOST:PORT", help="The Kafka brokers of a `lakesink kafka` job: show its partitions' lag."
)
@click.option("--topic", "topics", multiple=True, help="With --kafka: the job's topic (repeatable).")
@click.option("--group", help="With --kafka: the job's consumer group (its offsets are read, the group is not joined).")
@click.option("--app-id", help="With --kafka: the job's app id.")
@click.option(
    "--consumer-option", "consumer_pairs", multiple=True, metavar="KEY=VALUE", help="With --kafka: a librdkafka setting."
)
@click.option("--storage-option", "storage_pairs", multiple=True, metavar="KEY=VALUE", help=STORAGE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: table_version, files, rows, positions, apps, ...")
def status_command(
    table: str,
    source: str | None,
    bootstrap: str | None,
    topics: tuple[str, ...],
    group: str | None,
    app_id: str | None,
    consumer_pairs: tuple[str, ...],
    storage_pairs: tuple[str, ...],
    as_json: bool,
) -> None:
    """Show TABLE's version, files, rows and every app id's committed position.

    \b
    For a file source's app id: the file and record it stands at and when it last committed;
    with --source, how many files and bytes are left to ingest (its lag). A shard of a job
    (ID/shard-I-of-N, from `ingest --shard I/N`) counts files and lag among its own files. For a Kafka job
    (--kafka HOST:PORT --topic T --group G --app-id ID): per partition, the table's offset, the
    group's, the high watermark and the lag.
    """
    from lakesink.maintenance.status import table_status

    if bootstrap is not None and not (topics and group and app_id):
        raise click.UsageError("--kafka needs --topic, --group and --app-id (the job's)")
    try:
        options = parse_storage_options(storage_pairs)
        status = table_status(table, storage_options=options, source=source)
        kafka = _kafka_status(table, bootstrap, topics, group, app_id, consumer_pairs, options) if bootstrap else None
    except LakesinkError as exc:
        fail(exc, as_json)
    if as_json:
        click.echo(json.dumps({**status.to_dict(), **({"kafka": kafka} if kafka is not None else {})}))
        return
    click.echo(f"table      {status.table_uri}")
    click.echo(f"version    {status.table_version}")
    click.echo(f"files      {status.files}  ({status.bytes} bytes)")
    click.echo(f"rows       {status.rows}")
    click.echo("columns    " + ", ".join(f"{name} {kind}" for name, kind in status.columns.items()))
    if status.partition_columns:
        click.echo(f"partitions {', '.join(status.partition_columns)}")
    if not status.apps:
        click.echo("positions  (none)")
    for app in status.apps:
        of = f" of shard {app.shard}" if app.shard is not None else ""
        where = f" = file {app.file_index}{of}, record {app.row_text()}" if app.file_index is not None else ""
        line = f"app {app.app_id}: position {app.position}{where}, committed {app.last_commit or '?'}"
        if app.last_file:
            line += f", last file {app.last_file}"
        if app.lag_files is not None:
            line += f"; behind the source: {app.lag_files} files, {app.lag_bytes} bytes"
        click.echo(line)
    if kafka is not None:
        click.echo(f"kafka      group {kafka['group']}: lag {kafka['lag']} messages in all")
        for p in kafka["partitions"]:  # type: ignore[attr-defined]
            click.echo(
                f"  {p['topic']}/{p['partition']}: table {p['table_offset']}, group {p['group_offset']}, "
                f"high watermark {p['high_watermark']}, lag {p['lag']}"
            )


def _kafka_status(
    table: str, bootstrap: str, topics: tuple[str, ...], group: str | None, app_id: str | None,
    consumer_pairs: tuple[str, ...], storage: dict[str, str],
) -> dict[str, object]:  # fmt: skip
    from lakesink.ingest.kafka import kafka_status
    from lakesink.sources.kafka_client import KafkaOptions

    assert group is not None and app_id is not None  # checked by the caller
    consumer = parse_storage_options(consumer_pairs)
    options = KafkaOptions(bootstrap=bootstrap, topics=topics, group=group, consumer_options=consumer)
    return kafka_status(table, options, app_id=app_id, storage_options=storage)


@click.command("gc")
@click.argument("table")
@click.option(
    "--older-than",
    default="1h",
    metavar="DURATION",
    callback=_older_than,
    show_default=True,
    help="Grace period: never delete a file younger than this (a writer may be about to commit it). "
    "Must exceed any writer's time from staging to committing.",
)
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@click.option("--storage-option", "storage_pairs", multiple=True, metavar="KEY=VALUE", help=STORAGE_HELP)
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
    from lakesink.maintenance.gc import collect_garbage

    try:
        options = parse_storage_options(storage_pairs)
        report = collect_garbage(table, older_than=older_than, dry_run=dry_run, storage_options=options)
    except LakesinkError as exc:
        fail(exc, as_json)
    if as_json:
        click.echo(json.dumps({"ok": True, **report.to_dict()}))
        return
    verb = "would delete" if dry_run else "deleted"
    for path in report.orphan_files + report.orphan_ledgers:
        if dry_run or path in report.deleted:
            click.echo(f"{verb}  {path}")
    click.echo(report.summary())


@click.command("verify")
@click.argument("table")
@click.option("--key", "keys", multiple=True, metavar="COL", help="Report key values that occur more than once (repeatable).")
@click.option("--storage-option", "storage_pairs", multiple=True, metavar="KEY=VALUE", help=STORAGE_HELP)
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
    from lakesink.maintenance.verify import verify_table

    try:
        report = verify_table(table, key_columns=keys, storage_options=parse_storage_options(storage_pairs))
    except LakesinkError as exc:
        fail(exc, as_json)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        click.echo("\n".join(report.lines()))
    if not report.ok:
        sys.exit(EXIT_TERMINAL)


@click.command("compact")
@click.argument("table")
@click.option("--target-size", default="128MB", metavar="SIZE", show_default=True, help="Size of the files written.")
@click.option(
    "--where", metavar="PREDICATE",
    help="Only the partitions that match, e.g. \"day >= '2026-11-01' AND region = eu\" (partition columns only).",
)  # fmt: skip
@click.option("--storage-option", "storage_pairs", multiple=True, metavar="KEY=VALUE", help=STORAGE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object on stdout.")
def compact_command(table: str, target_size: str, where: str | None, storage_pairs: tuple[str, ...], as_json: bool) -> None:
    """Rewrite TABLE's small files into files of about --target-size.

    \b
    One commit that changes no data (dataChange=false): readers see the same rows, and ingest jobs
    may keep committing to TABLE meanwhile (their appends are kept; none of their commits fails).
    The files it replaces stay on the store for older versions until `lakesink vacuum`.

    \b
    Example:
      lakesink compact s3://lake/events --where "day >= '2026-11-01'"
    """
    from lakesink.maintenance.compact import compact_table

    try:
        size = parse_size(target_size, what="--target-size")
    except LakesinkError as exc:
        raise click.BadParameter(str(exc)) from exc
    try:
        report = compact_table(table, target_bytes=size, where=where, storage_options=parse_storage_options(storage_pairs))
    except LakesinkError as exc:
        fail(exc, as_json)
    click.echo(json.dumps({"ok": True, **report.to_dict()}) if as_json else report.summary())


@click.command("vacuum")
@click.argument("table")
@click.option("--retention", default="7d", metavar="DURATION", show_default=True,
              help="Delete files removed from the table longer ago than this (whole hours).")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@click.option(
    "--allow-short-retention", is_flag=True,
    help="Allow a retention below the table's delta.deletedFileRetentionDuration (7 days by default). Only when "
    "no reader or writer is on an older version.",
)  # fmt: skip
@click.option("--storage-option", "storage_pairs", multiple=True, metavar="KEY=VALUE", help=STORAGE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object on stdout.")
def vacuum_command(
    table: str, retention: str, dry_run: bool, allow_short_retention: bool, storage_pairs: tuple[str, ...], as_json: bool
) -> None:
    """Delete files that later commits removed from TABLE (compaction, MERGE) once older than --retention.

    \b
    vacuum and gc clear different files: gc deletes files no commit ever named (left by crashed
    writers); vacuum deletes files a commit named and a later one removed, which older versions
    (time travel, slow readers) still read until the retention passes.

    \b
    Example:
      lakesink vacuum s3://lake/events --retention 7d --dry-run
    """
    from lakesink.maintenance.vacuum import vacuum_table

    try:
        seconds = parse_duration(retention, what="--retention", allow_zero=True)
    except LakesinkError as exc:
        raise click.BadParameter(str(exc)) from exc
    try:
        report = vacuum_table(table, retention_seconds=seconds, dry_run=dry_run, allow_short_retention=allow_short_retention,
                              storage_options=parse_storage_options(storage_pairs))  # fmt: skip
    except LakesinkError as exc:
        fail(exc, as_json)
    if as_json:
        click.echo(json.dumps({"ok": True, **report.to_dict()}))
        return
    for path in report.files:
        click.echo(f"{'would delete' if dry_run else 'deleted'}  {path}")
    click.echo(report.summary())
