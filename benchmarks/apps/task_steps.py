"""Task steps as fast as asyncio runs them, for benchmarks/asyncio_cost.py: imports asyncio,
prints `ready`, waits for `go` on stdin, then runs STEPS steps of one Task (each `await
asyncio.sleep(0)` ends a step and schedules the next) and prints the CPU seconds they took.

    python task_steps.py STEPS
"""

from __future__ import annotations

import asyncio
import sys
import time


async def steps(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def main() -> None:
    n = int(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.process_time()
    asyncio.run(steps(n))
    print(time.process_time() - t0, flush=True)


if __name__ == "__main__":
    main()
