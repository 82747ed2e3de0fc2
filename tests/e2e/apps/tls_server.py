"""Test app: server.py's routes over HTTPS with Python's ssl module (OpenSSL's SSL_read_ex and
SSL_write_ex), and with a third argument the same routes over plain HTTP from the same process.

    tls_server.py CERT_PEM HTTPS_PORT [HTTP_PORT]

Listens on 127.0.0.1, or on the address in the environment variable BIND.
"""

from __future__ import annotations

import os
import ssl
import sys
import threading
from http.server import ThreadingHTTPServer

from server import Handler


def main() -> None:
    cert, https_port = sys.argv[1], int(sys.argv[2])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert)
    https = ThreadingHTTPServer((os.environ.get("BIND", "127.0.0.1"), https_port), Handler)
    https.socket = ctx.wrap_socket(https.socket, server_side=True)  # handshake in accept()
    if len(sys.argv) > 3:
        http = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[3])), Handler)
        threading.Thread(target=http.serve_forever, daemon=True).start()
    print("listening", flush=True)
    https.serve_forever()


if __name__ == "__main__":
    main()
