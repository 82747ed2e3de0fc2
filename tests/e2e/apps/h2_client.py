"""Test client: cleartext HTTP/2 with prior knowledge (h2c), several requests one after another on
ONE connection, with the `h2` package. Debian's curl 7.88.1 cannot do this: it fails reusing a
prior-knowledge connection ("Error in the HTTP2 framing layer", curl issue 10634, fixed in 8.0).

    h2_client.py PORT REQUEST...     REQUEST = GET:/path or POST:/path:<body bytes>

Prints one line per request as curl's `-w '%{response_code} %{size_download} %{local_port}
%{http_version}'` would: status, response body bytes, local port, `2`.
"""

from __future__ import annotations

import socket
import sys

import h2.config
import h2.connection
import h2.events


def exchange(sock: socket.socket, conn: h2.connection.H2Connection, method: str, path: str,
             body: bytes) -> tuple[int, int]:
    """One request on a new stream; returns (status, response body bytes) at its END_STREAM."""
    stream = conn.get_next_available_stream_id()
    port = sock.getpeername()[1]
    headers = [(":method", method), (":path", path), (":scheme", "http"), (":authority", f"127.0.0.1:{port}"),
               ("user-agent", "h2-client")]
    if body:
        headers.append(("content-length", str(len(body))))
    conn.send_headers(stream, headers, end_stream=not body)
    if body:
        conn.send_data(stream, body, end_stream=True)
    sock.sendall(conn.data_to_send())
    status, size = 0, 0
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                size += len(event.data) if event.stream_id == stream else 0
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)  # keep windows open
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                sock.sendall(conn.data_to_send())
                return status, size
        sock.sendall(conn.data_to_send())


def main() -> None:
    port = int(sys.argv[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        for request in sys.argv[2:]:
            method, path, *size = request.split(":")
            status, received = exchange(sock, conn, method, path, b"p" * int(size[0]) if size else b"")
            print(status, received, sock.getsockname()[1], "2", flush=True)
        conn.close_connection()
        sock.sendall(conn.data_to_send())


if __name__ == "__main__":
    main()
