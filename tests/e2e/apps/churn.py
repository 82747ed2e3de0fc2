"""Test app: COUNT short-lived processes, at most 16 at a time. Even ones are forks that make
one HTTPS request to 127.0.0.1:PORT (libssl is mapped already: inherited) and exit; odd ones
exec /bin/true.

    churn.py PORT COUNT
"""

from __future__ import annotations

import http.client
import os
import ssl
import sys

PARALLEL = 16


def request(port: int, ctx: ssl.SSLContext) -> None:
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
    conn.request("GET", "/hello")
    assert conn.getresponse().read() == b"hello\n"
    conn.close()


def main() -> None:
    port, count = int(sys.argv[1]), int(sys.argv[2])
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    running: list[int] = []
    failed = 0
    for i in range(count):
        pid = os.fork()
        if pid == 0:
            if i % 2:
                os.execv("/bin/true", ["true"])
            code = 0
            try:
                request(port, ctx)
            except Exception:  # noqa: BLE001 - reported through the exit status
                code = 1
            os._exit(code)
        running.append(pid)
        if len(running) >= PARALLEL:
            failed += os.waitstatus_to_exitcode(os.waitpid(running.pop(0), 0)[1]) != 0
    for pid in running:
        failed += os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0
    print(failed, flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
