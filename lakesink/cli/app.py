"""The `lakesink` command: a thin layer over the Python API.

Exit codes (for scripts): 0 done; 1 terminal error (fix the input or config, then rerun);
2 usage error; 75 transient error (storage unavailable, outcome unknown: rerun as is, nothing is
lost or duplicated by rerunning).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any

import click

from lakesink.cli.cdc import cdc_command
from lakesink.cli.ingest import ingest_command
from lakesink.cli.logs import JsonFormatter
from lakesink.cli.tables import compact_command, gc_command, status_command, vacuum_command, verify_command

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


def _configure_logging(verbose: int, log_format: str) -> None:
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
@click.version_option(package_name="lakesink")
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


main.add_command(ingest_command)
main.add_command(cdc_command)
main.add_command(status_command)
main.add_command(gc_command)
main.add_command(verify_command)
main.add_command(compact_command)
main.add_command(vacuum_command)
