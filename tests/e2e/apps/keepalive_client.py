"""Test client: N GET requests over one keep-alive connection, then one POST."""

from __future__ import annotations

import http.client
import sys

port, count = int(sys.argv[1]), int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
for i in range(count):
    conn.request("GET", f"/hello?i={i}")
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200, resp.status
conn.request("POST", "/echo", body=b"p" * 300, headers={"Content-Type": "text/plain"})
resp = conn.getresponse()
assert resp.read() == b"p" * 300 and resp.status == 201
conn.close()
