"""The `lakesink` command: a thin layer over the Python API.

Exit codes (for scripts): 0 done; 1 terminal error (fix the input or config, then rerun);
2 usage error; 75 transient error (storage unavailable, outcome unknown: rerun as is, nothing is
lost or duplicated by rerunning).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
from typing import Any

import click

from lakesink._version import __version__

# Each command: the module and attribute defining it, imported only when that command runs (or its
# --help is asked), and the first paragraph of its docstring, for the listing in `lakesink --help`
# (tests/unit/test_startup.py checks that each is the command's own). pyarrow, deltalake, psycopg2 and
# the rest load with the command that uses them, never for --help or --version.
COMMANDS: dict[str, tuple[str, str]] = {
    "ingest": (
        "lakesink.cli.ingest:ingest_command",
        "Ingest the files at SOURCE into the Delta table TABLE, each record exactly once.",
    ),
    "cdc": (
        "lakesink.cli.cdc:cdc_command",
        "Mirror the tables of a PostgreSQL publication into Delta tables under ROOT.",
    ),
    "kafka": (
        "lakesink.cli.kafka:kafka_command",
        "Consume Kafka topics into the Delta table TABLE, each message exactly once.",
    ),
    "status": (
        "lakesink.cli.tables:status_command",
        "Show TABLE's version, files, rows and every app id's committed position.",
    ),
    "gc": (
        "lakesink.cli.tables:gc_command",
        "Delete staged files of TABLE that no version references (left by crashed or losing writers).",
    ),
    "verify": (
        "lakesink.cli.tables:verify_command",
        "Check that every file TABLE references is present, whole and readable; exit 1 if not.",
    ),
    "compact": ("lakesink.cli.tables:compact_command", "Rewrite TABLE's small files into files of about --target-size."),
    "vacuum": (
        "lakesink.cli.tables:vacuum_command",
        "Delete files that later commits removed from TABLE (compaction, MERGE) once older than --retention.",
    ),
}

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
    """The `lakesink` group: its commands (COMMANDS) imported on demand (click's lazy-loading group pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        module, _, attr = COMMANDS[cmd_name][0].partition(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        self.add_command(command, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The listing of `lakesink --help`: a command not imported yet is described from COMMANDS."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            command = self.commands.get(name)
            if command is None and name in COMMANDS:
                command = click.Command(name, help=COMMANDS[name][1])  # shortened as click shortens the real one's
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        # Only when run as a program (args from sys.argv), never inside a test's CliRunner: re-run
        # this process with RUST_LOG set, since delta-rs has read it already.
        given = kwargs.get("args", args[0] if args else None)
        if given is None and "RUST_LOG" not in os.environ and _verbosity(sys.argv[1:]) >= 2:
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, "RUST_LOG": _DELTA_RS_DEBUG})
        return super().main(*args, **kwargs)


def _configure_logging(verbose: int, log_format: str) -> None:
    from lakesink.cli.logs import JsonFormatter

    logger = logging.getLogger("lakesink")
    for old in [h for h in logger.handlers if h.get_name() == "lakesink-cli"]:
        logger.removeHandler(old)  # an earlier command in this process (tests) had its own stderr
    if verbose <= 0 and log_format != "json":
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("lakesink-cli")
    if log_format == "json":
        # For machines: every event, each commit included (the text log shows those at -vv).
        handler.setFormatter(JsonFormatter())
        logger.setLevel(logging.DEBUG)
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    logger.addHandler(handler)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lakesink")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Log to stderr: -v what each run decides (table, resume point, retries), -vv each batch too, and "
    "delta-rs's own debug log (RUST_LOG, unless set). Secrets are never logged.",
)
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="json: one JSON object per event on stderr (app_id, table, version, position, rows, bytes, seconds...), "
    "every commit included; text: lines, at the -v level.",
)  # fmt: skip
def main(verbose: int, log_format: str) -> None:
    """Move records into a Delta Lake table exactly once.

    \b
    Tables are local paths (the default; nothing to set up) or s3://bucket/prefix.
    S3 settings come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_REGION and AWS_ALLOW_HTTP=true (for an http endpoint), or --storage-option.

    \b
    Exit codes: 0 ok, 1 fix and rerun, 2 usage, 75 transient (rerun as is).
    """
    _configure_logging(verbose, log_format)
