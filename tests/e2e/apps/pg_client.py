"""Test client: psycopg 3 (libpq) against a PostgreSQL server, one connection, autocommit.

`pg_client.py session DSN SECRET`: the extended protocol throughout (psycopg sends Parse, Bind,
Describe, Execute and Sync for every query with parameters):
1. an INSERT of the item SECRET (the unnamed statement: Parse, Bind, Describe, Execute, Sync in one write);
2. the same SELECT with `prepare=True` 3 times: a Parse of `_pg3_0` and a Sync (a round trip of its
   own), then Bind of `_pg3_0`, Describe, Execute, Sync each time;
3. a SELECT of a missing table (ErrorResponse 42P01);
4. executemany of 3 UPDATEs: one pipeline (one Parse, then Bind, Describe, Execute for each, one Sync),
   one write;
5. close (Terminate).

`pg_client.py late DSN SECRET`: connects and prepares the SELECT (`prepare=True`), prints
`connected`, waits for a line on stdin (the sidecar starts meanwhile), then runs the prepared
SELECT and an INSERT, and closes.

Prints one line per result.
"""

from __future__ import annotations

import sys

import psycopg

SELECT = "SELECT qty FROM orders WHERE item = %s"


def session(dsn: str, secret: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO orders (item, qty) VALUES (%s, %s)", (secret, 7))
        for _ in range(3):
            cur.execute(SELECT, (secret,), prepare=True)
            print(cur.fetchall())
        try:
            cur.execute("SELECT * FROM missing_table WHERE item = %s", (secret,))
        except psycopg.errors.UndefinedTable as e:
            print("error", e.sqlstate)
        cur.executemany("UPDATE orders SET qty = %s WHERE qty = %s", [(8, 7), (9, 8), (10, 9)])
        print("done")


def late(dsn: str, secret: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(SELECT, (secret,), prepare=True)
        print("connected", flush=True)
        sys.stdin.readline()
        cur.execute(SELECT, (secret,), prepare=True)
        print(cur.fetchall())
        cur.execute("INSERT INTO orders (item, qty) VALUES (%s, %s)", (secret + "-late", 1))
        print("done")


if __name__ == "__main__":
    {"session": session, "late": late}[sys.argv[1]](sys.argv[2], sys.argv[3])
