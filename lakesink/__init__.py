"""lakesink: move records into a Delta Lake table exactly once.

    import lakesink
    with lakesink.Sink("s3://lake/events", app_id="events") as sink:
        sink.write(table, position=42)

Each public name is imported from its module on first use (PEP 562): `import lakesink` alone loads
neither pyarrow nor deltalake, so the `lakesink` command starts quickly and imports only what the
command it runs needs.
"""

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from lakesink._version import __version__

if TYPE_CHECKING:
    from lakesink.commit import CommitPolicy, PartsResult, WriteResult
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
        SourceUnavailable,
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
    from lakesink.sink import Part, Sink
    from lakesink.storage.options import StorageOptions

# Public name -> the module that defines it (the TYPE_CHECKING imports above, for type checkers).
_MODULES = {
    "CommitPolicy": "lakesink.commit",
    "PartsResult": "lakesink.commit",
    "WriteResult": "lakesink.commit",
    "CommitInterval": "lakesink.config",
    "Dedup": "lakesink.config",
    "Upsert": "lakesink.config",
    "WriteConfig": "lakesink.config",
    "BadRecord": "lakesink.errors",
    "CommitOutcomeUnknown": "lakesink.errors",
    "ConcurrentWriterError": "lakesink.errors",
    "ConfigError": "lakesink.errors",
    "InvalidPosition": "lakesink.errors",
    "LakesinkError": "lakesink.errors",
    "SchemaMismatch": "lakesink.errors",
    "SourceContractViolation": "lakesink.errors",
    "SourceUnavailable": "lakesink.errors",
    "StorageUnavailable": "lakesink.errors",
    "TableError": "lakesink.errors",
    "TerminalError": "lakesink.errors",
    "TransientError": "lakesink.errors",
    "CdcReport": "lakesink.ingest.cdc",
    "capture_changes": "lakesink.ingest.cdc",
    "cdc_status": "lakesink.ingest.cdc",
    "IngestProgress": "lakesink.ingest.report",
    "IngestReport": "lakesink.ingest.report",
    "ingest": "lakesink.ingest.run",
    "WatchReport": "lakesink.ingest.watch",
    "watch": "lakesink.ingest.watch",
    "CompactReport": "lakesink.maintenance.compact",
    "compact_table": "lakesink.maintenance.compact",
    "GcReport": "lakesink.maintenance.gc",
    "collect_garbage": "lakesink.maintenance.gc",
    "TableStatus": "lakesink.maintenance.status",
    "table_status": "lakesink.maintenance.status",
    "VacuumReport": "lakesink.maintenance.vacuum",
    "vacuum_table": "lakesink.maintenance.vacuum",
    "VerifyReport": "lakesink.maintenance.verify",
    "verify_table": "lakesink.maintenance.verify",
    "Part": "lakesink.sink",
    "Sink": "lakesink.sink",
    "StorageOptions": "lakesink.storage.options",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        # PEP 562's protocol, as StopIteration is an iterator's: hasattr(), getattr() with a default
        # and `from lakesink import x` expect an AttributeError here, not a LakesinkError.
        missing = AttributeError(f"module 'lakesink' has no attribute {name!r}")
        raise missing
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain module attribute
    return value


def __dir__() -> list[str]:
    """The public names and the module's dunders (not the helpers imported here)."""
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})


class _Package(types.ModuleType):
    """`lakesink.ingest` is the function, as when every name was imported eagerly.

    Importing the subpackage lakesink.ingest (from any module, at any time) sets the attribute
    `ingest` of this package to it; kept, it would hide the function from `lakesink.ingest(...)`.
    The subpackage stays in sys.modules, where every import statement finds it.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _MODULES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


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
    "Part",
    "PartsResult",
    "SchemaMismatch",
    "Sink",
    "SourceContractViolation",
    "SourceUnavailable",
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
