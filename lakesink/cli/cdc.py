"""`lakesink cdc`: a PostgreSQL publication into Delta tables, each change exactly once."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from lakesink.cli.metrics import METRICS_HELP_FILE, METRICS_HELP_HOST, METRICS_HELP_PORT, MetricsExport
from lakesink.cli.output import STORAGE_HELP, fail, parse_storage_options, stop_on_signals
from lakesink.cli.progress import Heartbeat
from lakesink.config import CommitInterval, parse_duration
from lakesink.errors import LakesinkError

if TYPE_CHECKING:
    from lakesink.ingest.cdc import CdcReport


@click.command("cdc")
@click.argument("dsn")
@click.argument("root")
@click.option("--app-id", required=True, help="Names this job; each table's committed LSN lives in its txn under this id.")
@click.option("--slot", required=True, help="The logical replication slot (created with pgoutput if missing).")
@click.option("--publication", required=True, help="The publication whose tables are mirrored (created by the DBA).")
@click.option(
    "--snapshot", is_flag=True,
    help="When the slot is created: copy the tables' rows as of the slot's start first (consistently), then stream.",
)  # fmt: skip
@click.option(
    "--until-idle", metavar="DURATION",
    help="Stop (at a commit boundary, exit 0) once no change came for this long, e.g. 10s. Default: run until SIGTERM/SIGINT.",
)  # fmt: skip
@click.option(
    "--commit-interval", metavar="LIMITS", default="200000rows,64MB,5s", show_default=True,
    help="Commit once the changes gathered reach any of these: changes (rows), size of their values, or time; never "
    "inside a source transaction. Longer intervals cost fewer MERGEs per change; shorter ones lag less.",
)  # fmt: skip
@click.option("--evolve-schema", is_flag=True, help="A column added on the source is added to the table instead of failing.")
@click.option(
    "--changelog", is_flag=True,
    help="Also append every change to ROOT/<table>_changes (its columns, _op, _lsn, _commit_time), exactly once: history.",
)  # fmt: skip
@click.option(
    "--status", "status_only", is_flag=True, help="Only show each table's committed LSN and the slot's lag; change nothing."
)
@click.option("--storage-option", "storage_pairs", multiple=True, metavar="KEY=VALUE", help=STORAGE_HELP)
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), metavar="PORT", help=METRICS_HELP_PORT)
@click.option("--metrics-host", default="127.0.0.1", show_default=True, metavar="ADDRESS", help=METRICS_HELP_HOST)
@click.option("--metrics-file", metavar="PATH", help=METRICS_HELP_FILE)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object on stdout.")
def cdc_command(
    dsn: str,
    root: str,
    app_id: str,
    slot: str,
    publication: str,
    snapshot: bool,
    until_idle: str | None,
    commit_interval: str,
    evolve_schema: bool,
    changelog: bool,
    status_only: bool,
    storage_pairs: tuple[str, ...],
    metrics_port: int | None,
    metrics_host: str,
    metrics_file: str | None,
    as_json: bool,
) -> None:
    """Mirror the tables of a PostgreSQL publication into Delta tables under ROOT.

    \b
    DSN: a libpq connection string ('host=db user=cdc dbname=shop'; the password from
    PGPASSWORD or ~/.pgpass keeps it off the command line). ROOT: a local path or s3://...;
    each source table becomes ROOT/<table> (ROOT/<schema>.<table> outside public).

    \b
    Each table equals its source table: same columns and types, plus _lsn (the commit LSN of
    the change that last wrote the row). Deletes are applied; a replayed or late change never
    brings back an older value or a deleted row. Kill it at any moment and rerun the same
    command: it resumes from what the tables hold, skipping nothing, applying nothing twice.

    \b
    Setup (README, 'Change data capture'): wal_level = logical; a role with REPLICATION and
    SELECT; CREATE PUBLICATION shop FOR TABLE orders, customers; every table with a primary key.

    \b
    Example:
      lakesink cdc 'host=127.0.0.1 dbname=shop user=cdc' ./lake/shop --app-id shop \\
          --slot lakesink_shop --publication shop --snapshot --until-idle 30s
    """
    from lakesink.ingest.cdc import capture_changes, cdc_status

    try:
        interval = CommitInterval.parse(commit_interval)
        idle = parse_duration(until_idle, what="--until-idle") if until_idle is not None else None
    except LakesinkError as exc:
        raise click.BadParameter(str(exc)) from exc
    options = parse_storage_options(storage_pairs)
    if status_only:
        try:
            status = cdc_status(dsn, root, app_id=app_id, slot=slot, publication=publication, storage_options=options)
        except LakesinkError as exc:
            fail(exc, as_json)
        click.echo(json.dumps(status) if as_json else _status_text(status))
        return
    stop = stop_on_signals()
    try:
        with MetricsExport(port=metrics_port, host=metrics_host, textfile=metrics_file):
            report = capture_changes(
                dsn, root, app_id=app_id, slot=slot, publication=publication, snapshot=snapshot, until_idle=idle,
                interval=interval, storage_options=options, evolve_schema=evolve_schema, changelog=changelog, stop=stop,
                progress=None if as_json else Heartbeat(_heartbeat),
            )  # fmt: skip
    except LakesinkError as exc:
        fail(exc, as_json)
    click.echo(json.dumps({"ok": True, **report.to_dict()}) if as_json else _summary(report))


def _heartbeat(report: CdcReport) -> str:
    return (
        f"{report.transactions} transactions, {report.changes} changes, {report.commits} commits in "
        f"{report.seconds:.0f} s; PostgreSQL may recycle WAL before {report.to_dict()['acknowledged_lsn']}"
    )


def _summary(report: CdcReport) -> str:
    data = report.to_dict()
    lines = [
        f"{report.transactions} source transactions, {report.changes} changes, {report.snapshot_rows} snapshot rows, "
        f"{report.commits} commits in {report.seconds:.1f} s (stopped: {report.stopped}); "
        f"PostgreSQL may recycle WAL before {data['acknowledged_lsn']}"
    ]
    lines += [f"  {t.source} -> {t.table_uri}: committed LSN {data_lsn}" for t, data_lsn in
              zip(report.tables, (t["committed_lsn"] for t in data["tables"]), strict=True)]  # type: ignore[attr-defined]  # fmt: skip
    return "\n".join(lines)


def _status_text(status: dict[str, object]) -> str:
    lines = [f"slot {status['slot']}: confirmed {status['confirmed_flush_lsn']}, WAL behind: {status['lag_bytes']} bytes"]
    for table in status["tables"]:  # type: ignore[attr-defined]
        lines.append(f"  {table['source']} -> {table['table_uri']}: committed LSN {table['committed_lsn']}")
    return "\n".join(lines)
