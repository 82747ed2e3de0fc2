"""SQL statement text shared by the SQL protocols: operation, single table, sanitised text."""

from __future__ import annotations

import pytest

from beyla_sidecar.protocols.sql import Statement, statement


def sanitized(text: str, cut: bool = False, dialect: str = "postgresql") -> Statement:
    return statement(text, cut, "sanitized", dialect)


@pytest.mark.parametrize(("text", "operation", "table"), [
    ("SELECT * FROM orders WHERE id = 1", "SELECT", "orders"),
    ("select count(*) from public.orders", "SELECT", "public.orders"),
    ('SELECT x FROM "Order Items"', "SELECT", "Order Items"),
    ("SELECT a FROM t1 JOIN t2 ON t1.id = t2.id", "SELECT", None),
    ("SELECT a FROM t1, t2", "SELECT", None),
    ("SELECT a FROM t1 UNION SELECT a FROM t2", "SELECT", None),
    ("SELECT * FROM (SELECT 1) AS s", "SELECT", None),
    ("SELECT * FROM t WHERE id IN (SELECT id FROM u)", "SELECT", "t"),
    ("SELECT 1", "SELECT", None),
    ("INSERT INTO users (name) VALUES ('a')", "INSERT", "users"),
    ("insert ignore into users values (1)", "INSERT", "users"),
    ("REPLACE INTO kv VALUES (1, 2)", "REPLACE", "kv"),
    ("UPDATE ONLY accounts SET b = 1", "UPDATE", "accounts"),
    ("DELETE FROM sessions WHERE id = 3", "DELETE", "sessions"),
    ("CREATE TABLE IF NOT EXISTS kv (k text)", "CREATE", "kv"),
    ("CREATE TEMPORARY TABLE scratch (x int)", "CREATE", "scratch"),
    ("CREATE INDEX i ON t (x)", "CREATE", None),
    ("DROP TABLE IF EXISTS kv", "DROP", "kv"),
    ("TRUNCATE TABLE logs", "TRUNCATE", "logs"),
    ("TRUNCATE logs", "TRUNCATE", "logs"),
    ("ALTER TABLE t ADD COLUMN c int", "ALTER", "t"),
    ("COPY t FROM STDIN", "COPY", "t"),
    ("BEGIN", "BEGIN", None),
    ("  /* leading */ -- comment\n SELECT 1", "SELECT", None),
    ("", None, None),
    ("(SELECT 1)", None, None),
])
def test_operation_and_single_table(text: str, operation: str | None, table: str | None) -> None:
    s = sanitized(text)
    assert (s.operation, s.collection) == (operation, table)


@pytest.mark.parametrize(("text", "expected"), [
    ("SELECT * FROM t WHERE id = 42 AND name = 'bob''s'", "SELECT * FROM t WHERE id = ? AND name = ?"),
    ("INSERT INTO u VALUES (1, -2.5e3, .5, 0x1F, X'0A', B'101')", "INSERT INTO u VALUES (?, -?, ?, ?, ?, ?)"),
    ("SELECT $$secret$$, $tag$more $$ secret$tag$ FROM t", "SELECT ?, ? FROM t"),
    ("SELECT E'it\\'s' FROM t", "SELECT ? FROM t"),
    ("SELECT a FROM t -- password 'x'\nWHERE b = $1 /* 'y' */", "SELECT a FROM t WHERE b = $1"),
    ("SELECT a   FROM\n\tt", "SELECT a FROM t"),
    ("SELECT t1.c2 FROM t1 WHERE c3 = :name AND c4 = %s AND c5 = ?", "SELECT t1.c2 FROM t1 WHERE c3 = :name AND c4 = %s AND c5 = ?"),
])
def test_postgresql_literals_become_placeholders(text: str, expected: str) -> None:
    assert sanitized(text).text == expected


def test_postgresql_double_quotes_are_identifiers_and_hash_is_an_operator() -> None:
    assert sanitized('SELECT "a" # 5 FROM "t"').text == 'SELECT "a" # ? FROM "t"'


def test_mysql_double_quotes_are_strings_backslash_escapes_and_hash_comments() -> None:
    s = sanitized("SELECT * FROM `db`.`t` WHERE a = \"x\\\"y\" AND b = 'it\\'s' # 'gone'", dialect="mysql")
    assert s == Statement("SELECT", "db.t", "SELECT * FROM `db`.`t` WHERE a = ? AND b = ?")


def test_cut_statements() -> None:
    # an unterminated literal is still a literal; the cut shows as " ..."
    assert sanitized("SELECT * FROM t WHERE name = 'secr", cut=True).text == "SELECT * FROM t WHERE name = ? ..."
    # the table name, a FROM list or the keyword itself may run past the cut: not named
    assert sanitized("SELECT * FROM ord", cut=True).collection is None
    assert sanitized("SELECT * FROM orders WHERE", cut=True).collection == "orders"
    assert sanitized("INSERT INTO us", cut=True).collection is None
    assert sanitized("SEL", cut=True).operation is None


def test_raw_and_off() -> None:
    assert statement("SELECT 'x'  FROM t -- c", False, "raw", "postgresql").text == "SELECT 'x' FROM t"
    assert statement("SELECT 'x' FROM t", False, "off", "postgresql") == Statement("SELECT", "t", None)


def test_any_text_never_raises() -> None:
    for text in ("'", '"', "$$", "$a$", "/*", "`", "E'\\", "--", "\x00\xff", "SELECT (((", "FROM FROM ,"):
        for dialect in ("postgresql", "mysql"):
            for cut in (False, True):
                statement(text, cut, "sanitized", dialect)
