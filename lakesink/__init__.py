"""lakesink: move records into a Delta Lake table exactly once.

    import lakesink
    with lakesink.Sink("s3://lake/events", app_id="events") as sink:
        sink.write(table, position=42)
"""

from __future__ import annotations

__version__ = "0.1.0"

from lakesink.commit import CommitPolicy, WriteResult  # noqa: E402
from lakesink.errors import (  # noqa: E402
    BadRecord,
    CommitOutcomeUnknown,
    ConcurrentWriterError,
    ConfigError,
    InvalidPosition,
    LakesinkError,
    SchemaMismatch,
    SourceContractViolation,
    StorageUnavailable,
    TableError,
    TerminalError,
    TransientError,
)
from lakesink.sink import Sink  # noqa: E402
from lakesink.storage import StorageOptions  # noqa: E402

__all__ = [
    "BadRecord",
    "CommitOutcomeUnknown",
    "CommitPolicy",
    "ConcurrentWriterError",
    "ConfigError",
    "InvalidPosition",
    "LakesinkError",
    "SchemaMismatch",
    "Sink",
    "SourceContractViolation",
    "StorageOptions",
    "StorageUnavailable",
    "TableError",
    "TerminalError",
    "TransientError",
    "WriteResult",
    "__version__",
]
