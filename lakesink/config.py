"""Configuration values and the one parser of each unit (sizes, durations, counts).

Every option lakesink takes, from the CLI or the API, is checked here, so a wrong value fails
with a ConfigError naming it before anything is read or written.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

from lakesink.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa  # imported where a schema is parsed: `lakesink --help` and the CLI's defaults need none

DEFAULT_TARGET_FILE_BYTES = 128 << 20
DEFAULT_ROW_GROUP_BYTES = 64 << 20  # of rows in memory; readers skip and fetch row groups whole
DEFAULT_IN_FLIGHT_BYTES = 256 << 20
DEFAULT_MAX_RECORD_BYTES = 8 << 20
"""The longest record (NDJSON line, CSV row) read by default; it is also the CSV reader's block size."""
# Two encoders overlap one row group's encoding with the next (benchmarks/README.md has the figures).
DEFAULT_WRITE_THREADS = min(2, os.cpu_count() or 1)

_BYTES = {"b": 1, "kb": 1 << 10, "kib": 1 << 10, "mb": 1 << 20, "mib": 1 << 20, "gb": 1 << 30, "gib": 1 << 30}
_SECONDS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "secs": 1.0, "m": 60.0, "min": 60.0, "mins": 60.0}
_SECONDS.update({"h": 3600.0, "d": 86400.0, "w": 604800.0})
_NUMBER = r"\d+(?:\.\d+)?"
_SIZE = re.compile(rf"({_NUMBER})\s*(b|kb|kib|mb|mib|gb|gib)?")
_DURATION_PART = re.compile(rf"({_NUMBER})\s*(ms|secs|sec|s|mins|min|m|h|d|w)")
_ROWS = re.compile(rf"({_NUMBER})\s*(rows|records)")


def parse_size(text: str, *, what: str = "size") -> int:
    """`128MB`, `1GB`, `64KiB`, `65536` (bytes) as bytes; KB, MB, GB are powers of 1024.

    Raises:
        ConfigError: anything else, naming `what`.
    """
    match = _SIZE.fullmatch(str(text).strip().lower())
    if match is None:
        raise ConfigError(f"cannot read {what} {text!r}: use e.g. 128MB, 1GB or a number of bytes")
    return int(float(match.group(1)) * _BYTES[match.group(2) or "b"])


def parse_duration(text: str, *, what: str = "duration", allow_zero: bool = False) -> float:
    """Seconds in `90s`, `500ms`, `30m`, `1h`, `7d`, `1h30m`, or a bare number of seconds.

    Raises:
        ConfigError: anything else, or zero unless `allow_zero`; the message names `what`.
    """
    spoken = str(text).strip().lower()
    if re.fullmatch(_NUMBER, spoken):
        seconds = float(spoken)
    elif spoken and not _DURATION_PART.sub("", spoken).strip():
        seconds = sum(float(n) * _SECONDS[unit] for n, unit in _DURATION_PART.findall(spoken))
    else:
        seconds = -1.0
    if seconds < 0 or (seconds == 0 and not allow_zero):
        kind = "duration" if allow_zero else "positive duration"
        raise ConfigError(f"{what}={text!r} must be a {kind} such as 30s, 500ms, 2m, 1h or 7d")
    return seconds


def positive_int(value: object, *, what: str, unit: str = "") -> int:
    """`value` if it is an int >= 1 (not a bool).

    Raises:
        ConfigError: naming `what` and its unit.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive int{f' ({unit})' if unit else ''}, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class CommitInterval:
    """When `ingest` commits: once a commit group holds `rows` records, `bytes` of rows, or has been
    open `seconds`, whichever comes first (None: no limit of that kind).

    Records count good and bad ones, as positions do. Bytes are the rows' size decoded in memory
    (Arrow), so they mean the same for every source format. Bigger commits cost less per row (a
    commit is a few log requests); smaller ones make rows visible sooner and leave less to redo
    after a crash.
    """

    rows: int | None = None
    bytes: int | None = 1 << 30
    seconds: float | None = 60.0

    def __post_init__(self) -> None:
        for name in ("rows", "bytes", "seconds"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ConfigError(f"CommitInterval.{name} must be a positive number or None, not {value!r}")
        if self.rows is None and self.bytes is None and self.seconds is None:
            raise ConfigError("CommitInterval needs a limit (rows, bytes or seconds); without one a run commits only at its end")

    def reached(self, *, rows: int, nbytes: int, seconds: float) -> bool:
        """Whether a group of `rows` records, `nbytes` bytes, open `seconds`, is due to commit."""
        return (
            (self.rows is not None and rows >= self.rows)
            or (self.bytes is not None and nbytes >= self.bytes)
            or (self.seconds is not None and seconds >= self.seconds)
        )

    @classmethod
    def parse(cls, spec: str) -> CommitInterval:
        """`500000rows`, `512MB`, `30s`, or several joined by commas (`1GB,60s`): the limits to set.

        Sizes take B, KB, MB, GB (powers of 1024: KiB, MiB, GiB are accepted too); times s, m, h.

        Raises:
            ConfigError: a part that is none of those, or a kind of limit given twice.
        """
        limits: dict[str, float | int] = {}
        for part in (p.strip().lower() for p in spec.split(",") if p.strip()):
            rows = _ROWS.fullmatch(part)
            kind, value = ("rows", int(float(rows.group(1)))) if rows else _size_or_seconds(part, spec)
            if kind in limits:
                raise ConfigError(f"commit interval {spec!r} sets {kind} twice: give each kind of limit once")
            limits[kind] = value
        return cls(
            rows=int(limits["rows"]) if limits.get("rows") else None,
            bytes=int(limits["bytes"]) if limits.get("bytes") else None,
            seconds=float(limits["seconds"]) if limits.get("seconds") else None,
        )


def _size_or_seconds(part: str, spec: str) -> tuple[str, float | int]:
    if not re.fullmatch(_NUMBER, part):  # a limit names its unit: a bare number could be any of the three
        try:
            return "bytes", parse_size(part)
        except ConfigError:
            pass
        try:
            return "seconds", parse_duration(part)
        except ConfigError:
            pass
    raise ConfigError(f"cannot read {part!r} in commit interval {spec!r}: use e.g. 500000rows, 512MB, 30s or 1GB,60s")


@dataclass(frozen=True, slots=True)
class WriteConfig:
    """How `ingest` writes: commit sizes, file sizes, and the memory and threads it may use.

    Peak memory is about `in_flight_bytes` (rows read and not yet written) plus a row group
    being gathered (`row_group_bytes`) plus the reader's block and pyarrow's buffers: it does not
    grow with the input.
    """

    interval: CommitInterval = CommitInterval()
    target_file_bytes: int = DEFAULT_TARGET_FILE_BYTES
    in_flight_bytes: int = DEFAULT_IN_FLIGHT_BYTES
    write_threads: int = field(default_factory=lambda: DEFAULT_WRITE_THREADS)

    def __post_init__(self) -> None:
        if not isinstance(self.interval, CommitInterval):
            raise ConfigError(f"WriteConfig.interval must be a CommitInterval, not {type(self.interval).__name__}")
        for name in ("target_file_bytes", "in_flight_bytes", "write_threads"):
            positive_int(getattr(self, name), what=name)

    @property
    def row_group_bytes(self) -> int:
        # Big row groups read well; a quarter of the budget lets several be in flight at once.
        return max(1, min(DEFAULT_ROW_GROUP_BYTES, self.in_flight_bytes // 4))


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard `index` of `count` of a file source (`ingest --shard I/N`, `ingest(..., shard=(I, N))`):
    the files whose path relative to the source root hashes to `index` (lakesink.sources.files.shard_of).

    N processes with shards 0/N .. N-1/N of one SOURCE each ingest a disjoint part of it, together
    all of it, each committing its own position (lakesink.layout.shard_app_id).
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        for value in (self.index, self.count):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"a shard is two ints I/N with 0 <= I < N, not {self.index!r}/{self.count!r}")
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(f"a shard is I/N with 0 <= I < N (the shards of N processes are 0/N .. N-1/N), not {self}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`I/N`, e.g. `0/4`.

        Raises:
            ConfigError: anything else, or I outside 0 .. N-1.
        """
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if match is None:
            raise ConfigError(f"cannot read the shard {text!r}: use I/N, e.g. 0/4 (the shards of N processes are 0/N .. N-1/N)")
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def of(cls, value: Shard | tuple[int, int] | str) -> Shard:
        """A Shard from itself, an (index, count) pair or `I/N` text.

        Raises:
            ConfigError: anything else, or an index outside 0 .. count-1.
        """
        if isinstance(value, Shard):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, tuple) and len(value) == 2:
            return cls(*value)
        raise ConfigError(f"shard must be (I, N) with 0 <= I < N, not {value!r}")


# -- keyed writes -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Upsert:
    """`Sink.write(..., mode=Upsert(...))`: the table mirrors the input by `key`, in the order of `order_by`.

    A batch's rows collapse to the last change per key (the highest `order_by`; on a tie, the later
    row in the batch), then one MERGE applies them in the commit that carries the position: a row
    is inserted, updated or deleted only if its `order_by` is above the one the table's row holds,
    so a replayed or late change never brings back an older value. `order_by` is stored (it is how
    the next batch compares); the flag columns are not.

    `delete_flag`: a bool column; true deletes the key. With `tombstones` (the default), deleted
    keys and their `order_by` are kept in a side table (under `_lakesink/` in the table, hidden from
    readers), so an older insert replayed later cannot bring a deleted row back
    (`Sink.prune_tombstones` removes the ones no replay can reach any more).
    `keep_flags`: {column: bool column}; true keeps the table's value of `column` (a change that
    did not carry it, like PostgreSQL's unchanged TOAST values) instead of writing the input's.
    `truncate_before`: a TRUNCATE at that (int) order value: rows of the table with a lower
    `order_by` that the batch does not touch are deleted in the same commit (tombstones do not
    record a TRUNCATE: a replay of changes older than it, other than from PostgreSQL's stream, which
    never goes back past the committed position, can bring rows back).
    """

    key: tuple[str, ...]
    order_by: str
    delete_flag: str | None = None
    keep_flags: tuple[tuple[str, str], ...] = ()
    tombstones: bool = True
    truncate_before: int | None = None

    def __post_init__(self) -> None:
        key = (self.key,) if isinstance(self.key, str) else tuple(self.key)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "keep_flags", tuple(dict(self.keep_flags).items()))
        if not key or not all(isinstance(k, str) and k for k in key):
            raise ConfigError(f"Upsert.key must name one or more columns, not {self.key!r}")
        flags = [f for f in (self.delete_flag, *(flag for _, flag in self.keep_flags)) if f is not None]
        stored = {*key, self.order_by, *(column for column, _ in self.keep_flags)}
        clash = stored.intersection(flags)
        if clash or len(set(flags)) != len(flags):
            raise ConfigError(f"Upsert: a flag column cannot be a key, order or kept column, nor serve twice: {sorted(clash)}")

    @property
    def flag_columns(self) -> tuple[str, ...]:
        """The input columns that steer the merge and are not stored."""
        return tuple(f for f in (self.delete_flag, *(flag for _, flag in self.keep_flags)) if f is not None)


@dataclass(frozen=True, slots=True)
class Dedup:
    """`Sink.write(..., mode=Dedup(...))`: insert only rows whose `key` the table does not hold yet.

    For at-least-once sources without positions: a redelivered row is dropped, whichever batch
    brings it. `window` (a SQL predicate on the table's columns, e.g. `day >= '2026-11-01'`) bounds
    where duplicates are looked for, and so what each write reads: a key outside the window is
    inserted again. Within a batch, the first row of a key wins.
    """

    key: tuple[str, ...]
    window: str | None = None

    def __post_init__(self) -> None:
        key = (self.key,) if isinstance(self.key, str) else tuple(self.key)
        object.__setattr__(self, "key", key)
        if not key or not all(isinstance(k, str) and k for k in key):
            raise ConfigError(f"Dedup.key must name one or more columns, not {self.key!r}")


# -- declared schemas ------------------------------------------------------------------------------

@cache
def _simple_types() -> dict[str, pa.DataType]:
    import pyarrow as pa

    return {
        "tinyint": pa.int8(), "byte": pa.int8(),
        "smallint": pa.int16(), "short": pa.int16(),
        "int": pa.int32(), "integer": pa.int32(),
        "bigint": pa.int64(), "long": pa.int64(),
        "float": pa.float32(), "real": pa.float32(),
        "double": pa.float64(),
        "string": pa.string(), "varchar": pa.string(), "text": pa.string(),
        "binary": pa.binary(),
        "boolean": pa.bool_(), "bool": pa.bool_(),
        "date": pa.date32(),
        "timestamp": pa.timestamp("us", tz="UTC"),
        "timestamp_ntz": pa.timestamp("us"),
    }  # fmt: skip


def parse_schema(text: str) -> pa.Schema:
    """A declared schema: SQL-style (`id BIGINT, amount DOUBLE, day DATE, tags ARRAY<STRING>,
    s STRUCT<a: INT, b: STRING>, m MAP<STRING, BIGINT>, price DECIMAL(10,2), ts TIMESTAMP`, names in
    backticks when they need it; TIMESTAMP is UTC, TIMESTAMP_NTZ has no zone, as in Delta), or the
    JSON of a Delta/Spark schema (`{"type": "struct", "fields": [...]}`). Every column is nullable
    unless declared NOT NULL.

    Raises:
        ConfigError: naming what cannot be read.
    """
    import pyarrow as pa

    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            return _schema_of_json(json.loads(stripped))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read the schema JSON ({exc}): give a Delta schema, {{\"type\": \"struct\", ...}}") from exc
    reader = _DdlReader(stripped)
    fields = reader.fields(end="")
    if not fields:
        raise ConfigError("the schema declares no column: give e.g. 'id BIGINT, amount DOUBLE, day DATE'")
    return pa.schema(fields)


class _DdlReader:
    _TOKEN = re.compile(r"\s*(`(?:[^`]|``)*`|[A-Za-z_][A-Za-z0-9_$.]*|\d+|[<>(),:])")

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[str] = []
        at = 0
        while at < len(text):
            if text[at:].strip() == "":
                break
            match = self._TOKEN.match(text, at)
            if match is None:
                raise ConfigError(f"cannot read the schema at {text[at:at + 20]!r}: use e.g. 'id BIGINT, day DATE'")
            self.tokens.append(match.group(1))
            at = match.end()
        self.at = 0

    def peek(self) -> str:
        return self.tokens[self.at] if self.at < len(self.tokens) else ""

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if expected is not None and token.lower() != expected:
            raise ConfigError(f"cannot read the schema {self.text!r}: expected {expected!r}, found {token or 'the end'!r}")
        self.at += 1
        return token

    def fields(self, *, end: str, colon: bool = False) -> list[pa.Field]:
        import pyarrow as pa

        fields = []
        while self.peek() != end:
            name = self.take()
            if not name or name in "<>(),:":
                raise ConfigError(f"cannot read the schema {self.text!r}: expected a column name, found {name or 'the end'!r}")
            name = name[1:-1].replace("``", "`") if name.startswith("`") else name
            if colon and self.peek() == ":":
                self.take()
            kind = self.type()
            nullable = True
            if self.peek().lower() == "not":
                self.take()
                self.take("null")
                nullable = False
            fields.append(pa.field(name, kind, nullable=nullable))
            if self.peek() == ",":
                self.take()
            elif self.peek() != end:
                raise ConfigError(f"cannot read the schema {self.text!r}: expected ',' after column {name!r}")
        return fields

    def type(self) -> pa.DataType:
        import pyarrow as pa

        word = self.take().lower()
        if word in _simple_types():
            return _simple_types()[word]
        if word in ("decimal", "numeric"):
            self.take("(")
            precision = int(self.take())
            scale = 0
            if self.peek() == ",":
                self.take()
                scale = int(self.take())
            self.take(")")
            return pa.decimal128(precision, scale)
        if word == "array":
            self.take("<")
            element = self.type()
            self.take(">")
            return pa.list_(element)
        if word == "map":
            self.take("<")
            key = self.type()
            self.take(",")
            value = self.type()
            self.take(">")
            return pa.map_(key, value)
        if word == "struct":
            self.take("<")
            fields = self.fields(end=">", colon=True)
            self.take(">")
            return pa.struct(fields)
        known = ", ".join(sorted({k.upper() for k in _simple_types()} | {"DECIMAL(p,s)", "ARRAY<T>", "MAP<K,V>", "STRUCT<...>"}))
        raise ConfigError(f"unknown type {word!r} in the schema: use one of {known}")


_DELTA_PRIMITIVES = {"byte": "byte", "short": "short", "integer": "int", "long": "bigint", "float": "float", "double": "double",
                     "string": "string", "binary": "binary", "boolean": "boolean", "date": "date", "timestamp": "timestamp",
                     "timestamp_ntz": "timestamp_ntz"}  # fmt: skip


def _schema_of_json(node: dict[str, object]) -> pa.Schema:
    import pyarrow as pa

    return pa.schema([_field_of_json(f) for f in node["fields"]])  # type: ignore[attr-defined]


def _field_of_json(node: object) -> pa.Field:
    import pyarrow as pa

    assert isinstance(node, dict)
    return pa.field(str(node["name"]), _type_of_json(node["type"]), nullable=bool(node.get("nullable", True)))


def _type_of_json(node: object) -> pa.DataType:
    import pyarrow as pa

    if isinstance(node, str):
        decimal_type = re.fullmatch(r"decimal\((\d+),\s*(\d+)\)", node)
        if decimal_type:
            return pa.decimal128(int(decimal_type.group(1)), int(decimal_type.group(2)))
        if node not in _DELTA_PRIMITIVES:
            raise ConfigError(f"unknown Delta type {node!r} in the schema JSON")
        return _simple_types()[_DELTA_PRIMITIVES[node]]
    assert isinstance(node, dict)
    kind = node["type"]
    if kind == "struct":
        return pa.struct([_field_of_json(f) for f in node["fields"]])
    if kind == "array":
        return pa.list_(_type_of_json(node["elementType"]))
    if kind == "map":
        return pa.map_(_type_of_json(node["keyType"]), _type_of_json(node["valueType"]))
    raise ConfigError(f"unknown Delta type {kind!r} in the schema JSON")
