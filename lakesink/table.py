"""Open, create and refresh a Delta table, and read its `txn` positions without replaying history.

One `TableHandle` stays open for the life of a `Sink`. Its version is the last log entry this
writer knows of: the delta-rs snapshot's, or one lakesink created or read itself since
(`advance`). lakesink's own append commits never go through delta-rs (lakesink.log_store), so
the delta-rs snapshot is brought up to date only when it is needed: at a checkpoint, when another
writer changed the table's metadata, or to read a `txn` the per-version cache does not hold.
A delta-rs snapshot update LISTs `_delta_log` (on local disk and on moto a LIST costs per entry
kept) and re-processes the stats of every live file, so it grows with the table: paid once per
checkpoint interval it no longer moves the per-commit cost (benchmarks/commit_cost.py).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs, urlparse

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import DeltaError, DeltaProtocolError, TableNotFoundError

from lakesink.errors import ConfigError, StorageUnavailable, TableError
from lakesink.log_store import LogStore, open_log_store
from lakesink.storage import StorageOptions, open_store, redact, visible_entries

log = logging.getLogger(__name__)

# lakesink has delta-rs write a checkpoint every `delta.checkpointInterval` versions (lakesink.commit).
# Frequent checkpoints keep log replay short: a reader's or writer's open, and the delta-rs snapshot
# update before each checkpoint, replay the log entries after the last checkpoint, and
# `transaction_version` (on a cache miss) GETs them all. A checkpoint's own cost grows with the
# number of live files, but it is paid once per interval and never moves the median commit (see
# benchmarks/commit_cost.py).
DEFAULT_CHECKPOINT_INTERVAL = 20

# The Delta writer protocol lakesink can append to. lakesink commits Parquet files it wrote itself
# (`add` actions), so a table feature that asks a writer for more than that (compute a generated
# column, check a constraint, write physical column names, assign row ids, ...) would be silently
# broken by its commits, even where delta-rs would accept them. Those tables are refused by name.
MAX_WRITER_VERSION = 7
# Writer features a plain append honours whatever the table does with them.
_APPEND_SAFE_WRITER_FEATURES = frozenset({"appendOnly", "changeDataFeed", "timestampNtz", "deletionVectors"})
# Writer features a plain append honours only while the table does not use them (see _in_use).
_APPEND_SAFE_UNLESS_USED = frozenset({"invariants", "checkConstraints", "generatedColumns", "columnMapping"})
# The features writer versions 2..6 imply (before table features, writer version 7).
_LEGACY_WRITER_FEATURES = {
    2: ("appendOnly", "invariants"),
    3: ("checkConstraints",),
    4: ("changeDataFeed", "generatedColumns"),
    5: ("columnMapping",),
    6: ("identityColumns",),
}


class TableHandle:
    """A Delta table kept open between commits, with a per-snapshot cache of `txn` versions."""

    def __init__(
        self,
        table: DeltaTable,
        *,
        uri: str,
        options: StorageOptions,
        writing: bool = False,
        log_store: LogStore | None = None,
    ) -> None:
        self.table = table
        self.uri = uri
        self._options = options
        self._version = table.version()
        self._txn_cache: dict[str, tuple[int, int | None]] = {}
        self._log_store = log_store
        self._log_store_opened = log_store is not None
        self._writing = writing
        self._checked: tuple[object, ...] | None = None
        if writing:
            self.check_writable()

    def __repr__(self) -> str:
        return f"TableHandle({self.uri!r}, version={self._version})"

    @property
    def log_store(self) -> LogStore | None:
        """Where lakesink creates log entries itself; None: commit through delta-rs (see open_log_store)."""
        if not self._log_store_opened:
            self._log_store = open_log_store(self.uri, self._options)
            self._log_store_opened = True
        return self._log_store

    def use_delta_rs_commits(self) -> None:
        """Commit through delta-rs from now on (the store cannot create an object only if absent)."""
        self._log_store, self._log_store_opened = None, True

    @classmethod
    def open(
        cls, uri: str, options: StorageOptions, *, writing: bool = False, log_store: LogStore | None = None
    ) -> TableHandle | None:
        """The table at `uri`, or None when there is none yet.

        With `writing`, the table must be one lakesink can append to (`check_writable`, also after
        every refresh), and "none yet" means an empty location: a prefix or folder holding other
        files (a Parquet dataset, say) is refused rather than turned into a Delta table, so nothing
        is ever written next to data lakesink did not write.

        Raises:
            TableError: something is there but it is not a Delta table lakesink can read (or write).
            StorageUnavailable: the store did not answer.
        """
        try:
            table = DeltaTable(uri, storage_options=options.for_delta())
        except TableNotFoundError:
            if not writing:
                return None
            return cls._open_after_checking_location(uri, options, log_store)
        except Exception as exc:
            raise translate(exc, options, doing=f"open {uri}") from exc
        log.info("opened table %s at version %d (storage options %r)", uri, table.version(), options)
        return cls(table, uri=uri, options=options, writing=writing, log_store=log_store)

    @classmethod
    def _open_after_checking_location(cls, uri: str, options: StorageOptions, log_store: LogStore | None) -> TableHandle | None:
        found = visible_entries(uri, options, limit=3)
        if not found:
            return None
        # A concurrent writer creates version 0 before it stages any file: look again before refusing.
        try:
            table = DeltaTable(uri, storage_options=options.for_delta())
        except TableNotFoundError:
            raise TableError(
                f"{uri} is not a Delta table: it has no _delta_log but holds other files ({', '.join(found)}"
                f"{', ...' if len(found) >= 3 else ''}). lakesink writes only into a Delta table or an empty "
                "location: fix the table URI, or convert that data to Delta first."
            ) from None
        except Exception as exc:
            raise translate(exc, options, doing=f"open {uri}") from exc
        return cls(table, uri=uri, options=options, writing=True, log_store=log_store)

    @classmethod
    def create(
        cls,
        uri: str,
        options: StorageOptions,
        *,
        schema: pa.Schema,
        partition_by: Sequence[str],
        checkpoint_interval: int,
        log_store: LogStore | None = None,
    ) -> TableHandle:
        """Create the table, or open it if a concurrent writer created it first."""
        try:
            DeltaTable.create(
                uri,
                schema=schema,
                partition_by=list(partition_by) or None,
                mode="ignore",
                configuration={"delta.checkpointInterval": str(checkpoint_interval)},
                storage_options=options.for_delta(),
                # Version 0 or nothing: with retries, delta-rs commits a loser's CREATE TABLE as
                # version 1, 2, ... (a new table id, the loser's schema) when a concurrent creator,
                # or our own create whose answer was lost and was re-sent, took version 0.
                commit_properties=CommitProperties(max_commit_retries=0),
            )
        except Exception as exc:
            # A concurrent creator (or our own lost answer) took version 0: use that table.
            created = cls.open(uri, options, writing=True, log_store=log_store)
            if created is None:
                raise translate(exc, options, doing=f"create {uri}") from exc
            log.info("table %s was created by a concurrent writer (or our lost answer): using it", uri)
            return created
        log.info("created table %s (partitioned by %s, storage options %r)", uri, list(partition_by) or "nothing", options)
        handle = cls.open(uri, options, writing=True, log_store=log_store)
        if handle is None:
            raise TableError(f"created {uri} but cannot read it back; check the store's consistency")
        return handle

    def version(self) -> int:
        return self._version

    def refresh(self) -> None:
        """Read the log entries added since the delta-rs snapshot (incrementally), up to the latest.

        Raises:
            StorageUnavailable: the store did not answer.
        """
        try:
            self.table.update_incremental()
        except Exception as exc:
            raise translate(exc, self._options, doing=f"refresh {self.uri}") from exc
        self._version = self.table.version()
        if self._writing:
            self.check_writable()  # another writer may have upgraded the protocol

    def sync_delta_rs(self) -> None:
        """Bring the delta-rs snapshot up to this handle's version, if lakesink's own entries are past it."""
        if self.table.version() != self._version:
            self.refresh()

    def advance(self, version: int, txns: dict[str, int]) -> None:
        """Entry `version`, the one after this handle's, was created or read by lakesink: move to it.

        `txns` are the positions it sets; every other cached position carries over unchanged.
        """
        if version != self._version + 1:
            raise ValueError(f"log entry {version} does not follow version {self._version}")
        carried = {app: (version, pos) for app, (at, pos) in self._txn_cache.items() if at == self._version}
        carried.update({app: (version, pos) for app, pos in txns.items()})
        self._txn_cache = carried
        self._version = version

    def checkpoint(self, *, cleanup_expired_logs: bool) -> None:
        """Bring the delta-rs snapshot up to date and write a checkpoint of it (and `_last_checkpoint`).

        Raises:
            StorageUnavailable: the store did not answer.
        """
        self.refresh()
        try:
            self.table.create_checkpoint()
            if cleanup_expired_logs:
                self.table.cleanup_metadata()
        except Exception as exc:
            raise translate(exc, self._options, doing=f"checkpoint {self.uri}") from exc

    def check_writable(self) -> None:
        """Refuse a table whose writer protocol asks for more than appending Parquet files.

        Raises:
            TableError: naming the writer version or feature(s) lakesink cannot honour.
        """
        protocol = self.table.protocol()
        configuration = dict(self.table.metadata().configuration)
        key = (protocol.min_writer_version, tuple(protocol.writer_features or ()), tuple(sorted(configuration.items())))
        if key == self._checked:
            return
        problems = writer_protocol_problems(
            protocol.min_writer_version, protocol.writer_features, configuration, self.table.schema().to_json()
        )
        if problems:
            raise TableError(
                f"lakesink cannot write to {self.uri}: {'; '.join(problems)}. Nothing was written. Write to this "
                "table with a Delta writer that supports it, or ingest into a new table."
            )
        self._checked = key

    def committed_position(self, app_id: str) -> int | None:
        """The `txn` version for `app_id` at this handle's version (None if it has none)."""
        cached = self._txn_cache.get(app_id)
        if cached is not None and cached[0] == self._version:
            return cached[1]
        self.sync_delta_rs()  # transaction_version reads the delta-rs snapshot
        version = self._version
        try:
            position = self.table.transaction_version(app_id)
        except Exception as exc:
            raise translate(exc, self._options, doing=f"read the txn of {app_id!r}") from exc
        self._txn_cache[app_id] = (version, position)
        return position

    def note_own_commit(self, app_id: str, position: int, *, read_version: int) -> None:
        """After a successful commit and refresh: if ours is the only new commit, cache its txn.

        Otherwise another writer committed too and the next read asks the log, so a zombie's
        commit landed in between is never hidden by the cache.
        """
        if self._version == read_version + 1:
            self._txn_cache[app_id] = (read_version + 1, position)

    def commit_infos(self, versions: range) -> list[dict[str, Any]]:
        """The commitInfo of each given version, read by name (GETs only; no LIST of the log).

        Raises:
            StorageUnavailable: the store did not answer.
        """
        store = open_store(self.uri, self._options)
        infos = []
        for version in versions:
            try:
                body = store.read_bytes(f"_delta_log/{version:020d}.json")
            except FileNotFoundError:
                continue  # expired by log clean-up: nothing to tell
            for line in body.splitlines():
                if line.startswith(b'{"commitInfo"'):
                    infos.append(json.loads(line)["commitInfo"])
        return infos

    def arrow_schema(self) -> pa.Schema:
        return pa.schema(self.table.schema().to_arrow())

    def partition_columns(self) -> list[str]:
        return list(self.table.metadata().partition_columns)

    def add_columns(self, fields: Sequence[pa.Field]) -> None:
        """Add nullable columns (schema evolution) in a commit of their own, then refresh."""
        delta_fields = DeltaSchema.from_arrow(pa.schema(fields)).fields
        self.sync_delta_rs()  # alter on a snapshot no older than lakesink's own commits
        try:
            self.table.alter.add_columns(delta_fields)
        except Exception as exc:
            self.refresh()
            present = set(self.arrow_schema().names)
            if all(f.name in present for f in fields):
                return  # a concurrent writer (or our lost answer) added them already
            raise translate(exc, self._options, doing="add columns") from exc
        self.refresh()


def writer_protocol_problems(
    min_writer_version: int, writer_features: Sequence[str] | None, configuration: dict[str, str], schema_json: str
) -> list[str]:
    """Why a plain append of Parquet files would not honour this writer protocol (empty: it would)."""
    if min_writer_version > MAX_WRITER_VERSION:
        return [f"the table needs writer version {min_writer_version} (lakesink writes up to {MAX_WRITER_VERSION})"]
    if min_writer_version == MAX_WRITER_VERSION:
        features = list(writer_features or ())
    else:
        features = [f for version, named in _LEGACY_WRITER_FEATURES.items() if version <= min_writer_version for f in named]
    problems = []
    unknown = [f for f in features if f not in _APPEND_SAFE_WRITER_FEATURES | _APPEND_SAFE_UNLESS_USED]
    if unknown:
        problems.append(f"the table requires writer feature(s) {', '.join(unknown)}, which lakesink does not support")
    used = [f for f in features if f in _APPEND_SAFE_UNLESS_USED and _in_use(f, configuration, schema_json)]
    if used:
        problems.append(f"the table uses {', '.join(used)}, which lakesink's appends would not honour")
    return problems


def _in_use(feature: str, configuration: dict[str, str], schema_json: str) -> bool:
    if feature == "checkConstraints":
        return any(k.startswith("delta.constraints.") for k in configuration)
    if feature == "columnMapping":
        return configuration.get("delta.columnMapping.mode", "none").lower() != "none"
    field_key = {"invariants": "delta.invariants", "generatedColumns": "delta.generationExpression"}[feature]
    return any(field_key in metadata for metadata in _field_metadata(json.loads(schema_json)))


def _field_metadata(node: Any) -> Iterator[dict[str, Any]]:
    """The `metadata` of every field of a Delta schema (JSON), nested fields included."""
    if isinstance(node, dict):
        if isinstance(node.get("metadata"), dict):
            yield node["metadata"]
        for value in node.values():
            yield from _field_metadata(value)
    elif isinstance(node, list):
        for value in node:
            yield from _field_metadata(value)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def translate(exc: BaseException, options: StorageOptions | None, *, doing: str) -> Exception:
    """A lakesink error for a delta-rs/pyarrow error, with secrets and terminal colours scrubbed.

    Store errors are summed up in one line (request, status and S3 error code, or the network
    failure, and the retries spent); the full delta-rs error stays chained as `__cause__`.
    """
    text = _ANSI.sub("", redact(str(exc), options))
    lowered = text.lower()
    detail = describe_store_error(text) or _first_lines(text)
    if isinstance(exc, DeltaProtocolError):
        return TableError(f"cannot {doing}: {text}. The table needs a newer writer than lakesink's delta-rs.")
    if isinstance(exc, (ValueError, TypeError)):
        return ConfigError(f"cannot {doing}: {text}")
    if "nosuchbucket" in lowered:
        return ConfigError(f"cannot {doing}: the bucket does not exist. Create it, or fix the table URI.")
    if any(code in lowered for code in _CREDENTIAL_ERRORS):
        return ConfigError(f"cannot {doing}: the store refused the credentials ({detail}). Check AWS_* settings.")
    if "not a delta table" in lowered or "no files in log segment" in lowered:
        return TableError(f"cannot {doing}: {detail}. Point lakesink at a Delta table or an empty location.")
    if _UNREADABLE_LOG.search(text):
        return TableError(
            f"cannot {doing}: the Delta log is not one lakesink can read ({detail}). Point lakesink at a Delta "
            "table it supports, or an empty location."
        )
    if isinstance(exc, (OSError, DeltaError)) or "generic" in lowered:
        return StorageUnavailable(f"cannot {doing}: {detail}. The store is unreachable or failing: check the endpoint, rerun.")
    return TableError(f"cannot {doing}: {text}")


_CREDENTIAL_ERRORS = ("invalidaccesskeyid", "signaturedoesnotmatch", "accessdenied", "403 forbidden", "invalidtoken")
# delta-kernel's errors about the log's content (never about the store answering): "Kernel error:
# Json error: ...", "... No table metadata or protocol found ...", "Unsupported: Feature 'x' ...".
_UNREADABLE_LOG = re.compile(r"Kernel error: (Unsupported|Json error|No table metadata or protocol)", re.I)
_REQUEST = re.compile(
    r"Error performing (?P<method>[A-Z]+) (?P<url>\S+) in (?P<elapsed>[^,\s]+)(?:, after (?P<retries>\d+) retries)?"
)
_STATUS = re.compile(r"^\s*(?:↳\s*)?(?P<status>[1-5]\d\d) (?P<reason>[A-Za-z][A-Za-z ]*)$", re.M)
# object_store's LIST errors say it inline: "... - Server returned non-2xx status code: 503 Service Unavailable: <?xml..."
_STATUS_INLINE = re.compile(r"status code: (?P<status>[1-5]\d\d) (?P<reason>[A-Za-z][A-Za-z ]*)")
_S3_CODE = re.compile(r"<Code>([^<]+)</Code>")
_S3_MESSAGE = re.compile(r"<Message>([^<]+)</Message>")


def describe_store_error(text: str) -> str | None:
    """One line for an object_store error chain: what was asked, what came back, how often.

    "GET /bkt/t/_delta_log/_last_checkpoint: 503 SlowDown (Please reduce your request rate.),
    after 5 retries in 2.1s", or "...: Connection reset by peer (os error 104), ...". None when
    `text` is not such a chain.
    """
    request = _REQUEST.search(text)
    if request is None:
        return None
    url = urlparse(request["url"])
    target = url.path
    prefix = parse_qs(url.query).get("prefix")
    if prefix:
        target = f"{url.path} (list {prefix[0]})"
    status = _STATUS.search(text) or _STATUS_INLINE.search(text)
    code, message = _S3_CODE.search(text), _S3_MESSAGE.search(text)
    if status is not None:
        answer = f"{status['status']} {code[1] if code else status['reason'].strip()}" + (f" ({message[1]})" if message else "")
    else:
        causes = [line.strip(" ↳\t") for line in text.splitlines() if "↳" in line]
        answer = causes[-1] if causes else "no answer"
    retries = f"after {request['retries']} retries " if request["retries"] else ""
    return f"{request['method']} {target}: {answer}, {retries}in {request['elapsed']}"


def _first_lines(text: str, limit: int = 300) -> str:
    """The message without delta-rs's backtrace ("   0: <unknown>", ...), cut to `limit` characters."""
    lines = []
    for line in text.splitlines():
        if re.match(r"^\s*\d+: ", line):
            break
        if line.strip():
            lines.append(line.strip())
    joined = " ".join(lines)
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."
