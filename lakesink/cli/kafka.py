"""`lakesink kafka`: Kafka topics into a Delta table, each message exactly once."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from lakesink.cli.metrics import METRICS_HELP_FILE, METRICS_HELP_HOST, METRICS_HELP_PORT, MetricsExport
from lakesink.cli.output import STORAGE_HELP, fail, parse_storage_options, stop_on_signals
from lakesink.cli.progress import Heartbeat
from lakesink.config import DEFAULT_MAX_RECORD_BYTES, CommitInterval, parse_duration
from lakesink.errors import LakesinkError

if TYPE_CHECKING:
    from lakesink.ingest.kafka import KafkaReport

_METADATA = ("key", "topic", "partition", "offset", "timestamp")


@click.command("kafka")
@click.argument("table")
@click.option("--bootstrap", required=True, metavar="HOST:PORT[,...]", help="The brokers to start from (bootstrap.servers).")
@click.option("--topic", "topics", required=True, multiple=True, help="A topic to consume (repeatable).")
@click.option("--group", required=True, help="The consumer group: run more copies with the same group to share the partitions.")
@click.option(
    "--app-id", required=True,
    help="Names this job in the table: each partition's offset is the txn <app-id>/<topic>/<partition>. Keep it stable.",
)  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["json"]), default="json", show_default=True,
              help="Message values: one JSON object per message.")  # fmt: skip
@click.option(
    "--with-column", "columns", multiple=True, type=click.Choice(_METADATA),
    help="Add the message's key, topic, partition, offset or timestamp as a column kafka_<name> (repeatable).",
)  # fmt: skip
@click.option(
    "--start", type=click.Choice(["earliest", "latest"]), default="earliest", show_default=True,
    help="Where a partition starts when neither the table nor the group has an offset for it.",
)  # fmt: skip
@click.option(
    "--until-idle", metavar="DURATION",
    help="Stop (at a commit boundary, exit 0) once no message came for this long, e.g. 10s. Default: run until SIGTERM/SIGINT.",
)  # fmt: skip
@click.option(
    "--commit-interval", metavar="LIMITS", default="500000rows,128MB,5s", show_default=True,
    help="Commit once the messages read reach any of these: messages (rows), bytes of values, or time. Longer "
    "intervals make fewer, larger files; shorter ones make rows visible sooner.",
)  # fmt: skip
@click.option(
    "--consumer-option", "consumer_pairs", multiple=True, metavar="KEY=VALUE",
    help="A librdkafka consumer setting (repeatable), e.g. security.protocol=SASL_SSL. Secrets never reach logs.",
)  # fmt: skip
@click.option(
    "--bad-records", metavar="PATH",
    help="Commit bad messages (not one JSON object, or not fitting the table) to this Delta table, each once, with "
    "topic/partition/offset and why, instead of stopping at the first one.",
)  # fmt: skip
@click.option(
    "--accept-gap", is_flag=True,
    help="When retention deleted messages the table needs next: go on from the oldest message left (reported) "
    "instead of stopping. Those messages are lost to the table.",
)  # fmt: skip
@click.option(
    "--max-record-bytes", type=click.IntRange(min=1), metavar="BYTES", default=DEFAULT_MAX_RECORD_BYTES,
    help=f"Largest message value taken as a record; a larger one is a bad message. Default {DEFAULT_MAX_RECORD_BYTES} (8 MiB).",
)  # fmt: skip
@click.option(
    "--unavailable-after", metavar="DURATION", default="60s", show_default=True,
    help="Exit 75 (transient: rerun) once no broker has answered for this long.",
)  # fmt: skip
@click.option("--partition-by", multiple=True, help="Partition column (repeatable); only when creating the table.")
@click.option("--evolve-schema", is_flag=True, help="Add new fields of the messages to the table as nullable columns.")
@click.option(
    "--status", "status_only", is_flag=True,
    help="Only show, per partition: the table's offset, the group's, the high watermark and the lag. Joins no group.",
)  # fmt: skip
@click.option("--storage-option", "storage_pairs", multiple=True, metavar="KEY=VALUE", help=STORAGE_HELP)
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), metavar="PORT", help=METRICS_HELP_PORT)
@click.option("--metrics-host", default="127.0.0.1", show_default=True, metavar="ADDRESS", help=METRICS_HELP_HOST)
@click.option("--metrics-file", metavar="PATH", help=METRICS_HELP_FILE)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object on stdout.")
def kafka_command(
    table: str,
    bootstrap: str,
    topics: tuple[str, ...],
    group: str,
    app_id: str,
    fmt: str,
    columns: tuple[str, ...],
    start: str,
    until_idle: str | None,
    commit_interval: str,
    consumer_pairs: tuple[str, ...],
    bad_records: str | None,
    accept_gap: bool,
    max_record_bytes: int,
    unavailable_after: str,
    partition_by: tuple[str, ...],
    evolve_schema: bool,
    status_only: bool,
    storage_pairs: tuple[str, ...],
    metrics_port: int | None,
    metrics_host: str,
    metrics_file: str | None,
    as_json: bool,
) -> None:
    """Consume Kafka topics into the Delta table TABLE, each message exactly once.

    \b
    TABLE: a local path or s3://... (created on the first commit). Each message value is one
    JSON object, one row. Every commit holds the rows of all partitions read since the last one
    and, per partition, the offset of the last message (a Delta txn <app-id>/<topic>/<partition>).
    On assignment a partition is read from the table's offset + 1, so kill it at any moment, or
    let the group rebalance, and rerun: nothing is skipped, nothing applied twice. The group's
    offsets are committed after each commit too, for lag tools, but the table's win.

    \b
    Scale out: start more copies with the same --group and --app-id; each gets a share of the
    partitions and commits to the same table. Transactional producers: aborted messages never
    land (isolation.level=read_committed; --consumer-option overrides it).

    \b
    Exit codes: 0 done (--until-idle, SIGTERM), 1 fix first (bad message, gap, bad option),
    75 transient (broker or store unreachable): rerun as is.

    \b
    Example:
      lakesink kafka ./lake/orders --bootstrap 127.0.0.1:9092 --topic orders \\
          --group lake-orders --app-id orders --until-idle 30s
    """
    from lakesink.ingest.kafka import consume_kafka, kafka_status
    from lakesink.sources.kafka import KafkaOptions

    try:
        interval = CommitInterval.parse(commit_interval)
        idle = parse_duration(until_idle, what="--until-idle") if until_idle is not None else None
        consumer_options = parse_storage_options(consumer_pairs)
        options = KafkaOptions(
            bootstrap=bootstrap, topics=tuple(topics), group=group, start=start,  # type: ignore[arg-type]
            consumer_options=consumer_options, columns=tuple(dict.fromkeys(columns)), accept_gap=accept_gap,
            max_record_bytes=max_record_bytes,
            unavailable_after=parse_duration(unavailable_after, what="--unavailable-after"),
        )  # fmt: skip
    except LakesinkError as exc:
        raise click.BadParameter(str(exc)) from exc
    storage = parse_storage_options(storage_pairs)
    if status_only:
        try:
            status = kafka_status(table, options, app_id=app_id, storage_options=storage)
        except LakesinkError as exc:
            fail(exc, as_json)
        click.echo(json.dumps(status) if as_json else _status_text(status))
        return
    stop = stop_on_signals()
    try:
        with MetricsExport(port=metrics_port, host=metrics_host, textfile=metrics_file):
            report = consume_kafka(
                table, options, app_id=app_id, interval=interval, until_idle=idle, storage_options=storage,
                partition_by=list(partition_by) or None, evolve_schema=evolve_schema, bad_records=bad_records, stop=stop,
                progress=None if as_json else Heartbeat(_heartbeat),
            )  # fmt: skip
    except LakesinkError as exc:
        fail(exc, as_json)
    click.echo(json.dumps({"ok": True, **report.to_dict()}) if as_json else _summary(report))


def _heartbeat(report: KafkaReport) -> str:
    return (
        f"{report.messages} messages, {report.rows} rows, {report.bad_records} bad, {report.commits} commits in "
        f"{report.seconds:.0f} s; partitions held: {len(report.partitions)}"
    )


def _summary(report: KafkaReport) -> str:
    lines = [
        f"{report.messages} messages read, {report.rows} rows and {report.bad_records} bad messages committed in "
        f"{report.commits} commits, {report.seconds:.1f} s (stopped: {report.stopped}) -> {report.table_uri}"
    ]
    lines += [f"  {p.topic}/{p.partition}: table offset {p.committed_offset}" for p in report.partitions]
    lines += [f"  gap accepted: {gap}" for gap in report.gaps]
    return "\n".join(lines)


def _status_text(status: dict[str, object]) -> str:
    lines = [f"{status['table_uri']} (group {status['group']}): lag {status['lag']} messages in all"]
    for p in status["partitions"]:  # type: ignore[attr-defined]
        lines.append(
            f"  {p['topic']}/{p['partition']}: table {p['table_offset']}, group {p['group_offset']}, "
            f"high watermark {p['high_watermark']}, lag {p['lag']}"
        )
    return "\n".join(lines)
