"""Test gRPC server and clients (grpcio) without generated code: a generic handler with raw-bytes
messages (no protobuf), service `demo.Greeter`:

- `SayHello` (unary): answers `hello <name> from <peer>`, the peer being the client's address as
  the server saw it (`ipv4:127.0.0.1:<port>`), so a client learns its own local port. A name
  starting with `slow` is answered after SLOW seconds (concurrent calls overlap).
- `StreamHellos` (server streaming): the request is a count; answers that many messages, GAP
  seconds apart.
- `Find` (unary): always fails with NOT_FOUND through `context.abort` before any message, i.e. a
  trailers-only response (one HEADERS frame with END_STREAM holding grpc-status).

    grpc_apps.py serve PORT                  prints `listening` once it accepts calls
    grpc_apps.py calls PORT N MESSAGES       N SayHello (each with a traceparent in its metadata: one
                                             trace, span ids 1..N), N StreamHellos of MESSAGES, N Find
    grpc_apps.py concurrent PORT N           N SayHello at once on one channel (N streams, one connection)
    grpc_apps.py hold PORT N                 N SayHello, prints its port, waits for a line on stdin,
                                             N more SayHello on the same connection, prints `done`

Every client uses ONE channel (one TCP connection) and prints its local port (first line); `calls`
and `concurrent` exit when all their calls have completed, with the results checked.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from concurrent import futures

import grpc

SERVICE = "demo.Greeter"
SLOW = 0.3  # seconds a `slow...` SayHello takes
GAP = 0.02  # seconds between two messages of StreamHellos
TIMEOUT = 10.0
TRACE_ID = 0x5A1E5A1E5A1E5A1E5A1E5A1E5A1E5A1E  # of the contexts `calls` sends


def _identity(data: bytes) -> bytes:
    return data


def say_hello(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request.startswith(b"slow"):
        time.sleep(SLOW)
    return b"hello " + request + b" from " + context.peer().encode()


def stream_hellos(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for i in range(int(request)):
        if i:
            time.sleep(GAP)
        yield b"hello %d" % i


def find(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.NOT_FOUND, "no greeting named " + request.decode())
    raise AssertionError("abort returns only by raising")


def serve(port: int) -> None:
    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "SayHello": grpc.unary_unary_rpc_method_handler(say_hello, _identity, _identity),
        "StreamHellos": grpc.unary_stream_rpc_method_handler(stream_hellos, _identity, _identity),
        "Find": grpc.unary_unary_rpc_method_handler(find, _identity, _identity),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))  # 20 concurrent calls run at once
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()


def traceparent(i: int) -> str:
    """The context `calls` sends with its i-th SayHello: one trace, span id i + 1."""
    return f"00-{TRACE_ID:032x}-{i + 1:016x}-01"


class Client:
    """One channel, i.e. one HTTP/2 connection, to the Greeter on 127.0.0.1:port."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(self.channel).result(timeout=TIMEOUT)
        self.say_hello = self.channel.unary_unary(f"/{SERVICE}/SayHello", _identity, _identity)
        self.stream_hellos = self.channel.unary_stream(f"/{SERVICE}/StreamHellos", _identity, _identity)
        self.find = self.channel.unary_unary(f"/{SERVICE}/Find", _identity, _identity)

    def hello(self, name: str, traceparent: str | None = None) -> int:
        """One SayHello (with a traceparent in its metadata, if given); returns the client's local
        port that the server reported."""
        metadata = (("traceparent", traceparent),) if traceparent else None
        reply = self.say_hello(name.encode(), timeout=TIMEOUT, metadata=metadata)
        assert reply.startswith(b"hello " + name.encode() + b" from ipv4:127.0.0.1:"), reply
        return int(reply.rsplit(b":", 1)[1])

    def stream(self, messages: int) -> None:
        replies = list(self.stream_hellos(b"%d" % messages, timeout=TIMEOUT))
        assert replies == [b"hello %d" % i for i in range(messages)], replies

    def not_found(self, name: str) -> None:
        try:
            self.find(name.encode(), timeout=TIMEOUT)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND, err  # type: ignore[attr-defined]
        else:
            raise AssertionError("Find succeeded")


def calls(port: int, n: int, messages: int) -> None:
    client = Client(port)
    local = client.hello("alice", traceparent(0))
    print(local, flush=True)
    for i in range(1, n):
        assert client.hello(f"alice{i}", traceparent(i)) == local  # one connection throughout
    for _ in range(n):
        client.stream(messages)
    for i in range(n):
        client.not_found(f"nobody{i}")
    client.channel.close()


def concurrent(port: int, n: int) -> None:
    client = Client(port)
    pending = [client.say_hello.future(b"slow%d" % i, timeout=TIMEOUT) for i in range(n)]
    ports = {int(f.result().rsplit(b":", 1)[1]) for f in pending}
    assert len(ports) == 1, ports
    print(ports.pop(), flush=True)
    client.channel.close()


def hold(port: int, n: int) -> None:
    client = Client(port)
    local = client.hello("before0")
    for i in range(1, n):
        client.hello(f"before{i}")
    print(local, flush=True)
    sys.stdin.readline()
    for i in range(n):
        assert client.hello(f"after{i}") == local
    print("done", flush=True)
    client.channel.close()


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "serve":
        serve(port)
    elif mode == "calls":
        calls(port, int(sys.argv[3]), int(sys.argv[4]))
    elif mode == "concurrent":
        concurrent(port, int(sys.argv[3]))
    elif mode == "hold":
        hold(port, int(sys.argv[3]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
