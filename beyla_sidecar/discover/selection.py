"""Which processes of the pod are instrumented: BEYLA_EXECUTABLE_NAME and BEYLA_OPEN_PORT."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

PortRanges = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Selector:
    """Both criteria must hold when both are set; none set selects every process."""

    executable: re.Pattern[str] | None = None  # searched in the executable's full path
    ports: PortRanges = ()  # some listening TCP port in one of these ranges

    @property
    def filters(self) -> bool:
        return self.executable is not None or bool(self.ports)

    def matches(self, executable_path: str, open_ports: Callable[[], set[int]]) -> bool:
        """`open_ports` is only called when ports matter (it reads /proc)."""
        if self.executable is not None and not self.executable.search(executable_path):
            return False
        if self.ports:
            return any(lo <= port <= hi for port in open_ports() for lo, hi in self.ports)
        return True
