"""Errors raised by lakesink, classified for retry.

    LakesinkError
    ├── TransientError            retrying the same call may succeed
    │   ├── CommitOutcomeUnknown  the commit may or may not have landed; staged files are kept
    │   ├── StorageUnavailable    the store did not answer (timeout, reset, 5xx)
    │   └── SourceUnavailable     the source (a Kafka broker, a database) did not answer
    └── TerminalError             retrying the same call fails the same way; a person must act
        ├── ConfigError           bad URI, option or argument
        ├── InvalidPosition       a position that is not an int64 or does not grow
        ├── SchemaMismatch        incoming data does not fit the table's schema
        ├── BadRecord             a record that cannot be parsed or converted (names file and line)
        ├── SourceContractViolation  the source broke its promise (changed or inserted files, offsets deleted)
        ├── ConcurrentWriterError    another writer with the same app id keeps winning
        ├── TableError            the target is not a usable Delta table
        └── InternalError         lakesink broke one of its own rules: a bug to report

Every error carries a message that says what happened and what to do; none carries a secret.
Where the fix is an option, the message names it as the API spells it (`max_record_bytes=BYTES`)
and `options` lists those names, so the CLI can say its flag (`--max-record-bytes BYTES`) instead.
"""

from __future__ import annotations


class LakesinkError(Exception):
    """Root of every error lakesink raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str, *, options: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.options = options
        """The API options (keyword arguments) the message names as `name=VALUE`, in the order it names them."""


class TransientError(LakesinkError):
    """The same call may succeed if retried later; nothing was lost."""

    retryable = True


class TerminalError(LakesinkError):
    """Retrying will not help; the message says what to change."""

    retryable = False


class CommitOutcomeUnknown(TransientError):
    """A commit's answer was lost and the log could not be read back to decide.

    The staged files are kept: rerunning the same write resolves the outcome from the `txn`
    action and either skips (it had landed) or commits (it had not).
    """

    def __init__(self, message: str, *, table_uri: str, app_id: str, position: int) -> None:
        super().__init__(message)
        self.table_uri = table_uri
        self.app_id = app_id
        self.position = position


class StorageUnavailable(TransientError):
    """The object store did not answer in time or answered with a server error."""


class SourceUnavailable(TransientError):
    """The source did not answer (a broker or database down or unreachable); nothing was lost: rerun."""


class ConfigError(TerminalError):
    """A URI, option or argument is wrong."""


class InvalidPosition(TerminalError):
    """A position is not a non-negative int64."""


class SchemaMismatch(TerminalError):
    """Incoming data does not fit the table schema; the message names the column."""


class BadRecord(TerminalError):
    """A source record cannot be read; the message names its file and line (or offset)."""


class SourceContractViolation(TerminalError):
    """The source changed under the committed positions (a file changed, vanished or was inserted)."""


class ConcurrentWriterError(TerminalError):
    """Another writer with the same app id keeps committing first; two copies of one job are running."""


class TableError(TerminalError):
    """The target is not a Delta table lakesink can write (missing, foreign or too new)."""


class InternalError(TerminalError):
    """lakesink found one of its own invariants broken (a bug); it stops before committing anything past it."""
