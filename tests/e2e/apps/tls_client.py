"""Test client: COUNT GETs of PATH over one keep-alive HTTPS connection, then with a fourth
argument `post` one POST /echo (Python's ssl module: SSL_write_ex/SSL_read_ex). Prints its
local port. The certificate is not verified (self-signed).

    tls_client.py PORT PATH COUNT [post]
"""

from __future__ import annotations

import http.client
import ssl
import sys

port, path, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
for _ in range(count):
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200, resp.status
if sys.argv[4:] == ["post"]:
    conn.request("POST", "/echo", body=b"p" * 300, headers={"Content-Type": "text/plain"})
    resp = conn.getresponse()
    assert resp.read() == b"p" * 300 and resp.status == 201
print(conn.sock.getsockname()[1], flush=True)
conn.close()
