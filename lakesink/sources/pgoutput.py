"""Decode PostgreSQL's built-in `pgoutput` logical replication messages (protocol version 1).

Pure bytes in, frozen dataclasses out: no I/O, no driver. One call decodes one message, as a
replication stream or `pg_logical_slot_peek_binary_changes` hands it over (PostgreSQL docs,
"Logical Replication Message Formats").

Tuples are the text format (pgoutput sends binary values only when asked with `binary 'true'`,
which lakesink does not ask for; a 'b' value is still decoded, as bytes). A text value is the
type's output function's text in the server encoding; lakesink decodes it as UTF-8, so the
database must be UTF8. A TOASTed value an UPDATE did not change is not sent: it decodes to
`UNCHANGED`, and the caller must take it from the row it already has.

Wire integers are decoded as PostgreSQL declares them: LSNs uint64, OIDs and xids uint32, type
modifiers and timestamps int64/int32 signed. Times are converted to unix microseconds.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeAlias

from lakesink.errors import BadRecord

PG_EPOCH_UNIX_US: Final = 946_684_800_000_000
"""2000-01-01T00:00:00Z (PostgreSQL's timestamp epoch) in microseconds since 1970-01-01T00:00:00Z."""


class Unchanged(enum.Enum):
    """The type of `UNCHANGED`: a one-member enum, so it is a singleton (also across pickling) and
    `value is UNCHANGED` narrows the type for mypy."""

    UNCHANGED = "UNCHANGED"

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = Unchanged.UNCHANGED
"""A TOASTed column value an UPDATE left as it was ('u'): pgoutput does not send it again."""

Value: TypeAlias = str | bytes | Unchanged | None
"""One column of a tuple: text (str), binary (bytes), NULL (None) or UNCHANGED."""


@dataclass(frozen=True, slots=True)
class Begin:
    """A transaction starts; `final_lsn` is the LSN of its commit record."""

    final_lsn: int
    commit_time_us: int  # unix microseconds
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    """The transaction ends; `end_lsn` is where the stream resumes after it (what to confirm)."""

    commit_lsn: int
    end_lsn: int
    commit_time_us: int  # unix microseconds


@dataclass(frozen=True, slots=True)
class Origin:
    """The transaction came from another node through replication origin `name`."""

    lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    type_modifier: int  # atttypmod: -1 when the type has none
    is_key: bool  # part of the replica identity (flag 1); under REPLICA IDENTITY FULL every column is


@dataclass(frozen=True, slots=True)
class Relation:
    """A table's description; sent before the first change to it in a session and after it changes.

    `namespace` is "" for pg_catalog. `replica_identity` is PostgreSQL's relreplident letter:
    'd' default (primary key), 'n' nothing, 'f' full, 'i' index.
    """

    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """A non-built-in type's name (sent before a Relation that uses it)."""

    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relation_oid: int
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Update:
    """`old` is None unless the replica identity changed (key tuple 'K') or is FULL (whole row 'O')."""

    relation_oid: int
    old: tuple[Value, ...] | None
    old_is_key_only: bool  # old is a 'K' tuple: only key columns are set, the others are None
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Delete:
    relation_oid: int
    old: tuple[Value, ...]
    old_is_key_only: bool  # 'K' tuple (only the key columns are set) rather than the whole old row 'O'


@dataclass(frozen=True, slots=True)
class Truncate:
    relation_oids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """A `pg_logical_emit_message` record; `transactional` ones arrive inside their transaction."""

    lsn: int
    prefix: str
    content: bytes
    transactional: bool


Message: TypeAlias = Begin | Commit | Origin | Relation | TypeInfo | Insert | Update | Delete | Truncate | LogicalMessage


def pg_timestamp_to_unix_us(value: int) -> int:
    """Microseconds since 2000-01-01 UTC (PostgreSQL's epoch) as microseconds since 1970-01-01 UTC."""
    return value + PG_EPOCH_UNIX_US


def decode(payload: bytes) -> Message:
    """Decode one pgoutput protocol-1 message (bytes, bytearray or memoryview).

    Raises BadRecord, naming the message type byte and the byte offset, when the payload is empty,
    of an unknown type (including the streaming and two-phase messages of protocols 2 and 3), cut
    short, has bytes left over, or holds text that is not UTF-8.
    """
    if type(payload) is not bytes:
        payload = bytes(payload)
    if not payload:
        raise BadRecord("pgoutput: empty message at offset 0; a pgoutput message starts with its type byte")
    decoder = _DECODERS.get(payload[0])
    if decoder is None:
        raise BadRecord(
            f"pgoutput: unknown message type {_kind(payload[0])} at offset 0 ({len(payload)} bytes). lakesink reads "
            "protocol version 1: start the slot's stream with proto_version '1' and without streaming or two_phase."
        )
    try:
        return decoder(payload)
    except _Malformed as exc:
        raise BadRecord(
            f"pgoutput: malformed message of type {_kind(payload[0])} at offset {exc.offset} ({len(payload)} bytes): "
            f"{exc.reason}. The stream is corrupt or not pgoutput protocol 1."
        ) from None


# --- decoding -------------------------------------------------------------------------------------


class _Malformed(BadRecord):
    """Raised inside this module with the offset; `decode` turns it into the BadRecord callers see."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


_U8: Final = struct.Struct(">B")
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_BEGIN: Final = struct.Struct(">QqI")
_COMMIT: Final = struct.Struct(">BQQq")
_U64: Final = struct.Struct(">Q")
_COLUMN_TYPE: Final = struct.Struct(">Ii")
_MESSAGE_HEAD: Final = struct.Struct(">BQ")
_TRUNCATE_HEAD: Final = struct.Struct(">IB")

_T, _N_NULL, _U, _B = b"t"[0], b"n"[0], b"u"[0], b"b"[0]
_NEW, _KEY, _OLD = b"N"[0], b"K"[0], b"O"[0]
_TRUNCATE_CASCADE: Final = 1
_TRUNCATE_RESTART_IDENTITY: Final = 2


def _kind(byte: int) -> str:
    return f"{chr(byte)!r} (0x{byte:02x})"


def _reason(exc: Exception) -> str:
    # Only these can escape a decoder's reads: struct/IndexError when the payload ends early,
    # ValueError from bytes.index when a string has no NUL, UnicodeDecodeError for bad text.
    if isinstance(exc, UnicodeDecodeError):
        return f"text is not UTF-8 ({exc.reason}); lakesink needs a database with UTF8 encoding"
    if isinstance(exc, ValueError) and not isinstance(exc, struct.error):
        return "a string has no terminating NUL byte"
    return "the message ends early"


_READ_ERRORS: Final = (struct.error, IndexError, ValueError)


def _string(p: bytes, pos: int) -> tuple[str, int]:
    end = p.index(0, pos)
    return p[pos:end].decode(), end + 1


def _end(p: bytes, pos: int) -> None:
    if pos != len(p):
        raise _Malformed(pos, f"{len(p) - pos} bytes left over after the message")


def _tuple(p: bytes, pos: int) -> tuple[tuple[Value, ...], int]:
    """TupleData at `pos`: the values and the offset after it."""
    size = len(p)
    start = pos
    try:
        (count,) = _U16.unpack_from(p, pos)
        pos += 2
        values: list[Value] = []
        append = values.append
        for _ in range(count):
            start = pos
            kind = p[pos]
            if kind == _T:
                (length,) = _U32.unpack_from(p, pos + 1)
                pos += 5 + length
                if pos > size:
                    raise _Malformed(start, f"a text value of {length} bytes runs past the end")
                append(p[start + 5 : pos].decode())
            elif kind == _N_NULL:
                append(None)
                pos += 1
            elif kind == _U:
                append(UNCHANGED)
                pos += 1
            elif kind == _B:
                (length,) = _U32.unpack_from(p, pos + 1)
                pos += 5 + length
                if pos > size:
                    raise _Malformed(start, f"a binary value of {length} bytes runs past the end")
                append(p[start + 5 : pos])
            else:
                raise _Malformed(pos, f"unknown tuple value kind {_kind(kind)}; expected 't', 'n', 'u' or 'b'")
    except _READ_ERRORS as exc:
        raise _Malformed(start, _reason(exc)) from None
    return tuple(values), pos


def _begin(p: bytes) -> Begin:
    try:
        final_lsn, timestamp, xid = _BEGIN.unpack_from(p, 1)
    except struct.error as exc:
        raise _Malformed(1, _reason(exc)) from None
    _end(p, 1 + _BEGIN.size)
    return Begin(final_lsn, timestamp + PG_EPOCH_UNIX_US, xid)


def _commit(p: bytes) -> Commit:
    try:
        _flags, commit_lsn, end_lsn, timestamp = _COMMIT.unpack_from(p, 1)
    except struct.error as exc:
        raise _Malformed(1, _reason(exc)) from None
    _end(p, 1 + _COMMIT.size)
    return Commit(commit_lsn, end_lsn, timestamp + PG_EPOCH_UNIX_US)


def _origin(p: bytes) -> Origin:
    pos = 1
    try:
        (lsn,) = _U64.unpack_from(p, pos)
        pos += 8
        name, pos = _string(p, pos)
    except _READ_ERRORS as exc:
        raise _Malformed(pos, _reason(exc)) from None
    _end(p, pos)
    return Origin(lsn, name)


def _relation(p: bytes) -> Relation:
    pos = 1
    try:
        (oid,) = _U32.unpack_from(p, pos)
        pos += 4
        namespace, pos = _string(p, pos)
        name, pos = _string(p, pos)
        identity = chr(p[pos])
        pos += 1
        (count,) = _U16.unpack_from(p, pos)
        pos += 2
        columns = []
        for _ in range(count):
            flags = p[pos]
            pos += 1
            column_name, pos = _string(p, pos)
            type_oid, type_modifier = _COLUMN_TYPE.unpack_from(p, pos)
            pos += 8
            columns.append(Column(column_name, type_oid, type_modifier, bool(flags & 1)))
    except _READ_ERRORS as exc:
        raise _Malformed(pos, _reason(exc)) from None
    _end(p, pos)
    return Relation(oid, namespace, name, identity, tuple(columns))


def _type(p: bytes) -> TypeInfo:
    pos = 1
    try:
        (oid,) = _U32.unpack_from(p, pos)
        pos += 4
        namespace, pos = _string(p, pos)
        name, pos = _string(p, pos)
    except _READ_ERRORS as exc:
        raise _Malformed(pos, _reason(exc)) from None
    _end(p, pos)
    return TypeInfo(oid, namespace, name)


def _relation_oid(p: bytes) -> int:
    try:
        oid: int = _U32.unpack_from(p, 1)[0]
    except struct.error as exc:
        raise _Malformed(1, _reason(exc)) from None
    return oid


def _marker(p: bytes, pos: int, expected: bytes) -> int:
    if pos >= len(p):
        raise _Malformed(pos, f"the message ends where a tuple marker ({expected.decode()}) belongs")
    marker = p[pos]
    if marker not in expected:
        raise _Malformed(pos, f"tuple marker {_kind(marker)} where {' or '.join(repr(chr(b)) for b in expected)} belongs")
    return marker


def _insert(p: bytes) -> Insert:
    oid = _relation_oid(p)
    _marker(p, 5, b"N")
    new, pos = _tuple(p, 6)
    _end(p, pos)
    return Insert(oid, new)


def _update(p: bytes) -> Update:
    oid = _relation_oid(p)
    marker = _marker(p, 5, b"KON")
    old: tuple[Value, ...] | None = None
    pos = 6
    if marker != _NEW:
        old, pos = _tuple(p, pos)
        _marker(p, pos, b"N")
        pos += 1
    new, pos = _tuple(p, pos)
    _end(p, pos)
    return Update(oid, old, marker == _KEY, new)


def _delete(p: bytes) -> Delete:
    oid = _relation_oid(p)
    marker = _marker(p, 5, b"KO")
    old, pos = _tuple(p, 6)
    _end(p, pos)
    return Delete(oid, old, marker == _KEY)


def _truncate(p: bytes) -> Truncate:
    try:
        count, options = _TRUNCATE_HEAD.unpack_from(p, 1)
    except struct.error as exc:
        raise _Malformed(1, _reason(exc)) from None
    pos = 1 + _TRUNCATE_HEAD.size
    if len(p) < pos + 4 * count:
        raise _Malformed(pos, f"{count} relation OIDs announced, {(len(p) - pos) // 4} present")
    oids = struct.unpack_from(f">{count}I", p, pos)
    _end(p, pos + 4 * count)
    return Truncate(oids, bool(options & _TRUNCATE_CASCADE), bool(options & _TRUNCATE_RESTART_IDENTITY))


def _message(p: bytes) -> LogicalMessage:
    pos = 1
    try:
        flags, lsn = _MESSAGE_HEAD.unpack_from(p, pos)
        pos += _MESSAGE_HEAD.size
        prefix, pos = _string(p, pos)
        (length,) = _U32.unpack_from(p, pos)
        pos += 4
    except _READ_ERRORS as exc:
        raise _Malformed(pos, _reason(exc)) from None
    if pos + length > len(p):
        raise _Malformed(pos, f"content of {length} bytes runs past the end")
    content = p[pos : pos + length]
    _end(p, pos + length)
    return LogicalMessage(lsn, prefix, content, bool(flags & 1))


_DECODERS: Final[dict[int, Callable[[bytes], Message]]] = {
    b"B"[0]: _begin,
    b"C"[0]: _commit,
    b"O"[0]: _origin,
    b"R"[0]: _relation,
    b"Y"[0]: _type,
    b"I"[0]: _insert,
    b"U"[0]: _update,
    b"D"[0]: _delete,
    b"T"[0]: _truncate,
    b"M"[0]: _message,
}
