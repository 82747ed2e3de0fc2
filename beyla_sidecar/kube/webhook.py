"""`beyla-sidecar webhook`: the HTTPS server of the mutating admission webhook.

    POST /mutate            AdmissionReview v1; injects pods annotated beyla-sidecar.io/inject: "true"
    POST /mutate/namespace  the same for namespaces labelled beyla-sidecar.io/inject=enabled:
                            injects unless the pod's annotation says "false" (see injection.py)
    GET  /metrics           Prometheus text exposition of the webhook's own counters
    GET  /healthz           liveness: 200 while the process serves
    GET  /readyz            readiness: 200 once the certificate is trusted (caBundle published)

Robustness: one thread per connection, at most BEYLA_WEBHOOK_MAX_CONNECTIONS of them; the TLS
handshake runs in that thread (never in the accept loop), and every connection has a socket
timeout plus a hard deadline, so slow or silent clients cannot hold the server. One request per
connection (HTTP/1.0 semantics): the deadline is per request. The webhook never blocks a pod on its
own errors: it answers `allowed: true` with a warning (and the configuration says failurePolicy Ignore).
"""

from __future__ import annotations

import base64
import json
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import structlog

from ..config import WebhookConfig
from ..signals import StopSignal
from . import cabundle, certs, injection

log = structlog.get_logger()

MUTATE_PATHS = {"/mutate": False, "/mutate/namespace": True}  # path -> namespace opted in
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
REPUBLISH_EVERY = 60.0
DRAIN_LIMIT = 256 * 1024  # bytes of a refused (413) body read and thrown away before closing
DRAIN_IDLE = 0.25  # seconds


class Metrics:
    """The webhook's counters, rendered in the Prometheus text exposition format 0.0.4."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.outcomes = dict.fromkeys(injection.OUTCOMES, 0)
        self.dry_run = 0
        self.responses: dict[int, int] = {}
        self.rejected_connections = 0
        self.buckets = [0] * len(DURATION_BUCKETS)
        self.duration_sum = 0.0
        self.duration_count = 0
        self.ca_published = 0

    def admission(self, outcome: str, dry_run: bool, seconds: float) -> None:
        with self._lock:
            self.outcomes[outcome] += 1
            self.dry_run += dry_run
            for i, le in enumerate(DURATION_BUCKETS):
                if seconds <= le:
                    self.buckets[i] += 1
            self.duration_sum += seconds
            self.duration_count += 1

    def response(self, code: int) -> None:
        with self._lock:
            self.responses[code] = self.responses.get(code, 0) + 1

    def rejected(self) -> None:
        with self._lock:
            self.rejected_connections += 1

    def render(self) -> str:
        with self._lock:
            out: list[str] = []

            def family(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
                out.append(f"# HELP {name} {help_}")
                out.append(f"# TYPE {name} {kind}")
                out.extend(f"{name}{labels} {_num(v)}" for labels, v in samples)

            family("beyla_webhook_admission_requests_total", "counter",
                   "AdmissionReview requests answered, by outcome.",
                   [(f'{{outcome="{o}"}}', n) for o, n in self.outcomes.items()])
            family("beyla_webhook_admission_dry_run_requests_total", "counter",
                   "AdmissionReview requests that were dry runs (also counted by outcome).", [("", self.dry_run)])
            samples = [(f'{{le="{_num(le)}"}}', n) for le, n in zip(DURATION_BUCKETS, self.buckets)]
            samples.append(('{le="+Inf"}', self.duration_count))
            out.append("# HELP beyla_webhook_admission_duration_seconds Time to decide on one AdmissionReview.")
            out.append("# TYPE beyla_webhook_admission_duration_seconds histogram")
            out.extend(f"beyla_webhook_admission_duration_seconds_bucket{lb} {n}" for lb, n in samples)
            out.append(f"beyla_webhook_admission_duration_seconds_sum {_num(self.duration_sum)}")
            out.append(f"beyla_webhook_admission_duration_seconds_count {self.duration_count}")
            family("beyla_webhook_http_responses_total", "counter", "HTTP responses, by status code.",
                   [(f'{{code="{c}"}}', n) for c, n in sorted(self.responses.items())])
            family("beyla_webhook_rejected_connections_total", "counter",
                   "Connections closed at once because BEYLA_WEBHOOK_MAX_CONNECTIONS were busy.",
                   [("", self.rejected_connections)])
            family("beyla_webhook_ca_bundle_published", "gauge",
                   "1 when this replica's CA is in the webhook configuration's caBundle (or certificates "
                   "come from files), else 0.", [("", self.ca_published)])
            return "\n".join(out) + "\n"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


class _Handler(BaseHTTPRequestHandler):
    server: _TLSServer
    server_version = "beyla-sidecar-webhook"
    sys_version = ""

    def setup(self) -> None:
        self.timeout = self.server.app.cfg.request_timeout
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("webhook http", client=self.client_address[0], message=format % args)

    def _reply(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.server.app.metrics.response(code)
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _discard(self, length: int) -> None:
        # Read (a bounded part of) a refused body before closing, so that the client gets the
        # response instead of a connection reset (as Go's net/http does, with the same limit).
        self.wfile.flush()
        self.connection.settimeout(DRAIN_IDLE)
        try:
            while length > 0:
                chunk = self.rfile.read1(min(length, 65536))
                if not chunk:
                    break
                length -= len(chunk)
        except OSError:
            pass

    def do_GET(self) -> None:
        app = self.server.app
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._reply(200, b"ok\n")
        elif path == "/readyz":
            ready = app.ready.is_set()
            self._reply(200 if ready else 503, b"ok\n" if ready else b"caBundle not published yet\n")
        elif path == "/metrics":
            self._reply(200, app.metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8")
        else:
            self._reply(404, b"not found\n")

    def do_POST(self) -> None:
        app = self.server.app
        path = self.path.split("?", 1)[0]
        if path not in MUTATE_PATHS:
            self._reply(404, b"not found\n")
            return
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            self._reply(411, b"Content-Length required\n")
            return
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError
        except ValueError:
            self._reply(400, b"bad Content-Length\n")
            return
        if length > app.cfg.max_body_bytes:
            self._reply(413, f"body larger than {app.cfg.max_body_bytes} bytes\n".encode())
            self._discard(min(length, DRAIN_LIMIT))
            return
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True  # client went away mid-body
            return
        status, answer = app.admit(body, namespace_opted_in=MUTATE_PATHS[path])
        if status != 200:
            self._reply(status, answer)
        else:
            self._reply(200, answer, "application/json")


class _TLSServer(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: WebhookServer):
        self.app = app
        self._slots = threading.BoundedSemaphore(app.cfg.max_connections)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.app.metrics.rejected()
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: socket.socket, client_address: Any) -> None:
        # Runs in the connection's own thread: the handshake cannot stall the accept loop.
        timeout = self.app.cfg.request_timeout
        request.settimeout(timeout)
        fd = request.fileno()
        lock = threading.Lock()
        done = False

        def deadline() -> None:  # a client trickling bytes defeats the per-read timeout; this does not
            with lock:
                if not done:
                    try:
                        s = socket.socket(fileno=fd)
                        try:
                            s.shutdown(socket.SHUT_RDWR)
                        finally:
                            s.detach()
                    except OSError:
                        pass

        timer = threading.Timer(timeout, deadline)
        timer.daemon = True
        timer.start()
        tls = None
        try:
            tls = self.app.tls.get().wrap_socket(request, server_side=True)
            self.RequestHandlerClass(tls, client_address, self)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            log.debug("webhook connection dropped", client=client_address[0], error=str(exc))
        finally:
            with lock:
                done = True
            timer.cancel()
            if tls is not None:
                tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("webhook connection failed", client=client_address[0])


class WebhookServer:
    """The webhook's HTTPS server; `start()` serves in a background thread."""

    def __init__(self, cfg: WebhookConfig, tls: certs.ContextSource, ready: threading.Event | None = None,
                 review: Callable[..., injection.Decision] = injection.review):
        self.cfg = cfg
        self.tls = tls
        self.metrics = Metrics()
        self.ready = ready if ready is not None else threading.Event()
        self._review = review
        self._httpd: _TLSServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    def start(self) -> WebhookServer:
        self._httpd = _TLSServer((self.cfg.address, self.cfg.port), self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="webhook-accept", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def admit(self, body: bytes, *, namespace_opted_in: bool) -> tuple[int, bytes]:
        """(HTTP status, body) for one POSTed AdmissionReview."""
        try:
            review = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return 400, b"body is not JSON\n"
        request = review.get("request") if isinstance(review, dict) else None
        if (not isinstance(review, dict) or review.get("kind") != "AdmissionReview"
                or review.get("apiVersion") != "admission.k8s.io/v1"
                or not isinstance(request, dict) or not isinstance(request.get("uid"), str)):
            return 400, b"expected an admission.k8s.io/v1 AdmissionReview with request.uid\n"

        started = time.perf_counter()
        dry_run = bool(request.get("dryRun"))
        obj = request.get("object") if isinstance(request.get("object"), dict) else {}
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        where = {"namespace": request.get("namespace", ""), "pod": meta.get("name") or meta.get("generateName", ""),
                 "uid": request["uid"], "dry_run": dry_run}
        try:
            decision = self._review(request, self.cfg, namespace_opted_in=namespace_opted_in)
        except Exception as exc:  # never block a pod on our own failure
            log.exception("webhook failed on a pod, admitting it without the sidecar", **where)
            decision = injection.Decision(injection.ERROR, warnings=[
                f"beyla-sidecar webhook error, pod admitted without the sidecar: {type(exc).__name__}"],
                reason=str(exc))
        response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
        if decision.patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(decision.patch).encode()).decode()
        if decision.warnings:
            response["warnings"] = decision.warnings
        self.metrics.admission(decision.outcome, dry_run, time.perf_counter() - started)
        if decision.outcome == injection.INJECTED:
            log.info("sidecar injected", **where)
        elif decision.warnings:
            log.warning("sidecar not injected", outcome=decision.outcome, reason=decision.reason, **where)
        else:
            log.debug("sidecar not injected", outcome=decision.outcome, reason=decision.reason, **where)
        return 200, json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                "response": response}).encode()


def tls_source(cfg: WebhookConfig) -> tuple[certs.ContextSource, bytes | None]:
    """The server's TLS context and, when generated, the CA to publish (None for files)."""
    if bool(cfg.cert_file) != bool(cfg.key_file):
        raise ValueError("set both BEYLA_WEBHOOK_CERT and BEYLA_WEBHOOK_KEY, or neither (generated certificate)")
    if cfg.cert_file:
        return certs.ContextSource.from_files(cfg.cert_file, cfg.key_file), None
    material = certs.generate(certs.service_dns_names(cfg.service_name, cfg.service_namespace) + ["localhost"])
    return certs.ContextSource(certs.context_from_pem(material.cert_pem, material.key_pem)), material.ca_pem


def keep_ca_published(client: cabundle.KubeClient, name: str, ca_pem: bytes, ready: threading.Event,
                      metrics: Metrics, stop: threading.Event, every: float = REPUBLISH_EVERY) -> None:
    """Publish `ca_pem` into configuration `name`, then re-check every `every` s until `stop`."""
    backoff = 1.0
    while not stop.is_set():
        try:
            cabundle.publish(client, name, ca_pem)
            ready.set()
            metrics.ca_published = 1
            backoff, wait = 1.0, every
        except (OSError, ValueError, KeyError, cabundle.KubeAPIError) as exc:
            metrics.ca_published = 0
            log.error("cannot publish the webhook CA; not ready", configuration=name, error=str(exc))
            backoff, wait = min(backoff * 2, every), backoff
        stop.wait(wait)


def serve(cfg: WebhookConfig) -> int:
    """Run the webhook until SIGTERM or SIGINT; returns the process exit code."""
    try:
        tls, ca_pem = tls_source(cfg)
    except (ValueError, OSError) as exc:  # ssl.SSLError is an OSError
        log.error("cannot set up the webhook's TLS", error=str(exc))
        return 2
    server = WebhookServer(cfg, tls)
    try:
        server.start()
    except OSError as exc:
        log.error("cannot listen", address=cfg.address, port=cfg.port, error=str(exc))
        return 1

    stop = StopSignal()

    if ca_pem is None:
        server.ready.set()
        server.metrics.ca_published = 1
    elif cfg.configuration_name:
        client = cabundle.KubeClient(cfg.kube_api)
        threading.Thread(target=keep_ca_published, name="webhook-cabundle", daemon=True,
                         args=(client, cfg.configuration_name, ca_pem, server.ready, server.metrics, stop)).start()
    else:
        log.warning("generated certificate not published (BEYLA_WEBHOOK_CONFIGURATION_NAME is empty): "
                    "the API server will not trust it")
        server.ready.set()
    log.info("webhook serving", address=cfg.address, port=server.port,
             certificate="files" if ca_pem is None else "generated", native_sidecar=cfg.native_sidecar)
    while not stop.wait(1.0):
        pass
    server.stop()
    log.info("webhook stopped", signal=stop.received)
    return 0
