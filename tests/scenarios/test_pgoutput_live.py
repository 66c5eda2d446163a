"""pgoutput from a real PostgreSQL 15: a table with a column of every mapped type (and some that
stay text), changed by inserts, updates (a TOASTed column left alone, a primary key changed),
deletes and truncates under REPLICA IDENTITY DEFAULT then FULL. The changes are read with
pg_logical_slot_peek_binary_changes, decoded, and their text converted through pgtypes must equal
what psycopg2 SELECTs, whatever the reading session's time zone."""

from __future__ import annotations

import math
import random
import string
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg2
import pyarrow as pa
import pytest

from lakesink.errors import BadRecord
from lakesink.sources.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    Relation,
    Truncate,
    TypeInfo,
    Update,
    Value,
    decode,
)
from lakesink.sources.pgtypes import arrow_type, to_arrow_array

pytestmark = pytest.mark.timeout(180)

# (column, SQL type, SELECT expression giving what the column should convert to)
COLUMNS = [
    ("id", "int8 PRIMARY KEY", "id"),
    ("flag", "bool", "flag"),
    ("small", "int2", "small"),
    ("medium", "int4", "medium"),
    ("large", "int8", "large"),
    ("object", "oid", "object"),
    ("real4", "float4", "real4"),
    ("real8", "float8", "real8"),
    ("amount", "numeric(12,3)", "amount"),
    ("anything", "numeric", "anything"),
    ("body", "text", "body"),
    ("label", "varchar(20)", "label"),
    ("code", "char(5)", "code"),
    ("ident", "name", "ident"),
    ("letter", '"char"', "letter"),
    ("blob", "bytea", "blob"),
    ("day", "date", "day"),
    ("at", "timestamp", "at"),
    ("at_tz", "timestamptz", "at_tz"),
    ("clock", "time", "clock::text"),  # Delta has no time type: kept as PostgreSQL's text
    ("uid", "uuid", "uid::text"),
    ("doc", "json", "doc::text"),
    ("docb", "jsonb", "docb::text"),
    ("feeling", "mood", "feeling::text"),
    ("numbers", "int[]", "numbers::text"),
    ("big", "text", "big"),
]
NAMES = [name for name, _, _ in COLUMNS]
BIG = NAMES.index("big")
# Read under each: the text of timestamptz values carries this zone's offsets ('+05:30', '-02:30',
# and the seconds of Amsterdam's local mean time before 1937: '+00:19:32').
TIME_ZONES = ("UTC", "Asia/Kolkata", "America/St_Johns", "Europe/Amsterdam")


def random_text(size: int) -> str:
    # Random letters do not compress below PostgreSQL's TOAST threshold: the value is stored out of line.
    return "".join(random.Random(7).choices(string.ascii_letters + string.digits, k=size))


BIG_TEXT = random_text(100_000)

ROWS: dict[int, dict[str, Any]] = {
    1: {
        "id": 1,
        "flag": True,
        "small": -32768,
        "medium": 2147483647,
        "large": -9223372036854775808,
        "object": 4294967295,
        "real4": "1.1",
        "real8": "Infinity",
        "amount": "-999999999.999",
        "anything": "12345678901234567890.123456789012345678",
        "body": "hello ünïcødé € \t 'quoted' \\ back",
        "label": "varchar",
        "code": "ab",
        "ident": "a_name",
        "letter": "x",
        "blob": psycopg2.Binary(b"\x00\xff\x10 \\"),
        "day": "0001-01-01",
        "at": "9999-12-31 23:59:59.999999",
        "at_tz": "1900-01-01 00:00:00+00",
        "clock": "23:59:59.999999",
        "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "doc": '{"a": [1, 2.50], "k": "v"}',
        "docb": '{"b": null, "a": 1}',
        "feeling": "happy",
        "numbers": "{1,NULL,3}",
        "big": BIG_TEXT,
    },
    2: {"id": 2},  # every other column NULL
    3: {
        "id": 3,
        "flag": False,
        "small": 32767,
        "medium": -2147483648,
        "large": 9223372036854775807,
        "object": 0,
        "real4": "NaN",
        "real8": "-Infinity",
        "amount": "0.001",
        "anything": "-0.5",
        "body": "",
        "label": "",
        "code": "",
        "ident": "",
        "letter": "",
        "blob": psycopg2.Binary(b""),
        "day": "2024-02-29",
        "at": "2024-01-02 03:04:05",
        "at_tz": "2024-07-01 12:00:00.5-02:30",
        "clock": "00:00:00",
        "uid": "00000000-0000-0000-0000-000000000000",
        "doc": "[]",
        "docb": '{"nested": {"deep": [true, false]}}',
        "feeling": "sad",
        "numbers": "{}",
        "big": "short",
    },
}


@pytest.fixture
def connection(pg_database: str) -> Iterator[Any]:
    connection = psycopg2.connect(pg_database)
    connection.autocommit = True
    with connection.cursor() as cursor:
        # peek decodes only WAL flushed to disk, and the test cluster runs with synchronous_commit=off.
        cursor.execute("SET synchronous_commit = on")
    try:
        yield connection
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'slot'")
        connection.close()


def execute(connection: Any, statement: str, parameters: Sequence[Any] | dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(statement, parameters)
        return cursor.fetchall() if cursor.description else []


def insert(connection: Any, row: dict[str, Any]) -> None:
    names = ", ".join(row)
    values = ", ".join(f"%({name})s" for name in row)
    execute(connection, f"INSERT INTO everything ({names}) VALUES ({values})", row)


def select(connection: Any, row_id: int) -> tuple[Any, ...]:
    """The row as psycopg2 returns it (types it leaves as text selected as text), in UTC."""
    expressions = ", ".join(expression for _, _, expression in COLUMNS)
    execute(connection, "SET TimeZone = 'UTC'")
    (row,) = execute(connection, f"SELECT {expressions} FROM everything WHERE id = %s", (row_id,))
    return tuple(row)


def peek(connection: Any, time_zone: str) -> list[Message]:
    """Every change still in the slot, decoded; the text of values is written in `time_zone`."""
    execute(connection, "SET TimeZone = %s", (time_zone,))
    rows = execute(
        connection,
        "SELECT data FROM pg_logical_slot_peek_binary_changes("
        "'slot', NULL, NULL, 'proto_version', '1', 'publication_names', 'pub')",
    )
    return [decode(bytes(data)) for (data,) in rows]


def comparable(value: Any, arrow: pa.DataType) -> Any:
    """A psycopg2 value as the Arrow value it should equal (bytea as bytes, float4 rounded to float32, NaN as a marker)."""
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if value is not None and arrow == pa.float32():
        return pa.scalar(value, pa.float32()).as_py()
    return value


def assert_converts_to(relation: Relation, tuples: Sequence[Sequence[Value]], expected_rows: Sequence[tuple[Any, ...]]) -> None:
    """Each column of `tuples` (UNCHANGED already replaced), converted in one batch, equals the SELECTed rows."""
    for index, column in enumerate(relation.columns):
        texts = [row[index] for row in tuples]
        assert all(text is None or isinstance(text, str) for text in texts), column.name
        arrow = arrow_type(column.type_oid, column.type_modifier)
        array = to_arrow_array(texts, column.type_oid, column.type_modifier, column=column.name, table=relation.name)  # type: ignore[arg-type]
        assert array.type == arrow
        got = [comparable(value, arrow) for value in array.to_pylist()]
        want = [comparable(row[index], arrow) for row in expected_rows]
        assert got == want, f"column {column.name}"


def transactions(messages: list[Message]) -> list[list[Message]]:
    """The messages between each Begin and Commit, checking the pair agrees."""
    groups: list[list[Message]] = []
    now_us = time.time() * 1e6
    for message in messages:
        if isinstance(message, Begin):
            begin = message
            groups.append([])
        elif isinstance(message, Commit):
            assert begin.final_lsn == message.commit_lsn < message.end_lsn
            assert begin.commit_time_us == message.commit_time_us
            assert abs(message.commit_time_us - now_us) < 300e6  # the PostgreSQL epoch is converted to unix
        else:
            groups[-1].append(message)
    return groups


def with_unchanged_from(new: Sequence[Value], previous: Sequence[Value]) -> tuple[Value, ...]:
    return tuple(old if value is UNCHANGED else value for value, old in zip(new, previous, strict=True))


def test_pgoutput_changes_decode_and_convert_like_select(connection: Any) -> None:
    execute(connection, "CREATE TYPE mood AS ENUM ('sad', 'happy')")
    execute(connection, "CREATE TABLE everything (" + ", ".join(f"{name} {sql}" for name, sql, _ in COLUMNS) + ")")
    execute(connection, "CREATE PUBLICATION pub FOR TABLE everything")
    execute(connection, "SELECT pg_create_logical_replication_slot('slot', 'pgoutput')")
    (table_oid,) = execute(connection, "SELECT 'everything'::regclass::oid")[0]
    attributes = execute(
        connection,
        "SELECT attname, atttypid, atttypmod FROM pg_attribute "
        "WHERE attrelid = 'everything'::regclass AND attnum > 0 ORDER BY attnum",
    )
    (mood_oid,) = execute(connection, "SELECT 'mood'::regtype::oid")[0]

    with connection:  # one transaction: three inserts
        connection.autocommit = False
        for row in ROWS.values():
            insert(connection, row)
    connection.autocommit = True
    (stored_bytes,) = execute(connection, "SELECT pg_column_size(big) FROM everything WHERE id = 1")[0]
    assert stored_bytes > 50_000  # too big for the row even compressed: TOASTed out of line
    inserted = {row_id: select(connection, row_id) for row_id in ROWS}
    execute(connection, "UPDATE everything SET medium = 42 WHERE id = 1")  # big untouched: UNCHANGED
    updated = select(connection, 1)
    execute(connection, "UPDATE everything SET id = 10 WHERE id = 1")  # key changes: the old key is sent
    rekeyed = select(connection, 10)
    execute(connection, "DELETE FROM everything WHERE id = 2")
    execute(connection, "ALTER TABLE everything REPLICA IDENTITY FULL")
    execute(connection, "UPDATE everything SET small = 7 WHERE id = 3")
    full_updated_3 = select(connection, 3)
    execute(connection, "UPDATE everything SET flag = NULL WHERE id = 10")
    full_updated_10 = select(connection, 10)
    execute(connection, "DELETE FROM everything WHERE id = 3")
    execute(connection, "TRUNCATE everything RESTART IDENTITY CASCADE")
    execute(connection, "TRUNCATE everything")

    expected_relation_columns = tuple((name, type_oid, typmod) for name, type_oid, typmod in attributes)
    results: list[list[list[Message]]] = []
    for time_zone in TIME_ZONES:
        groups = transactions(peek(connection, time_zone))
        results.append(groups)
        kinds = [[type(message).__name__ for message in group] for group in groups]
        assert kinds == [
            ["TypeInfo", "Relation", "Insert", "Insert", "Insert"],
            ["Update"],
            ["Update"],
            ["Delete"],
            ["TypeInfo", "Relation", "Update"],  # ALTER ... REPLICA IDENTITY sent nothing itself
            ["Update"],
            ["Delete"],
            ["TypeInfo", "Relation", "Truncate"],  # TRUNCATE gives the table a new file: described again
            ["TypeInfo", "Relation", "Truncate"],
        ], time_zone

        # Relation and type: what pg_attribute says; all columns are "key" under FULL.
        for index, identity in ((0, "d"), (4, "f"), (7, "f"), (8, "f")):
            type_info, relation = groups[index][0], groups[index][1]
            assert type_info == TypeInfo(mood_oid, "public", "mood")
            assert isinstance(relation, Relation)
            assert (relation.oid, relation.namespace, relation.name, relation.replica_identity) == (
                table_oid,
                "public",
                "everything",
                identity,
            )
            assert tuple((c.name, c.type_oid, c.type_modifier) for c in relation.columns) == expected_relation_columns
            assert [c.is_key for c in relation.columns] == (
                [True] + [False] * (len(NAMES) - 1) if identity == "d" else [True] * len(NAMES)
            )
        relation = groups[0][1]
        assert isinstance(relation, Relation)
        assert arrow_type(
            relation.columns[NAMES.index("amount")].type_oid, relation.columns[NAMES.index("amount")].type_modifier
        ) == pa.decimal128(12, 3)

        # Inserts: every value's text converts to what SELECT returns.
        inserts = groups[0][2:]
        assert all(isinstance(m, Insert) and m.relation_oid == table_oid for m in inserts)
        new_rows = [m.new for m in inserts if isinstance(m, Insert)]
        assert new_rows[1] == ("2",) + (None,) * (len(NAMES) - 1)
        assert new_rows[0][BIG] == BIG_TEXT
        assert_converts_to(relation, new_rows, [inserted[1], inserted[2], inserted[3]])

        # An update that leaves the TOASTed column alone: it comes as UNCHANGED; no old tuple (DEFAULT, key unchanged).
        update = groups[1][0]
        assert isinstance(update, Update)
        assert update.old is None and not update.old_is_key_only
        assert update.new[BIG] is UNCHANGED
        assert sum(value is UNCHANGED for value in update.new) == 1
        assert_converts_to(relation, [with_unchanged_from(update.new, new_rows[0])], [updated])

        # The primary key changes: the old key ('K') names the row that was.
        rekey = groups[2][0]
        assert isinstance(rekey, Update)
        assert rekey.old == ("1",) + (None,) * (len(NAMES) - 1) and rekey.old_is_key_only
        assert rekey.new[0] == "10" and rekey.new[BIG] is UNCHANGED
        assert_converts_to(relation, [with_unchanged_from(rekey.new, new_rows[0])], [rekeyed])

        delete = groups[3][0]
        assert delete == Delete(table_oid, ("2",) + (None,) * (len(NAMES) - 1), True)

        # REPLICA IDENTITY FULL: the whole old row ('O'), TOASTed values included; the new row still omits them.
        full_update = groups[4][2]
        assert isinstance(full_update, Update)
        assert full_update.old is not None and not full_update.old_is_key_only
        assert_converts_to(relation, [full_update.old, full_update.new], [inserted[3], full_updated_3])
        full_update_10 = groups[5][0]
        assert isinstance(full_update_10, Update)
        assert full_update_10.old is not None and not full_update_10.old_is_key_only
        assert full_update_10.old[BIG] == BIG_TEXT and full_update_10.new[BIG] is UNCHANGED
        assert_converts_to(
            relation,
            [full_update_10.old, with_unchanged_from(full_update_10.new, full_update_10.old)],
            [rekeyed, full_updated_10],
        )
        full_delete = groups[6][0]
        assert isinstance(full_delete, Delete) and not full_delete.old_is_key_only
        assert_converts_to(relation, [full_delete.old], [full_updated_3])

        assert groups[7][2] == Truncate((table_oid,), cascade=True, restart_identity=True)
        assert groups[8][2] == Truncate((table_oid,), cascade=False, restart_identity=False)

    # The zone changes only the timestamptz text (its offsets), never what it converts to.
    at_tz = NAMES.index("at_tz")
    texts = {
        zone: groups[0][2].new[at_tz]
        for zone, groups in zip(TIME_ZONES, results, strict=True)
        if isinstance(groups[0][2], Insert)
    }
    assert texts == {
        "UTC": "1900-01-01 00:00:00+00",
        "Asia/Kolkata": "1900-01-01 05:21:10+05:21:10",
        "America/St_Johns": "1899-12-31 20:29:08-03:30:52",
        "Europe/Amsterdam": "1900-01-01 00:19:32+00:19:32",
    }
    in_kolkata = results[1][0][4]
    assert isinstance(in_kolkata, Insert) and in_kolkata.new[at_tz] == "2024-07-01 20:00:00.5+05:30"


def test_values_delta_cannot_hold_are_refused_from_real_text(connection: Any) -> None:
    execute(connection, "CREATE TABLE odd (id int PRIMARY KEY, n numeric, day date, at timestamptz, clock time)")
    execute(connection, "CREATE PUBLICATION pub FOR TABLE odd")
    execute(connection, "SELECT pg_create_logical_replication_slot('slot', 'pgoutput')")
    execute(connection, "INSERT INTO odd VALUES (1, 'NaN', 'infinity', '-infinity', '24:00:00')")
    execute(connection, "INSERT INTO odd VALUES (2, 1e25, '0044-03-15 BC', '10000-01-01 00:00:00+00', '12:00')")
    execute(connection, "INSERT INTO odd VALUES (3, 0.1234567890123456789, '2024-01-01', '2024-01-01 00:00:00+00', '12:00')")
    messages = peek(connection, "UTC")
    relation = next(m for m in messages if isinstance(m, Relation))
    rows = [m.new for m in messages if isinstance(m, Insert)]

    def refusal(row: int, column: int) -> str:
        spec = relation.columns[column]
        with pytest.raises(BadRecord) as caught:
            to_arrow_array([rows[row][column]], spec.type_oid, spec.type_modifier, column=spec.name, table="odd")  # type: ignore[list-item]
        return str(caught.value)

    assert "value 'NaN' has no decimal value" in refusal(0, 1)
    assert "value '10000000000000000000000000' has 26 digits before the point" in refusal(1, 1)
    assert "value '0.1234567890123456789' has 19 digits after the point" in refusal(2, 1)
    assert "value 'infinity' is an infinite date" in refusal(0, 2)
    assert "value '0044-03-15 BC' is a date before the year 1" in refusal(1, 2)
    assert "value '-infinity' is an infinite timestamp with time zone" in refusal(0, 3)
    assert "value '10000-01-01 00:00:00+00' is a timestamp with time zone outside the years 1 to 9999" in refusal(1, 3)
    clock = relation.columns[4]
    assert to_arrow_array([rows[0][4]], clock.type_oid, clock.type_modifier, column="clock", table="odd").to_pylist() == [
        "24:00:00"
    ]  # time stays PostgreSQL's text: nothing to refuse
