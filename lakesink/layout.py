"""Every name lakesink puts on the store, built and parsed here and nowhere else.

    <table root>/
      _delta_log/<version, 20 digits>.json                  log entries (PROTOCOL.md, "Delta Log Entries")
      _delta_log/<version>.checkpoint[.<part>.<parts>].parquet, _delta_log/_last_checkpoint
      _delta_log/_commit_<uuid>.json.tmp                    a log entry being created on local disk
      <col>=<value>/.../part-<position>-<seq>-<app slug>-<digest or nonce>.snappy.parquet   data files
      _lakesink/ledger/<app slug>/<position, 20 digits>.json                               source ledgers
      _lakesink/tombstones/                                 a Delta table of deleted keys (keyed writes)
      <any of the above>.<pid>.tmp                          a local file being written (renamed when whole)

Names starting with `_` or `.` are hidden: Delta and Spark readers skip them, and so do file sources.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

LOG_DIR = "_delta_log"
LAST_CHECKPOINT = f"{LOG_DIR}/_last_checkpoint"
LEDGER_DIR = "_lakesink/ledger"
TOMBSTONE_DIR = "_lakesink/tombstones"
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
"""The directory value of a null partition value."""

PartitionValues = tuple[tuple[str, str | None], ...]
"""(column, value as Delta serializes it in `partitionValues`) for each partition column, in order."""

_LOG_ENTRY = re.compile(r"^(\d{20})\.json$")
_LOG_ENTRY_TEMP = re.compile(r"^_commit_[0-9a-f]{32}\.json\.tmp$")
_CHECKPOINT = re.compile(r"^(\d{20})\.checkpoint(?:\.(\d{10})\.(\d{10}))?\.parquet$")
_LEDGER = re.compile(r"^([^/]+)/(\d{20})\.json$")
_TEMP = re.compile(r"\.\d+(?:\.\d+)?\.tmp$")
_DATA_FILE = "part-{position:020d}-{part:05d}-{slug}-{tag}.snappy.parquet"


# -- the Delta log ---------------------------------------------------------------------------------


def log_entry_name(version: int) -> str:
    """`00000000000000000007.json`: the name of log entry `version` inside `_delta_log`."""
    return f"{version:020d}.json"


def log_entry_path(version: int) -> str:
    """`_delta_log/00000000000000000007.json`, relative to the table root."""
    return f"{LOG_DIR}/{log_entry_name(version)}"


def log_entry_version(path: str) -> int | None:
    """The version of a path whose last part names a JSON log entry, else None."""
    match = _LOG_ENTRY.match(path.rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def checkpoint_paths(version: int, parts: int | None) -> list[str]:
    """The files of the checkpoint at `version`: one, or `parts` of a multi-part checkpoint."""
    if not parts:
        return [f"{LOG_DIR}/{version:020d}.checkpoint.parquet"]
    return [f"{LOG_DIR}/{version:020d}.checkpoint.{i:010d}.{parts:010d}.parquet" for i in range(1, parts + 1)]


def checkpoint_version(path: str) -> tuple[int, int | None] | None:
    """(version, parts: None for a single file) of a path naming a classic checkpoint file, else None
    (a V2 checkpoint's UUID-named file included: lakesink does not read those itself)."""
    match = _CHECKPOINT.match(path.rsplit("/", 1)[-1])
    if match is None:
        return None
    return int(match.group(1)), int(match.group(3)) if match.group(3) else None


def is_log_entry_temp(path: str) -> bool:
    """Whether `path` names a log entry being written before it is linked into place (`log_entry_temp_name`)."""
    return _LOG_ENTRY_TEMP.match(path.rsplit("/", 1)[-1]) is not None


def log_entry_temp_name() -> str:
    """A fresh name, inside `_delta_log`, for a log entry being written before it is linked into place.

    Delta readers parse the names in `_delta_log` and pass this one by (delta-rs names its own
    temporary commits the same way), should a crash leave it behind.
    """
    return f"_commit_{uuid.uuid4().hex}.json.tmp"


# -- data files ------------------------------------------------------------------------------------


def app_slug(app_id: str) -> str:
    """The app id as it appears in names: readable, path-safe, and unique by its hash."""
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", app_id)[:40]
    return f"{readable}-{hashlib.sha256(app_id.encode()).hexdigest()[:8]}"


def data_file_path(values: PartitionValues, *, position: int, part: int, app_id: str, tag: str) -> str:
    """A data file's path relative to the table root.

    `position` is the batch's position (a staged batch) or the position its commit group continues
    from (a streamed file); `part` numbers the files of one batch or group; `tag` is a digest of
    the file's bytes (so re-staging writes the same name) or a random nonce (never reused).
    """
    name = _DATA_FILE.format(position=max(position, 0), part=part, slug=app_slug(app_id), tag=tag)
    directory = partition_directory(values)
    return f"{directory}/{name}" if directory else name


def data_file_positions(paths: Sequence[str], app_id: str) -> list[int]:
    """The positions in the names of the data files of `app_id` among `paths` (decoded store paths)."""
    pattern = re.compile(rf"(?:^|/)part-(\d{{20}})-\d{{5}}-{re.escape(app_slug(app_id))}-[0-9a-f]+\.snappy\.parquet$")
    return [int(m.group(1)) for m in (pattern.search(p) for p in paths) if m]


def partition_directory(values: PartitionValues) -> str:
    """The Hive-style directory of a partition ("" for an unpartitioned table), as delta-rs names it.

    Values: every character outside [A-Za-z0-9_.~-] is percent-encoded, so '/', '..', NUL and
    unicode in a value can never escape the directory. Column names stay as they are (`my col=a`,
    `Ü=b`: what delta-rs writes and Polars reads), but for the characters that would break a path
    or the `name=value` split: '/', '\\', '=', '%' and control characters.
    """
    return "/".join(f"{_partition_key(k)}={HIVE_NULL if v is None else quote(v, safe='')}" for k, v in values)


def _partition_key(name: str) -> str:
    return "".join(_percent(c) if c in _KEY_UNSAFE or ord(c) < 32 else c for c in name)


def _percent(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode())


_KEY_UNSAFE = frozenset("/\\=%\x7f")


def log_path(path: str) -> str:
    """A store path (relative to the table root) as a Delta log action names it: a relative URI,
    percent-encoded as delta-rs encodes it (so `p=a%20b` is logged as `p=a%2520b`)."""
    return quote(path, safe="/=!$&'(),:;@+")


def is_data_file(path: str) -> bool:
    """A Parquet file outside hidden directories (or a local one being written)."""
    if is_hidden(path):
        return False
    return strip_temp(path.rsplit("/", 1)[-1]).endswith(".parquet")


# -- ledgers ---------------------------------------------------------------------------------------


def ledger_path(app_id: str, position: int) -> str:
    """The source ledger staged before committing `position` for `app_id`."""
    return f"{LEDGER_DIR}/{app_slug(app_id)}/{position:020d}.json"


@dataclass(frozen=True, slots=True)
class LedgerName:
    """What a path under LEDGER_DIR names."""

    slug: str
    position: int
    temp: bool  # an interrupted write of that ledger


def parse_ledger_path(path: str) -> LedgerName | None:
    """The ledger a path relative to the table root names; None for anything else."""
    if not path.startswith(LEDGER_DIR + "/"):
        return None
    rest = path[len(LEDGER_DIR) + 1 :]
    match = _LEDGER.match(strip_temp(rest))
    if match is None:
        return None
    return LedgerName(slug=match.group(1), position=int(match.group(2)), temp=_TEMP.search(rest) is not None)


def mirror_table_uri(root_uri: str, schema: str, table: str) -> str:
    """Where `lakesink cdc` keeps the mirror of source table `schema.table` under `root_uri`: named
    after the table (`orders`), with its schema unless that is `public` (`sales.orders`)."""
    name = table if schema == "public" else f"{schema}.{table}"
    return f"{root_uri.rstrip('/')}/{quote(name, safe='.-_')}"


def changelog_table_uri(root_uri: str, schema: str, table: str) -> str:
    """Where `lakesink cdc --changelog` appends every change of `schema.table`: beside its mirror,
    `<mirror>_changes`."""
    return f"{mirror_table_uri(root_uri, schema, table)}_changes"


# -- txn app ids -------------------------------------------------------------------------------------
# A job's app id names its `txn`; a job whose source has partitions of its own (Kafka) sets one
# `txn` per source partition, `<app id>/<part key>`, and so does a file source split into shards.
# These names are stable: a rerun finds its positions by them, so never change how they are built.


def part_app_id(app_id: str, key: str) -> str:
    """The `txn` app id of source partition `key` of the job `app_id`: `<app id>/<key>`."""
    return f"{app_id}/{key}"


def part_key(app_id: str, txn_app_id: str) -> str | None:
    """The part key in `txn_app_id` if it is one of `app_id`'s parts (`part_app_id`), else None."""
    prefix = f"{app_id}/"
    return txn_app_id[len(prefix) :] if txn_app_id.startswith(prefix) and len(txn_app_id) > len(prefix) else None


def kafka_part_key(topic: str, partition: int) -> str:
    """The part key of a Kafka topic partition: `<topic>/<partition>` (a topic name has no `/`),
    so its `txn` app id is `<app id>/<topic>/<partition>`."""
    return f"{topic}/{partition}"


def parse_kafka_part_key(key: str) -> tuple[str, int] | None:
    """(topic, partition) of a `kafka_part_key`, or None if `key` is not one."""
    topic, _, number = key.rpartition("/")
    return (topic, int(number)) if topic and "/" not in topic and number.isdigit() else None


def shard_key(index: int, count: int) -> str:
    """The part key of shard `index` of `count` of a file source (`lakesink ingest --shard I/N`):
    `shard-<I>-of-<N>`, so its `txn` app id is `<app id>/shard-<I>-of-<N>`. The count is in the
    name: a job's positions under one count say nothing about the files of a shard under another."""
    return f"shard-{index}-of-{count}"


def parse_shard_key(key: str) -> tuple[int, int] | None:
    """(index, count) of a `shard_key`, or None if `key` is not one."""
    match = _SHARD_KEY.fullmatch(key)
    if match is None:
        return None
    index, count = int(match.group(1)), int(match.group(2))
    return (index, count) if index < count else None


def shard_app_id(app_id: str, index: int, count: int) -> str:
    """The `txn` app id of shard `index` of `count` of the job `app_id`: `<app id>/shard-<I>-of-<N>`."""
    return part_app_id(app_id, shard_key(index, count))


def parse_shard_app_id(txn_app_id: str) -> tuple[str, int, int] | None:
    """(job app id, index, count) of a `shard_app_id`, or None if `txn_app_id` is not one."""
    app_id, _, key = txn_app_id.rpartition("/")
    shard = parse_shard_key(key) if app_id else None
    return (app_id, *shard) if shard is not None else None


_SHARD_KEY = re.compile(r"shard-(0|[1-9][0-9]*)-of-([1-9][0-9]*)")


def snapshot_app_id(app_id: str, consistent_point: int) -> str:
    """The app id of the chunks of an initial snapshot taken at `consistent_point` (a new one per attempt)."""
    return f"{app_id}/snapshot/{consistent_point}"


def tombstone_table_uri(table_uri: str) -> str:
    """The side table of deleted keys of the keyed table at `table_uri` (hidden from its readers)."""
    return f"{table_uri.rstrip('/')}/{TOMBSTONE_DIR}"


# -- local temporary files, hidden names ------------------------------------------------------------


def temp_path(path: str, pid: int, thread: int) -> str:
    """Where thread `thread` of process `pid` writes `path` on local disk before renaming it into
    place (two threads may stage the same content-named file at once: each needs its own)."""
    return f"{path}.{pid}.{thread}.tmp"


def strip_temp(name: str) -> str:
    """`name` without a `temp_path` suffix."""
    return _TEMP.sub("", name)


def is_hidden(path: str) -> bool:
    """A path with a part starting with `.` or `_`, which Delta and Spark readers skip."""
    return any(part.startswith((".", "_")) for part in path.split("/"))
