"""pgoutput protocol-1 messages decoded from hand-built payloads (the layouts of PostgreSQL's docs,
"Logical Replication Message Formats"), and malformed payloads refused with the type byte and offset."""

from __future__ import annotations

import copy
import pickle
import struct

import pytest

from lakesink.errors import BadRecord
from lakesink.sources.pgoutput import (
    PG_EPOCH_UNIX_US,
    UNCHANGED,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    Relation,
    Truncate,
    TypeInfo,
    Update,
    decode,
    pg_timestamp_to_unix_us,
)

NULL = b"n"
TOAST = b"u"


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def text(value: str) -> bytes:
    data = value.encode()
    return b"t" + struct.pack(">I", len(data)) + data


def binary(value: bytes) -> bytes:
    return b"b" + struct.pack(">I", len(value)) + value


def tuple_data(*columns: bytes) -> bytes:
    return struct.pack(">H", len(columns)) + b"".join(columns)


def test_pg_timestamps_count_from_2000() -> None:
    assert PG_EPOCH_UNIX_US == 946_684_800_000_000
    assert pg_timestamp_to_unix_us(0) == 946_684_800_000_000
    assert pg_timestamp_to_unix_us(-946_684_800_000_000) == 0
    assert pg_timestamp_to_unix_us(1) == 946_684_800_000_001


def test_begin() -> None:
    lsn = 0xFFFF_FFFF_0000_0001  # LSNs are uint64: above 2**63 must not come out negative
    payload = b"B" + struct.pack(">QqI", lsn, 86_400_000_000, 3_000_000_000)
    assert decode(payload) == Begin(final_lsn=lsn, commit_time_us=PG_EPOCH_UNIX_US + 86_400_000_000, xid=3_000_000_000)


def test_begin_before_2000_has_a_negative_pg_timestamp() -> None:
    payload = b"B" + struct.pack(">QqI", 1, -1, 7)
    assert decode(payload) == Begin(1, PG_EPOCH_UNIX_US - 1, 7)


def test_commit() -> None:
    payload = b"C" + struct.pack(">BQQq", 0, 0x1_0000_0100, 0x1_0000_0130, 5)
    assert decode(payload) == Commit(commit_lsn=0x1_0000_0100, end_lsn=0x1_0000_0130, commit_time_us=PG_EPOCH_UNIX_US + 5)


def test_origin() -> None:
    assert decode(b"O" + struct.pack(">Q", 42) + cstr("node_a")) == Origin(lsn=42, name="node_a")


def test_relation_with_key_flags_and_type_modifiers() -> None:
    payload = (
        b"R"
        + struct.pack(">I", 16385)
        + cstr("public")
        + cstr("orders")
        + b"d"
        + struct.pack(">H", 3)
        + b"\x01"
        + cstr("id")
        + struct.pack(">Ii", 20, -1)
        + b"\x00"
        + cstr("amount")
        + struct.pack(">Ii", 1700, ((12 << 16) | 3) + 4)
        + b"\x00"
        + cstr("näme")
        + struct.pack(">Ii", 1043, 24)
    )
    assert decode(payload) == Relation(
        oid=16385,
        namespace="public",
        name="orders",
        replica_identity="d",
        columns=(
            Column("id", 20, -1, True),
            Column("amount", 1700, ((12 << 16) | 3) + 4, False),
            Column("näme", 1043, 24, False),
        ),
    )


def test_relation_in_pg_catalog_has_an_empty_namespace_and_may_have_no_columns() -> None:
    payload = b"R" + struct.pack(">I", 7) + cstr("") + cstr("t") + b"f" + struct.pack(">H", 0)
    assert decode(payload) == Relation(7, "", "t", "f", ())


def test_type() -> None:
    assert decode(b"Y" + struct.pack(">I", 16390) + cstr("public") + cstr("mood")) == TypeInfo(16390, "public", "mood")


def test_insert_with_every_kind_of_value() -> None:
    payload = (
        b"I" + struct.pack(">I", 16385) + b"N" + tuple_data(text("1"), NULL, TOAST, binary(b"\x00\xff"), text("ünï €"), text(""))
    )
    message = decode(payload)
    assert message == Insert(16385, ("1", None, UNCHANGED, b"\x00\xff", "ünï €", ""))
    assert isinstance(message, Insert)
    assert message.new[2] is UNCHANGED


def test_insert_with_no_columns() -> None:
    assert decode(b"I" + struct.pack(">I", 1) + b"N" + tuple_data()) == Insert(1, ())


def test_update_without_old_tuple() -> None:
    payload = b"U" + struct.pack(">I", 9) + b"N" + tuple_data(text("1"), TOAST)
    assert decode(payload) == Update(9, None, False, ("1", UNCHANGED))


def test_update_with_old_key_tuple() -> None:
    payload = b"U" + struct.pack(">I", 9) + b"K" + tuple_data(text("1"), NULL) + b"N" + tuple_data(text("2"), text("x"))
    assert decode(payload) == Update(9, ("1", None), True, ("2", "x"))


def test_update_with_old_full_row() -> None:
    payload = b"U" + struct.pack(">I", 9) + b"O" + tuple_data(text("1"), text("a")) + b"N" + tuple_data(text("1"), text("b"))
    assert decode(payload) == Update(9, ("1", "a"), False, ("1", "b"))


def test_delete_with_key_and_with_full_row() -> None:
    assert decode(b"D" + struct.pack(">I", 9) + b"K" + tuple_data(text("1"), NULL)) == Delete(9, ("1", None), True)
    assert decode(b"D" + struct.pack(">I", 9) + b"O" + tuple_data(text("1"), text("a"))) == Delete(9, ("1", "a"), False)


@pytest.mark.parametrize(
    ("options", "cascade", "restart_identity"),
    [(0, False, False), (1, True, False), (2, False, True), (3, True, True)],
)
def test_truncate_flags(options: int, cascade: bool, restart_identity: bool) -> None:
    payload = b"T" + struct.pack(">IB", 3, options) + struct.pack(">3I", 16385, 16390, 4_000_000_000)
    assert decode(payload) == Truncate((16385, 16390, 4_000_000_000), cascade, restart_identity)


def test_logical_message_transactional_and_not() -> None:
    body = struct.pack(">Q", 77) + cstr("lakesink") + struct.pack(">I", 3) + b"a\x00b"
    assert decode(b"M\x01" + body) == LogicalMessage(77, "lakesink", b"a\x00b", True)
    assert decode(b"M\x00" + body) == LogicalMessage(77, "lakesink", b"a\x00b", False)


def test_decode_takes_bytearray_and_memoryview() -> None:
    payload = b"I" + struct.pack(">I", 1) + b"N" + tuple_data(text("x"))
    assert decode(bytearray(payload)) == decode(memoryview(payload)) == Insert(1, ("x",))


def test_unchanged_is_one_distinct_object_with_a_clear_repr() -> None:
    assert repr(UNCHANGED) == "UNCHANGED"
    assert UNCHANGED is not None and UNCHANGED != "u" and UNCHANGED != b""
    assert pickle.loads(pickle.dumps(UNCHANGED)) is UNCHANGED
    assert copy.deepcopy(UNCHANGED) is UNCHANGED
    assert "UNCHANGED" in repr(Update(1, None, False, (UNCHANGED,)))


def test_messages_are_frozen() -> None:
    message = Insert(1, ("x",))
    with pytest.raises(AttributeError):
        message.relation_oid = 2  # type: ignore[misc]


# --- malformed input ------------------------------------------------------------------------------


def refused(payload: bytes) -> str:
    with pytest.raises(BadRecord) as caught:
        decode(payload)
    return str(caught.value)


def test_empty_payload() -> None:
    assert "empty message at offset 0" in refused(b"")


@pytest.mark.parametrize("kind", [b"S", b"E", b"c", b"A", b"b", b"P", b"K", b"r", b"\x00", b"\xff"])
def test_unknown_message_types_including_streaming_and_two_phase(kind: bytes) -> None:
    message = refused(kind + b"\x00" * 30)
    assert f"unknown message type {chr(kind[0])!r} (0x{kind[0]:02x}) at offset 0" in message
    assert "proto_version '1'" in message


def test_truncated_begin() -> None:
    message = refused(b"B" + b"\x00" * 19)
    assert "type 'B' (0x42) at offset 1" in message
    assert "ends early" in message


def test_bytes_left_over() -> None:
    payload = b"C" + struct.pack(">BQQq", 0, 1, 2, 3) + b"\x99\x99"
    message = refused(payload)
    assert "type 'C' (0x43) at offset 26" in message
    assert "2 bytes left over" in message


def test_text_value_longer_than_the_message() -> None:
    # 'I' oid 'N' count(2) then column 0 at offset 8 (fine, 6 bytes) and column 1 at 14, claiming 100 bytes.
    payload = b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 2) + text("a") + b"t" + struct.pack(">I", 100) + b"abc"
    message = refused(payload)
    assert "type 'I' (0x49) at offset 14" in message
    assert "100 bytes runs past the end" in message


def test_tuple_with_fewer_columns_than_announced() -> None:
    payload = b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 3) + text("a") + NULL
    assert "at offset 15" in refused(payload)  # where the third column should start


def test_unknown_tuple_value_kind() -> None:
    payload = b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 1) + b"x"
    message = refused(payload)
    assert "at offset 8" in message
    assert "unknown tuple value kind 'x'" in message


def test_insert_without_new_tuple_marker() -> None:
    message = refused(b"I" + struct.pack(">I", 1) + b"K" + tuple_data(text("a")))
    assert "type 'I' (0x49) at offset 5" in message
    assert "'N'" in message


def test_update_missing_new_marker_after_old_tuple() -> None:
    payload = b"U" + struct.pack(">I", 1) + b"O" + tuple_data(NULL) + b"X" + tuple_data(NULL)
    message = refused(payload)
    assert "type 'U' (0x55) at offset 9" in message


def test_update_that_ends_after_old_tuple() -> None:
    payload = b"U" + struct.pack(">I", 1) + b"K" + tuple_data(NULL)
    assert "at offset 9" in refused(payload)


def test_delete_needs_an_old_tuple() -> None:
    assert "type 'D' (0x44) at offset 5" in refused(b"D" + struct.pack(">I", 1) + b"N" + tuple_data(NULL))


def test_text_that_is_not_utf8() -> None:
    payload = b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 1) + b"t" + struct.pack(">I", 2) + b"\xc3\x28"
    message = refused(payload)
    assert "at offset 8" in message
    assert "not UTF-8" in message


def test_relation_string_without_nul() -> None:
    message = refused(b"R" + struct.pack(">I", 1) + b"public")
    assert "type 'R' (0x52) at offset 5" in message
    assert "no terminating NUL" in message


def test_relation_with_fewer_columns_than_announced() -> None:
    payload = (
        b"R"
        + struct.pack(">I", 1)
        + cstr("s")
        + cstr("t")
        + b"d"
        + struct.pack(">H", 2)
        + b"\x01"
        + cstr("id")
        + struct.pack(">Ii", 23, -1)
    )
    assert "type 'R' (0x52) at offset 24" in refused(payload)  # where the second column should start


def test_truncate_with_fewer_oids_than_announced() -> None:
    message = refused(b"T" + struct.pack(">IB", 3, 0) + struct.pack(">I", 1))
    assert "type 'T' (0x54) at offset 6" in message
    assert "3 relation OIDs announced, 1 present" in message


def test_message_content_longer_than_payload() -> None:
    payload = b"M\x01" + struct.pack(">Q", 1) + cstr("p") + struct.pack(">I", 10) + b"abc"
    assert "type 'M' (0x4d) at offset 16" in refused(payload)
