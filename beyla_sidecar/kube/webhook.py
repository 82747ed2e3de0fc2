"""`beyla-sidecar webhook`: the HTTPS server of the mutating admission webhook.

    POST /mutate            AdmissionReview v1; injects pods annotated beyla-sidecar.io/inject: "true"
    POST /mutate/namespace  the same for namespaces labelled beyla-sidecar.io/inject=enabled:
                            injects unless the pod's annotation says "false" (see injection.py)
    GET  /metrics           Prometheus text exposition of the webhook's own counters
    GET  /healthz           liveness: 200 while the process serves
    GET  /readyz            readiness: 200 once the certificate is trusted (caBundle published)

Robustness: one thread accepts connections and holds them in a selector, without a thread each,
through the TLS handshake until their request starts (BEYLA_WEBHOOK_HANDSHAKE_TIMEOUT_MS, at most
BEYLA_WEBHOOK_MAX_IDLE_CONNECTIONS of them), so idle sockets cannot take what admissions need. Each
started request then gets its own thread, at most BEYLA_WEBHOOK_MAX_CONNECTIONS, and a hard
deadline (BEYLA_WEBHOOK_REQUEST_TIMEOUT_MS from accept). One request per connection
(HTTP/1.0 semantics). Refused requests (413, 431, ...) are answered and the rest of what the client
sends is read before closing, so that it gets the answer rather than a reset. The webhook never
blocks a pod on its own errors: it answers `allowed: true` with a warning (and the configuration
says failurePolicy Ignore).
"""

from __future__ import annotations

import base64
import json
import selectors
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import structlog

from ..config import WebhookConfig
from ..signals import StopSignal
from . import cabundle, certs, injection

log = structlog.get_logger()

MUTATE_PATHS = {"/mutate": False, "/mutate/namespace": True}  # path -> namespace opted in
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
REPUBLISH_EVERY = 60.0
# What a client still sends after a refusal is read and thrown away, up to this many bytes or until
# it pauses, before closing: closing with unread data resets the connection, and a client that writes
# its whole request before reading (most do) would lose the answer.
DRAIN_LIMIT = 16 * 1024 * 1024
DRAIN_IDLE = 0.25  # seconds
MAX_HEAD_BYTES = 64 * 1024  # request line and headers; the API server sends well under 1 KiB
LISTEN_BACKLOG = 1024  # accepting never waits on a client, so this only absorbs bursts
ACCEPT_BATCH = 64  # connections accepted in a row before the handshakes in progress move on
ACCEPT_BACKOFF = 0.1  # seconds without accepting after an accept error (out of file descriptors)
POLL = 0.2  # seconds: the longest the accept loop waits before checking for stop
DROP_REASONS = ("idle", "evicted", "tls", "deadline")


class Metrics:
    """The webhook's counters, rendered in the Prometheus text exposition format 0.0.4."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.outcomes = dict.fromkeys(injection.OUTCOMES, 0)
        self.dry_run = 0
        self.responses: dict[int, int] = {}
        self.rejected_connections = 0
        self.dropped_connections = dict.fromkeys(DROP_REASONS, 0)
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

    def dropped(self, reason: str) -> None:
        with self._lock:
            self.dropped_connections[reason] += 1

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
            family("beyla_webhook_dropped_connections_total", "counter",
                   "Connections closed unserved, by reason: idle (no TLS handshake or request within "
                   "BEYLA_WEBHOOK_HANDSHAKE_TIMEOUT_MS), evicted (BEYLA_WEBHOOK_MAX_IDLE_CONNECTIONS held), "
                   "tls (handshake failed), deadline (request not done within BEYLA_WEBHOOK_REQUEST_TIMEOUT_MS).",
                   [(f'{{reason="{r}"}}', n) for r, n in self.dropped_connections.items()])
            family("beyla_webhook_ca_bundle_published", "gauge",
                   "1 when this replica's CA is in the webhook configuration's caBundle (or certificates "
                   "come from files), else 0.", [("", self.ca_published)])
            return "\n".join(out) + "\n"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "beyla-sidecar-webhook"
    sys_version = ""

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

    def _refuse(self, code: int, body: bytes, unread: int = DRAIN_LIMIT) -> None:
        """Answers `code` to a request not read to its end, then reads and throws away up to
        `unread` bytes (see DRAIN_LIMIT)."""
        self._reply(code, body)
        self.connection.settimeout(DRAIN_IDLE)
        try:
            while unread > 0 and (chunk := self.rfile.read1(min(unread, 65536))):
                unread -= len(chunk)
        except OSError:  # a pause (TimeoutError), the deadline or a reset: nothing more to wait for
            pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The base class's refusals of a bad request line or headers (400, 414, 431, 501, 505).
        self._refuse(code, f"{message or self.responses[code][0]}\n".encode())

    def parse_request(self) -> bool:
        # The base class limits each line (64 KiB) and the number of headers (100), not their sum.
        if not super().parse_request():
            return False
        size = len(self.raw_requestline) + sum(len(k) + len(v) + 4 for k, v in self.headers.items())
        if size > MAX_HEAD_BYTES:
            self.send_error(431, f"request line and headers larger than {MAX_HEAD_BYTES} bytes")
            return False
        return True

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
            self._refuse(404, b"not found\n")
            return
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            self._refuse(411, b"Content-Length required\n")
            return
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError
        except ValueError:
            self._refuse(400, b"bad Content-Length\n")
            return
        if length > app.cfg.max_body_bytes:
            self._refuse(413, f"body larger than {app.cfg.max_body_bytes} bytes\n".encode(), length)
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


@dataclass(eq=False)
class _Waiting:
    """A connection whose request has not started: TLS handshake, then the request's first bytes."""

    tls: ssl.SSLSocket
    address: tuple[str, int]
    accepted: float  # time.monotonic()
    handshaken: bool = False


class _Deadline:
    """Shuts a connection down at its deadline, whatever it is blocked on: unlike a per-read timeout,
    a client trickling bytes cannot defeat it."""

    def __init__(self, sock: socket.socket, seconds: float, expired: Callable[[], None]):
        self._fd = sock.fileno()
        self._expired = expired
        self._lock = threading.Lock()
        self._done = False
        self._timer = threading.Timer(max(seconds, 0.0), self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:  # after this the fd may be closed and reused: never shut it down then
            self._done = True
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self._expired()
            try:  # through the fd: the SSLSocket itself is in use by the request's thread
                s = socket.socket(fileno=self._fd)
                try:
                    s.shutdown(socket.SHUT_RDWR)
                finally:
                    s.detach()
            except OSError:
                pass


class _Server:
    """Accepts connections and advances their TLS handshakes in one thread (`serve_forever`); each
    connection whose request has started is then served in a thread of its own."""

    def __init__(self, app: WebhookServer):
        cfg = app.cfg
        self.app = app
        self.listener = socket.create_server((cfg.address, cfg.port), backlog=LISTEN_BACKLOG)
        self.listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._waiting: dict[ssl.SSLSocket, _Waiting] = {}  # oldest first
        self._idle_timeout = min(cfg.handshake_timeout, cfg.request_timeout)
        self._slots = threading.BoundedSemaphore(cfg.max_connections)

    def serve_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            for key, _ in self._selector.select(self._select_timeout()):
                if key.fileobj is self.listener:
                    self._accept()
                elif key.data.tls in self._waiting:  # else evicted by an accept of this same batch
                    self._advance(key.data)
            self._expire()

    def close(self) -> None:
        for waiting in list(self._waiting.values()):
            self._release(waiting)
            waiting.tls.close()
        self._selector.close()
        self.listener.close()

    def _select_timeout(self) -> float:
        if not self._waiting:
            return POLL
        oldest = next(iter(self._waiting.values()))
        return max(0.0, min(POLL, oldest.accepted + self._idle_timeout - time.monotonic()))

    def _expire(self) -> None:
        cutoff = time.monotonic() - self._idle_timeout
        while self._waiting:
            oldest = next(iter(self._waiting.values()))
            if oldest.accepted > cutoff:
                return
            self._drop(oldest, "idle")

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # EMFILE: the listener stays readable, do not spin on it
                log.warning("webhook cannot accept a connection", error=str(exc))
                time.sleep(ACCEPT_BACKOFF)
                return
            self._hold(sock, address)

    def _hold(self, sock: socket.socket, address: tuple[str, int]) -> None:
        if len(self._waiting) >= self.app.cfg.max_idle_connections:
            self._drop(self._eviction_victim(), "evicted")
        sock.setblocking(False)
        try:
            tls = self.app.tls.get().wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError as exc:  # reset before it was accepted
            self._count_drop(address, "tls", str(exc))
            sock.close()
            return
        waiting = _Waiting(tls, address, time.monotonic())
        self._waiting[tls] = waiting
        self._selector.register(tls, selectors.EVENT_READ, waiting)

    def _eviction_victim(self) -> _Waiting:
        # The oldest connection of the address holding the most: a client flooding the webhook
        # with idle connections replaces its own, not the API server's.
        per_address = Counter(w.address[0] for w in self._waiting.values())
        busiest = max(per_address, key=per_address.__getitem__)
        return next(w for w in self._waiting.values() if w.address[0] == busiest)

    def _advance(self, waiting: _Waiting) -> None:
        tls = waiting.tls
        if not waiting.handshaken:
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                self._selector.modify(tls, selectors.EVENT_READ, waiting)
                return
            except ssl.SSLWantWriteError:
                self._selector.modify(tls, selectors.EVENT_WRITE, waiting)
                return
            except OSError as exc:  # not TLS, no common cipher suite, a reset (SSLError is an OSError)
                self._drop(waiting, "tls", str(exc))
                return
            waiting.handshaken = True
            if not tls.pending():  # wait, still without a thread, for the request's first bytes
                self._selector.modify(tls, selectors.EVENT_READ, waiting)
                return
        self._start(waiting)

    def _start(self, waiting: _Waiting) -> None:
        self._release(waiting)
        if not self._slots.acquire(blocking=False):
            self.app.metrics.rejected()
            log.debug("webhook connection rejected: all request threads busy", client=waiting.address[0])
            waiting.tls.close()
            return
        threading.Thread(target=self._serve, args=(waiting,), name="webhook-request", daemon=True).start()

    def _serve(self, waiting: _Waiting) -> None:
        tls, client = waiting.tls, waiting.address
        left = waiting.accepted + self.app.cfg.request_timeout - time.monotonic()
        try:
            with _Deadline(tls, left, lambda: self._count_drop(client, "deadline")):
                tls.setblocking(True)  # the deadline bounds every read and write
                _Handler(tls, client, self)
        except OSError as exc:  # a reset or the deadline (ssl.SSLError is an OSError)
            log.debug("webhook connection failed", client=client[0], error=str(exc))
        except Exception:
            log.exception("webhook connection failed", client=client[0])
        finally:
            tls.close()
            self._slots.release()

    def _release(self, waiting: _Waiting) -> None:
        del self._waiting[waiting.tls]
        self._selector.unregister(waiting.tls)

    def _drop(self, waiting: _Waiting, reason: str, error: str = "") -> None:
        self._release(waiting)
        self._count_drop(waiting.address, reason, error)  # counted before the client can see it
        waiting.tls.close()

    def _count_drop(self, client: tuple[str, int], reason: str, error: str = "") -> None:
        self.app.metrics.dropped(reason)
        log.debug("webhook connection dropped", client=client[0], reason=reason, error=error)


class WebhookServer:
    """The webhook's HTTPS server; `start()` serves in a background thread."""

    def __init__(self, cfg: WebhookConfig, tls: certs.ContextSource, ready: threading.Event | None = None,
                 review: Callable[..., injection.Decision] = injection.review):
        self.cfg = cfg
        self.tls = tls
        self.metrics = Metrics()
        self.ready = ready if ready is not None else threading.Event()
        self._review = review
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.listener.getsockname()[1]
        return port

    def start(self) -> WebhookServer:
        self._server = _Server(self)
        self._stop.clear()
        self._thread = threading.Thread(target=self._server.serve_forever, args=(self._stop,),
                                        name="webhook-accept", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._server.close()
            self._server = None

    def admit(self, body: bytes, *, namespace_opted_in: bool) -> tuple[int, bytes]:
        """(HTTP status, body) for one POSTed AdmissionReview."""
        try:
            review = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return 400, b"body is not JSON\n"
        except RecursionError:  # the decoder recurses per array/object level
            return 400, b"body is JSON nested too deeply\n"
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
