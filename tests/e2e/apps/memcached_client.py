"""Test client: pymemcache, then the meta commands on a raw socket, against one memcached.

`memcached_client.py PORT` runs a known sequence, each step waiting for its reply (pymemcache with
`default_noreply=False`), printing one line per step: sets, gets (hits and misses), get_many, add
refused, gets/cas (stored, then EXISTS), deletes (the second NOT_FOUND), incr/decr (one missing),
touch, set_many (one write of three sets), then errors, after each of which pymemcache closes its
connection: incr of a text (CLIENT_ERROR), a value above the server's item size (SERVER_ERROR, the
server runs with `-I 1k`), an unknown command (ERROR). Then two noreply sets and a get (one write
each, no reply in between), quit; and a raw socket with the meta commands.
"""

from __future__ import annotations

import socket
import sys

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheClientError, MemcacheServerError, MemcacheUnknownCommandError


def pymemcache_steps(port: int) -> None:
    c = Client(("127.0.0.1", port), default_noreply=False, connect_timeout=5, timeout=5)
    print("set", c.set("user:1", "alice"))
    print("get", c.get("user:1"))
    print("get", c.get("user:2"))
    print("get_many", c.get_many(["user:1", "user:2"]))
    print("add", c.add("user:1", "x"))
    value, token = c.gets("user:1")
    print("gets", value)
    print("cas", c.cas("user:1", "bob", token))
    print("cas", c.cas("user:1", "carol", token))  # stale token
    print("delete", c.delete("user:1"))
    print("delete", c.delete("user:1"))
    print("set", c.set("counter", "10"))
    print("incr", c.incr("counter", 5))
    print("decr", c.decr("counter", 3))
    print("incr", c.incr("missing", 1))
    print("touch", c.touch("counter", 60))
    print("set_many", c.set_many({"a": "1", "b": "2", "c": "3"}))
    print("set", c.set("text", "abc"))
    try:
        c.incr("text", 1)
    except MemcacheClientError as e:
        print("incr", e)
    print("version", c.version())
    try:
        c.set("big", "x" * 2000)
    except MemcacheServerError as e:
        print("set", e)
    print("stats", c.stats()[b"cmd_get"])
    try:
        c.raw_command("bogus")
    except MemcacheUnknownCommandError as e:
        print("bogus", e)
    c.set("q1", "v1", noreply=True)
    c.set("q2", "v2", noreply=True)
    print("get", c.get("q1"))
    c.quit()


def meta_steps(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        f = s.makefile("rb")
        for wire, lines in ((b"ms mk 2 T60\r\nhi\r\n", 1), (b"mg mk v\r\n", 2), (b"mg nokey v\r\n", 1),
                            (b"mg a v q\r\nmg nokey v q\r\nmn\r\n", 3), (b"md mk\r\n", 1), (b"ma counter\r\n", 1),
                            (b"mn\r\n", 1)):
            s.sendall(wire)
            print(wire.split()[0].decode(), b"|".join(f.readline().strip() for _ in range(lines)).decode())


if __name__ == "__main__":
    pymemcache_steps(int(sys.argv[1]))
    meta_steps(int(sys.argv[1]))
