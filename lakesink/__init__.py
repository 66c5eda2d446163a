"""lakesink: move records into a Delta Lake table exactly once.

    import lakesink
    with lakesink.Sink("s3://lake/events", app_id="events") as sink:
        sink.write(table, position=42)
"""

from lakesink._version import __version__
from lakesink.commit import CommitPolicy, WriteResult
from lakesink.config import CommitInterval, Dedup, Upsert, WriteConfig
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
from lakesink.ingest.cdc import CdcReport, capture_changes, cdc_status
from lakesink.ingest.report import IngestProgress, IngestReport
from lakesink.ingest.run import ingest
from lakesink.ingest.watch import WatchReport, watch
from lakesink.maintenance.compact import CompactReport, compact_table
from lakesink.maintenance.gc import GcReport, collect_garbage
from lakesink.maintenance.status import TableStatus, table_status
from lakesink.maintenance.vacuum import VacuumReport, vacuum_table
from lakesink.maintenance.verify import VerifyReport, verify_table
from lakesink.sink import Sink
from lakesink.storage.options import StorageOptions

__all__ = [
    "BadRecord",
    "CdcReport",
    "CommitInterval",
    "CommitOutcomeUnknown",
    "CommitPolicy",
    "CompactReport",
    "ConcurrentWriterError",
    "ConfigError",
    "Dedup",
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
    "Upsert",
    "VacuumReport",
    "VerifyReport",
    "WatchReport",
    "WriteConfig",
    "WriteResult",
    "__version__",
    "capture_changes",
    "cdc_status",
    "collect_garbage",
    "compact_table",
    "ingest",
    "table_status",
    "vacuum_table",
    "verify_table",
    "watch",
]
