"""The bytes of one lakesink append commit (and of a new table's first entry), and what any log
entry tells a committer.

An append commit is a Delta log entry (PROTOCOL.md, "Delta Log Entries") holding, one JSON
action per line: `commitInfo` (tagged with this write's id, so a writer can recognise its own
commit after a lost answer), one `add` per staged file, and a `txn(appId, version=position)` per
position it sets (one per source partition it holds rows or progress of).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lakesink.delta.protocol import new_table_protocol
from lakesink.errors import TableError
from lakesink.layout import PartitionValues, log_path

WRITE_ID_KEY = "lakesink.writeId"


@dataclass(frozen=True, slots=True)
class StagedFile:
    """A Parquet file written under the table root, described as its Delta `add` action needs."""

    path: str  # relative to the table root, as the store names it (encoded once more for the log)
    size: int
    partition_values: PartitionValues
    stats: str
    num_records: int


def encode_append(
    staged: Sequence[StagedFile],
    *,
    txns: Mapping[str, int],
    now_ms: int,
    read_version: int,
    partition_by: Sequence[str],
    commit_info: Mapping[str, object],
    client_version: str,
) -> bytes:
    """The log entry that appends `staged` and sets `txn(app_id, position)` for each of `txns`
    (several: one commit carries the positions of several source partitions)."""
    info = {
        "timestamp": now_ms,
        "operation": "WRITE",
        "operationParameters": {"mode": "Append", "partitionBy": json.dumps(list(partition_by))},
        "readVersion": read_version,
        "isBlindAppend": True,
        "clientVersion": client_version,
        **commit_info,
    }
    lines = [json.dumps({"commitInfo": info}, separators=(",", ":"))]
    for f in staged:
        add = {
            "path": log_path(f.path),
            "partitionValues": dict(f.partition_values),
            "size": f.size,
            "modificationTime": now_ms,
            "dataChange": True,
            "stats": f.stats,
        }
        lines.append(json.dumps({"add": add}, separators=(",", ":")))
    for app_id, position in txns.items():
        txn = {"appId": app_id, "version": position, "lastUpdated": now_ms}
        lines.append(json.dumps({"txn": txn}, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode()


def encode_create(
    *, schema_json: str, partition_by: Sequence[str], configuration: Mapping[str, str], table_id: str, now_ms: int,
    client_version: str,
) -> bytes:
    """Log entry 0 of a new table: `protocol` (lakesink.delta.protocol.new_table_protocol) and `metaData`."""
    metadata = {
        "id": table_id,
        "format": {"provider": "parquet", "options": {}},
        "schemaString": schema_json,
        "partitionColumns": list(partition_by),
        "createdTime": now_ms,
        "configuration": dict(configuration),
    }
    info = {
        "timestamp": now_ms,
        "operation": "CREATE TABLE",
        "operationParameters": {"mode": "ErrorIfExists", "partitionBy": json.dumps(list(partition_by))},
        "clientVersion": client_version,
    }
    lines = [
        json.dumps({"commitInfo": info}, separators=(",", ":")),
        json.dumps({"protocol": new_table_protocol(schema_json)}, separators=(",", ":")),
        json.dumps({"metaData": metadata}, separators=(",", ":")),
    ]
    return ("\n".join(lines) + "\n").encode()


@dataclass(frozen=True, slots=True)
class EntrySummary:
    """What a committer needs from an entry another attempt (or writer) created."""

    txns: dict[str, int]  # appId -> version set by this entry
    write_id: str | None  # lakesink's write id in its commitInfo, if any
    changes_table: bool  # it holds metaData or protocol: schema, partitioning or features may have changed


def summarize(body: bytes, *, version: int) -> EntrySummary:
    """Read the actions of log entry `version` that decide a commit.

    Raises:
        TableError: a line is not JSON (the log is damaged: nothing can be decided from it).
    """
    txns: dict[str, int] = {}
    write_id: str | None = None
    changes = False
    for number, line in enumerate(body.splitlines(), 1):
        if not line.strip():
            continue
        try:
            action = json.loads(line)
        except ValueError as exc:
            raise TableError(f"log entry {version} line {number} is not JSON ({exc}): the Delta log is damaged") from exc
        if not isinstance(action, dict):
            continue
        if "txn" in action:
            txn = action["txn"]
            txns[str(txn["appId"])] = int(txn["version"])
        elif "commitInfo" in action:
            found = action["commitInfo"].get(WRITE_ID_KEY)
            write_id = found if isinstance(found, str) else write_id
        elif "metaData" in action or "protocol" in action:
            changes = True
    return EntrySummary(txns=txns, write_id=write_id, changes_table=changes)
