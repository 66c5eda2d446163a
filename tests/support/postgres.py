"""A real, throwaway PostgreSQL 15 cluster for tests: initdb into a fresh directory, logical
replication enabled, durability off (fsync, full-page writes, synchronous commit), reachable on a
free 127.0.0.1 port with trust authentication (replication connections included).

PostgreSQL refuses to run as root, so when the tests run as root the cluster is created and run as
the `postgres` OS user, in a directory under /tmp that user owns (pytest's tmp dirs are root's,
mode 0700, and closed to it); `base_dir` then gets a symlink `cluster` to it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.sql

PG_MAJOR = 15
INSTALL_HINT = (
    f"PostgreSQL {PG_MAJOR} server binaries (initdb, pg_ctl, postgres) were not found in /usr/lib/postgresql/{PG_MAJOR}/bin "
    f"nor through `pg_config --bindir`: install postgresql-{PG_MAJOR} (e.g. `apt-get install postgresql-{PG_MAJOR}`); "
    "the PostgreSQL tests need a real server"
)

SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_sender_timeout": "'60s'",
}
HBA_LINES = ("host replication all 127.0.0.1/32 trust", "host all all 127.0.0.1/32 trust")


class PostgresUnavailable(Exception):
    """PostgreSQL's binaries are missing or the server would not start; the message says why."""


@dataclass(frozen=True)
class PostgresServer:
    port: int
    data_dir: Path
    bin_dir: Path
    log_file: Path
    pid: int  # the postmaster's
    os_user: str | None  # the OS user the server runs as when it is not the current one (we are root)
    owned_dir: Path | None  # a directory made for the cluster, removed by stop()

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def connect(self, dbname: str = "postgres") -> Any:
        """A new psycopg2 connection in autocommit mode; the caller closes it."""
        connection = psycopg2.connect(self.dsn(dbname))
        connection.autocommit = True
        return connection

    def create_database(self, name: str) -> None:
        """CREATE DATABASE `name` (UTF8, like the cluster)."""
        self.execute(psycopg2.sql.SQL("CREATE DATABASE {}").format(psycopg2.sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        """Drop the replication slots of database `name`, then the database (closing its connections)."""
        self.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s AND NOT active",
            (name,),
        )
        self.execute(psycopg2.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg2.sql.Identifier(name)))

    def execute(self, statement: Any, parameters: tuple[Any, ...] | None = None) -> None:
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(statement, parameters)
        finally:
            connection.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server (fast shutdown; killed if it does not stop) and remove the directory made for it."""
        stopped = _run(
            self.os_user, [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", "stop"]
        )
        if stopped.returncode != 0:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.owned_dir is not None:
            shutil.rmtree(self.owned_dir, ignore_errors=True)


def find_bin_dir() -> Path:
    """The directory holding initdb, pg_ctl and postgres of PostgreSQL 15; raises PostgresUnavailable when there is none."""
    candidates = [Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")]
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if found.returncode == 0 and found.stdout.strip():
            candidates.append(Path(found.stdout.strip()))
    for candidate in candidates:
        if all((candidate / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return candidate
    raise PostgresUnavailable(INSTALL_HINT)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_postgres(base_dir: Path, *, attempts: int = 3) -> PostgresServer:
    """initdb a new cluster and start it on a free 127.0.0.1 port; returns once it accepts connections.

    Raises PostgresUnavailable (with the server log's tail) when the binaries are missing or it does not start.
    """
    bin_dir = find_bin_dir()
    base_dir.mkdir(parents=True, exist_ok=True)
    os_user: str | None = None
    owned_dir: Path | None = None
    cluster_dir = base_dir
    if os.geteuid() == 0:
        os_user = "postgres"
        try:
            account = pwd.getpwnam(os_user)
        except KeyError:
            raise PostgresUnavailable(
                f"running as root, and there is no `postgres` OS user to run PostgreSQL as. {INSTALL_HINT}"
            ) from None
        owned_dir = Path(tempfile.mkdtemp(prefix="lakesink-pg-", dir="/tmp"))
        os.chown(owned_dir, account.pw_uid, account.pw_gid)
        os.chmod(owned_dir, 0o700)
        cluster_dir = owned_dir
        (base_dir / "cluster").symlink_to(owned_dir)
    data_dir = cluster_dir / "data"
    log_file = cluster_dir / "postgres.log"
    try:
        _initdb(bin_dir, data_dir, os_user)
        for _ in range(attempts):
            port = free_port()
            _configure(data_dir, port, os_user)
            started = _run(
                os_user, [str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-l", str(log_file), "-w", "-t", "60", "start"]
            )
            if started.returncode == 0:
                pid = int((data_dir / "postmaster.pid").read_text().split()[0])
                server = PostgresServer(port, data_dir, bin_dir, log_file, pid, os_user, owned_dir)
                _wait_until_ready(server)
                return server
            # Most likely the port was taken between choosing and binding: try another.
        tail = log_file.read_text(errors="replace")[-3000:] if log_file.exists() else "(no log)"
        raise PostgresUnavailable(
            f"PostgreSQL did not start after {attempts} attempts; pg_ctl said {started.stderr.strip()!r}; log:\n{tail}"
        )
    except BaseException:
        if owned_dir is not None:
            shutil.rmtree(owned_dir, ignore_errors=True)
        raise


def _run(os_user: str | None, command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run `command` as `os_user` (when we are root) from a directory that user can enter."""
    if os_user is not None:
        command = ["runuser", "-u", os_user, "--", *command]
    return subprocess.run(command, capture_output=True, text=True, cwd="/", check=False, timeout=120)


def _initdb(bin_dir: Path, data_dir: Path, os_user: str | None) -> None:
    command = [
        str(bin_dir / "initdb"),
        "-D",
        str(data_dir),
        "-A",
        "trust",
        "-U",
        "postgres",
        "--no-sync",
        "-E",
        "UTF8",
        "--locale=C",
    ]
    done = _run(os_user, command)
    if done.returncode != 0:
        raise PostgresUnavailable(f"initdb failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")


def _configure(data_dir: Path, port: int, os_user: str | None) -> None:
    # Written by us (root) into files the server's user owns: appending keeps their owner.
    settings = {**SETTINGS, "port": str(port), "unix_socket_directories": f"'{data_dir}'"}
    marker = "# --- lakesink tests ---"
    conf = data_dir / "postgresql.conf"
    text = conf.read_text().split(marker)[0]  # a retry with another port replaces the earlier block
    conf.write_text(text + marker + "\n" + "".join(f"{key} = {value}\n" for key, value in settings.items()))
    hba = data_dir / "pg_hba.conf"
    hba_text = hba.read_text()
    if marker not in hba_text:
        hba.write_text(f"{marker}\n" + "\n".join(HBA_LINES) + "\n" + hba_text)


def _wait_until_ready(server: PostgresServer, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            server.connect().close()
            return
        except psycopg2.OperationalError as exc:
            if time.monotonic() > deadline:
                server.stop()
                raise PostgresUnavailable(
                    f"PostgreSQL started but does not accept connections: {exc}\n{server.log_tail()}"
                ) from None
            time.sleep(0.1)
