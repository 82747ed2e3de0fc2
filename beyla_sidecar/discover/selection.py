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

    @property
    def at_exec(self) -> bool:
        """Does the executable alone decide? Then the probes apply the verdict on each executable
        at exec, so that a process is seen from its first byte however short its life. A port
        condition can only be judged once the process listens."""
        return self.executable is not None and not self.ports

    def executable_matches(self, executable_path: str) -> bool:
        return self.executable is None or bool(self.executable.search(executable_path))

    def matches(self, executable_path: str, open_ports: Callable[[], set[int]]) -> bool:
        """`open_ports` is only called when ports matter (it reads /proc)."""
        if not self.executable_matches(executable_path):
            return False
        if self.ports:
            return any(lo <= port <= hi for port in open_ports() for lo, hi in self.ports)
        return True
