"""Test client: real MySQL drivers against a MariaDB server, one connection each.

`mysql_client.py pymysql PORT PASSWORD SECRET [CA]`: PyMySQL, the text protocol (literals are in
the query text): connect with database `shop`, INSERT the item SECRET, SELECT it, COMMIT, a SELECT
of a missing table (ERR 1146), PING, select_db (COM_INIT_DB), close. With CA: over TLS (Python's
ssl, OpenSSL), verifying the server against that CA.

`mysql_client.py connector PORT PASSWORD SECRET`: mysql-connector-python (pure Python), server-side
prepared statements (`cursor(prepared=True)`): the same SELECT executed 3 times (one PREPARE, then
a STMT_RESET and an EXECUTE each), an INSERT of SECRET (the previous statement closed in the same
write as the new PREPARE), a PREPARE of a missing table (ERR 1146), COMMIT, close.

Prints one line per result.
"""

from __future__ import annotations

import sys


def pymysql_session(port: int, password: str, secret: str, ca: str | None) -> None:
    import pymysql

    ssl = {"ca": ca} if ca else None
    conn = pymysql.connect(host="127.0.0.1", port=port, user="app", password=password, database="shop", ssl=ssl)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO orders (id, item) VALUES (%s, %s)", (10, secret))
        cur.execute("SELECT item FROM orders WHERE id = %s", (10,))
        print(cur.fetchall())
        conn.commit()
        try:
            cur.execute("SELECT * FROM missing_table WHERE id = 7")
        except pymysql.err.ProgrammingError as e:
            print("error", e.args[0])
    conn.ping(reconnect=False)
    conn.select_db("shop")
    if ca:
        with conn.cursor() as cur:
            cur.execute("SHOW STATUS LIKE 'Ssl_version'")
            print(cur.fetchall())
    conn.close()


def connector_session(port: int, password: str, secret: str) -> None:
    import mysql.connector

    conn = mysql.connector.connect(host="127.0.0.1", port=port, user="app", password=password, database="shop",
                                   ssl_disabled=True, use_pure=True)
    cur = conn.cursor(prepared=True)
    for order in (1, 2, 3):
        cur.execute("SELECT item FROM orders WHERE id = %s", (order,))
        print(cur.fetchall())
    cur.execute("INSERT INTO orders (id, item) VALUES (%s, %s)", (20, secret))
    try:
        cur.execute("SELECT * FROM missing_table WHERE id = %s", (7,))
    except mysql.connector.errors.ProgrammingError as e:
        print("error", e.errno)
    conn.commit()
    cur.close()
    conn.close()


def main() -> None:
    driver, port, password, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    if driver == "pymysql":
        pymysql_session(port, password, secret, sys.argv[5] if len(sys.argv) > 5 else None)
    else:
        connector_session(port, password, secret)


if __name__ == "__main__":
    main()
