"""Ring-buffer loss never corrupts (issue 14 item 2). The kernel pairs each request with its
response and sends one record per exchange, so a record the full ring refuses loses one whole
exchange (counted in beyla_sidecar_exchanges_lost_total) or one connection or process event
(in beyla_sidecar_events_lost_total), never mixes two exchanges. Here the sidecar's reader is
stopped (SIGSTOP) for 10 ms of every 50 under keep-alive and connection-per-request load against
nginx, with a ring of two pages: every span exported must be exactly one request with its own
response (status and body size per path, no false `incomplete`, its connection's addresses), and

    exchanges made == spans exported + exchanges lost

holds exactly."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
import time

import pytest

from .inprocess import wait_for
from .nginx import start_nginx
from .pod import Pod, Sidecar, free_port
from .test_exchanges import Session
from .test_metrics import sample, scrape

pytestmark = pytest.mark.bpf

BIG = bytes(range(256)) * 12  # 3 KiB, sent with sendfile
# Each path prefix has its own status and body size: a span that carried another request's
# response would pair them wrongly.
LOCATIONS = """
location /ok/ { return 200 "ok\\n"; }
location /nf/ { return 404 "no such thing\\n"; }
location /err/ { return 503 "unavailable, try again later\\n"; }
location /big/ { try_files /big.bin =404; }
"""
EXPECTED = {"ok": (200, 3), "nf": (404, 14), "err": (503, 29), "big": (200, len(BIG))}
PER_CURL = 1000  # requests per curl (one keep-alive connection each)
CLOSING = 40  # requests sent one connection each (Connection: close): connection events galore
SESSIONS = 4


def check_span(span: dict) -> tuple[str, str]:
    """(kind, path prefix) of a span that is exactly one of the test's requests with its response."""
    a = span["attributes"]
    prefix = a["url.path"].split("/")[1]
    status, size = EXPECTED[prefix]
    got = (span["name"].split()[0], a.get("http.response.status_code"), a.get("http.response.body.size"),
           a.get("error.type"), a.get("http.request.body.size"))
    error = str(status) if status >= 500 or (status >= 400 and span["kind"] == "CLIENT") else None
    assert got == ("GET", status, size, error, None), f"{span['kind']} {a['url.path']}: {got}"
    # its connection is known: addresses and ports (a lost CONN_OPEN is sent again)
    ports = ("client.port", "server.port") if span["kind"] == "SERVER" else ("server.port",)
    assert all(a.get(p) for p in ports), f"{span['kind']} {a['url.path']} without its connection's ports: {a}"
    return span["kind"], prefix


class Stutter:
    """Stops and continues the sidecar's process again and again (the reader falls behind, the
    ring fills, records are lost), or holds it stopped. nsenter stops itself when its child
    stops (util-linux), so both are continued."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.pids = (sidecar.proc.pid, sidecar.pod.payload_pid(sidecar.proc))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def pause(self) -> None:
        os.kill(self.pids[1], signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self.pids:
            os.kill(pid, signal.SIGCONT)

    def _run(self, stopped: float, running: float) -> None:
        while not self._stop.is_set():
            self.pause()
            time.sleep(stopped)
            self.resume()
            time.sleep(running)

    def start(self, stopped: float, running: float) -> None:
        self._thread = threading.Thread(target=self._run, args=(stopped, running), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.resume()


def test_loss_loses_whole_exchanges_and_counts_them(pod: Pod, start_sidecar) -> None:
    web, prom = free_port(), free_port()
    start_nginx(pod, web, {"big.bin": BIG}, locations=LOCATIONS)
    sidecar = start_sidecar(BEYLA_RINGBUF_SIZE="8192", BEYLA_PROMETHEUS_PORT=str(prom),
                            BEYLA_PROMETHEUS_ADDRESS="127.0.0.1")
    base = f"http://127.0.0.1:{web}"
    made: collections.Counter[str] = collections.Counter()
    stutter = Stutter(sidecar)
    stutter.start(0.01, 0.04)
    try:
        curls = [pod.spawn(["curl", "-sS", "--fail-early", "-o", "/dev/null", f"{base}/{p}/[1-{PER_CURL}]"],
                           stdout=subprocess.DEVNULL) for p in EXPECTED]
        curls.append(pod.spawn(["curl", "-sS", "-H", "Connection: close", "-o", "/dev/null",
                                f"{base}/nf/c[1-{CLOSING}]"], stdout=subprocess.DEVNULL))
        assert [c.wait(120) for c in curls] == [0] * len(curls)
        stutter.stop()
        made.update(dict.fromkeys(EXPECTED, PER_CURL))
        made["nf"] += CLOSING
        # Connections opened while the reader is stopped and the ring full (20 exchanges fill it):
        # the kernel sends their CONN_OPEN again with their next exchange, once the ring has room.
        stutter.pause()
        pod.run(["curl", "-sS", "-o", "/dev/null", f"{base}/ok/fill[1-20]"])
        sessions = [Session(pod, web) for _ in range(SESSIONS)]
        for s in sessions:
            s.get("/ok/session")  # its record goes when the next request begins
    finally:
        stutter.stop()
    made["ok"] += 20 + SESSIONS
    time.sleep(0.5)  # the reader empties the ring
    for _ in range(5):  # paced: a ring of two pages holds ~10 records (the reader drains every 100 ms)
        for s in sessions:
            for path in ("/err/after", "/big/after"):
                s.get(path)
                time.sleep(0.02)
    for s in sessions:
        s.close()
    made["err"] += 5 * SESSIONS
    made["big"] += 5 * SESSIONS

    requests = sum(made.values())
    lost = "beyla_sidecar_exchanges_lost_total"
    # both ends are in the pod: each request is a server and a client exchange
    assert wait_for(lambda: len(sidecar.spans()) + sample(scrape(prom), lost) >= 2 * requests, timeout=30)
    time.sleep(1.0)  # extras would show
    text = scrape(prom)
    spans = sidecar.spans()
    print(f"{requests} requests: {len(spans)} spans, {sample(text, lost):.0f} exchanges lost, "
          f"{sample(text, 'beyla_sidecar_events_lost_total'):.0f} records lost in all")
    seen = collections.Counter(check_span(s) for s in spans)  # each one right, with its connection
    assert sample(text, lost) > 0  # records were lost
    assert len(spans) + sample(text, lost) == 2 * requests
    assert all(seen[(kind, p)] <= n for kind in ("SERVER", "CLIENT") for p, n in made.items())
    # the sessions' exchanges, on connections announced late, all came after the ring had room
    late = collections.Counter((s["kind"], s["attributes"]["url.path"]) for s in spans
                               if s["attributes"]["url.path"] in ("/ok/session", "/err/after", "/big/after"))
    assert late == {(kind, path): n for kind in ("SERVER", "CLIENT")
                    for path, n in (("/ok/session", SESSIONS), ("/err/after", 5 * SESSIONS),
                                    ("/big/after", 5 * SESSIONS))}
    assert sample(text, "beyla_sidecar_parse_failures_total") == 0
