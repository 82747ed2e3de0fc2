"""The Python app of the benchmarks: one WSGI app served by a threaded http.server with
HTTP/1.1 keep-alive (wsgiref's server speaks HTTP/1.0 and closes every connection).

    python wsgi_server.py PORT            plain: what the sidecar instruments from outside
    python wsgi_server.py PORT --otel     the same app wrapped in OpenTelemetryMiddleware
                                          (opentelemetry-instrumentation-wsgi) with the SDK's
                                          BatchSpanProcessor and OTLP/gRPC exporter, configured
                                          by the standard OTEL_* variables: agent-based tracing

Only the middleware differs between the two, so their difference is the in-process agent's.
"""

from __future__ import annotations

import io
import os
import signal
import sys
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b"hello from the benchmark app\n"

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]


def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    if environ["PATH_INFO"].startswith("/hello"):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
        return [BODY]
    body = b"not found\n"
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def make_handler(wsgi: WsgiApp, port: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _serve(self) -> None:
            path, _, query = self.path.partition("?")
            length = int(self.headers.get("Content-Length") or 0)
            environ = {
                "REQUEST_METHOD": self.command, "PATH_INFO": path, "QUERY_STRING": query,
                "SERVER_NAME": "127.0.0.1", "SERVER_PORT": str(port), "SERVER_PROTOCOL": self.request_version,
                "REMOTE_ADDR": self.client_address[0], "REMOTE_PORT": str(self.client_address[1]),
                "SCRIPT_NAME": "", "CONTENT_LENGTH": str(length),
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
                "wsgi.input": io.BytesIO(self.rfile.read(length) if length else b""),
                "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
            }
            for key, value in self.headers.items():
                name = "HTTP_" + key.upper().replace("-", "_")
                if name not in ("HTTP_CONTENT_LENGTH", "HTTP_CONTENT_TYPE"):
                    environ[name] = value
            status_headers: list = []

            def start_response(status: str, headers: list, exc_info: object = None) -> Callable:
                status_headers[:] = [status, headers]
                return lambda _data: None

            result = wsgi(environ, start_response)
            try:
                body = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            status, headers = status_headers
            out = [f"HTTP/1.1 {status}\r\n".encode()]
            out += [f"{k}: {v}\r\n".encode() for k, v in headers]
            out.append(b"\r\n")
            out.append(body)
            self.wfile.write(b"".join(out))

        do_GET = _serve
        do_POST = _serve

    return Handler


def instrumented(wsgi: WsgiApp) -> WsgiApp:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create())  # OTEL_SERVICE_NAME etc. from the env
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # OTEL_EXPORTER_OTLP_*
    trace.set_tracer_provider(provider)

    def flush_and_exit(_signum: int, _frame: object) -> None:
        provider.shutdown()  # export what the batch queue still holds
        os._exit(0)

    signal.signal(signal.SIGTERM, flush_and_exit)
    return OpenTelemetryMiddleware(wsgi)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # wrk resets at the end of a run
            super().handle_error(request, client_address)


def main() -> None:
    port = int(sys.argv[1])
    wsgi = instrumented(app) if "--otel" in sys.argv[2:] else app
    server = Server(("127.0.0.1", port), make_handler(wsgi, port))
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
