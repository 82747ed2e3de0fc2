"""A real Prometheus server (Debian package `prometheus`) on loopback, scraping one target every second."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

from .pod import free_port

CONFIG = """
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: sidecar
    static_configs:
      - targets: ["127.0.0.1:{target}"]
"""


def available() -> bool:
    return shutil.which("prometheus") is not None


class Prometheus:
    def __init__(self, tmp: Path, target_port: int) -> None:
        self.port = free_port()
        config = tmp / "prometheus.yml"
        config.write_text(CONFIG.format(target=target_port))
        self.log = (tmp / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start: {(tmp / 'prometheus.log').read_text()[-2000:]}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def query(self, promql: str) -> list[dict]:
        """Instant vector result of `promql` via the HTTP API: [{"metric": {...}, "value": [ts, "v"]}]."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as resp:
            doc = json.load(resp)
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    def by(self, promql: str, *labels: str) -> dict[tuple[str, ...], float]:
        return {tuple(r["metric"].get(label, "") for label in labels): float(r["value"][1])
                for r in self.query(promql)}

    def wait_for(self, promql: str, labels: tuple[str, ...], expected: dict, timeout: float = 30.0) -> dict:
        """Poll until the result equals `expected` (or the timeout); return the last result."""
        deadline = time.monotonic() + timeout
        got = self.by(promql, *labels)
        while got != expected and time.monotonic() < deadline:
            time.sleep(0.5)
            got = self.by(promql, *labels)
        return got

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
