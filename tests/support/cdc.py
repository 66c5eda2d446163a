"""A seeded change workload on three PostgreSQL tables, and the check that Delta mirrors equal them.

Tables (each a different shape of key and replica identity):
    accounts  bigint key, numeric, timestamptz, a large TOASTed text column (updates that leave it
              unchanged send no value for it)
    orders    int key, REPLICA IDENTITY FULL, double, date
    items     composite text + int key; updates that change the key (a delete plus an insert)
"""

from __future__ import annotations

import random
import string
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

SCHEMA = """
CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance numeric(12,2), updated timestamptz, note text);
CREATE TABLE orders (id int PRIMARY KEY, account bigint, amount double precision, status text, day date);
ALTER TABLE orders REPLICA IDENTITY FULL;
CREATE TABLE items (sku text, shop int, qty int, PRIMARY KEY (sku, shop));
CREATE PUBLICATION shop FOR TABLE accounts, orders, items;
"""
TABLES = {"accounts": ("id",), "orders": ("id",), "items": ("sku", "shop")}


def big_text(rng: random.Random, size: int = 6000) -> str:
    """Text PostgreSQL cannot compress much, so it is stored out of line (TOASTed)."""
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(size))


class Workload:
    """Random transactions of inserts, updates (some key changes, some leaving the TOASTed note
    alone) and deletes, seeded, over the three tables."""

    def __init__(self, connection: Any, seed: int) -> None:
        self.connection = connection
        self.rng = random.Random(seed)
        self.next_id = {"accounts": 1, "orders": 1}
        self.items: set[tuple[str, int]] = set()

    def seed_rows(self, count: int) -> None:
        for _ in range(count):
            self.transaction(ops=1, only_inserts=True)

    def transaction(self, *, ops: int | None = None, only_inserts: bool = False) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute("BEGIN")
            for _ in range(ops or self.rng.randint(1, 12)):
                self.change(cursor, only_inserts=only_inserts)
            cursor.execute("COMMIT")

    def change(self, cursor: Any, *, only_inserts: bool) -> None:
        rng = self.rng
        table = rng.choice(list(TABLES))
        roll = 0.0 if only_inserts else rng.random()
        if table == "accounts":
            ids = self.next_id["accounts"]
            if roll < 0.4 or ids == 1:
                note = big_text(rng) if rng.random() < 0.5 else f"note {ids}"
                cursor.execute(
                    "INSERT INTO accounts VALUES (%s, %s, %s, now(), %s)",
                    (ids, f"owner {ids}", Decimal(rng.randint(-10**9, 10**9)) / 100, note),
                )
                self.next_id["accounts"] += 1
            elif roll < 0.85:  # leaves the note (often TOASTed) unchanged
                cursor.execute(
                    "UPDATE accounts SET balance = balance + %s, updated = now() WHERE id = %s",
                    (Decimal(rng.randint(1, 10**5)) / 100, rng.randint(1, ids - 1)),
                )
            elif roll < 0.9:
                cursor.execute("UPDATE accounts SET note = %s WHERE id = %s", (big_text(rng), rng.randint(1, ids - 1)))
            else:
                cursor.execute("DELETE FROM accounts WHERE id = %s", (rng.randint(1, ids - 1),))
        elif table == "orders":
            ids = self.next_id["orders"]
            if roll < 0.5 or ids == 1:
                cursor.execute(
                    "INSERT INTO orders VALUES (%s, %s, %s, %s, current_date - %s)",
                    (ids, rng.randint(1, 50), rng.random() * 1000, "new", rng.randint(0, 30)),
                )
                self.next_id["orders"] += 1
            elif roll < 0.85:
                cursor.execute(
                    "UPDATE orders SET status = %s, amount = amount * 1.5 WHERE id = %s",
                    (rng.choice(["paid", "sent", "done"]), rng.randint(1, ids - 1)),
                )
            else:
                cursor.execute("DELETE FROM orders WHERE id = %s", (rng.randint(1, ids - 1),))
        else:
            if roll < 0.5 or not self.items:
                sku, shop = f"sku-{rng.randint(1, 300)}", rng.randint(1, 3)
                cursor.execute(
                    "INSERT INTO items VALUES (%s, %s, %s) ON CONFLICT (sku, shop) DO UPDATE SET qty = items.qty + 1",
                    (sku, shop, rng.randint(1, 9)),
                )
                self.items.add((sku, shop))
            elif roll < 0.7:
                sku, shop = rng.choice(sorted(self.items))
                cursor.execute("UPDATE items SET qty = qty + 1 WHERE sku = %s AND shop = %s", (sku, shop))
            elif roll < 0.85:  # a key change: the mirror sees a delete of the old key and an insert of the new
                sku, shop = rng.choice(sorted(self.items))
                new_sku = f"sku-{rng.randint(301, 100000)}"
                cursor.execute("UPDATE items SET sku = %s WHERE sku = %s AND shop = %s", (new_sku, sku, shop))
                self.items.discard((sku, shop))
                self.items.add((new_sku, shop))
            else:
                sku, shop = rng.choice(sorted(self.items))
                cursor.execute("DELETE FROM items WHERE sku = %s AND shop = %s", (sku, shop))
                self.items.discard((sku, shop))


def workload_connection(dsn: str) -> Any:
    """An autocommit connection that flushes WAL at commit: the test cluster runs with
    synchronous_commit=off, and logical decoding sends a change only once its WAL is flushed
    (up to ~200 ms later otherwise)."""
    import psycopg2

    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit = on")
    return connection


def source_rows(connection: Any, table: str) -> list[dict[str, Any]]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {table}")  # a test's own table names
        names = [d.name for d in cursor.description]
        return [dict(zip(names, (_plain(v) for v in row), strict=True)) for row in cursor.fetchall()]


def _plain(value: Any) -> Any:
    return bytes(value) if isinstance(value, memoryview) else value


def mirror_rows(uri: str, storage_options: Mapping[str, str] | None, reader: str) -> list[dict[str, Any]]:
    """The mirror's rows without lakesink's `_lsn`, read by delta-rs or DuckDB."""
    if reader == "deltalake":
        from deltalake import DeltaTable

        rows = DeltaTable(uri, storage_options=dict(storage_options or {})).to_pyarrow_dataset().to_table().to_pylist()
    else:
        from tests.support.checks import duckdb_rows

        rows = duckdb_rows(uri, storage_options)
    return [{k: v for k, v in row.items() if k != "_lsn"} for row in rows]


def differences(source: list[dict[str, Any]], mirror: list[dict[str, Any]], key: tuple[str, ...]) -> dict[str, list[Any]]:
    """Rows missing from the mirror, extra in it, duplicated keys, and rows that differ (stale values)."""
    by_key: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in mirror:
        by_key.setdefault(tuple(row[k] for k in key), []).append(row)
    expected = {tuple(row[k] for k in key): row for row in source}
    return {
        "missing": sorted(k for k in expected if k not in by_key),
        "extra": sorted(k for k in by_key if k not in expected),
        "duplicated": sorted(k for k, rows in by_key.items() if len(rows) > 1),
        "stale": sorted(k for k, row in expected.items() if k in by_key and by_key[k][0] != row),
    }
