"""A TCP server for the TCP health tests; each connection sends one line and gets it back.

    python tcp_server.py ADDRESS PORT echo    then waits for the client to close, and closes
    python tcp_server.py ADDRESS PORT reset   then closes with SO_LINGER 0: the client gets a reset
    python tcp_server.py ADDRESS PORT sink    reads until the client closes, then answers the byte count
"""

import socket
import struct
import sys
import threading

LINGER_ZERO = struct.pack("ii", 1, 0)


def read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def serve(conn: socket.socket, mode: str) -> None:
    try:
        answer(conn, mode)
    except ConnectionResetError:  # the client aborted: what some tests do
        pass
    finally:
        conn.close()


def answer(conn: socket.socket, mode: str) -> None:
    if mode == "sink":
        total = 0
        while chunk := conn.recv(65536):
            total += len(chunk)
        conn.sendall(f"{total}\n".encode())
        return
    conn.sendall(read_line(conn))
    if mode == "reset":
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)  # the close resets
        return
    while conn.recv(4096):
        pass


def main() -> None:
    address, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((address, port))
        srv.listen(128)
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=serve, args=(conn, mode), daemon=True).start()


main()
