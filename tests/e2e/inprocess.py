"""The pipeline in a thread of the test process, for tests that inspect its state."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from beyla_sidecar.config import Config, load
from beyla_sidecar.pipeline import Pipeline

from .pod import Pod


class InProcessSidecar:
    """The pipeline in a thread of the test, watching the pod from outside (its namespace by
    inode): its state can be inspected directly."""

    def __init__(self, pod: Pod, **env: str) -> None:
        cfg = load(Config, {"BEYLA_PID_NAMESPACE": str(pod.ns_inode), "BEYLA_TRACE_PRINTER": "disabled", **env})
        self.pipeline = Pipeline(cfg)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.pipeline.run, args=(self._stop,), daemon=True)
        self._thread.start()
        assert self.pipeline.ready.wait(30)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def wait_for(condition: Callable[[], object], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(condition())
