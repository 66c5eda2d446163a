"""lakesink: move records into a Delta Lake table exactly once.

    import lakesink
    with lakesink.Sink("s3://lake/events", app_id="events") as sink:
        sink.write(table, position=42)
"""

__version__ = "0.1.0"

from lakesink.commit import CommitPolicy, WriteResult
from lakesink.errors import (
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
from lakesink.ingest import CommitInterval, IngestProgress, IngestReport, WriteConfig, ingest
from lakesink.orphans import GcReport, collect_garbage
from lakesink.sink import Sink
from lakesink.status import TableStatus, table_status
from lakesink.storage import StorageOptions
from lakesink.verify import VerifyReport, verify_table

__all__ = [
    "BadRecord",
    "CommitInterval",
    "CommitOutcomeUnknown",
    "CommitPolicy",
    "ConcurrentWriterError",
    "ConfigError",
    "GcReport",
    "IngestProgress",
    "IngestReport",
    "InvalidPosition",
    "LakesinkError",
    "SchemaMismatch",
    "Sink",
    "SourceContractViolation",
    "StorageOptions",
    "StorageUnavailable",
    "TableError",
    "TableStatus",
    "TerminalError",
    "TransientError",
    "VerifyReport",
    "WriteConfig",
    "WriteResult",
    "__version__",
    "collect_garbage",
    "ingest",
    "table_status",
    "verify_table",
]
