"""SQL statement text, shared by the SQL protocols (PostgreSQL, MySQL): the operation, the one
table it works on, and the text as `db.query.text` shows it.

`statement(text, cut, mode, dialect)` reads a statement as the captured prefix holds it (`cut`:
the prefix ended inside it):

- operation: the first keyword in upper case (`SELECT`, `INSERT`, `BEGIN`); None when the text
  starts with no word (empty, or cut before one).
- collection (`db.collection.name`): the table of a single-table statement, as the conventions
  ask: `SELECT ... FROM t` (no join, no comma list, no subquery in FROM), `INSERT INTO t`,
  `REPLACE INTO t`, `UPDATE t`, `DELETE FROM t`, `CREATE|DROP|ALTER|TRUNCATE TABLE t`, `COPY t`.
  Written as in the statement, a schema prefix kept, quotes removed; None otherwise or when the
  prefix cut the statement before it could tell (a FROM list may go on past the cut).
- text per BEYLA_DB_QUERY_TEXT: `sanitized` replaces every literal (strings, numbers, hex and
  bit strings, dollar-quoted bodies) by `?`, drops comments (they may hold anything) and folds
  whitespace; parameters (`$1`, `?`, `:name`, `%s`) stay. `raw` keeps the literals but still
  folds comments and whitespace. A cut statement ends with ` ...`. `off`: None.

Dialects differ in what quotes mean: in `mysql`, `"..."` is a string literal (without
ANSI_QUOTES, MySQL's default) and `\\` escapes in strings; in `postgresql`, `"..."` is an
identifier and `\\` is a plain character (standard_conforming_strings, on by default since 9.1),
except in `E'...'` strings.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_COMMON = r"""
  (?P<ws>\s+)
| (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z){hash})
| (?P<escaped>[Ee]'(?:[^'\\]|''|\\.)*(?:'|\Z))
| (?P<dollar>\$\$.*?(?:\$\$|\Z)|\$(?P<tag>[A-Za-z_]\w*)\$.*?(?:\$(?P=tag)\$|\Z))
| (?P<bits>[BbXx]'[^']*(?:'|\Z))
| (?P<number>(?:0[xX][0-9A-Fa-f]+|\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+)(?![\w$]))
| (?P<param>\$\d+|\?|:[A-Za-z_]\w*|%s|%\([A-Za-z_]\w*\)s)
| (?P<word>[A-Za-z_][\w$]*)
| (?P<backquoted>`(?:[^`]|``)*(?:`|\Z))
"""
# The dialects' differences: what a quote starts, and whether `\` escapes in plain strings.
_TOKENS = {
    "postgresql": re.compile(_COMMON.format(hash="") + r"""
| (?P<string>'(?:[^']|'')*(?:'|\Z))
| (?P<quoted>"(?:[^"]|"")*(?:"|\Z))
| (?P<other>.)""", re.X | re.S),
    "mysql": re.compile(_COMMON.format(hash=r"|\#[^\n]*") + r"""
| (?P<string>'(?:[^'\\]|''|\\.)*(?:'|\Z)|"(?:[^"\\]|""|\\.)*(?:"|\Z))
| (?P<other>.)""", re.X | re.S),
}
_LITERALS = frozenset(("escaped", "dollar", "bits", "number", "string"))
_BLANK = frozenset(("ws", "comment"))
_IDENTIFIERS = frozenset(("word", "quoted", "backquoted"))
# Words after which a SELECT involves more than one table (or may: a set operation).
_JOINS = frozenset(("JOIN", "STRAIGHT_JOIN", "UNION", "INTERSECT", "EXCEPT"))
_AFTER_FROM = frozenset(("WHERE", "GROUP", "ORDER", "LIMIT", "HAVING", "WINDOW", "FOR", "OFFSET", "FETCH"))
# What may stand between a statement's keyword and its table.
_TABLE_AFTER = {
    "INSERT": ("INTO",), "REPLACE": ("INTO",), "DELETE": ("FROM",), "UPDATE": (), "COPY": (),
    "CREATE": ("TABLE",), "DROP": ("TABLE",), "ALTER": ("TABLE",), "TRUNCATE": (),
}
_MODIFIERS = frozenset(("LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "QUICK", "ONLY", "TEMPORARY",
                        "TEMP", "UNLOGGED", "GLOBAL", "LOCAL", "IF", "NOT", "EXISTS", "TABLE"))


class Statement(NamedTuple):
    operation: str | None
    collection: str | None
    text: str | None  # per the query-text mode; None: off


class _Token(NamedTuple):
    kind: str
    value: str


def _tokens(text: str, dialect: str) -> list[_Token]:
    """Every token, whitespace and comments included (the text keeps where spaces were)."""
    tokens = []
    for m in _TOKENS[dialect].finditer(text):
        kind = m.lastgroup
        if kind == "tag":  # the inner group of a tagged dollar quote matched last
            kind = "dollar"
        tokens.append(_Token(kind or "other", m.group()))
    return tokens


def _identifier(token: _Token) -> str | None:
    if token.kind == "word":
        return token.value
    if token.kind in ("quoted", "backquoted") and len(token.value) >= 2 and token.value[-1] == token.value[0]:
        q = token.value[0]
        return token.value[1:-1].replace(q + q, q)
    return None


def _name_at(tokens: list[_Token], i: int) -> tuple[str | None, int]:
    """The possibly qualified name (`schema.table`) at tokens[i] and the index past it."""
    parts: list[str] = []
    while i < len(tokens):
        part = _identifier(tokens[i])
        if part is None:
            break
        parts.append(part)
        i += 1
        if i < len(tokens) and tokens[i].value == ".":
            i += 1
            continue
        return ".".join(parts), i
    return None, i


def _from_table(tokens: list[_Token], cut: bool) -> str | None:
    """The single table of a SELECT's FROM at nesting depth 0, None for joins, lists, subqueries.
    In a cut statement, only when a clause after the FROM list shows that the list ended."""
    depth = 0
    table: str | None = None
    closed = False  # a clause keyword followed the FROM list
    i = 1
    n = len(tokens)
    while i < n:
        t = tokens[i]
        v = t.value
        if v == "(":
            depth += 1
        elif v == ")":
            depth -= 1
        elif depth == 0 and t.kind == "word":
            word = v.upper()
            if word == "FROM":
                table, i = _name_at(tokens, i + 1)
                if table is None:
                    return None
                if i < n and tokens[i].value == ",":
                    return None
                continue
            if word in _JOINS:
                return None
            if table is not None and word in _AFTER_FROM:
                closed = True
        i += 1
    return None if cut and not closed else table


def _collection(operation: str, tokens: list[_Token], cut: bool) -> str | None:
    if operation == "SELECT":
        return _from_table(tokens, cut)
    words = _TABLE_AFTER.get(operation)
    if words is None:
        return None
    i = 1
    n = len(tokens)
    if words:  # the keyword before the table must be there (CREATE INDEX has no table here)
        while i < n and tokens[i].kind == "word" and tokens[i].value.upper() in _MODIFIERS - {"TABLE"}:
            i += 1
        if i >= n or tokens[i].value.upper() != words[0]:
            return None
    while i < n and tokens[i].kind == "word" and tokens[i].value.upper() in _MODIFIERS | {"INTO", "FROM"}:
        i += 1
    name, end = _name_at(tokens, i)
    if name is None or (cut and end >= n):  # the name itself may be cut
        return None
    return name


def _text(tokens: list[_Token], mode: str, cut: bool) -> str:
    """The statement with comments and whitespace runs folded to one space, literals `?` when sanitized."""
    sanitize = mode == "sanitized"
    out: list[str] = []
    space = False
    for t in tokens:
        if t.kind in _BLANK:
            space = bool(out)
            continue
        if space:
            out.append(" ")
            space = False
        out.append("?" if sanitize and t.kind in _LITERALS else t.value)
    if cut:
        out.append(" ...")
    return "".join(out)


def statement(text: str, cut: bool, mode: str, dialect: str) -> Statement:
    """Operation, table and query text of one SQL statement (see the module docstring)."""
    every = _tokens(text, dialect)
    tokens = [t for t in every if t.kind not in _BLANK]
    first = tokens[0] if tokens else None
    operation = first.value.upper() if first is not None and first.kind == "word" else None
    if operation is not None and cut and len(tokens) == 1:
        operation = None  # the keyword itself may be cut (`SEL...`)
    collection = _collection(operation, tokens, cut) if operation else None
    query = None if mode == "off" else _text(every, mode, cut)
    return Statement(operation, collection, query)
