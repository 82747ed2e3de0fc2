"""Test client: one keep-alive HTTP/1.1 connection, driven line by line from stdin, so a test
decides when it is used and when it stays open and idle.

Each stdin line `GET <path> <count>` sends `count` requests on the connection and answers
`<local port> <body bytes> <wall ns before the first send> <wall ns after the last body>`.
End of input closes the connection.
"""

from __future__ import annotations

import http.client
import sys
import time

conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
conn.connect()
port = conn.sock.getsockname()[1]
for line in sys.stdin:
    method, path, count = line.split()
    received = 0
    started = time.time_ns()
    for _ in range(int(count)):
        conn.request(method, path)
        resp = conn.getresponse()
        received += len(resp.read())
    print(port, received, started, time.time_ns(), flush=True)
conn.close()
