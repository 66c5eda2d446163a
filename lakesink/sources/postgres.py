"""PostgreSQL logical replication through psycopg2: the publication's tables, the slot, a consistent
snapshot of the rows, and the pgoutput change stream with its acknowledgements.

psycopg2 (not psycopg 3: it has no replication protocol) is imported when a connection is made, so
`import lakesink` does not need it (`pip install 'lakesink[postgres]'`).
"""

from __future__ import annotations

import functools
import logging
import select
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from lakesink.errors import ConfigError, SourceContractViolation, StorageUnavailable, TerminalError

log = logging.getLogger(__name__)

PROTO_VERSION = "1"


def parse_lsn(text: str) -> int:
    """`16/B374D848` as an int64 (PostgreSQL's text form of a WAL position)."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    """An LSN as PostgreSQL writes it (`16/B374D848`)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


@dataclass(frozen=True, slots=True)
class SourceColumn:
    name: str
    type_oid: int
    type_modifier: int


@dataclass(frozen=True, slots=True)
class SourceTable:
    """A table of the publication: its columns in order and its key (primary key or replica identity index)."""

    schema: str
    name: str
    oid: int
    columns: tuple[SourceColumn, ...]
    key: tuple[str, ...]
    replica_identity: str

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True, slots=True)
class SlotState:
    """The replication slot as pg_replication_slots shows it (None: there is no such slot)."""

    confirmed_flush_lsn: int | None
    wal_status: str | None
    current_lsn: int
    active_pid: int | None

    def lag_bytes(self) -> int | None:
        """WAL bytes written since the slot's confirmed position: what PostgreSQL keeps for it."""
        return None if self.confirmed_flush_lsn is None else max(0, self.current_lsn - self.confirmed_flush_lsn)


@functools.cache
def _psycopg2() -> Any:
    try:
        import psycopg2
        import psycopg2.extras
    except ImportError:
        raise ConfigError("change data capture needs psycopg2: pip install 'lakesink[postgres]'") from None
    return psycopg2


def _connect(dsn: str, *, replication: bool = False) -> Any:
    psycopg2 = _psycopg2()
    factory = psycopg2.extras.LogicalReplicationConnection if replication else None
    try:
        # UTC: pgoutput and COPY write timestamptz values in the session's time zone.
        connection = psycopg2.connect(dsn, connection_factory=factory, options="-c TimeZone=UTC -c DateStyle=ISO")
    except psycopg2.OperationalError as exc:
        text = _one_line(exc)
        if any(refusal in text for refusal in _REFUSALS):
            raise ConfigError(f"PostgreSQL refused the connection: {text}. Fix the DSN, the role or pg_hba.conf.") from None
        raise StorageUnavailable(f"cannot connect to PostgreSQL: {text}. Check the DSN and that the server runs.") from None
    if not replication:
        connection.autocommit = True
    return connection


# What a retry cannot fix: the server answered and said no.
_REFUSALS = ("does not exist", "authentication failed", "no pg_hba.conf entry", "permission denied", "must be superuser")


def _one_line(exc: BaseException) -> str:
    # psycopg2's messages never hold the password, but the DSN could: only the server's words go out.
    return " ".join(str(exc).split())[:300]


class PostgresSource:
    """One database, one publication and one slot of a `lakesink cdc` job."""

    def __init__(self, dsn: str, *, slot: str, publication: str) -> None:
        if not slot or not publication:
            raise ConfigError("change data capture needs a slot and a publication name")
        self._dsn = dsn
        self.slot = slot
        self.publication = publication
        self._sql = _connect(dsn)

    def __repr__(self) -> str:
        return f"PostgresSource(slot={self.slot!r}, publication={self.publication!r})"  # never the DSN: it may hold a password

    def close(self) -> None:
        self._sql.close()

    def query(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        psycopg2 = _psycopg2()
        try:
            with self._sql.cursor() as cursor:
                cursor.execute(sql, parameters)
                return list(cursor.fetchall()) if cursor.description else []
        except psycopg2.OperationalError as exc:
            raise StorageUnavailable(f"PostgreSQL did not answer: {_one_line(exc)}") from None
        except psycopg2.Error as exc:
            raise TerminalError(f"PostgreSQL refused {sql.split()[0]}: {_one_line(exc)}") from None

    def tables(self) -> list[SourceTable]:
        """The publication's tables, each with its columns and key.

        Raises:
            ConfigError: the publication does not exist, or a table has no key to mirror it by.
        """
        if not self.query("SELECT 1 FROM pg_publication WHERE pubname = %s", (self.publication,)):
            raise ConfigError(
                f"publication {self.publication!r} does not exist: CREATE PUBLICATION {self.publication} FOR TABLE ... "
                "(README, 'Change data capture')"
            )
        rows = self.query(
            "SELECT c.oid, n.nspname, c.relname, c.relreplident FROM pg_publication_tables p "
            "JOIN pg_namespace n ON n.nspname = p.schemaname "
            "JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename "
            "WHERE p.pubname = %s ORDER BY n.nspname, c.relname",
            (self.publication,),
        )
        tables = []
        for oid, schema, name, identity in rows:
            columns = tuple(
                SourceColumn(n, t, m)
                for n, t, m in self.query(
                    "SELECT attname, atttypid, atttypmod FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
                    "AND NOT attisdropped ORDER BY attnum",
                    (oid,),
                )
            )
            key = tuple(
                r[0]
                for r in self.query(
                    "SELECT a.attname FROM pg_index i "
                    "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                    "WHERE i.indrelid = %s AND (i.indisprimary OR i.indisreplident) "
                    "ORDER BY i.indisprimary DESC, array_position(i.indkey::int2[], a.attnum)",
                    (oid,),
                )
            )
            if not key:
                raise ConfigError(
                    f"table {schema}.{name} has no primary key (nor a replica identity index): lakesink mirrors a table by "
                    f"its key. Add one (ALTER TABLE {schema}.{name} ADD PRIMARY KEY (...)), or drop it from the publication."
                )
            key = tuple(dict.fromkeys(key))  # a primary key that is also the identity index appears once
            tables.append(SourceTable(schema, name, oid, columns, key, identity))
        return tables

    def slot_state(self) -> SlotState:
        current = parse_lsn(self.query("SELECT pg_current_wal_lsn()::text")[0][0])
        rows = self.query(
            "SELECT confirmed_flush_lsn::text, wal_status, active_pid FROM pg_replication_slots WHERE slot_name = %s",
            (self.slot,),
        )
        if not rows:
            return SlotState(None, None, current, None)
        flushed, wal_status, pid = rows[0]
        return SlotState(parse_lsn(flushed) if flushed else None, wal_status, current, pid)

    def create_slot(self) -> SnapshotSlot:
        """Create the slot; the result holds the replication connection that keeps its exported
        snapshot alive (the rows as of the slot's start) until `stream` is called on it."""
        connection = _connect(self._dsn, replication=True)
        psycopg2 = _psycopg2()
        try:
            with connection.cursor() as cursor:
                cursor.create_replication_slot(self.slot, output_plugin="pgoutput")
                _, consistent_point, snapshot, _ = cursor.fetchone()
        except psycopg2.Error as exc:
            connection.close()
            raise TerminalError(f"cannot create replication slot {self.slot!r}: {_one_line(exc)}") from None
        log.info("created replication slot %s at %s (snapshot %s)", self.slot, consistent_point, snapshot)
        return SnapshotSlot(self, connection, parse_lsn(consistent_point), snapshot)

    def has_rows(self, table: SourceTable) -> bool:
        return bool(self.query(f"SELECT 1 FROM {_ident(table.schema)}.{_ident(table.name)} LIMIT 1"))

    def drop_slot(self) -> None:
        self.query("SELECT pg_drop_replication_slot(%s)", (self.slot,))

    def stream(self, start_lsn: int, *, connection: Any = None) -> ChangeStream:
        """The slot's changes from `start_lsn` (PostgreSQL starts at the slot's confirmed position if later).

        Raises:
            SourceContractViolation: the slot is gone or cannot serve the WAL from there.
            StorageUnavailable: PostgreSQL did not answer.
        """
        connection = connection or _connect(self._dsn, replication=True)
        psycopg2 = _psycopg2()
        cursor = connection.cursor()
        try:
            cursor.start_replication(
                slot_name=self.slot,
                decode=False,
                start_lsn=start_lsn,
                status_interval=10,
                options={"proto_version": PROTO_VERSION, "publication_names": self.publication},
            )
        except psycopg2.OperationalError as exc:
            connection.close()
            text = _one_line(exc)
            if "does not exist" in text or "has been removed" in text or "invalidated" in text:
                raise SourceContractViolation(
                    f"replication slot {self.slot!r} cannot stream from {format_lsn(start_lsn)}: {text}"
                ) from None
            raise StorageUnavailable(f"cannot start streaming from slot {self.slot!r}: {text}") from None
        return ChangeStream(connection, cursor)

    def copy_rows(self, table: SourceTable, snapshot: str, *, block_bytes: int = 16 << 20) -> Iterator[pa.RecordBatch]:
        """The table's rows as of `snapshot`, as batches of PostgreSQL's text forms (string columns,
        null where SQL NULL), so they convert exactly as the stream's values do."""
        import tempfile

        connection = _connect(self._dsn)
        connection.autocommit = False
        try:
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                cursor.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
                names = ", ".join(_ident(c.name) for c in table.columns)
                with tempfile.TemporaryFile() as spool:
                    # COPY writes CSV: NULL is an unquoted empty field, an empty string a quoted one.
                    query = f"SELECT {names} FROM {_ident(table.schema)}.{_ident(table.name)}"
                    cursor.copy_expert(f"COPY ({query}) TO STDOUT WITH (FORMAT csv)", spool)
                    connection.commit()
                    spool.seek(0)
                    reader = pacsv.open_csv(
                        spool,
                        read_options=pacsv.ReadOptions(column_names=[c.name for c in table.columns], block_size=block_bytes),
                        convert_options=pacsv.ConvertOptions(
                            column_types={c.name: pa.string() for c in table.columns},
                            strings_can_be_null=True,
                            quoted_strings_can_be_null=False,
                            null_values=[""],
                        ),
                    )
                    yield from reader
        finally:
            connection.close()


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class SnapshotSlot:
    """A slot just created, with the snapshot it exported (valid until `stream` starts on its connection)."""

    def __init__(self, source: PostgresSource, connection: Any, consistent_point: int, snapshot: str) -> None:
        self.source = source
        self.consistent_point = consistent_point
        self.snapshot = snapshot
        self._connection = connection

    def stream(self) -> ChangeStream:
        return self.source.stream(self.consistent_point, connection=self._connection)

    def close(self) -> None:
        self._connection.close()


@dataclass(frozen=True, slots=True)
class WalMessage:
    payload: bytes
    data_start: int


class ChangeStream:
    """pgoutput messages from a started slot; `acknowledge` tells PostgreSQL what it may recycle."""

    def __init__(self, connection: Any, cursor: Any) -> None:
        self._connection = connection
        self._cursor = cursor
        self.acknowledged = 0

    def read(self, timeout: float) -> WalMessage | None:
        """The next message, or None after `timeout` seconds without one (keepalives are answered meanwhile).

        Raises:
            StorageUnavailable: the connection broke.
        """
        psycopg2 = _psycopg2()
        try:
            message = self._cursor.read_message()
            if message is None:
                ready, _, _ = select.select([self._cursor], [], [], timeout)
                if not ready:
                    self._cursor.send_feedback()  # a status update while idle, so the slot does not look stuck
                    return None
                message = self._cursor.read_message()
                if message is None:
                    return None
        except (psycopg2.Error, OSError) as exc:
            raise StorageUnavailable(f"the replication connection to PostgreSQL broke: {_one_line(exc)}") from None
        return WalMessage(bytes(message.payload), message.data_start)

    @property
    def sent_up_to(self) -> int:
        """The WAL position PostgreSQL last said it has decoded and sent everything before (its walEnd:
        in logical replication, the end of the last record the walsender processed); 0 before any."""
        return int(self._cursor.wal_end or 0)

    def acknowledge(self, lsn: int) -> None:
        """Tell PostgreSQL every change up to `lsn` is durable downstream (it may recycle that WAL)."""
        psycopg2 = _psycopg2()
        if lsn <= self.acknowledged:
            return
        try:
            self._cursor.send_feedback(flush_lsn=lsn, write_lsn=lsn, reply=True)
        except (psycopg2.Error, OSError) as exc:
            raise StorageUnavailable(f"cannot acknowledge {format_lsn(lsn)} to PostgreSQL: {_one_line(exc)}") from None
        self.acknowledged = lsn

    def close(self) -> None:
        try:
            self._connection.close()
        except Exception:  # closing a broken connection: nothing left to do
            log.debug("closing the replication connection failed", exc_info=True)
