"""How the CLI ends a command: exit codes, errors in words or JSON, options as flags."""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
from collections.abc import Mapping
from types import FrameType
from typing import NoReturn

import click

from lakesink.errors import LakesinkError, TransientError

EXIT_TERMINAL = 1
EXIT_TRANSIENT = 75

STORAGE_HELP = (
    "KEY=VALUE passed to the object store (repeatable), e.g. AWS_ENDPOINT_URL=http://127.0.0.1:9000. "
    "Overrides the AWS_* environment variables."
)

# The flag of each API option an error may name (LakesinkError.options), and whether it takes a value.
_FLAGS: Mapping[str, tuple[str, bool]] = {
    "max_record_bytes": ("--max-record-bytes", True),
    "bad_records": ("--bad-records", True),
    "evolve_schema": ("--evolve-schema", False),
    "format": ("--format", True),
    "app_id": ("--app-id", True),
    "shard": ("--shard", True),
    "older_than": ("--older-than", True),
    "storage_options": ("--storage-option", True),
    "schema": ("--schema", True),
    "snapshot": ("--snapshot", False),
    "where": ("--where", True),
    "retention": ("--retention", True),
    "allow_short_retention": ("--allow-short-retention", False),
    "accept_gap": ("--accept-gap", False),
    "consumer_options": ("--consumer-option", True),
}


def parse_storage_options(pairs: tuple[str, ...]) -> dict[str, str]:
    """`--storage-option KEY=VALUE` pairs as a dict.

    Raises:
        click.BadParameter: a pair without `=` (its value is never echoed: it may be a secret).
    """
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair.split('=')[0]!r}=...", param_hint="--storage-option")
        options[key.strip()] = value
    return options


def as_flags(exc: LakesinkError) -> str:
    """The error's message with each API option it names (`max_record_bytes=BYTES`) as its flag
    (`--max-record-bytes BYTES`)."""
    message = str(exc)
    for option in exc.options:
        if option not in _FLAGS:
            continue
        flag, takes_value = _FLAGS[option]

        def spell(match: re.Match[str], flag: str = flag, takes_value: bool = takes_value) -> str:
            return f"{flag} {match['value']}" if takes_value and match["value"] else flag

        message = re.sub(rf"\b{re.escape(option)}(=(?P<value>\S+?))?(?=[\s.,;:)]|$)", spell, message)
    return message


def fail(exc: LakesinkError, as_json: bool) -> NoReturn:
    """Print `exc` (to stderr, or as JSON on stdout) and exit 75 (transient) or 1 (terminal)."""
    code = EXIT_TRANSIENT if isinstance(exc, TransientError) else EXIT_TERMINAL
    kind = "transient" if isinstance(exc, TransientError) else "terminal"
    message = as_flags(exc)
    if as_json:
        click.echo(json.dumps({"ok": False, "error": type(exc).__name__, "kind": kind, "message": message}))
    else:
        hint = "rerun the same command; nothing was lost or duplicated" if code == EXIT_TRANSIENT else "fix the cause, then rerun"
        click.echo(f"error ({type(exc).__name__}): {message}\n({kind}: {hint})", err=True)
    sys.exit(code)


def stop_on_signals() -> threading.Event:
    """An event SIGTERM and SIGINT set (saying so on stderr): a long-running command stops at its
    next commit boundary and exits 0 instead of dying mid-commit."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        click.echo(f"{signal.Signals(signum).name}: stopping at the next commit boundary", err=True)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    return stop
