"""`lakesink status`, `gc` and `verify`: commands on an existing table."""

from __future__ import annotations

import json
import sys
from datetime import timedelta

import click

from lakesink import LakesinkError, collect_garbage, table_status, verify_table
from lakesink.cli.output import EXIT_TERMINAL, STORAGE_HELP, fail, parse_storage_options
from lakesink.config import parse_duration


def _older_than(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
    try:
        return timedelta(seconds=parse_duration(value, what="--older-than", allow_zero=True))
    except LakesinkError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command("status")
@click.argument("table")
@click.option("--storage-option", "storage_pairs", multiple=True, metavar="KEY=VALUE", help=STORAGE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: table_version, files, rows, positions, ...")
def status_command(table: str, storage_pairs: tuple[str, ...], as_json: bool) -> None:
    """Show TABLE's version, files, rows and every app id's committed position."""
    try:
        status = table_status(table, storage_options=parse_storage_options(storage_pairs))
    except LakesinkError as exc:
        fail(exc, as_json)
    if as_json:
        click.echo(json.dumps(status.to_dict()))
        return
    click.echo(f"table      {status.table_uri}")
    click.echo(f"version    {status.table_version}")
    click.echo(f"files      {status.files}  ({status.bytes} bytes)")
    click.echo(f"rows       {status.rows}")
    click.echo("columns    " + ", ".join(f"{name} {kind}" for name, kind in status.columns.items()))
    if status.partition_columns:
        click.echo(f"partitions {', '.join(status.partition_columns)}")
    click.echo("positions  " + (", ".join(f"{k}={v}" for k, v in status.positions.items()) or "(none)"))


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
