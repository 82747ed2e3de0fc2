"""(8) Event-loop causality (issue 11 item 4, the measurement): when one thread serves several
requests at once, does a frontend's outgoing call get the server span of the request that caused
it as its parent?

In one pod: a backend (tests/e2e/apps/causality_apps.py, thread per request) that answers /b/<id> after
BACKEND_DELAY_MS with the id, and a frontend that answers /f/<id> by calling /b/<id>. Frontends:
uvicorn (ASGI) + httpx.AsyncClient, aiohttp server + aiohttp.ClientSession, nginx proxy_pass
(one worker), and a ThreadingHTTPServer + http.client as the thread-per-request control. A load
generator outside the pod (asyncio, one keep-alive connection per concurrent request) sends
REQUESTS unique ids at each concurrency and checks that every answer echoes its id, so the truth
is known: the frontend CLIENT span with url.path /b/<id> belongs under the frontend SERVER span
with url.path /f/<id>. The spans go over OTLP/gRPC to a collector here that keeps them.

Not measured: HTTP/2 or TLS between frontend and backend, frameworks other than these, calls
that leave the pod (the backend is in the same pod; it changes nothing for the frontend's spans).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from dataclasses import asdict, dataclass, field

from .common import LOOPBACK, ROOT, Context, Pod, Sidecar, free_port, log, wait_port
from .results_model import Section, at_least

FRONTENDS = {  # key: what the table calls it
    "uvicorn": "uvicorn + httpx",
    "aiohttp": "aiohttp",
    "nginx": "nginx proxy_pass",
    "threaded": "ThreadingHTTPServer + http.client",
}
CONCURRENCY = (1, 5, 20)
REQUESTS = 100          # per app, concurrency and run
BACKEND_DELAY_MS = 20   # long enough for concurrent requests to overlap in the frontend
WARM_UP = 5             # requests before the measured ones (the sidecar sees the processes talk)
SETTLE = 1.5            # s after a load: the last exchanges end idle (500 ms) and are swept (250 ms)
GOAL = 95               # issue 11: right parents per 100 client spans for the event loops at 20
GOAL_APPS = ("uvicorn", "aiohttp")
CAUSALITY_APPS = ROOT / "tests" / "e2e" / "apps" / "causality_apps.py"  # shared with tests/e2e/test_event_loops.py
SERVER, CLIENT = 2, 3   # OTLP SpanKind

NGINX_CONF = """
daemon off;
master_process on;
worker_processes 1;
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location /f/ {{ proxy_pass http://127.0.0.1:{backend}/b/; }}
    }}
}}
"""


# ---------------------------------------------------------------- spans

@dataclass(frozen=True, slots=True)
class SpanRef:
    kind: int
    path: str
    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes


class Collector:
    """An OTLP/gRPC trace receiver on 127.0.0.1 that keeps every span's kind, url.path and ids."""

    def __init__(self) -> None:
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        collector = self
        self.spans: list[SpanRef] = []
        self._lock = threading.Lock()

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # noqa: N802 (gRPC method name)
                got = [SpanRef(span.kind, _path(span.attributes), span.trace_id, span.span_id, span.parent_span_id)
                       for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]
                with collector._lock:
                    collector.spans.extend(got)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        self.endpoint = f"http://{LOOPBACK}:{self.server.add_insecure_port(f'{LOOPBACK}:0')}"
        self.server.start()

    def count(self) -> int:
        with self._lock:
            return len(self.spans)

    def take(self) -> list[SpanRef]:
        with self._lock:
            spans, self.spans = self.spans, []
        return spans

    def wait_quiet(self, quiet: float = 1.0, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        last, since = self.count(), time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - since < quiet:
            time.sleep(0.05)
            if self.count() != last:
                last, since = self.count(), time.monotonic()

    def close(self) -> None:
        self.server.stop(0)


def _path(attributes: Sequence) -> str:
    for kv in attributes:
        if kv.key == "url.path":
            return kv.value.string_value
    return ""


@dataclass
class Tally:
    """One app at one concurrency in one run: what became of each request's client span."""

    requests: int = 0
    answered: int = 0           # answers that echoed their own id
    client_spans: int = 0
    right: int = 0              # parent = the server span of the request with the same id
    wrong: int = 0              # parent = another request's server span
    root: int = 0               # no parent
    other_parent: int = 0       # a parent that is no frontend server span of these requests
    missing_client: int = 0     # requests without a client span
    missing_server: int = 0     # requests without a frontend server span
    duplicates: int = 0         # client spans beyond one per id
    examples: list[str] = field(default_factory=list)

    @property
    def right_per_100(self) -> float | None:
        return 100 * self.right / self.client_spans if self.client_spans else None


def tally(spans: Sequence[SpanRef], ids: Sequence[str], answered: int) -> Tally:
    """Judge the client span of every id against the truth (the request with the same id)."""
    wanted = set(ids)
    servers = {s.path[3:]: s for s in spans if s.kind == SERVER and s.path.startswith("/f/") and s.path[3:] in wanted}
    by_span_id = {s.span_id: rid for rid, s in servers.items()}
    t = Tally(requests=len(ids), answered=answered, missing_server=len(wanted) - len(servers))
    seen: set[str] = set()
    for s in spans:
        rid = s.path[3:]
        if s.kind != CLIENT or not s.path.startswith("/b/") or rid not in wanted:
            continue
        if rid in seen:
            t.duplicates += 1
            continue
        seen.add(rid)
        t.client_spans += 1
        server = servers.get(rid)
        if not s.parent_span_id.strip(b"\0"):
            t.root += 1
        elif server is not None and s.parent_span_id == server.span_id and s.trace_id == server.trace_id:
            t.right += 1
        elif s.parent_span_id in by_span_id:
            t.wrong += 1
            if len(t.examples) < 3:
                t.examples.append(f"{rid} under {by_span_id[s.parent_span_id]}")
        else:
            t.other_parent += 1
    t.missing_client = len(wanted) - len(seen)
    return t


# ---------------------------------------------------------------- load

async def _one_connection(queue: asyncio.Queue[str], port: int, answered: list[str]) -> None:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        while not queue.empty():
            rid = queue.get_nowait()
            writer.write(f"GET /f/{rid} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            if length is None:
                raise RuntimeError(f"an answer without Content-Length: {head[:200]!r}")
            body = await reader.readexactly(length)
            if head.startswith(b"HTTP/1.1 200") and body == rid.encode():
                answered.append(rid)
    finally:
        writer.close()


async def _drive(port: int, ids: Sequence[str], concurrency: int) -> list[str]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for rid in ids:
        queue.put_nowait(rid)
    answered: list[str] = []
    await asyncio.wait_for(asyncio.gather(*(_one_connection(queue, port, answered) for _ in range(concurrency))),
                           timeout=60)
    return answered


def drive(port: int, ids: Sequence[str], concurrency: int) -> int:
    """GET /f/<id> for every id, `concurrency` keep-alive connections at once; answers that
    echoed their id."""
    return len(asyncio.run(_drive(port, ids, concurrency)))


# ---------------------------------------------------------------- apps

def start_frontend(pod: Pod, kind: str, backend_port: int) -> tuple[int, int]:
    """The frontend's port and host pid."""
    port = free_port()
    if kind == "nginx":
        workdir = pod.dir / f"nginx-{port}"
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=workdir, port=port, backend=backend_port))
        argv = ["nginx", "-c", str(conf)]
    else:
        argv = [sys.executable, str(CAUSALITY_APPS), kind, str(port), str(backend_port)]
    _, pid = pod.spawn(argv, stdout=subprocess.DEVNULL)
    wait_port(port)
    return port, pid


def start_backend(pod: Pod) -> int:
    """The backend (thread per request, BACKEND_DELAY_MS per answer); its port."""
    port = free_port()
    pod.spawn([sys.executable, str(CAUSALITY_APPS), "backend", str(port), str(BACKEND_DELAY_MS)],
              stdout=subprocess.DEVNULL)
    wait_port(port)
    return port


def one_run(ctx: Context, collector: Collector, kind: str, run: int) -> dict[int, Tally]:
    """A pod with the backend and one frontend, a fresh sidecar, the load at every concurrency."""
    pod = Pod(f"causality-{kind}-{run}", ctx.settings.tmp)
    try:
        port, _ = start_frontend(pod, kind, start_backend(pod))
        sidecar = Sidecar(pod, collector.endpoint)
        ctx.ready_seconds.append(sidecar.ready_seconds)
        ctx.sidecars.append(sidecar)
        runs: dict[int, tuple[list[str], int]] = {}
        try:
            drive(port, [f"w{run}n{i}" for i in range(WARM_UP)], 1)
            for conc in CONCURRENCY:
                ids = [f"r{run}c{conc}n{i:03d}" for i in range(REQUESTS)]
                runs[conc] = (ids, drive(port, ids, conc))
                time.sleep(SETTLE)
            if sidecar.proc.poll() is not None:
                raise RuntimeError(f"the sidecar exited during the load:\n{sidecar.text_log()}")
        finally:
            sidecar.stop()  # the final flush: children still waiting for a parent go out as roots
        collector.wait_quiet()
    finally:
        pod.close()
    spans = collector.take()
    return {conc: tally(spans, ids, answered) for conc, (ids, answered) in runs.items()}


# ---------------------------------------------------------------- report

def method(runs: int) -> str:
    return (
        f"In one pod, a backend (tests/e2e/apps/causality_apps.py, ThreadingHTTPServer) answers /b/<id> after "
        f"{BACKEND_DELAY_MS} ms with the id, and a frontend answers /f/<id> by calling /b/<id>: uvicorn (ASGI, "
        "h11, asyncio loop) with one shared httpx.AsyncClient; aiohttp.web with one shared aiohttp.ClientSession; "
        "nginx (one worker) with proxy_pass (a new upstream connection per request); ThreadingHTTPServer with "
        "http.client in the handler's thread (thread per request, the control). A load generator outside the "
        f"pod (asyncio, one keep-alive connection per concurrent request) sends {REQUESTS} requests with unique "
        f"ids at concurrency {', '.join(map(str, CONCURRENCY))}, after {WARM_UP} warm-up requests, and checks that "
        "each answer echoes its id. A fresh sidecar per app and run exports spans over OTLP/gRPC to a collector "
        "that keeps them; after its final flush, each frontend CLIENT span (url.path /b/<id>) is right when its "
        "parent_span_id and trace id are those of the frontend SERVER span with url.path /f/<id>, wrong when they "
        "name another request's server span, a root when it has no parent (the kernel forgets a thread's server "
        "exchange once the thread starts answering it, so a call begun after that names none). Figures per app "
        "and concurrency: "
        f"right parents per 100 client spans, and client spans missing per {REQUESTS} requests; {runs} run(s).")


def add_figures(sec: Section, per: dict[tuple[str, int], list[Tally]]) -> None:
    for (kind, conc), tallies in per.items():
        at = f"{FRONTENDS[kind]}, concurrency {conc}"
        goal = at_least(GOAL, f">= {GOAL} of 100 (issue 11)") if kind in GOAL_APPS and conc == max(CONCURRENCY) else None
        sec.add(f"right.{kind}.{conc}", f"Client spans with the right parent, {at}", "per 100",
                [t.right_per_100 for t in tallies], goal)
        sec.add(f"missing.{kind}.{conc}", f"Client spans missing, {at}", f"per {REQUESTS}",
                [t.missing_client for t in tallies])


def table(per: dict[tuple[str, int], list[Tally]]) -> str:
    """app x concurrency -> right/client spans (missing), summed over the runs."""
    cells = []
    for kind in FRONTENDS:
        row = []
        for conc in CONCURRENCY:
            ts = per[(kind, conc)]
            right, spans, missing = (sum(getattr(t, a) for t in ts) for a in ("right", "client_spans", "missing_client"))
            row.append(f"c{conc} {right}/{spans}" + (f" ({missing} missing)" if missing else ""))
        cells.append(f"{FRONTENDS[kind]}: " + ", ".join(row))
    return "; ".join(cells)


def measure(ctx: Context) -> Section:
    runs = 1 if ctx.settings.quick else max(3, ctx.settings.runs)
    sec = Section("causality", "8. Event-loop causality: client spans with the right parent", method(runs))
    per: dict[tuple[str, int], list[Tally]] = {(k, c): [] for k in FRONTENDS for c in CONCURRENCY}
    collector = Collector()
    try:
        for run in range(runs):
            for kind in (list(FRONTENDS) if run % 2 == 0 else list(FRONTENDS)[::-1]):
                for conc, t in one_run(ctx, collector, kind, run).items():
                    per[(kind, conc)].append(t)
                    log(f"run {run} {kind} c{conc}: right {t.right}/{t.client_spans} client spans (wrong {t.wrong}, "
                        f"root {t.root}, other {t.other_parent}), missing client {t.missing_client} server "
                        f"{t.missing_server}, answered {t.answered}/{t.requests}")
    finally:
        collector.close()
    add_figures(sec, per)
    sec.notes.append("Right parents / client spans, summed over the runs: " + table(per) + ".")
    tallies = [t for ts in per.values() for t in ts]
    if any(t.answered != t.requests for t in tallies):
        sec.notes.append("Some requests did not get their own id back: see the JSON (answered).")
    if any(t.missing_server or t.duplicates for t in tallies):
        sec.notes.append("Some frontend server spans were missing or client spans duplicated: see the JSON.")
    wrong = [t for t in tallies if t.wrong + t.root + t.other_parent]
    if wrong:
        sec.notes.append(
            f"Of the client spans without the right parent: under another request's server span "
            f"{sum(t.wrong for t in wrong)}, roots {sum(t.root for t in wrong)}, other parents "
            f"{sum(t.other_parent for t in wrong)}.")
    sec.raw = {"runs": {f"{k}.{c}": [asdict(t) for t in ts] for (k, c), ts in per.items()}}
    return sec
