"""HTTP/2 byte streams replayed over TCP for the probe tests, run as a subprocess in a new PID
namespace; argv[1]: the seed of the cuts, or `oversized` (the client sends a 1 MiB HEADERS frame
after its preface, and nothing comes back), or `upgrade` (an h2c upgrade, see upgrade()). Protocol on stdio: prints {"ns_inode": N}, waits for a line on stdin, replays, prints
the ports as JSON and exits.

The streams are a real conversation between the `h2` package's client and server (requests with
bodies, responses with large bodies split into many DATA frames, trailers, a header block cut into
CONTINUATION frames), made in memory. The client's bytes go out cut at pseudo-random points, each
cut with send, write, or sendmsg over several iovecs (empty ones too); the server reads them in
other cuts with recv, readv and recvmsg_into over several buffers; then the same the other way.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import random
import socket
import sys
import termios
import time

import h2.config
import h2.connection
import h2.events

REQUESTS = 6
BIG_BODY = 100_000


def _pump(src: h2.connection.H2Connection, dst: h2.connection.H2Connection, out: bytearray) -> list:
    data = src.data_to_send()
    out += data
    return dst.receive_data(data) if data else []


def conversation() -> tuple[bytes, bytes]:
    """(what the client sends, what the server sends)."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    up, down = bytearray(), bytearray()
    client.initiate_connection()
    server.initiate_connection()
    _pump(client, server, up)
    _pump(server, client, down)
    _pump(client, server, up)
    client.max_outbound_frame_size = 16384
    for i in range(REQUESTS):
        stream = client.get_next_available_stream_id()
        headers = [(":method", "POST" if i % 2 else "GET"), (":path", f"/items/{i}?q=secret"),
                   (":scheme", "http"), (":authority", "example.test"), ("user-agent", "h2traffic")]
        if i == 3:  # a header block longer than a frame: CONTINUATION frames follow
            headers.append(("x-large", "v" * 40_000))
        client.send_headers(stream, headers, end_stream=not i % 2)
        if i % 2:
            client.send_data(stream, b"b" * (i * 1000), end_stream=True)
        for event in _pump(client, server, up):
            if isinstance(event, h2.events.RequestReceived):
                server.send_headers(event.stream_id, [(":status", "200"), ("content-type", "text/plain")])
                body = b"r" * (BIG_BODY if event.stream_id == 1 else 10 * event.stream_id)
                while body:  # within the flow-control window: the client acknowledges below
                    n = min(len(body), server.local_settings.max_frame_size, 16384)
                    server.send_data(event.stream_id, body[:n])
                    body = body[n:]
                    for ev in _pump(server, client, down):
                        if isinstance(ev, h2.events.DataReceived):
                            client.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    _pump(client, server, up)
                server.send_headers(event.stream_id, [("grpc-status", "0")], end_stream=True)
        _pump(server, client, down)
        _pump(client, server, up)
    return bytes(up), bytes(down)


UNUSED = (2, 6, 8)  # PRIORITY, PING, WINDOW_UPDATE: left out whole


def reported(stream: bytes, preface: bool) -> tuple[int, bytes]:
    """What the probes report of a direction: the bytes covered (all but the preface and unused
    frames), and those kept of them (frame headers, and payloads but DATA's and unknown types')."""
    pos, covered, out = (24 if preface else 0), 0, bytearray()
    while pos < len(stream):
        length = int.from_bytes(stream[pos:pos + 3], "big")
        kind = stream[pos + 3]
        if kind not in UNUSED:
            covered += 9 + length
            out += stream[pos:pos + 9]
            if kind != 0 and kind <= 9:
                out += stream[pos + 9:pos + 9 + length]
        pos += 9 + length
    return covered, bytes(out)


def cuts(total: int, rng: random.Random) -> list[int]:
    sizes, left = [], total
    while left:
        n = min(left, rng.choice((1, 3, 9, 10, 17, 100, 1000, 5000, 20000, 70000)))
        sizes.append(n)
        left -= n
    return sizes


def send_all(sock: socket.socket, data: bytes, rng: random.Random) -> None:
    pos = 0
    if data.startswith(b"PRI * HTTP/2.0"):  # clients send the preface whole, often alone
        pos = sock.send(data[:24])
    for n in cuts(len(data) - pos, rng):
        piece = data[pos:pos + n]
        how = rng.choice(("send", "write", "sendmsg"))
        if how == "send":
            sent = sock.send(piece)
        elif how == "write":
            sent = os.write(sock.fileno(), piece)
        else:
            a, b = sorted((rng.randint(0, n), rng.randint(0, n)))
            sent = sock.sendmsg([piece[:a], b"", piece[a:b], piece[b:]])
        assert sent == n, (how, sent, n)  # the peer drains concurrently: no short sends on loopback
        pos += n


def wait_queued(sock: socket.socket, size: int) -> None:
    queued = array.array("i", [0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, queued)
        if queued[0] >= size:
            return
        time.sleep(0.0005)
    raise TimeoutError(size)


def recv_all(sock: socket.socket, total: int, rng: random.Random, preface: bool = False) -> bytes:
    got = bytearray()
    if preface:  # the probes recognise a preface read at once (servers read large buffers)
        wait_queued(sock, 24)
        got += sock.recv(24)
    for n in cuts(total - len(got), rng):
        wait_queued(sock, n)
        how = rng.choice(("recv", "readv", "recvmsg"))
        if how == "recv":
            piece = sock.recv(n)
        else:
            a = rng.randint(0, n)
            bufs = [bytearray(a), bytearray(0), bytearray(n - a)]
            got_n = os.readv(sock.fileno(), bufs) if how == "readv" else sock.recvmsg_into(bufs)[0]
            piece = b"".join(bufs)[:got_n]
        assert len(piece) == n, (how, len(piece), n)
        got += piece
    return bytes(got)


OVERSIZED = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\0\0\0\x04\0\0\0\0\0" +  # preface, empty SETTINGS
             (1 << 20).to_bytes(3, "big") + b"\x01\x04\0\0\0\x01" + b"h" * 4000)  # a 1 MiB HEADERS frame


UPGRADE_REQUEST = (b"GET /up HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                   b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
UPGRADE_HEAD = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"


def upgrade() -> tuple[bytes, bytes, bytes]:
    """(the client's HTTP/1.1 request, the server's answer: the 101 head and, in the same write, its
    SETTINGS and stream 1's response of 1000 bytes, then the client's preface and SETTINGS)."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_upgrade_connection(client.initiate_upgrade_connection())
    server.send_headers(1, [(":status", "200"), ("content-type", "text/plain")])
    server.send_data(1, b"x" * 1000, end_stream=True)
    return UPGRADE_REQUEST, UPGRADE_HEAD + server.data_to_send(), client.data_to_send()


def main() -> None:
    import threading

    seed = int(sys.argv[1]) if sys.argv[1:] and sys.argv[1].isdigit() else 0
    if sys.argv[1:] == ["upgrade"]:
        upgraded()
        return
    up, down = (OVERSIZED, b"") if sys.argv[1:] == ["oversized"] else conversation()
    print(json.dumps({"ns_inode": os.stat("/proc/self/ns/pid").st_ino}), flush=True)
    sys.stdin.readline()
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    received: dict[str, bytes] = {}
    reader = threading.Thread(target=lambda: received.update(up=recv_all(server, len(up), random.Random(seed + 2), True)))
    reader.start()
    send_all(client, up, random.Random(seed + 1))
    reader.join()
    if down:
        reader = threading.Thread(target=lambda: received.update(down=recv_all(client, len(down), random.Random(seed + 4))))
        reader.start()
        send_all(server, down, random.Random(seed + 3))
        reader.join()
    else:
        received["down"] = b""
    assert received == {"up": up, "down": down}
    result = {"server_port": listener.getsockname()[1], "client_port": client.getsockname()[1]}
    client.close()
    server.close()
    listener.close()
    print(json.dumps(result), flush=True)



def upgraded() -> None:
    """The h2c upgrade of upgrade(), each message in one write, read whole by the other end."""
    request, answer, preface = upgrade()
    print(json.dumps({"ns_inode": os.stat("/proc/self/ns/pid").st_ino}), flush=True)
    sys.stdin.readline()
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    for src, dst, data in ((client, server, request), (server, client, answer), (client, server, preface)):
        src.sendall(data)
        wait_queued(dst, len(data))
        assert dst.recv(len(data)) == data
    client.close()
    server.close()
    listener.close()
    print(json.dumps({}), flush=True)


if __name__ == "__main__":
    main()
